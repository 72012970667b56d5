"""What the generator (or the images) and the student minimise, for every data-free method of the registry
(methods/registry.py: METHODS): a weighted sum of the terms of zskt_fast.ops, each defined once there.

    generator:  adversarial * A(s, t) + bn_prior * BN + one_hot * CE(t, argmax t or random targets)
                + balance * sum p log p + activation * (-mean |f|) + tv * TV(x) + image_l2 * ||x||
    student:    KL + beta * AT (zskt) | T^2 KL_T per sample (kd) | |t - s| (l1)

The batch-norm prior reads the inputs of the teacher's BatchNorm2d layers, and the activation term the input of its
last linear layer, through forward hooks that collect only while the generator's loss is computed (inside the step,
so they are captured in its CUDA graph and traced by torch.compile with it). The teacher stays in eval mode: its
layers normalise with their running statistics, which the prior compares the batch's with.
"""
from __future__ import annotations

import torch
from torch import nn

from ...ops import zskt_generator_loss, zskt_student_loss
from ...ops.bn_statistics_prior import checked_bn_statistics, resolve_bn_backend
from ...ops.data_free_losses import (activation_loss, adversarial_l1, class_balance_of, competition_loss,
                                    cross_entropy_to, decision_adversarial_kl, image_square_sum, kd_loss, logit_l1,
                                    mean_prediction, one_hot_loss, total_variation_squares)
from ...ops.reference import prior_of_statistics
from ..lifecycle.distributed import World, global_mean, global_statistics


def batch_norm_layers(net: nn.Module) -> list[nn.BatchNorm2d]:
    """The BatchNorm2d layers of a network (any subclass: torchvision's, ours), in module order."""
    return [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]


def last_linear_layer(net: nn.Module) -> nn.Linear | None:
    linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return linear[-1] if linear else None


def check_teacher_for(objectives, teacher: nn.Module, name: str = "the teacher") -> None:
    """A term that reads what the teacher lacks is refused, naming the term and the option that turns it off."""
    if objectives.bn_prior > 0 and not batch_norm_layers(teacher):
        raise ValueError(f"the batch-norm prior (bn_prior {objectives.bn_prior}, method {objectives.method}) reads the "
                         f"statistics of the teacher's BatchNorm2d layers, and {name} has none: use another method or "
                         f"--bn-prior 0")
    if objectives.activation > 0 and last_linear_layer(teacher) is None:
        raise ValueError(f"the activation term (activation {objectives.activation}, method {objectives.method}) reads "
                         f"the input of the teacher's last linear layer, and {name} has none: use another method or "
                         f"--activation 0")


