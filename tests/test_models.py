"""The nets have the published shapes and parameter counts."""
import pytest
import torch

from lightning_modules.models import CifarResNet, LeNet5, LeNet300


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_lenet300_is_hans_266k():
    # 784*300+300 + 300*100+100 + 100*10+10 (Han et al.: "267K")
    assert n_params(LeNet300()) == 266_610


def test_lenet5_caffe_variant_is_431k():
    # conv1 20*25+20, conv2 50*20*25+50, ip1 800*500+500, ip2 500*10+10 (Han et al.: "431K")
    m = LeNet5()
    assert n_params(m) == 431_080
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(20, (5, 5)), (50, (5, 5))]


def _resnet_params(n, c=3, w=16, classes=10):
    """Hand count: 3x3 convs without bias, BN (2 params/channel), option-A shortcuts, FC."""
    convs = c * w * 9 + sum(
        (cin * cout * 9 + (2 * n - 1) * cout * cout * 9)
        for cin, cout in ((w, w), (w, 2 * w), (2 * w, 4 * w)))
    bns = 2 * w + sum(2 * n * 2 * cout for cout in (w, 2 * w, 4 * w))
    return convs + bns + 4 * w * classes + classes


@pytest.mark.parametrize("depth,expected", [(20, 269_722), (8, 75_290)])
def test_cifar_resnet_depths(depth, expected):
    # ResNet-20 for CIFAR-10: "0.27M" parameters (He et al. 2016, Table 6)
    assert _resnet_params((depth - 2) // 6) == expected
    m = CifarResNet(depth=depth, in_channels=3, image_size=32, num_classes=10)
    assert n_params(m) == expected
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    blocks = len(m.layers)
    assert 6 * (blocks // 3) + 2 == depth


def test_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="depth=9"):
        CifarResNet(depth=9)


def test_option_a_shortcut_is_parameter_free_subsample_and_pad():
    from lightning_modules.models.resnet_cifar import ShortcutA
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float).reshape(2, 16, 4, 4)
    y = ShortcutA(16, 32, 2)(x)
    assert y.shape == (2, 32, 2, 2)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


@pytest.mark.parametrize("cls,expected", [
    # 3072-300-100-100: the first layer reads every pixel of every channel
    (LeNet300, 3 * 32 * 32 * 300 + 300 + 300 * 100 + 100 + 100 * 100 + 100),
    # conv 5x5 (32 -> 28), pool (14), conv 5x5 (10), pool (5): ip1 reads 50 x 5 x 5
    (LeNet5, 3 * 20 * 25 + 20 + 20 * 50 * 25 + 50 + 50 * 5 * 5 * 500 + 500 + 500 * 100 + 100),
])
def test_input_shape_and_classes_come_from_data(cls, expected):
    m = cls(in_channels=3, image_size=32, num_classes=100)
    assert n_params(m) == expected
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
