"""Attention features from any classifier, and which feature maps of a teacher and a student are paired.

This package's WRN and ResNet return (logits, attention features) themselves. Any other classifier (a torchvision
model, a user's nn.Module returning logits) is wrapped in a FeatureNetwork that returns (logits, [feature maps]) of
named nodes: taken by torchvision's FX feature extraction, or by forward hooks on modules where FX tracing fails. The
network itself is not changed; its weights stay under `.net`.

Automatic pairing: a network's candidate nodes are the outputs of its blocks (modules that hold other modules) that
are feature maps [B, C, H, W] larger than one pixel (a one-pixel map has a constant attention map); for each spatial
size that both networks produce, the last block at that size among the blocks nested least deep (the stages:
layer2, features.4; not a convolution inside a block that runs before the block downsamples) is taken; pairs are
ordered from the largest maps (smallest stride) down.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..common import eval_mode

# Batch-norm layers stay whole in the traced graph, subclasses too (the trainer swaps in one that synchronises ranks).
TRACER = {"leaf_modules": [nn.modules.batchnorm._BatchNorm]}
LIST_NODES_HINT = "python -m zskt_fast.train --list-nodes ARCH lists them"


def classifier_logits(output) -> torch.Tensor:
    """The logits of a classifier's output: the output itself, or the first item of (logits, features)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def unwrap(net: nn.Module) -> nn.Module:
    """The user's network inside a FeatureNetwork (whose weights are the ones to save); any other network as is."""
    return net.net if isinstance(net, FeatureNetwork) else net


@dataclass(frozen=True)
class FeatureNode:
    name: str
    shape: tuple[int, ...]  # [C, H, W] of one image
    block: bool  # the output of a module that holds other modules


def _blank_images(net: nn.Module, image_shape: Sequence[int]) -> torch.Tensor:
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    # two images: BatchNorm in train mode needs more than one value per channel
    return torch.zeros(2, *image_shape, device=device, dtype=dtype)


