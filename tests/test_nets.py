"""Tests of the segmentation nets: shapes, parameter counts, token shift, overfitting."""

import pytest
import torch

from brainseg.modeling.losses import BCEDiceLoss
from brainseg.modeling.nets import ResUNet, UNet, UNeXt
from brainseg.modeling.nets.layers import ConvBN
from brainseg.modeling.nets.unext import shift_tokens

UNEXT_REFERENCE_PARAMS = 1_471_921  # official UNeXt, 3 input channels, 1 class

SMALL_NETS = {
    "UNet": lambda: UNet(base_channels=4, depth=3),
    "ResUNet": lambda: ResUNet(base_channels=4, depth=3),
    "UNeXt": lambda: UNeXt(conv_channels=(4, 8, 16), token_channels=(20, 32)),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_params(cin: int, cout: int, k: int, bias: bool) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn_params(c: int) -> int:
    return 2 * c


def unet_params(cin: int, cout: int, base: int, depth: int) -> int:
    """U-Net as described: bias-free 3x3 convs + BN, 2x2 transposed convs, 1x1 head."""
    widths = [base * 2**i for i in range(depth + 1)]
    double = lambda a, b: conv_params(a, b, 3, False) + conv_params(b, b, 3, False) + 2 * bn_params(b)  # noqa
    total = double(cin, widths[0]) + sum(double(widths[i - 1], widths[i]) for i in range(1, depth + 1))
    for i in range(depth):
        total += conv_params(widths[i + 1], widths[i], 2, True) + double(2 * widths[i], widths[i])
    return total + conv_params(widths[0], cout, 1, True)


def resunet_params(cin: int, cout: int, base: int, depth: int) -> int:
    """ResUNet as described: bias-free convs, BN, projection shortcuts (1x1 conv + BN)."""
    widths = [base * 2**i for i in range(depth + 1)]

    def unit(a: int, b: int, pre_activation: bool = True) -> int:
        branch = conv_params(a, b, 3, False) + conv_params(b, b, 3, False) + bn_params(b)
        return branch + (bn_params(a) if pre_activation else 0) + conv_params(a, b, 1, False) + bn_params(b)

    total = unit(cin, widths[0], pre_activation=False)
    total += sum(unit(widths[i - 1], widths[i]) for i in range(1, depth + 1))
    total += sum(unit(widths[i + 1] + widths[i], widths[i]) for i in range(depth))
    return total + conv_params(widths[0], cout, 1, True)


def test_unet_default_param_count():
    net = UNet()
    assert count_params(net) == unet_params(3, 1, 64, 4) == 31_037_633
    assert net.size_divisibility == 16


def test_resunet_default_param_count():
    net = ResUNet()
    assert count_params(net) == resunet_params(3, 1, 64, 3) == 8_219_585
    assert net.size_divisibility == 8


def test_unext_default_param_count_matches_reference():
    net = UNeXt()
    assert abs(count_params(net) - UNEXT_REFERENCE_PARAMS) <= 0.01 * UNEXT_REFERENCE_PARAMS
    assert count_params(net) == UNEXT_REFERENCE_PARAMS
    assert net.size_divisibility == 32


@pytest.mark.parametrize("name", sorted(SMALL_NETS))
@pytest.mark.parametrize("size", [(37, 45), (64, 64), (250, 250)])
def test_output_shape_any_size(name, size):
    torch.manual_seed(0)
    net = SMALL_NETS[name]().eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, *size))
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(SMALL_NETS))
def test_padding_inside_net_matches_explicit_padding(name):
    """Calling on an odd size equals padding with zeros yourself and cropping."""
    torch.manual_seed(0)
    net = SMALL_NETS[name]().eval()
    x = torch.randn(1, 3, 37, 45)
    div = net.size_divisibility
    padded = torch.nn.functional.pad(x, (0, (-45) % div, 0, (-37) % div))
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(padded)[..., :37, :45])


@pytest.mark.parametrize("name", sorted(SMALL_NETS))
def test_channels_last_matches_contiguous(name):
    torch.manual_seed(0)
    net = SMALL_NETS[name]().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = net(x)
        net.to(memory_format=torch.channels_last)
        got = net(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
def test_conv_bn_folds_exactly_in_eval(bias):
    """Eval mode folds BN into the conv: same output and same gradients as conv then BN."""
    torch.manual_seed(0)
    layer = ConvBN(3, 5, 3, stride=2, bias=bias)
    with torch.no_grad():
        layer.norm.running_mean.uniform_(-1, 1)
        layer.norm.running_var.uniform_(0.5, 2)
        layer.norm.weight.uniform_(-2, 2)
        layer.norm.bias.uniform_(-1, 1)
    layer.eval()
    x = torch.randn(2, 3, 9, 11)
    folded = layer(x)
    unfolded = layer.norm(layer.conv(x))
    assert folded.shape == (2, 5, 5, 6)
    torch.testing.assert_close(folded, unfolded, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(folded.sum(), [layer.conv.weight, layer.norm.weight])
    expected = torch.autograd.grad(unfolded.sum(), [layer.conv.weight, layer.norm.weight])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    layer.train()  # training uses batch statistics, not the running ones
    torch.testing.assert_close(layer(x).mean((0, 2, 3)), layer.norm.bias, rtol=1e-4, atol=1e-4)


def test_shift_tokens_known_answer():
    """Group g of the channels moves by g - 2 positions with zero fill (torch.chunk groups)."""
    tokens = torch.arange(1, 1 + 2 * 6 * 7 * 12, dtype=torch.float32).view(2, 6, 7, 12)
    for dim in (1, 2):
        shifted = shift_tokens(tokens, dim, 5)
        size = tokens.shape[dim]
        expected = torch.zeros_like(tokens)
        # torch.chunk(12, 5) -> groups of 3 channels: [0:3], [3:6], [6:9], [9:12]; shifts -2..1
        for group, shift in enumerate(range(-2, 2)):
            channels = slice(3 * group, 3 * group + 3)
            for position in range(size):
                source = position - shift
                if 0 <= source < size:
                    expected.select(dim, position)[..., channels] = tokens.select(dim, source)[..., channels]
        torch.testing.assert_close(shifted, expected, rtol=0, atol=0)


def test_bad_input_rank_and_widths():
    with pytest.raises(ValueError, match=r"expects \(B, C, H, W\)"):
        SMALL_NETS["UNet"]()(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="depth >= 1"):
        UNet(depth=0)
    with pytest.raises(ValueError, match="at least one conv stage"):
        UNeXt(token_channels=())


def _disk_batch() -> tuple:
    """Two 64x64 images with bright noisy disks and their 0/1 masks."""
    generator = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    masks = torch.stack([((yy - 20) ** 2 + (xx - 24) ** 2 < 100), ((yy - 40) ** 2 + (xx - 36) ** 2 < 196)]).long()
    images = masks[:, None].float().expand(-1, 3, -1, -1) + 0.5 * torch.randn(2, 3, 64, 64, generator=generator)
    return images, masks


@pytest.mark.parametrize("name", sorted(SMALL_NETS))
def test_overfits_single_batch(name):
    torch.manual_seed(0)
    net = SMALL_NETS[name]()
    images, masks = _disk_batch()
    loss_fn = BCEDiceLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(100):
        loss = loss_fn(net(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        pred = net(images)[:, 0] > 0
    dice = 2 * (pred & masks.bool()).sum() / (pred.sum() + masks.sum())
    assert dice > 0.95, f"{name} reached Dice {dice:.3f} only"
