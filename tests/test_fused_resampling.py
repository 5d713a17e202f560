"""The fused resampling kernels of UNeXt (brainseg.layers.upsample2x_relu, upsample2x_relu_conv1x1,
max_pool2x2_relu, batch_norm_max_pool2x2_relu, conv3x3_max_pool2x2_relu): the same values and gradients as the PyTorch
compositions they replace, on every instruction-set variant (with the Winograd convolution's: see
also test_conv3x3.py), and the fallbacks where the kernels do not apply."""
import copy
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from brainseg.layers import (
    batch_norm_max_pool2x2_relu,
    conv3x3_max_pool2x2_relu,
    conv3x3_max_pool2x2_relu_reference,
    extension_status,
    max_pool2x2_relu,
    max_pool2x2_relu_reference,
    upsample2x_relu,
    upsample2x_relu_conv1x1,
    upsample2x_relu_conv1x1_reference,
    upsample2x_relu_reference,
    winograd_conv3x3,
)
from brainseg.modeling.nets import UNeXt

pytestmark = pytest.mark.skipif(not extension_status()["cpu"], reason="brainseg._C is not built")
_C = pytest.importorskip("brainseg._C")

CL = torch.channels_last
# (dtype, tolerance): bf16 is computed in float and rounded once, the composition rounds twice
TOLERANCES = [(torch.float64, 1e-12), (torch.float32, 1e-6), (torch.bfloat16, 1e-2)]


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=CL)


def _value_and_grads(op, inputs, upstream):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = op(*leaves)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], upstream)
    return out.detach(), grads


