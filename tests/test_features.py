"""Attention features of any classifier: torchvision networks by name, FX extraction and the hook fallback, automatic
and explicit pairing, and the errors of networks that do not fit."""
import pytest
import torch
import torchvision
from torch import nn

from zskt_fast.engine.settings.zero_shot import StepSettings
from zskt_fast.models import (FeatureNetwork, Generator, automatic_pairs, build_classifier, feature_nodes,
                              pair_networks)
from zskt_fast.ops import reference

from conftest import algorithm_one

SHAPE = (3, 32, 32)


def _tv(name, num_classes=10):
    torch.manual_seed(0)
    return build_classifier(f"tv:{name}", num_classes=num_classes)


class LogitsOnly(nn.Module):
    """A user's classifier: plain layers, logits out, no nested blocks."""

    def __init__(self, num_classes=10, channels=3):
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


class Untraceable(nn.Module):
    """Iterates over a tensor's rows: torch.fx cannot trace it (nor data-dependent control flow), so features come
    from hooks; nothing synchronises with the host, so its steps can be captured in CUDA graphs."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.stack([row for row in self.stage1(x)])
        return self.fc(self.stage2(h).mean((2, 3)))


def _steps(teacher, student, beta=250.0):
    settings = StepSettings(batch_size=4, z_dim=8, beta=beta, compile="off", amp="off", channels_last=False)
    generator = Generator(z_dim=8, image_size=SHAPE[1], channels=SHAPE[0])
    return algorithm_one(teacher, student, generator, settings)


def _parameters(net):
    return [p.detach().clone() for p in net.parameters()]


def _changed(before, net):
    return [not torch.equal(a, b) for a, b in zip(before, net.parameters())]


def test_torchvision_architectures_by_name_without_download():
    net = build_classifier("tv:resnet18", num_classes=7)
    assert isinstance(net, torchvision.models.ResNet) and net.fc.out_features == 7
    assert build_classifier("TV:mobilenet_v3_small").arch_name == "tv:mobilenet_v3_small"
    with pytest.raises(ValueError, match=r"unknown torchvision classifier tv:resnet5: did you mean tv:resnet50"):
        build_classifier("tv:resnet5")
    with pytest.raises(ValueError, match="takes 3-channel .* 1 channel"):
        build_classifier("tv:resnet18", in_channels=1)


def test_resnet18_teacher_mobilenet_student_auto_pairs_and_trains_the_student_only():
    teacher, student = _tv("resnet18"), _tv("mobilenet_v3_small")
    teacher, student, pairs = pair_networks(teacher, student, image_shape=SHAPE)
    # 8x8, 4x4 and 2x2 maps at 32x32 inputs (the 1x1 maps of the last stages carry no attention)
    assert pairs == [("layer1", "features.1"), ("layer2", "features.3"), ("layer3", "features.8")]
    assert teacher.method == student.method == "fx"
    steps = _steps(teacher, student)
    z = steps.sample_noise()
    images, teacher_out = steps.images_and_teacher(z)
    assert len(teacher_out.features) == 3
    # the student's loss is KL + beta * (three AT terms), by the plain formula of the spec
    loss, logits = steps.student_loss(images, teacher_out.logits, teacher_out.features)
    with torch.no_grad():
        s_logits, s_features = student(images)
    expected = reference.kl_divergence(s_logits, teacher_out.logits) + reference.attention_transfer(
        s_features, teacher_out.features, beta=250.0)
    assert len(s_features) == 3
    torch.testing.assert_close(loss.detach().double(), expected.double(), rtol=1e-4, atol=1e-6)
    one_term_less = reference.kl_divergence(s_logits, teacher_out.logits) + reference.attention_transfer(
        s_features[:2], teacher_out.features[:2], beta=250.0)
    assert not torch.allclose(loss.detach().double(), one_term_less.double(), rtol=1e-4)

    t_before, s_before, g_before = (_parameters(n) for n in (teacher, student, steps.generator))
    steps.student_step(images, teacher_out)
    assert not any(_changed(t_before, teacher)) and any(_changed(s_before, student))
    assert not any(_changed(g_before, steps.generator))
    assert all(p.grad is None for p in teacher.parameters())
    s_before = _parameters(student)
    steps.generator_step(steps.sample_noise())
    assert any(_changed(g_before, steps.generator)) and not any(_changed(s_before, student))
    assert not any(_changed(t_before, teacher))


def test_explicit_pairs_choose_the_attention_terms():
    teacher, student, pairs = pair_networks(_tv("resnet18"), _tv("mobilenet_v3_small"), image_shape=SHAPE,
                                            attention=["layer2:features.3", "layer1.1.add:features.1"])
    assert pairs == [("layer2", "features.3"), ("layer1.1.add", "features.1")]  # an FX operation node too
    steps = _steps(teacher, student)
    images, teacher_out = steps.images_and_teacher(steps.sample_noise())
    assert [tuple(f.shape[1:]) for f in teacher_out.features] == [(128, 4, 4), (64, 8, 8)]
    loss, _ = steps.student_step(images, teacher_out)
    assert torch.isfinite(loss)


def test_our_wrn_through_the_generic_path_gives_the_features_and_loss_of_the_built_in_path():
    torch.manual_seed(0)
    teacher, student = build_classifier("wrn-16-2"), build_classifier("wrn-16-1")
    nodes_t, nodes_s = feature_nodes(teacher, SHAPE), feature_nodes(student, SHAPE)
    assert automatic_pairs(nodes_t, nodes_s) == [("block1", "block1"), ("block2", "block2"), ("block3", "block3")]
    generic_t, generic_s, _ = pair_networks(teacher, student, image_shape=SHAPE,
                                            attention=["block1:block1", "block2:block2", "block3:block3"])
    same_t, same_s, pairs = pair_networks(teacher, student, image_shape=SHAPE)
    assert pairs is None and same_t is teacher and same_s is student  # our networks keep their own features
    x = torch.randn(4, *SHAPE)
    for net in (teacher, student, generic_t, generic_s):
        net.train()
    (lt, ft), (ls, fs) = teacher(x), student(x)
    (glt, gft), (gls, gfs) = generic_t(x), generic_s(x)
    assert torch.equal(lt, glt) and torch.equal(ls, gls)
    assert all(torch.equal(a, b) for a, b in zip(ft + fs, gft + gfs))
    from zskt_fast.ops import zskt_student_loss
    assert torch.equal(zskt_student_loss(ls, lt, fs, ft), zskt_student_loss(gls, glt, gfs, gft))


def test_networks_that_fx_cannot_trace_give_their_features_through_hooks():
    net = Untraceable()
    wrapped = FeatureNetwork(net, ["stage1", "stage2"], SHAPE)
    assert wrapped.method == "hooks"
    x = torch.randn(2, *SHAPE)
    logits, features = wrapped(x)
    assert torch.equal(logits, net(x))
    assert torch.equal(features[0], net.stage1(x)) and torch.equal(features[1], net.stage2(net.stage1(x)))
    assert not wrapped._captured  # no feature map is held after the call
    with pytest.raises(ValueError, match=r"no node .stage1.0.add.; its blocks with feature maps are: stage1 \(8x32"):
        FeatureNetwork(net, ["stage1.0.add"], SHAPE)


def test_a_logits_only_network_distils_with_kl_only():
    teacher, student = LogitsOnly(), LogitsOnly()
    wrapped_t, wrapped_s, pairs = pair_networks(teacher, student, image_shape=SHAPE, use_attention=False)
    assert pairs == [] and wrapped_t(torch.zeros(2, *SHAPE))[1] == []
    steps = _steps(wrapped_t, wrapped_s, beta=0.0)
    before = _parameters(student)
    images, teacher_out = steps.images_and_teacher(steps.sample_noise())
    steps.student_step(images, teacher_out)
    assert any(_changed(before, student))
    # with attention on, a network without feature-map blocks has nothing to pair: the error says what to do
    with pytest.raises(ValueError, match=r"nothing to pair.*Teacher blocks: conv \(8x32x32\).*--beta 0"):
        pair_networks(teacher, _tv("resnet18"), image_shape=SHAPE)


@pytest.mark.parametrize("attention, message", [
    (["layer9:features.3"], r"the teacher \(tv:resnet18\) has no node 'layer9'; its blocks with feature maps are: "
                            r"layer1.0 \(64x8x8\)"),
    (["layer1:features.3"], r"attention pair layer1:features.3: the teacher's map is 64x8x8 and the student's "
                            r"24x4x4"),
    (["layer1"], r"attention pair 'layer1': expected TEACHER_NODE:STUDENT_NODE"),
    (["flatten:features.3"], r"node 'flatten' of the teacher gives a tensor of shape 2x512, not a feature map"),
])
def test_bad_pairs_are_refused_with_what_exists(attention, message):
    with pytest.raises(ValueError, match=message):
        pair_networks(_tv("resnet18"), _tv("mobilenet_v3_small"), image_shape=SHAPE, attention=attention)


def test_class_counts_must_agree():
    with pytest.raises(ValueError, match="the teacher predicts 10 classes and the student 7"):
        pair_networks(_tv("resnet18"), _tv("mobilenet_v3_small", num_classes=7), image_shape=SHAPE)
    with pytest.raises(ValueError, match="predict 10 classes, and num_classes is 100"):
        pair_networks(_tv("resnet18"), _tv("mobilenet_v3_small"), image_shape=SHAPE, num_classes=100)


def test_feature_network_follows_mode_device_moves_and_keeps_the_weights_of_the_network():
    net = _tv("resnet18")
    wrapped = FeatureNetwork(net, ["layer1", "layer2"], SHAPE)
    assert list(wrapped.state_dict()) == ["net." + k for k in net.state_dict()]
    wrapped.eval()
    assert not net.training and not wrapped._extractor.training
    wrapped.double()
    logits, features = wrapped(torch.randn(2, *SHAPE, dtype=torch.float64))
    assert logits.dtype == features[0].dtype == torch.float64
