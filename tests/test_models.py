"""Networks: shapes of outputs and attention features, the released teachers' parameter layout, the generator."""
import pytest
import torch

import zskt_fast
from zskt_fast.models import Generator, WideResNet, build_classifier


@pytest.mark.parametrize("depth, width", [(16, 1), (16, 2), (40, 1), (40, 2)])
def test_wrn_outputs_and_features(depth, width):
    net = WideResNet(depth, width, num_classes=10)
    logits, feats = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert [tuple(f.shape) for f in feats] == [(2, 16 * width, 32, 32), (2, 32 * width, 16, 16),
                                              (2, 64 * width, 8, 8)]
    n_blocks = (depth - 4) // 6
    assert len(net.block1.layer) == len(net.block3.layer) == n_blocks


def test_wrn_parameter_names_follow_the_released_teachers():
    keys = set(WideResNet(16, 2).state_dict())
    for key in ("conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.conv1.weight",
                "block1.layer.0.bn2.running_mean", "block1.layer.0.conv2.weight", "block1.layer.0.convShortcut.weight",
                "block2.layer.1.conv2.weight", "block3.layer.0.convShortcut.weight", "bn1.running_var", "fc.weight",
                "fc.bias"):
        assert key in keys, key
    assert "block2.layer.1.convShortcut.weight" not in keys  # same width inside a group: identity shortcut
    # WRN-40-1: the first block keeps width 16, so it has no projection
    assert "block1.layer.0.convShortcut.weight" not in WideResNet(40, 1).state_dict()


def test_wrn_features_feed_the_attention_loss_of_a_teacher_student_pair():
    student, teacher = WideResNet(16, 1), WideResNet(40, 2)
    x = torch.randn(3, 3, 32, 32)
    s_logits, s_feats = student(x)
    with torch.no_grad():
        t_logits, t_feats = teacher.eval()(x)
    loss = zskt_fast.zskt_student_loss(s_logits, t_logits, s_feats, t_feats)
    loss.backward()
    assert torch.isfinite(loss) and student.conv1.weight.grad.abs().sum() > 0


def test_wrn_digits_sized_inputs():
    logits, feats = WideResNet(16, 1, num_classes=10, in_channels=1)(torch.randn(4, 1, 8, 8))
    assert logits.shape == (4, 10) and feats[-1].shape == (4, 64, 2, 2)


def test_build_classifier_by_name_and_bad_names():
    assert isinstance(build_classifier("WRN-40-2"), WideResNet)
    with pytest.raises(ValueError, match="unknown architecture 'vgg-16'"):
        build_classifier("vgg-16")
    with pytest.raises(ValueError, match=r"ResNet depth must be one of \[18, 34\], got 50"):
        build_classifier("resnet-50")
    with pytest.raises(ValueError, match="depth must be 6n \\+ 4"):
        build_classifier("wrn-17-1")


@pytest.mark.parametrize("size, channels", [(32, 3), (8, 1), (28, 1)])
def test_generator_shapes(size, channels):
    gen = Generator(z_dim=100, image_size=size, channels=channels)
    x = gen(torch.randn(5, 100))
    assert x.shape == (5, channels, size, size)
    assert isinstance(gen.body[-1], torch.nn.BatchNorm2d) and gen.body[-1].affine  # no tanh: BN is the last layer


def test_generator_bad_arguments():
    with pytest.raises(ValueError, match="multiple of 4"):
        Generator(image_size=30)
    with pytest.raises(ValueError, match=r"z must be \[B, 100\]"):
        Generator()(torch.randn(2, 64))


@pytest.mark.parametrize("depth, blocks", [(18, (2, 2, 2, 2)), (34, (3, 4, 6, 3))])
def test_resnet_cifar_layout(depth, blocks):
    from zskt_fast.models import ResNet

    net = build_classifier(f"resnet-{depth}")
    assert isinstance(net, ResNet)
    assert tuple(len(getattr(net, f"layer{i}")) for i in range(1, 5)) == blocks
    logits, feats = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4)]


def test_pairing_check():
    from zskt_fast.models import pair_networks

    def check_pairable(teacher, student, attention=True):
        return pair_networks(teacher, student, image_shape=(3, 32, 32), use_attention=attention)

    check_pairable(build_classifier("wrn-40-2"), build_classifier("wrn-16-1"))
    check_pairable(build_classifier("resnet-34"), build_classifier("resnet-18"))
    with pytest.raises(ValueError, match=r"3 maps of sizes 32x32, 16x16, 8x8\) and the student \(4 maps"):
        check_pairable(build_classifier("wrn-40-2"), build_classifier("resnet-18"))
    # without attention transfer any two classifiers with the same classes pair
    check_pairable(build_classifier("wrn-40-2"), build_classifier("resnet-18"), attention=False)
    with pytest.raises(ValueError, match="predicts 10 classes and the student 100"):
        check_pairable(build_classifier("wrn-16-2"), build_classifier("wrn-16-1", num_classes=100))
    teacher = build_classifier("wrn-16-2").train()
    stats = teacher.bn1.running_mean.clone()
    check_pairable(teacher, build_classifier("wrn-16-1"))
    assert teacher.training and torch.equal(teacher.bn1.running_mean, stats)