@pytest.mark.parametrize("dtype,tol", TOLERANCES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 16, 8, 8), (2, 1, 1, 1), (1, 33, 4, 3)])
@pytest.mark.parametrize("with_skip", [False, True])
def test_upsample2x_relu_matches_composition(dtype, tol, shape, with_skip):
    torch.manual_seed(0)
    n, c, h, w = shape
    x = _cl(torch.randn(shape, dtype=dtype))
    skip = _cl(torch.randn(n, c, 2 * h, 2 * w, dtype=dtype)) if with_skip else None
    upstream = _cl(torch.randn(n, c, 2 * h, 2 * w, dtype=dtype))
    ours, our_grads = _value_and_grads(upsample2x_relu, (x, skip), upstream)
    ref, ref_grads = _value_and_grads(upsample2x_relu_reference, (x, skip), upstream)
    assert ours.shape == (n, c, 2 * h, 2 * w) and ours.dtype == dtype and ours.is_contiguous(memory_format=CL)
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    for a, b in zip(our_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert (upsample2x_relu_reference(x) == 0).any() or x.numel() < 4  # the ReLU cuts somewhere


def test_upsample2x_relu_gradcheck_double():
    torch.manual_seed(1)
    x = _cl(torch.randn(2, 3, 4, 5, dtype=torch.float64)).requires_grad_()
    skip = _cl(torch.randn(2, 3, 8, 10, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(upsample2x_relu, (x, skip))
    assert torch.autograd.gradcheck(upsample2x_relu, (x,))


def test_upsample2x_relu_promotes_mixed_dtypes_and_falls_back_on_nchw():
    torch.manual_seed(2)
    x, skip = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 12, 12)
    expected = upsample2x_relu_reference(x, skip)
    mixed = upsample2x_relu(_cl(x).bfloat16(), _cl(skip))  # as under bf16 autocast: promoted to float32
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, expected, rtol=2e-2, atol=2e-2)
    assert torch.equal(upsample2x_relu(x, skip), expected)  # NCHW: the composition itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; export still uses it
        traced = torch.jit.trace(lambda t: upsample2x_relu(t), _cl(x))  # traced graphs get the composition
    kinds = {node.kind() for node in traced.graph.nodes()}
    assert "aten::upsample_bilinear2d" in kinds and "prim::PythonOp" not in kinds  # (a traced Function)


def test_upsample2x_relu_kernel_rejects_bad_input_with_a_clear_message():
    x = _cl(torch.randn(1, 2, 3, 3))
    with pytest.raises(RuntimeError, match="x must be channels-last contiguous"):
        _C.upsample2x_relu_forward(torch.randn(1, 2, 3, 3), None)
    with pytest.raises(RuntimeError, match=r"skip must be \(N, C, 2H, 2W\)"):
        _C.upsample2x_relu_forward(x, _cl(torch.randn(1, 2, 6, 5)))
    with pytest.raises(RuntimeError, match="grad_output must have x's dtype"):
        _C.upsample2x_relu_backward(x, _cl(torch.randn(1, 2, 6, 6, dtype=torch.float64)))


@pytest.mark.parametrize("dtype,tol", TOLERANCES)
@pytest.mark.parametrize("shape,out_channels", [((2, 3, 5, 7), 1), ((1, 16, 8, 8), 1), ((2, 16, 3, 4), 3)])
def test_upsample2x_relu_conv1x1_matches_composition(dtype, tol, shape, out_channels):
    torch.manual_seed(8)
    n, c, h, w = shape
    inputs = (_cl(torch.randn(shape, dtype=dtype)), torch.randn(out_channels, c, 1, 1, dtype=dtype),
              torch.randn(out_channels, dtype=dtype))
    upstream = torch.randn(n, out_channels, 2 * h, 2 * w, dtype=dtype)
    ours, our_grads = _value_and_grads(upsample2x_relu_conv1x1, inputs, upstream)
    ref, ref_grads = _value_and_grads(upsample2x_relu_conv1x1_reference, inputs, upstream)
    assert ours.shape == (n, out_channels, 2 * h, 2 * w) and ours.dtype == dtype
    assert ours.is_contiguous(memory_format=CL)
    # bf16: the composition rounds the upsampled values, each sum differs by roundings of its size
    scale = 1 if dtype != torch.bfloat16 else 4
    torch.testing.assert_close(ours, ref, rtol=tol * scale, atol=tol * scale)
    for a, b in zip(our_grads, ref_grads):  # x, weight (sums over all pixels), bias
        torch.testing.assert_close(a, b, rtol=tol * scale, atol=tol * scale * max(1.0, b.abs().max().item()))


def test_upsample2x_relu_conv1x1_gradcheck_autocast_and_fallbacks():
    torch.manual_seed(9)
    x = _cl(torch.randn(2, 4, 3, 5, dtype=torch.float64)).requires_grad_()
    weight = torch.randn(2, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(upsample2x_relu_conv1x1, (x, weight, bias))
    # under bf16 autocast it runs in bf16, as conv2d would, and its gradients reach the fp32 weights
    x32, weight32 = _cl(torch.randn(2, 16, 6, 6)), torch.randn(1, 16, 1, 1, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = upsample2x_relu_conv1x1(x32.bfloat16(), weight32, None)
        ref = upsample2x_relu_conv1x1_reference(x32.bfloat16(), weight32, None)
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=0.05, atol=0.05)
    ours.float().sum().backward()
    assert weight32.grad.dtype == torch.float32 and weight32.grad.abs().sum() > 0
    # NCHW input, or a kernel that is not 1x1: the composition (and PyTorch's own errors)
    nchw = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(upsample2x_relu_conv1x1(nchw, weight.float(), None),
                               upsample2x_relu_conv1x1_reference(nchw, weight.float(), None))
    weight3x3 = torch.randn(1, 4, 3, 3)
    ours = upsample2x_relu_conv1x1(_cl(nchw), weight3x3, None)
    assert ours.shape == (1, 1, 4, 4)  # the composition's unpadded 3x3 convolution
    torch.testing.assert_close(ours, upsample2x_relu_conv1x1_reference(nchw, weight3x3, None))


def test_upsample2x_relu_conv1x1_kernel_rejects_bad_input_with_a_clear_message():
    x = _cl(torch.randn(1, 4, 3, 3))
    with pytest.raises(RuntimeError, match=r"weight must be \(K, C\) with C = 4"):
        _C.upsample2x_relu_conv1x1_forward(x, torch.randn(1, 3), torch.randn(1))
    with pytest.raises(RuntimeError, match=r"bias must be \(K,\) with K = 1"):
        _C.upsample2x_relu_conv1x1_forward(x, torch.randn(1, 4), torch.randn(2))
    with pytest.raises(RuntimeError, match=r"grad_output must be \(N, K, 2H, 2W\)"):
        _C.upsample2x_relu_conv1x1_backward(x, torch.randn(1, 4), _cl(torch.randn(1, 1, 6, 5)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 16, 8, 8), (1, 2, 2, 2)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_max_pool2x2_relu_matches_composition(dtype, shape, momentum):
    """Training mode: values, running statistics and batch counter as nn.BatchNorm2d gives them (to
    rounding: the statistics are summed in another order), gradients of x, weight and bias (odd
    last rows/columns, outside every window, still get the norm's gradient)."""
    torch.manual_seed(10)
    x = _cl((torch.randn(shape) * 3 + 1).to(dtype))
    norm = torch.nn.BatchNorm2d(shape[1], momentum=momentum).to(torch.float64 if dtype == torch.float64 else torch.float32)
    with torch.no_grad():
        norm.weight.uniform_(-1.5, 1.5)  # negative scales too: the maximum is then the input's minimum
        norm.bias.uniform_(-0.5, 0.5)
    ref_norm = copy.deepcopy(norm)
    upstream = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, dtype=dtype)
    for _ in range(2):  # the second batch sees the first one's running statistics
        ours, our_grads = _value_and_grads(lambda t: batch_norm_max_pool2x2_relu(t, norm), (x,), upstream)
        ref, ref_grads = _value_and_grads(lambda t: max_pool2x2_relu_reference(ref_norm(t)), (x,), upstream)
        tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
        torch.testing.assert_close(our_grads[0], ref_grads[0], rtol=tol, atol=tol)
        for name in ("running_mean", "running_var"):
            torch.testing.assert_close(getattr(norm, name), getattr(ref_norm, name), rtol=1e-5, atol=1e-6)
        assert torch.equal(norm.num_batches_tracked, ref_norm.num_batches_tracked)
    ours = batch_norm_max_pool2x2_relu(x, norm)
    ours.backward(upstream)
    max_pool2x2_relu_reference(ref_norm(x)).backward(upstream)
    for a, b in ((norm.weight.grad, ref_norm.weight.grad), (norm.bias.grad, ref_norm.bias.grad)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))


def test_batch_statistics_kernel_matches_torch():
    """The one-pass statistics (float64 sums of x and x^2) against torch.var_mean, including a
    channel whose mean dwarfs its spread."""
    torch.manual_seed(15)
    x = torch.randn(3, 5, 7, 9)
    x[:, 0] = x[:, 0] * 1e-3 + 100.0
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        xt = _cl(x.to(dtype))
        mean, var = _C.channels_last_mean_var(xt)
        ref_var, ref_mean = torch.var_mean(xt.double(), dim=(0, 2, 3), correction=0)
        assert mean.dtype == var.dtype == torch.float64
        tol = 1e-12 if dtype == torch.float64 else 1e-6  # (rows are summed in the arithmetic type)
        torch.testing.assert_close(mean, ref_mean, rtol=tol, atol=tol)
        torch.testing.assert_close(var, ref_var, rtol=tol * 100, atol=tol)
    with pytest.raises(RuntimeError, match="scale and shift must be given together"):
        _C.max_pool2x2_relu_forward(_cl(x), False, torch.ones(5), None)


def test_batch_norm_max_pool2x2_relu_gradcheck_and_eval_path():
    torch.manual_seed(11)
    x = _cl(torch.randn(2, 3, 5, 6, dtype=torch.float64)).requires_grad_()
    norm = torch.nn.BatchNorm2d(3, track_running_stats=False).double()
    assert torch.autograd.gradcheck(lambda t, w, b: batch_norm_max_pool2x2_relu(t, norm) * 1.0 + 0 * (w.sum() + b.sum()),
                                    (x, norm.weight, norm.bias))
    assert torch.autograd.gradcheck(
        lambda w, b: batch_norm_max_pool2x2_relu(x, norm), (norm.weight, norm.bias))
    class CountingNorm(torch.nn.BatchNorm2d):  # a subclass (e.g. a synchronised norm) keeps its own forward
        calls = 0

        def forward(self, t):
            CountingNorm.calls += 1
            return super().forward(t)

    batch_norm_max_pool2x2_relu(x, CountingNorm(3).double())
    assert CountingNorm.calls == 1
    norm = torch.nn.BatchNorm2d(3).double()
    norm.running_mean.fill_(0.5)
    norm.eval()  # running statistics: the composition, nothing updated
    assert torch.equal(batch_norm_max_pool2x2_relu(x, norm), max_pool2x2_relu_reference(norm(x)))
    assert norm.num_batches_tracked.item() == 0 and norm.running_mean[0].item() == 0.5


def test_batch_norm_pool_kernel_rejects_bad_input_with_a_clear_message():
    x = _cl(torch.randn(1, 2, 4, 4))
    g = _cl(torch.randn(1, 2, 2, 2))
    code = _cl(torch.zeros(1, 2, 2, 2, dtype=torch.uint8))
    stats = torch.zeros(2), torch.ones(2)
    with pytest.raises(RuntimeError, match=r"must be \(N, C, H/2, W/2\) for x of shape"):
        _C.batch_norm_max_pool2x2_relu_backward(g, code, _cl(torch.randn(1, 2, 6, 4)), *stats)
    with pytest.raises(RuntimeError, match="mean, invstd and weight must have C = 2"):
        _C.batch_norm_max_pool2x2_relu_backward(g, code, x, torch.zeros(3), torch.ones(3))


@pytest.mark.parametrize("dtype,tol", TOLERANCES)
@pytest.mark.parametrize("shape,out_channels", [((2, 3, 9, 7), 16), ((1, 2, 6, 6), 20), ((1, 1, 2, 3), 3),
                                                ((2, 8, 5, 4), 33)])
def test_conv3x3_max_pool2x2_relu_matches_composition(dtype, tol, shape, out_channels):
    """Inference: the composition's values (odd sizes, several channel blocks), NaN propagated."""
    torch.manual_seed(12)
    x = torch.randn(shape, dtype=dtype)
    x[0, 0, 0, 0] = float("nan")  # reaches the outputs whose windows read it
    x = _cl(x)
    weight, bias = torch.randn(out_channels, shape[1], 3, 3, dtype=dtype), torch.randn(out_channels, dtype=dtype)
    ours = _C.conv3x3_max_pool2x2_relu_forward(x, weight, bias)  # (bf16: the layer runs the composition)
    ref = conv3x3_max_pool2x2_relu_reference(x, weight, bias)
    with torch.no_grad():
        through_layer = conv3x3_max_pool2x2_relu(x, weight, bias)
    assert torch.equal(through_layer.isnan(), ref.isnan())
    assert torch.equal(through_layer.nan_to_num(), (ours if dtype != torch.bfloat16 else ref).nan_to_num())
    assert ours.shape == ref.shape == (shape[0], out_channels, shape[2] // 2, shape[3] // 2)
    assert ours.dtype == dtype and ours.is_contiguous(memory_format=CL)
    assert torch.equal(ours.isnan(), ref.isnan()) and ours[0, :, 0, 0].isnan().all()
    scale = 1 if dtype != torch.bfloat16 else 4  # bf16: rounded once here, twice in the composition
    torch.testing.assert_close(ours.nan_to_num(), ref.nan_to_num(), rtol=tol * scale, atol=tol * scale * 10)


def test_conv3x3_max_pool2x2_relu_fallbacks_and_autocast():
    torch.manual_seed(13)
    x, weight, bias = _cl(torch.randn(2, 3, 8, 8)), torch.randn(4, 3, 3, 3, requires_grad=True), torch.randn(4)
    # gradients wanted: the composition (differentiable)
    out = conv3x3_max_pool2x2_relu(x, weight, bias)
    out.sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    with torch.no_grad():
        many = _cl(torch.randn(1, 9, 4, 4))  # more input channels than the direct convolution serves
        torch.testing.assert_close(conv3x3_max_pool2x2_relu(many, torch.randn(2, 9, 3, 3), None).shape,
                                   torch.Size([1, 2, 2, 2]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = conv3x3_max_pool2x2_relu(x, weight.bfloat16(), bias.bfloat16())
            ref = conv3x3_max_pool2x2_relu_reference(x, weight.bfloat16(), bias.bfloat16())
        assert ours.dtype == ref.dtype == torch.bfloat16
        torch.testing.assert_close(ours.float(), ref.float(), rtol=0.05, atol=0.05)
    with pytest.raises(RuntimeError, match=r"weight must be \(Cout, 3, 3, 3\)"):
        _C.conv3x3_max_pool2x2_relu_forward(x, torch.randn(4, 3, 1, 1), bias)
    with pytest.raises(RuntimeError, match="x must be channels-last contiguous"):
        _C.conv3x3_max_pool2x2_relu_forward(x.contiguous(), weight.detach(), bias)


def test_unext_inference_copy_uses_the_fused_first_stage():
    """The folded inference copy of a UNeXt gives the eval net's logits (its first stage runs the
    direct convolution kernel)."""
    from brainseg.modeling.fusion import fold_batchnorm

    torch.manual_seed(14)
    net = UNeXt(conv_channels=(16, 8, 16), token_channels=(16, 24)).to(memory_format=CL)
    net.train()(_cl(torch.randn(4, 3, 64, 64)))  # running statistics away from their defaults
    net.eval()
    x = _cl(torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(net)(x), net(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 16, 8, 8), (3, 5, 9, 4), (1, 2, 2, 2)])
def test_max_pool2x2_relu_equals_composition_exactly(dtype, shape):
    """Same values and gradients bit for bit: ties (first maximum wins), zeros (ReLU' = 0) and
    NaNs as PyTorch, odd sizes (the last row/column gets no gradient)."""
    torch.manual_seed(3)
    x = torch.randn(shape, dtype=dtype)
    x[..., ::3, ::2] = 0.0  # windows tying at 0 and between zeros
    x[0, 0, 0, 0] = float("nan")
    x = _cl(x)
    upstream = torch.randn_like(max_pool2x2_relu_reference(x))
    ours, (our_grad,) = _value_and_grads(max_pool2x2_relu, (x,), upstream)
    ref, (ref_grad,) = _value_and_grads(max_pool2x2_relu_reference, (x,), upstream)
    assert ours.shape == ref.shape and ours.is_contiguous(memory_format=CL)
    assert torch.equal(ours, ref) or torch.equal(ours.isnan(), ref.isnan()) and torch.equal(
        ours.nan_to_num(), ref.nan_to_num())
    assert ours[0, 0, 0, 0].isnan()
    assert torch.equal(our_grad, ref_grad)


def test_max_pool2x2_relu_gradcheck_double_and_no_grad_path():
    torch.manual_seed(4)
    # distinct values (a permutation, shifted to both signs) so that the derivative has no ties
    x = _cl((torch.randperm(2 * 3 * 6 * 8).double().reshape(2, 3, 6, 8) - 100) / 10).requires_grad_()
    assert torch.autograd.gradcheck(max_pool2x2_relu, (x,))
    with torch.no_grad():  # no gradient codes are written then
        assert torch.equal(max_pool2x2_relu(x), max_pool2x2_relu_reference(x))
    with pytest.raises(RuntimeError, match="Output size is too small"):  # PyTorch's own error below 2x2
        max_pool2x2_relu(_cl(torch.randn(1, 4, 1, 5)))


def test_max_pool2x2_relu_kernel_rejects_bad_input_with_a_clear_message():
    with pytest.raises(RuntimeError, match="x must be channels-last contiguous"):
        _C.max_pool2x2_relu_forward(torch.randn(1, 2, 4, 4), True)
    g = _cl(torch.randn(1, 2, 2, 2))
    with pytest.raises(RuntimeError, match="code must be uint8"):
        _C.max_pool2x2_relu_backward(g, g, 4, 4)
    with pytest.raises(RuntimeError, match=r"must be \(N, C, H/2, W/2\)"):
        _C.max_pool2x2_relu_backward(g, _cl(torch.zeros(1, 2, 2, 2, dtype=torch.uint8)), 6, 4)


def test_unext_fused_and_unfused_paths_agree():
    """A UNeXt in channels-last (fused kernels) and in NCHW (PyTorch compositions): same logits and
    parameter gradients in training mode, to float32 rounding."""
    torch.manual_seed(5)
    net = UNeXt(conv_channels=(4, 8, 16), token_channels=(16, 24))
    x = torch.randn(2, 3, 64, 64)
    results = []
    for memory_format in (torch.contiguous_format, CL):
        net.zero_grad()
        net.to(memory_format=memory_format).train()
        logits = net(x.contiguous(memory_format=memory_format))
        (logits.square().mean()).backward()
        results.append((logits.detach(), [p.grad.clone() for p in net.parameters()]))
    (ref, ref_grads), (ours, our_grads) = results
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(our_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_first_call_imports_no_compiler():
    """The fused ops are plain autograd functions: calling them does not import torch._dynamo (a
    torch.library custom op does, 0.8 s at the first call of every process)."""
    script = ("import sys, torch; from brainseg.layers import upsample2x_relu, max_pool2x2_relu; "
              "x = torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_(); "
              "(upsample2x_relu(x).sum() + max_pool2x2_relu(x).sum()).backward(); "
              "print('torch._dynamo' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "False"


_ISA_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[3])
from test_fused_resampling import all_results
from brainseg.layers import extension_status
torch.save({"isa": extension_status()["cpu_isa"], "results": all_results(torch.load(sys.argv[1]))}, sys.argv[2])
"""


def all_results(inputs):
    """Values and gradients of the fused ops for the given inputs (float32 and bfloat16)."""
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        x, skip, upstream, pool_x = (_cl(t.to(dtype)) for t in inputs)
        results += [*_value_and_grads(upsample2x_relu, (x, skip), upstream)[:1],
                    *_value_and_grads(upsample2x_relu, (x, skip), upstream)[1]]
        pooled, (pool_grad,) = _value_and_grads(max_pool2x2_relu, (pool_x,), upstream[:, :, :4, :6])
        results += [pooled, pool_grad]
        weight = torch.linspace(-1, 1, 16, dtype=dtype).view(1, 16, 1, 1)
        head, head_grads = _value_and_grads(upsample2x_relu_conv1x1, (x, weight, weight[0, :1, 0, 0]),
                                            upstream[:, :1].contiguous(memory_format=CL))
        norm = torch.nn.BatchNorm2d(16)
        normed, (norm_grad,) = _value_and_grads(lambda t: batch_norm_max_pool2x2_relu(t, norm), (pool_x,),
                                                upstream[:, :, :4, :6])
        with torch.no_grad():
            first_stage = _C.conv3x3_max_pool2x2_relu_forward(
                _cl(pool_x[:, :3]), weight.view(16, 1, 1, 1).expand(16, 3, 3, 3) / 9, weight.flatten())
        results += [head, *head_grads, normed, norm_grad, first_stage]
    with torch.no_grad():  # Winograd (float32 only): 16 -> 33 channels, two register-block widths
        x = _cl(inputs[3])
        weight = torch.linspace(-1, 1, 33 * 16 * 9).view(33, 16, 3, 3)
        results += [winograd_conv3x3(x, weight, weight[:, 0, 0, 0], pool=pool) for pool in (False, True)]
    return results


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_instruction_set_variants_agree(tmp_path, capability):
    """Each kernel is compiled per instruction set and picked like PyTorch's own (ATEN_CPU_CAPABILITY):
    every variant gives the same values and gradients (to rounding: FMA contracts differently)."""
    torch.manual_seed(7)
    inputs = (torch.randn(2, 16, 5, 7), torch.randn(2, 16, 10, 14), torch.randn(2, 16, 10, 14),
              torch.randn(2, 16, 8, 13))
    torch.save(inputs, tmp_path / "in.pt")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(tmp_path / "in.pt"), str(tmp_path / "out.pt"),
                    str(Path(__file__).parent)], env=env, check=True, timeout=120)
    theirs = torch.load(tmp_path / "out.pt")
    assert theirs["isa"] in (capability, "default")
    for a, b in zip(theirs["results"], all_results(inputs)):
        tol = 1e-5 if a.dtype == torch.float32 else 1e-2
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))  # (sums: scaled)


def test_resampling_benchmark_checks_agreement_and_prints_tables(capsys):
    from brainseg.layers import resampling_benchmark

    assert resampling_benchmark.main(["--threads", "1", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    for title in ("upsample2x_relu, float32, forward", "max_pool2x2_relu, bfloat16, forward+backward",
                  "upsample2x_relu_conv1x1, bfloat16, forward", "batch_norm_max_pool2x2_relu, float32, forward+backward"):
        assert title in out
    assert "batch_norm_max_pool2x2_relu, float32, forward\n" not in out  # (without gradients: the composition)
    for inference_only in ("conv3x3_max_pool2x2_relu", "conv3x3", "linear"):  # forward, float32 only
        assert f"\n{inference_only}, float32, forward\n" in out
        assert f"\n{inference_only}, bfloat16" not in out and f"\n{inference_only}, float32, forward+" not in out
    assert out.count("| fused |") == 17 and out.count("| composition |") == 17
