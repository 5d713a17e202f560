"""3x3 convolutions by Winograd F(4x4, 3x3) (brainseg.layers.winograd): the direct convolution's
values to float rounding (against a float64 reference), the fused pooling, the filter transform and
its cache, independence of the thread count, the fallbacks and the error messages."""
import gc

import pytest
import torch
import torch.nn.functional as F

from brainseg.layers import (
    Conv3x3,
    conv3x3,
    conv3x3_max_pool2x2_relu,
    extension_status,
    winograd_conv3x3,
    winograd_conv3x3_serves,
)
from brainseg.layers import conv as conv_module
from brainseg.layers.linear import linear
from brainseg.modeling.fusion import fold_batchnorm
from brainseg.modeling.nets import UNet, UNeXt
from torch import nn

pytestmark = pytest.mark.skipif(not extension_status()["cpu"], reason="brainseg._C is not built")
_C = pytest.importorskip("brainseg._C")

CL = torch.channels_last
# Winograd's transforms scale values by up to 8 and add them: its float32 error is a few times the
# direct convolution's (about 1e-6 of the largest output here); bound it relative to that value
RELATIVE_ERROR = 3e-5


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=CL)


def _inputs(n, cin, h, w, cout, seed=0):
    torch.manual_seed(seed)
    x = _cl(torch.randn(n, cin, h, w))
    weight = torch.randn(cout, cin, 3, 3) / (3 * cin**0.5)
    return x, weight, torch.randn(cout)


def _assert_close_to_float64(ours, reference):
    scale = reference.abs().max().item()
    assert ours.dtype == torch.float32 and ours.is_contiguous(memory_format=CL)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours.double(), reference, rtol=0, atol=RELATIVE_ERROR * max(scale, 1e-30))