def _blank_forward(net: nn.Module, image_shape: Sequence[int], hooks) -> None:
    """One forward pass of `net` on blank images in eval mode with forward hooks on some of its modules: hooks is a
    list of (module, hook); they are removed afterwards."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with eval_mode(net):
            net(_blank_images(net, image_shape))
    finally:
        for handle in handles:
            handle.remove()


def _shape(value) -> str:
    if isinstance(value, torch.Tensor):
        return "a tensor of shape " + "x".join(map(str, value.shape))
    return type(value).__name__


@torch.no_grad()
def probe(net: nn.Module, image_shape: Sequence[int], what: str = "network"
          ) -> tuple[int, list[tuple[int, ...]] | None]:
    """(number of classes, [C, H, W] of each feature map the network returns itself, or None when it returns logits
    only), from one forward pass on blank images in eval mode (BatchNorm statistics untouched, the mode restored)."""
    with eval_mode(net):
        try:
            output = net(_blank_images(net, image_shape))
        except Exception as error:  # a network can fail in any way on images of the wrong shape
            raise ValueError(f"the {what} ({type(net).__name__}) cannot classify images of shape "
                             f"{'x'.join(map(str, image_shape))}: {type(error).__name__}: {error}") from error
    logits = classifier_logits(output)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"the {what} ({type(net).__name__}) returns {_shape(logits)}: expected logits [B, classes], "
                         f"or (logits, [feature maps])")
    features = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
    if not isinstance(features, (tuple, list)) or not all(isinstance(f, torch.Tensor) for f in features):
        return logits.shape[1], None
    return logits.shape[1], [tuple(f.shape[1:]) for f in features]


@torch.no_grad()
def strided_convolutions_on_small_maps(net: nn.Module, image_shape: Sequence[int]
                                       ) -> list[tuple[str, nn.Conv2d, tuple[int, ...]]]:
    """(name, module, input shape [C, H, W]) of each convolution of `net` with a stride and a kernel above 1 whose
    output, on images of `image_shape`, is at most 2 pixels high or wide; from one forward pass on blank images in eval
    mode."""
    found = []

    def record(name):
        def hook(module, inputs, output):
            if max(module.stride) > 1 and max(module.kernel_size) > 1 and min(output.shape[-2:]) <= 2:
                found.append((name, module, tuple(inputs[0].shape[1:])))
        return hook

    _blank_forward(net, image_shape, [(m, record(n)) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)])
    return found


@torch.no_grad()
def feature_nodes(net: nn.Module, image_shape: Sequence[int]) -> list[FeatureNode]:
    """The modules of `net` whose output is a feature map [B, C, H, W], in the order their outputs are computed (a
    module called several times: its last call), from one forward pass on blank images in eval mode."""
    found: dict[str, FeatureNode] = {}

    def recorder(name: str, module: nn.Module):
        holds_modules = next(module.children(), None) is not None

        def record(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                found.pop(name, None)
                found[name] = FeatureNode(name, tuple(output.shape[1:]), holds_modules)
        return record

    _blank_forward(net, image_shape, [(m, recorder(name, m)) for name, m in net.named_modules() if name])
    return list(found.values())


def _last_block_per_size(nodes: list[FeatureNode]) -> dict[tuple[int, ...], FeatureNode]:
    """Per spatial size: of the blocks nested least deep that produce it, the last one. The least deep: the stages of
    a network (layer2, features.4), not a convolution inside a block that runs before the block downsamples."""
    blocks = [n for n in nodes if n.block] or nodes  # a network without nested modules: every module counts
    by_size: dict[tuple[int, ...], FeatureNode] = {}
    for node in blocks:
        size, kept = node.shape[1:], by_size.get(node.shape[1:])
        if size[0] * size[1] > 1 and (kept is None or node.name.count(".") <= kept.name.count(".")):
            by_size[size] = node
    return by_size


def automatic_pairs(teacher_nodes: list[FeatureNode], student_nodes: list[FeatureNode]) -> list[tuple[str, str]]:
    """For each spatial size both networks produce, the last block of each at that size; largest maps first."""
    teacher, student = _last_block_per_size(teacher_nodes), _last_block_per_size(student_nodes)
    sizes = sorted((size for size in teacher if size in student), key=lambda hw: -hw[0] * hw[1])
    return [(teacher[size].name, student[size].name) for size in sizes]


def describe_nodes(nodes: list[FeatureNode], blocks_only: bool = True) -> str:
    shown = [n for n in nodes if n.block or not blocks_only] or nodes
    return ", ".join(f"{n.name} ({'x'.join(map(str, n.shape))})" for n in shown) or "none"


def describe_network_nodes(net: nn.Module, image_shape: Sequence[int]) -> str:
    """A table of the network's modules that output feature maps, marking the automatic pairing's candidates, for
    --list-nodes."""
    nodes = feature_nodes(net, image_shape)
    chosen = {t for t, _ in automatic_pairs(nodes, nodes)}
    _, own = probe(net, image_shape)
    width = max([len(n.name) for n in nodes] + [4])
    lines = [f"{'node':<{width}}  output (CxHxW)  kind"]
    for n in nodes:
        kind = "block" if n.block else "module"
        if n.name in chosen:
            kind += f", automatic candidate for {n.shape[1]}x{n.shape[2]} maps"
        lines.append(f"{n.name:<{width}}  {'x'.join(map(str, n.shape)):<14}  {kind}")
    if own is not None:
        lines.append(f"It returns its own attention features ({', '.join('x'.join(map(str, s)) for s in own)}), "
                     f"paired by position with those of this package's networks.")
    lines.append("torch.fx node names (operations too, such as layer1.0.add) are accepted as well where the network "
                 "traces: torchvision.models.feature_extraction.get_graph_node_names(net) lists them.")
    return "\n".join(lines)


def parse_pairs(pairs) -> list[tuple[str, str]]:
    """'teacher_node:student_node' strings, or (teacher_node, student_node) pairs, as a list of pairs."""
    if isinstance(pairs, str):
        pairs = [pairs]
    parsed = []
    for pair in pairs:
        if isinstance(pair, str):
            parts = pair.split(":")
            if len(parts) != 2 or not all(p.strip() for p in parts):
                raise ValueError(f"attention pair {pair!r}: expected TEACHER_NODE:STUDENT_NODE (for example "
                                 f"layer2:features.3)")
            pair = parts
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ValueError(f"attention pair {pair!r}: expected 'TEACHER_NODE:STUDENT_NODE' or (teacher_node, "
                             f"student_node)")
        parsed.append((pair[0].strip(), pair[1].strip()))
    if not parsed:
        raise ValueError("no attention pairs given: give TEACHER_NODE:STUDENT_NODE pairs, or leave attention unset for "
                         "the automatic pairing")
    return parsed


class FeatureNetwork(nn.Module):
    """`net` returning (logits, [the outputs of `nodes`]) instead of its own output. Nodes are torchvision FX node
    names (module names, or operations such as layer1.0.add); where the network cannot be traced, module names, taken
    by forward hooks. With no nodes it returns (logits, [])."""

    def __init__(self, net: nn.Module, nodes: Sequence[str], image_shape: Sequence[int], what: str = "network"):
        super().__init__()
        self.net = net
        self.nodes = list(nodes)
        self.image_shape = tuple(image_shape)
        self.method = "none"
        self.__dict__["_extractor"] = None  # not a submodule: its modules are the network's own
        self._captured: dict[int, torch.Tensor] = {}
        self._capturing = False
        self.feature_shapes: list[tuple[int, ...]] = []
        if self.nodes:
            self._attach(what)

    # -- how the features are taken ----------------------------------------------------------------------------------
    def _attach(self, what: str) -> None:
        modules = dict(self.net.named_modules())
        fx_names, fx_error = self._fx_node_names()
        unknown = [n for n in self.nodes if n not in modules and not any(
            name == n or name.startswith(n + ".") for name in fx_names)]
        if unknown:
            raise ValueError(f"the {what} ({getattr(self.net, 'arch_name', type(self.net).__name__)}) has no node "
                             f"{', '.join(map(repr, unknown))}; its blocks with feature maps are: "
                             f"{describe_nodes(feature_nodes(self.net, self.image_shape))} ({LIST_NODES_HINT})")
        blank = _blank_images(self.net, self.image_shape)
        if fx_error is None:
            try:
                self.__dict__["_extractor"] = self._fx_extractor()
                with eval_mode(self.net, self._extractor), torch.no_grad():
                    taken, own = self._extractor(blank), self.net(blank)
                if not torch.equal(taken["logits"], classifier_logits(own)):
                    raise RuntimeError("the traced graph's output is not the network's logits")
                self.method = "fx"
            except Exception as error:  # tracing fails in many ways; hooks on modules are the fallback
                self.__dict__["_extractor"], fx_error = None, error
        if self.method != "fx":
            not_modules = [n for n in self.nodes if n not in modules]
            if not_modules:
                raise ValueError(f"the {what} cannot be traced by torch.fx ({type(fx_error).__name__}: {fx_error}), "
                                 f"so its features are taken by hooks on modules, and {', '.join(not_modules)} "
                                 f"is not a module name")
            self._handles = [modules[name].register_forward_hook(self._keeper(i)) for i, name in enumerate(self.nodes)]
            self.method = "hooks"
        with eval_mode(self), torch.no_grad():
            _, features = self(blank)
        for name, feature in zip(self.nodes, features):
            if not isinstance(feature, torch.Tensor) or feature.dim() != 4:
                raise ValueError(f"node {name!r} of the {what} gives {_shape(feature)}, not a feature map [B, C, H, W]")
        self.feature_shapes = [tuple(f.shape[1:]) for f in features]

    def _fx_node_names(self) -> tuple[list[str], Exception | None]:
        from torchvision.models.feature_extraction import get_graph_node_names

        try:
            train_names, eval_names = get_graph_node_names(self.net, tracer_kwargs=TRACER)
        except Exception as error:  # noqa: BLE001 - any tracing failure means: use hooks
            return [], error
        self._logits_node = eval_names[-1]  # the node that feeds the output (for (logits, features): checked above)
        return sorted(set(train_names) & set(eval_names)), None

    def _fx_extractor(self) -> nn.Module:
        from torchvision.models.feature_extraction import create_feature_extractor

        return_nodes = {name: f"feature{i}" for i, name in enumerate(self.nodes)}
        return_nodes.setdefault(self._logits_node, "logits")
        extractor = create_feature_extractor(self.net, return_nodes=return_nodes, tracer_kwargs=TRACER)
        if return_nodes[self._logits_node] != "logits":  # a feature node is also the logits node: not a feature map
            raise ValueError(f"node {self._logits_node!r} is the network's output")
        extractor.train(self.net.training)
        return extractor

    def _keeper(self, index: int):
        def keep(_module, _inputs, output):
            if self._capturing:  # the network called by itself holds nothing
                self._captured[index] = output
        return keep

    # -- nn.Module -----------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.method == "fx":
            taken = self._extractor(x)
            return taken["logits"], [taken[f"feature{i}"] for i in range(len(self.nodes))]
        if self.method != "hooks":
            return classifier_logits(self.net(x)), []
        self._capturing = True
        try:
            logits = classifier_logits(self.net(x))
        finally:
            self._capturing = False
        # popped, so that the wrapper holds no feature map after the call
        return logits, [self._captured.pop(i) for i in range(len(self.nodes))]

    def train(self, mode: bool = True):
        super().train(mode)
        if self._extractor is not None:
            self._extractor.train(mode)
        return self

    def _apply(self, fn, *args, **kwargs):
        result = super()._apply(fn, *args, **kwargs)
        if self._extractor is not None:  # traced again, in case it held tensors the conversion replaced
            self.__dict__["_extractor"] = self._fx_extractor()
            self._extractor.train(self.training)
        return result

    def extra_repr(self) -> str:
        return f"nodes={self.nodes}, method={self.method}"


def pair_networks(teacher: nn.Module, student: nn.Module, *, image_shape: Sequence[int], attention=None,
                  use_attention: bool = True, num_classes: int | None = None
                  ) -> tuple[nn.Module, nn.Module, list[tuple[str, str]] | None]:
    """(teacher, student, pairs): both networks returning (logits, features), with features that pair one to one.

    Networks that return their own features (this package's) are kept as they are when `attention` is None and their
    features pair by position (pairs None); otherwise both are wrapped in FeatureNetworks on the `attention` pairs
    (strings 'teacher_node:student_node' or tuples), or on the automatic pairs. Raises ValueError when the class
    counts differ (or differ from `num_classes`), when a node does not exist, when paired maps differ in size, and
    when nothing pairs."""
    t_classes, t_own = probe(teacher, image_shape, "teacher")
    s_classes, s_own = probe(student, image_shape, "student")
    if t_classes != s_classes:
        raise ValueError(f"the teacher predicts {t_classes} classes and the student {s_classes}: build the student "
                         f"with the teacher's number of classes")
    if num_classes is not None and t_classes != num_classes:
        raise ValueError(f"the teacher and the student predict {t_classes} classes, and num_classes is {num_classes}")
    if not use_attention:
        wrap = lambda net, own: net if own is not None else FeatureNetwork(net, [], image_shape)  # noqa: E731
        return wrap(teacher, t_own), wrap(student, s_own), []
    if attention is None and t_own is not None and s_own is not None:
        describe = lambda shapes: ", ".join("x".join(map(str, s[1:])) for s in shapes)  # noqa: E731
        if len(t_own) != len(s_own) or any(t[1:] != s[1:] for t, s in zip(t_own, s_own)):
            raise ValueError(
                f"the attention features of the teacher ({len(t_own)} maps of sizes {describe(t_own)}) and the "
                f"student ({len(s_own)} maps of sizes {describe(s_own)}) cannot be paired layer by layer: choose "
                f"architectures of one family (WRN with WRN, ResNet with ResNet), name the pairs of nodes "
                f"(--attention-layers TEACHER_NODE:STUDENT_NODE ...), or set beta to 0 (--beta 0) to train without "
                f"attention transfer")
        return teacher, student, None
    if attention is None:
        t_nodes, s_nodes = feature_nodes(teacher, image_shape), feature_nodes(student, image_shape)
        pairs = automatic_pairs(t_nodes, s_nodes)
        if not pairs:
            raise ValueError(
                f"no feature maps of the teacher and the student share a spatial size, so attention transfer has "
                f"nothing to pair. Teacher blocks: {describe_nodes(t_nodes)}. Student blocks: "
                f"{describe_nodes(s_nodes)}. Name the pairs (attention=, --attention-layers TEACHER_NODE:STUDENT_NODE "
                f"...; {LIST_NODES_HINT}), or set beta to 0 (--beta 0) to distil with the KL term only")
    else:
        pairs = parse_pairs(attention)
    teacher = FeatureNetwork(teacher, [t for t, _ in pairs], image_shape, "teacher")
    student = FeatureNetwork(student, [s for _, s in pairs], image_shape, "student")
    for (t_name, s_name), t_shape, s_shape in zip(pairs, teacher.feature_shapes, student.feature_shapes):
        if t_shape[1:] != s_shape[1:]:
            raise ValueError(f"attention pair {t_name}:{s_name}: the teacher's map is {'x'.join(map(str, t_shape))} "
                             f"and the student's {'x'.join(map(str, s_shape))}; paired maps need the same height and "
                             f"width")
    return teacher, student, pairs