class LayerInputs:
    """Collects the inputs of some layers of a network between start() and stop()."""

    def __init__(self, layers: list[nn.Module]):
        self.layers, self.inputs, self.active = layers, [], False
        self.handles = [layer.register_forward_pre_hook(self._keep) for layer in layers]

    def _keep(self, module, args):
        if self.active:
            self.inputs.append(args[0])

    def start(self) -> None:
        self.inputs, self.active = [], True

    def stop(self) -> list[torch.Tensor]:
        inputs, self.inputs, self.active = self.inputs, [], False  # the step's maps are not kept past it
        return inputs

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class GeneratorObjective:
    """The generator's loss of a method, on the teacher's (and, when a term needs it, the student's) outputs on the
    generated batch. With `bn_momentum` > 0 it holds the moving averages of the prior's batch statistics, part of the
    steps' checkpointed state."""

    def __init__(self, objectives, steps, teacher: nn.Module, device: torch.device, world: World | None = None,
                 average_per_round: bool = False):
        """`objectives`, `steps`: the resolved ObjectiveSettings and StepSettings. `average_per_round`: the prior's
        moving averages take the last step's statistics at end_round() (the pool methods' rounds, as FastDFKD's)
        rather than every step's."""
        check_teacher_for(objectives, teacher)
        self.objectives, self.steps, self.world = objectives, steps, world
        self.average_per_round, self._last_statistics = average_per_round, []
        self.needs_student = objectives.adversarial > 0
        self.norms = batch_norm_layers(teacher) if objectives.bn_prior > 0 else []
        self.bn_inputs = LayerInputs(self.norms) if self.norms else None
        classifier = last_linear_layer(teacher) if objectives.activation > 0 else None
        self.classifier_inputs = LayerInputs([classifier]) if classifier is not None else None
        self.averages: list[torch.Tensor] = []  # per layer [2, C]: the moving averages of (mean, var)
        dtype = torch.get_default_dtype()  # float64 runs keep their averages in float64
        self.averaged = torch.zeros((), device=device, dtype=dtype)  # 1 once the averages hold a batch's statistics
        if objectives.bn_momentum > 0:
            self.averages = [torch.zeros(2, norm.num_features, device=device, dtype=dtype) for norm in self.norms]

    def start_collecting(self) -> None:
        """From here to stop_collecting the teacher's forward pass is the generator's: its layer inputs are kept.
        (Plain calls rather than a context manager, which torch.compile would not trace as one graph.)"""
        for inputs in (self.bn_inputs, self.classifier_inputs):
            if inputs is not None:
                inputs.start()

    def stop_collecting(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The inputs of the BatchNorm2d layers and of the last linear layer seen since start_collecting."""
        return tuple(inputs.stop() if inputs is not None else [] for inputs in (self.bn_inputs, self.classifier_inputs))

    def remove_hooks(self) -> None:
        """Takes the hooks off the teacher (the user's network, which outlives the run)."""
        for inputs in (self.bn_inputs, self.classifier_inputs):
            if inputs is not None:
                inputs.remove()

    def evaluate(self, inputs: torch.Tensor, student: nn.Module, teacher: nn.Module, *,
                 targets: torch.Tensor | None = None, images: torch.Tensor | None = None,
                 adversarial: bool = True) -> torch.Tensor:
        """The objective on the batch `inputs` (what the networks see): the student's outputs when a term needs them,
        the teacher's with its layer inputs collected, the weighted terms (loss's arguments)."""
        student_logits = student(inputs)[0] if self.needs_student and adversarial else None
        self.start_collecting()  # the teacher's layer inputs that the prior and activation terms read
        teacher_logits, _ = teacher(inputs)
        bn_inputs, classifier_inputs = self.stop_collecting()
        return self.loss(student_logits, teacher_logits, bn_inputs, classifier_inputs, targets=targets,
                         images=images, adversarial=adversarial)

    def loss(self, student_logits: torch.Tensor | None, teacher_logits: torch.Tensor, bn_inputs: list,
             classifier_inputs: list, *, targets: torch.Tensor | None = None, images: torch.Tensor | None = None,
             adversarial: bool = True) -> torch.Tensor:
        """The weighted terms. `targets`: the one-hot term's random classes (one_hot_targets 'random'); `images`: what
        the image priors (tv, image_l2) read; `adversarial` False leaves the adversarial term out (a warm-up)."""
        o = self.objectives
        terms = []
        if o.adversarial > 0 and adversarial:
            terms.append((o.adversarial, self._adversarial(student_logits, teacher_logits)))
        if o.bn_prior > 0:
            terms.append((o.bn_prior, self._bn_prior(bn_inputs)))
        if o.one_hot > 0:
            terms.append((o.one_hot, one_hot_loss(teacher_logits) if o.one_hot_targets == "argmax"
                          else cross_entropy_to(teacher_logits, targets)))
        if o.tv > 0:  # norms over the global batch: each rank's sums of squares added up
            terms.append((o.tv, self._global_sum(total_variation_squares(images)).sqrt().sum()))
        if o.image_l2 > 0:
            terms.append((o.image_l2, self._global_sum(image_square_sum(images)).sqrt()))
        if o.balance > 0:  # of the global batch's mean prediction: the term is not a mean over samples
            terms.append((o.balance, class_balance_of(global_mean(mean_prediction(teacher_logits), self.world))))
        if o.activation > 0:
            terms.append((o.activation, activation_loss(classifier_inputs[-1])))
        # A weight of 1 is not multiplied: ZSKT's objective alone is its one op, as the authors' loop computes it.
        weighted = [term if weight == 1 else weight * term for weight, term in terms]
        return sum(weighted[1:], weighted[0])

    def _global_sum(self, local_sum: torch.Tensor) -> torch.Tensor:
        return local_sum if self.world is None else global_mean(local_sum, self.world) * self.world.size

    def _adversarial(self, student_logits, teacher_logits) -> torch.Tensor:
        loss, backend, temperature = self.objectives.adversarial_loss, self.steps.backend, self.steps.temperature
        if loss == "l1":
            return adversarial_l1(student_logits, teacher_logits)
        if loss == "decision-kl":
            return decision_adversarial_kl(student_logits, teacher_logits)
        if loss == "competition":
            return competition_loss(student_logits, teacher_logits)
        return zskt_generator_loss(student_logits, teacher_logits, temperature=temperature,
                                   reduction="mean" if loss == "kl" else "batchmean", backend=backend)

    def _bn_prior(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != len(self.norms):
            raise RuntimeError(f"the batch-norm prior expected the inputs of the teacher's {len(self.norms)} "
                               f"BatchNorm2d layers in one forward pass and saw {len(inputs)}")
        backend = resolve_bn_backend(self.steps.backend, inputs[0].device)
        statistics = [global_statistics(*checked_bn_statistics(x, backend), self.world) for x in inputs]
        if self.averages:
            statistics = self._with_averages(statistics)
        return prior_of_statistics(statistics, [n.running_mean for n in self.norms],
                                   [n.running_var for n in self.norms])

    def _with_averages(self, statistics: list) -> list:
        """(1 - m) * this batch's statistics + m * their moving average (this batch's alone before there is one);
        then the averages take this batch's. Tensor work only, with no host synchronisation."""
        m = self.objectives.bn_momentum * self.averaged  # 0 until the averages hold a batch's statistics
        blended = [((1 - m) * mean + m * average[0], (1 - m) * var + m * average[1])
                   for (mean, var), average in zip(statistics, self.averages)]
        last = [torch.stack([mean, var]).detach() for mean, var in statistics]
        if self.average_per_round:
            self._last_statistics = last
        else:
            self._update_averages(last, m)
        return blended

    def end_round(self) -> None:
        """The pool methods: the moving averages take the statistics of the round's last step."""
        if self._last_statistics:
            self._update_averages(self._last_statistics, self.objectives.bn_momentum * self.averaged)
            self._last_statistics = []

    def _update_averages(self, last: list[torch.Tensor], m: torch.Tensor) -> None:
        with torch.no_grad():
            for average, statistics in zip(self.averages, last):
                average.mul_(m).add_(statistics.to(average.dtype) * (1 - m))
            self.averaged.fill_(1.0)

    def state_tensors(self) -> list[torch.Tensor]:
        """The tensors a checkpoint keeps (and a CUDA graph's warm-up restores)."""
        return [*self.averages, self.averaged] if self.averages else []

    def state_dict(self) -> dict:
        return {"averages": [a.clone() for a in self.averages], "averaged": self.averaged.clone()} \
            if self.averages else {}

    def load_state_dict(self, state: dict) -> None:
        if self.averages and state:
            for average, saved in zip(self.averages, state["averages"]):
                average.copy_(saved)
            self.averaged.copy_(state["averaged"])


class StudentLoss:
    """The student's loss of a method: KL + beta * AT (kl-at, ZSKT's), T^2 KL_T per sample (kd) or |t - s| (l1);
    `reads_features`: whether it reads the networks' feature maps (kl-at with beta > 0)."""

    def __init__(self, objectives, steps):
        self.kind, self.steps = objectives.student_loss, steps
        self.reads_features = self.kind == "kl-at" and steps.beta > 0

    def __call__(self, student_logits, teacher_logits, student_features=(), teacher_features=()) -> torch.Tensor:
        steps = self.steps
        if self.kind == "kl-at":
            return zskt_student_loss(student_logits, teacher_logits, student_features, teacher_features,
                                     beta=steps.beta, temperature=steps.temperature, backend=steps.backend)
        if self.kind == "kd":
            return kd_loss(student_logits, teacher_logits, temperature=steps.temperature, backend=steps.backend)
        return logit_l1(student_logits, teacher_logits)