# odd sizes (partial tiles), one pixel, channel counts that are not whole vectors of 16 (tails), several
# output-channel chunks (> 64) and task blocks (many tiles)
SHAPES = [(2, 16, 8, 8, 16), (1, 20, 7, 5, 33), (3, 5, 1, 1, 3), (1, 1, 2, 3, 1), (2, 32, 13, 11, 130),
          (1, 160, 6, 9, 128), (8, 16, 32, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES)
def test_winograd_conv_matches_the_direct_convolution(shape):
    x, weight, bias = _inputs(*shape)
    reference = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    with torch.no_grad():
        _assert_close_to_float64(winograd_conv3x3(x, weight, bias), reference)
        _assert_close_to_float64(winograd_conv3x3(x, weight, None), reference - bias.double().view(1, -1, 1, 1))


@pytest.mark.parametrize("shape", [shape for shape in SHAPES if min(shape[2:4]) >= 2])  # (a 2x2 window)
def test_winograd_conv_with_pooling_matches_the_composition(shape):
    x, weight, bias = _inputs(*shape, seed=1)
    reference = F.relu(F.max_pool2d(F.conv2d(x.double(), weight.double(), bias.double(), padding=1), 2))
    with torch.no_grad():
        _assert_close_to_float64(winograd_conv3x3(x, weight, bias, pool=True), reference)


def test_nan_reaches_its_tile_and_relu_applies():
    """A NaN input makes its whole 4x4 output tile NaN (the transforms mix the 6x6 patch; the direct
    convolution: its 3x3 neighbourhood), and nothing beyond the tiles whose patches read it."""
    x, weight, bias = _inputs(1, 16, 8, 8, 4, seed=2)
    x[0, :, 0, 0] = float("nan")  # read by the patch of tile (0, 0) only
    bias.fill_(-100.0)  # every other conv output negative
    with torch.no_grad():
        plain = winograd_conv3x3(x, weight, bias)
        pooled = winograd_conv3x3(x, weight, bias, pool=True)
    assert plain[:, :, :4, :4].isnan().all() and plain.isnan().sum() == 4 * 16
    assert (plain.nan_to_num() < 0).sum() == 4 * (64 - 16)
    assert pooled[:, :, :2, :2].isnan().all() and pooled.isnan().sum() == 4 * 4
    assert (pooled.nan_to_num() == 0).all()  # ReLU


def test_weight_transform_is_g_g_gt_in_float64():
    torch.manual_seed(3)
    weight = torch.randn(5, 20, 3, 3, dtype=torch.float64)
    G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
    expected = torch.einsum("ak,oikl,bl->abio", G, weight, G).reshape(36, 20, 5)
    u = _C.winograd_conv3x3_weight(weight)
    assert u.shape == (36, 32, 16) and u.dtype == torch.float32
    torch.testing.assert_close(u[:, :20, :5], expected.float(), rtol=0, atol=0)  # rounded once from float64
    assert (u[:, 20:] == 0).all() and (u[:, :, 5:] == 0).all()


def test_results_do_not_depend_on_the_thread_count():
    x, weight, bias = _inputs(4, 32, 24, 20, 48, seed=4)
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            one = [winograd_conv3x3(x, weight, bias, pool=pool) for pool in (False, True)]
            torch.set_num_threads(2)
            two = [winograd_conv3x3(x, weight, bias, pool=pool) for pool in (False, True)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_filter_transform_is_cached_until_the_filter_changes():
    x, weight, bias = _inputs(1, 16, 8, 8, 8, seed=5)
    first = conv_module.winograd_weight(weight)
    assert conv_module.winograd_weight(weight) is first  # kept
    with torch.no_grad():
        weight.mul_(2)  # in place: the version counter moves
        assert conv_module.winograd_weight(weight) is not first
        _assert_close_to_float64(winograd_conv3x3(x, weight, bias),
                                 F.conv2d(x.double(), weight.double(), bias.double(), padding=1))
    key = id(weight)
    assert key in conv_module._TRANSFORMS
    del weight
    gc.collect()
    assert key not in conv_module._TRANSFORMS  # freed with its filter


def test_filters_made_in_inference_mode_are_transformed_at_every_call():
    x, weight, bias = _inputs(1, 16, 8, 8, 8, seed=11)
    with torch.inference_mode():
        frozen = weight.clone()  # an inference tensor: no version counter
        first = conv_module.winograd_weight(frozen)
        assert conv_module.winograd_weight(frozen) is not first and id(frozen) not in conv_module._TRANSFORMS
        frozen.mul_(2)  # (in place, unseen by any version counter)
        _assert_close_to_float64(winograd_conv3x3(x, frozen, bias),
                                 F.conv2d(x.double(), 2 * weight.double(), bias.double(), padding=1))
        # a UNeXt folded under inference mode runs
        net = UNeXt(conv_channels=(16, 16, 32), token_channels=(32, 48)).to(memory_format=CL).eval()
        folded = fold_batchnorm(net)
        image = _cl(torch.randn(1, 3, 32, 32))
        torch.testing.assert_close(folded(image), net(image), rtol=1e-4, atol=1e-4)


def test_conv3x3_falls_back_to_pytorch_where_the_kernel_does_not_apply():
    x, weight, bias = _inputs(2, 16, 8, 8, 8, seed=6)
    # gradients wanted: PyTorch's differentiable convolution
    leaf = weight.clone().requires_grad_()
    assert not winograd_conv3x3_serves(x, leaf, bias)
    conv3x3(x, leaf, bias).sum().backward()
    torch.testing.assert_close(leaf.grad, torch.autograd.grad(F.conv2d(x, leaf, bias, padding=1).sum(), leaf)[0])
    with torch.no_grad():
        # NCHW, float64: exactly PyTorch's convolution
        assert torch.equal(conv3x3(x.contiguous(), weight, bias), F.conv2d(x.contiguous(), weight, bias, padding=1))
        x64, w64, b64 = x.double(), weight.double(), bias.double()
        assert torch.equal(conv3x3(x64, w64, b64), F.conv2d(x64, w64, b64, padding=1))
        # autocast: the convolution autocast runs (bf16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not winograd_conv3x3_serves(x, weight, bias)
            assert conv3x3(x, weight, bias).dtype == torch.bfloat16
        # served: the kernel's values
        assert winograd_conv3x3_serves(x, weight, bias)
        assert torch.equal(conv3x3(x, weight, bias), winograd_conv3x3(x, weight, bias))
        # the pooled stage: Winograd above the direct kernel's input channels
        assert torch.equal(conv3x3_max_pool2x2_relu(x, weight, bias), winograd_conv3x3(x, weight, bias, pool=True))


def test_kernel_rejects_bad_input_with_a_clear_message():
    x, weight, bias = _inputs(1, 16, 8, 8, 4, seed=7)
    u = _C.winograd_conv3x3_weight(weight)
    with pytest.raises(RuntimeError, match=r"weight must be the float32 \(36, 16, 16\) transform of a \(4, 16, 3, 3\)"):
        _C.winograd_conv3x3_forward(x, weight, bias)  # the filter itself, not its transform
    with pytest.raises(RuntimeError, match="x must be channels-last contiguous"):
        _C.winograd_conv3x3_forward(x.contiguous(), u, bias)
    with pytest.raises(RuntimeError, match="x must be a .* float32 CPU tensor"):
        _C.winograd_conv3x3_forward(x.double(), u, bias)
    with pytest.raises(RuntimeError, match=r"weight must be \(Cout, Cin, 3, 3\)"):
        _C.winograd_conv3x3_weight(torch.randn(4, 16, 1, 1))


def test_unext_inference_copy_runs_its_3x3_convolutions_on_the_kernel(monkeypatch):
    """Every 3x3 stride-1 convolution of the folded UNeXt but the first (3 input channels: the
    direct kernel) goes through Winograd, and the logits match the eval net's."""
    torch.manual_seed(8)
    net = UNeXt(conv_channels=(16, 16, 32), token_channels=(32, 48)).to(memory_format=CL)
    net.train()(_cl(torch.randn(4, 3, 64, 64)))  # running statistics away from their defaults
    net.eval()
    transformed = []
    original = conv_module.winograd_weight
    monkeypatch.setattr(conv_module, "winograd_weight", lambda w: transformed.append(tuple(w.shape)) or original(w))
    x = _cl(torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        expected = net(x)
        transformed.clear()
        folded = fold_batchnorm(net)(x)
    # encoder stages 2-3, the four decoder stages and the head (not: the first stage, the stride-2
    # patch embeddings, the depth-wise convolutions)
    assert sorted(transformed) == sorted([(16, 16, 3, 3), (32, 16, 3, 3), (32, 48, 3, 3), (32, 32, 3, 3),
                                          (16, 32, 3, 3), (16, 16, 3, 3), (16, 16, 3, 3)])
    torch.testing.assert_close(folded, expected, rtol=1e-4, atol=1e-4)


def test_linear_on_onednn_matches_f_linear_and_falls_back():
    torch.manual_seed(9)
    x, weight, bias = torch.randn(2, 5, 7, 48), torch.randn(40, 48), torch.randn(40)
    reference = F.linear(x.double(), weight.double(), bias.double())
    atol = 1e-5 * reference.abs().max().item()
    with torch.no_grad():
        ours = linear(x, weight, bias)
        assert ours.shape == (2, 5, 7, 40) and ours.is_contiguous()
        torch.testing.assert_close(ours.double(), reference, rtol=0, atol=atol)
        torch.testing.assert_close(linear(x, weight, None).double(), reference - bias.double(), rtol=0, atol=atol)
        # not served: a non-contiguous input, float64, autocast -> exactly F.linear
        strided = x.transpose(1, 2)
        assert torch.equal(linear(strided, weight, bias), F.linear(strided, weight, bias))
        assert torch.equal(linear(x.double(), weight.double(), None), F.linear(x.double(), weight.double()))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert linear(x, weight, bias).dtype == torch.bfloat16


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("x_requires_grad", [True, False])
def test_linear_on_onednn_gradients_match_float64(with_bias, x_requires_grad):
    torch.manual_seed(10)
    x, weight, bias = torch.randn(3, 4, 6, 24), torch.randn(20, 24), torch.randn(20) if with_bias else None
    upstream = torch.randn(3, 4, 6, 20)
    leaves = [x.clone().requires_grad_(x_requires_grad), weight.clone().requires_grad_(),
              None if bias is None else bias.clone().requires_grad_()]
    wrt = [t for t in leaves if t is not None and t.requires_grad]
    grads = torch.autograd.grad(linear(*leaves), wrt, upstream)
    leaves64 = [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in leaves]
    grads64 = torch.autograd.grad(F.linear(*leaves64), [t for t in leaves64 if t is not None and t.requires_grad],
                                  upstream.double())
    assert len(grads) == len(grads64) == 1 + with_bias + x_requires_grad
    for ours, expected in zip(grads, grads64):
        assert ours.dtype == torch.float32 and ours.shape == expected.shape
        torch.testing.assert_close(ours.double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_folded_copies_hold_conv3x3_modules_sharing_the_parameters():
    """fold_batchnorm puts Conv3x3 in place of exactly the plain 3x3 / stride 1 / padding 1 convs."""
    torch.manual_seed(12)
    net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, stride=2),
                        nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                        nn.Conv2d(16, 16, 1), nn.Conv2d(16, 8, 3, padding=1, bias=False),
                        nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")).to(memory_format=CL).eval()
    folded = fold_batchnorm(net)
    assert [type(m).__name__ for m in folded] == ["Conv3x3", "Conv2d", "Conv2d", "Conv2d", "Conv2d", "Conv3x3",
                                                  "Conv2d"]
    assert folded[0].bias is not None and folded[5].bias is None
    x = _cl(torch.randn(2, 16, 12, 12))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)
        assert torch.equal(folded[0](x), winograd_conv3x3(x, folded[0].weight, folded[0].bias))
    shared = Conv3x3.from_conv(net[0])
    assert shared.weight is net[0].weight and shared.bias is net[0].bias and isinstance(shared, nn.Conv2d)
    with pytest.raises(ValueError, match="not a 3x3, stride 1, padding 1 nn.Conv2d"):
        Conv3x3.from_conv(net[1])


def test_unet_inference_copy_runs_winograd(monkeypatch):
    torch.manual_seed(13)
    net = UNet(base_channels=16, depth=2).to(memory_format=CL)
    net.train()(_cl(torch.randn(2, 3, 32, 32)))
    net.eval()
    transformed = []
    original = conv_module.winograd_weight
    monkeypatch.setattr(conv_module, "winograd_weight", lambda w: transformed.append(tuple(w.shape)) or original(w))
    x = _cl(torch.randn(2, 3, 32, 32))
    with torch.no_grad():
        expected = net(x)
        transformed.clear()
        folded = fold_batchnorm(net)(x)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(transformed) == len(convs) - 1  # all but the first (3 input channels)
    torch.testing.assert_close(folded, expected, rtol=1e-4, atol=1e-4)


def test_flop_count_sees_the_direct_cost_of_kernel_convolutions():
    """count_flops swaps the kernels for their compositions: a convolution run by Winograd (and the
    fused first stage) is counted at 2 * H * W * Cin * Cout * 9, as PyTorch's own would be."""
    from brainseg.engine.benchmark import count_flops

    torch.manual_seed(14)
    conv = Conv3x3.from_conv(nn.Conv2d(16, 24, 3, padding=1)).eval().requires_grad_(False)
    x = _cl(torch.randn(2, 16, 8, 8))
    direct = 2 * 2 * 8 * 8 * 16 * 24 * 9
    assert count_flops(lambda: conv(x)) == direct
    with torch.no_grad():
        assert count_flops(lambda: conv3x3_max_pool2x2_relu(x, conv.weight, conv.bias)) == direct
        first = _cl(torch.randn(2, 3, 8, 8))
        assert count_flops(lambda: conv3x3_max_pool2x2_relu(first, conv.weight[:, :3], conv.bias)) == direct * 3 // 16
        assert winograd_conv3x3_serves(x, conv.weight, conv.bias)  # (outside the count the kernel serves again)
