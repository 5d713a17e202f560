"""Multi-scale deformable attention: C++ kernel vs PyTorch path, gradients, module, dispatch, errors.

The compiled extension is required: ``make install`` builds it, so a missing
``brainseg._C`` fails these tests instead of skipping them. The CUDA kernels cannot
run here (no GPU); ``tools/check_cuda_build.py`` checks that they compile.
"""
import importlib
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from brainseg.layers import (
    MSDeformAttn,
    MSDeformAttnFunction,
    extension_status,
    ms_deform_attn,
    ms_deform_attn_pytorch,
)
from brainseg.layers import ms_deform_attn_function as msda_function
from brainseg.utils.benchmark import benchmark, format_table

LEVELS = [(6, 7), (3, 4), (2, 1), (1, 1)]  # odd sizes and a 1x1 level


def level_tensors(levels):
    shapes = torch.tensor(levels, dtype=torch.int64)
    sizes = shapes.prod(1)
    return shapes, torch.cumsum(sizes, 0) - sizes, int(sizes.sum())


def random_inputs(levels, *, batch, queries, heads, channels, points, dtype, seed=0):
    """Random op inputs; locations in [-0.3, 1.3] plus a few far outside every map."""
    g = torch.Generator().manual_seed(seed)
    shapes, starts, total = level_tensors(levels)
    value = torch.randn(batch, total, heads, channels, generator=g, dtype=dtype)
    loc = torch.rand(batch, queries, heads, len(levels), points, 2, generator=g, dtype=dtype) * 1.6 - 0.3
    loc[:, ::7, :, :, 0] = torch.tensor([-4.0, 6.0], dtype=dtype)  # far outside
    weights = torch.rand(batch, queries, heads, len(levels), points, generator=g, dtype=dtype)
    return value, shapes, starts, loc, weights


def test_extension_is_built():
    importlib.import_module("brainseg._C")  # `make install` builds it: missing means broken build
    status = extension_status()
    assert status["cpu"] and status["error"] is None


def _cpu_flags() -> set:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    line = next((l for l in text.splitlines() if l.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


_KERNEL_SCRIPT = """
import sys, torch
from brainseg.layers import extension_status
sys.path.insert(0, sys.argv[3])
from test_ms_deform_attn import forward_and_grads
inputs = torch.load(sys.argv[1])
torch.save({"isa": extension_status()["cpu_isa"], "results": forward_and_grads(inputs)}, sys.argv[2])
"""


def forward_and_grads(inputs):
    """The C++ kernel's output and the gradients of value, locations and weights for a fixed
    upstream gradient."""
    value, shapes, starts, loc, weights = (t.clone().requires_grad_(t.is_floating_point()) for t in inputs)
    out = ms_deform_attn(value, shapes, starts, loc, weights)
    upstream = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad(out, (value, loc, weights), upstream)
    return (out.detach(), *grads)


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_cpu_kernel_isa_follows_aten_capability_and_agrees(tmp_path, capability):
    """Forward and backward are compiled per instruction set and picked at run time like
    PyTorch's kernels: ATEN_CPU_CAPABILITY holds them, and every variant computes the same
    values and gradients (to rounding: FMA contracts differently)."""
    flags = _cpu_flags()
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        inputs = random_inputs(LEVELS, batch=2, queries=40, heads=3, channels=35, points=3, dtype=dtype)
        torch.save(inputs, tmp_path / "in.pt")
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
        subprocess.run([sys.executable, "-c", _KERNEL_SCRIPT, str(tmp_path / "in.pt"), str(tmp_path / "out.pt"),
                        str(Path(__file__).parent)], env=env, check=True, timeout=120)
        result = torch.load(tmp_path / "out.pt")
        has_avx2 = {"avx2", "fma"} <= flags
        assert result["isa"] == ("avx2" if capability == "avx2" and has_avx2 else "default")
        for theirs, ours in zip(result["results"], forward_and_grads(inputs)):
            torch.testing.assert_close(theirs, ours, rtol=tol, atol=tol)
    torch_isa = torch.backends.cpu.get_cpu_capability()
    if torch_isa == "AVX512" and {"avx512f", "avx512vl", "avx2", "fma"} <= flags:
        assert extension_status()["cpu_isa"] == "avx512"


@pytest.mark.parametrize(
    "levels,queries,fast_mode",
    [([(4, 3), (2, 2), (1, 1)], 3, False), (LEVELS, 16, True)],
    ids=["full-jacobian", "fast-mode-4-levels"],
)
def test_gradcheck_cpp_kernel_float64(levels, queries, fast_mode):
    value, shapes, starts, loc, weights = random_inputs(
        levels, batch=2, queries=queries, heads=2, channels=2, points=2, dtype=torch.float64
    )
    inputs = [t.requires_grad_() for t in (value, loc, weights)]

    def op(v, sampling_locations, attention_weights):
        return MSDeformAttnFunction.apply(v, shapes, starts, sampling_locations, attention_weights)

    assert torch.autograd.gradcheck(op, inputs, eps=1e-6, atol=1e-7, fast_mode=fast_mode)


def grads_of(op, value, shapes, starts, loc, weights, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, weights)]
    out = op(leaves[0], shapes, starts, leaves[1], leaves[2])
    return (out, *torch.autograd.grad(out, leaves, grad_out))


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_cpp_matches_pytorch_path(dtype, atol):
    levels = [(16, 20), (8, 10), (4, 5), (1, 1)]
    value, shapes, starts, loc, weights = random_inputs(
        levels, batch=2, queries=100, heads=8, channels=16, points=4, dtype=dtype
    )
    weights = weights.softmax(-1)  # attention weights as the module produces them
    grad_out = torch.randn(2, 100, 8 * 16, dtype=dtype)
    ours = grads_of(MSDeformAttnFunction.apply, value, shapes, starts, loc, weights, grad_out)
    ref = grads_of(ms_deform_attn_pytorch, value, shapes, starts, loc, weights, grad_out)
    names = ["output", "grad_value", "grad_locations", "grad_weights"]
    for name, a, b in zip(names, ours, ref):
        assert a.dtype == dtype and a.shape == b.shape, name
        # Rounding grows with magnitude (grad_locations is scaled by map sizes up to 20,
        # grad_weights sums D products): the tolerance is atol relative to the range.
        tol = atol * max(1.0, b.abs().max().item())
        assert (a - b).abs().max().item() <= tol, name
    # Samples far outside every map contribute nothing and get zero gradients.
    far = (loc[..., 0] < -1) & (loc[..., 1] > 2)
    assert far.any()
    assert ours[2][far].abs().max() == 0 and ours[3][far].abs().max() == 0


def test_known_answer_pixel_centres_and_ramp():
    # A 1-level 3x4 map whose value is its x pixel index: sampling at normalised x reads
    # x * W - 0.5 inside the map, and bilinearly fades to 0 over the last half pixel outside.
    shapes, starts, _ = level_tensors([(3, 4)])
    value = torch.arange(4.0).repeat(3).view(1, 12, 1, 1)
    xs = torch.tensor([0.125, 0.375, 0.5, 0.875, 1.0, -0.125])
    loc = torch.stack([xs, torch.full_like(xs, 0.5)], -1).view(1, 6, 1, 1, 1, 2)
    weights = torch.ones(1, 6, 1, 1, 1)
    expected = torch.tensor([0.0, 1.0, 1.5, 3.0, 3.0 * 0.5, 0.0])
    for op in (MSDeformAttnFunction.apply, ms_deform_attn_pytorch):
        out = op(value, shapes, starts, loc, weights)
        torch.testing.assert_close(out.view(-1), expected)


def test_reduced_precision_inputs_computed_in_float32():
    value, shapes, starts, loc, weights = random_inputs(
        LEVELS, batch=1, queries=9, heads=2, channels=4, points=3, dtype=torch.float32
    )
    out = ms_deform_attn(value.bfloat16(), shapes, starts, loc, weights)
    assert out.dtype == torch.bfloat16
    reference = ms_deform_attn_pytorch(value.bfloat16().float(), shapes, starts, loc, weights)
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=1e-2)


def identity_module(levels, *, d_model, heads, points):
    """MSDeformAttn with identity projections and zero learned offsets / attention logits."""
    module = MSDeformAttn(d_model=d_model, n_levels=len(levels), n_heads=heads, n_points=points)
    with torch.no_grad():
        for proj in (module.value_proj, module.output_proj):
            proj.weight.copy_(torch.eye(d_model))
            proj.bias.zero_()
        module.sampling_offsets.bias.zero_()
    return module


def test_module_init_ring_of_offsets():
    module = MSDeformAttn(d_model=32, n_levels=3, n_heads=8, n_points=4)
    bias = module.sampling_offsets.bias.view(8, 3, 4, 2)
    k = torch.arange(1, 5, dtype=torch.float32)
    torch.testing.assert_close(bias[0, 1], torch.stack([k, 0 * k], -1))  # head 0 points along +x
    torch.testing.assert_close(bias[1, 2], torch.stack([k, k], -1))  # 45 degrees: the square ring's corner
    torch.testing.assert_close(bias[2, 0], torch.stack([0 * k, k], -1), atol=1e-6, rtol=0)  # +y
    assert module.attention_weights.weight.abs().sum() == 0 and module.attention_weights.bias.abs().sum() == 0


def test_module_samples_reference_points_and_respects_padding_mask():
    levels = [(4, 5), (2, 3)]
    shapes, starts, total = level_tensors(levels)
    module = identity_module(levels, d_model=8, heads=2, points=3)
    features = torch.randn(2, total, 8)
    # Query j references the centre of pixel j of level 0 on every level.
    j = torch.arange(6)
    centre = torch.stack([(j % 5 + 0.5) / 5, (j // 5 + 0.5) / 4], -1)  # (6, 2) normalised (x, y)
    ref = centre[None, :, None, :].expand(2, 6, 2, 2).contiguous()
    out = module(torch.randn(2, 6, 8), ref, features, shapes, starts)
    # Zero offsets and uniform attention: the mean of the two levels' bilinear samples.
    level1 = ms_deform_attn_pytorch(
        features[:, 20:].reshape(2, 6, 1, 8), shapes[1:], starts[:1], ref[:, :, None, 1:, None, :], torch.ones(2, 6, 1, 1, 1)
    )
    torch.testing.assert_close(out, 0.5 * features[:, :6] + 0.5 * level1, atol=1e-5, rtol=1e-5)

    # Padded positions contribute nothing: garbage there changes neither output nor gets gradient.
    mask = torch.zeros(2, total, dtype=torch.bool)
    mask[0, :10] = True
    mask[1, 20:] = True
    garbage = features.clone()
    garbage[mask] = 1e6
    garbage.requires_grad_()
    query = torch.randn(2, 6, 8)
    masked = module(query, ref, garbage, shapes, starts, input_padding_mask=mask)
    zeroed = module(query, ref, features.masked_fill(mask[..., None], 0.0), shapes, starts)
    torch.testing.assert_close(masked, zeroed)
    masked.sum().backward()
    assert garbage.grad[mask].abs().max() == 0 and garbage.grad[~mask].abs().max() > 0


def test_module_box_reference_points_scale_offsets():
    # Value = x pixel index on one 4x8 level; point k of the single head is offset by
    # (P, 0) / P * w / 2 = half the box width: it samples the box's right edge.
    shapes, starts, _ = level_tensors([(4, 8)])
    module = identity_module([(4, 8)], d_model=1, heads=1, points=2)
    with torch.no_grad():
        module.sampling_offsets.bias.copy_(torch.tensor([2.0, 0.0, 2.0, 0.0]))
    features = torch.arange(8.0).repeat(4).view(1, 32, 1)
    boxes = torch.tensor([[0.5, 0.5, 0.25, 0.5], [0.25, 0.5, 0.5, 0.2]]).view(1, 2, 1, 4)
    out = module(torch.zeros(1, 2, 1), boxes, features, shapes, starts)
    right_edge_x = boxes[0, :, 0, 0] + boxes[0, :, 0, 2] / 2
    torch.testing.assert_close(out.view(-1), right_edge_x * 8 - 0.5)


def test_dispatch_uses_cpp_kernel_unless_forced(monkeypatch):
    value, shapes, starts, loc, weights = random_inputs(
        LEVELS, batch=1, queries=4, heads=2, channels=2, points=2, dtype=torch.float32
    )
    calls = []
    real_apply = MSDeformAttnFunction.apply

    def spy(*args):
        calls.append(args[0].dtype)
        return real_apply(*args)

    monkeypatch.setattr(MSDeformAttnFunction, "apply", spy)
    monkeypatch.delenv(msda_function.FORCE_PYTORCH_ENV, raising=False)
    kernel_out = ms_deform_attn(value, shapes, starts, loc, weights)
    assert calls == [torch.float32]
    monkeypatch.setenv(msda_function.FORCE_PYTORCH_ENV, "1")
    forced_out = ms_deform_attn(value, shapes, starts, loc, weights)
    assert calls == [torch.float32]  # not called again
    torch.testing.assert_close(forced_out, kernel_out)


def test_missing_extension_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(msda_function, "_C", None)
    monkeypatch.setattr(msda_function, "_C_IMPORT_ERROR", "No module named 'brainseg._C'")
    monkeypatch.setattr(msda_function, "_warned", set())
    monkeypatch.delenv(msda_function.FORCE_PYTORCH_ENV, raising=False)
    value, shapes, starts, loc, weights = random_inputs(
        LEVELS, batch=1, queries=4, heads=2, channels=2, points=2, dtype=torch.float32
    )
    with caplog.at_level(logging.WARNING, logger=msda_function.__name__):
        out1 = ms_deform_attn(value, shapes, starts, loc, weights)
        ms_deform_attn(value, shapes, starts, loc, weights)
    warnings = [r.getMessage() for r in caplog.records if "slow PyTorch path" in r.getMessage()]
    assert len(warnings) == 1 and "brainseg._C" in warnings[0]
    torch.testing.assert_close(out1, ms_deform_attn_pytorch(value, shapes, starts, loc, weights))


def bad_call_cases():
    """(description, mutate(inputs) -> inputs, message fragment) for both validation layers."""
    return [
        ("int value", lambda v, s, st, lo, w: (v.long(), s, st, lo, w), "value"),
        ("3-d value", lambda v, s, st, lo, w: (v[0], s, st, lo, w), "value"),
        ("int32 shapes", lambda v, s, st, lo, w: (v, s.int(), st, lo, w), "spatial_shapes"),
        ("short start index", lambda v, s, st, lo, w: (v, s, st[:-1], lo, w), "level_start_index"),
        ("wrong start index", lambda v, s, st, lo, w: (v, s, st + 1, lo, w), "level_start_index"),
        ("S mismatch", lambda v, s, st, lo, w: (v[:, :-1].contiguous(), s, st, lo, w), "S="),
        ("heads mismatch", lambda v, s, st, lo, w: (v, s, st, lo[:, :, :1].contiguous(), w), "sampling_locations"),
        ("weights shape", lambda v, s, st, lo, w: (v, s, st, lo, w[..., :1].contiguous()), "attention_weights"),
    ]


@pytest.mark.parametrize("case", bad_call_cases(), ids=lambda c: c[0])
def test_bad_inputs_raise_readable_errors(case):
    _, mutate, fragment = case
    inputs = mutate(*random_inputs(LEVELS, batch=1, queries=3, heads=2, channels=2, points=2, dtype=torch.float32))
    with pytest.raises(ValueError, match=fragment):
        ms_deform_attn(*inputs)
    with pytest.raises(RuntimeError, match=fragment):  # the C++ checks, for direct callers
        msda_function._C.ms_deform_attn_forward(*inputs)


def test_cpp_rejects_mixed_dtypes_and_non_contiguous_inputs():
    value, shapes, starts, loc, weights = random_inputs(
        LEVELS, batch=1, queries=3, heads=2, channels=2, points=2, dtype=torch.float32
    )
    forward = msda_function._C.ms_deform_attn_forward
    with pytest.raises(RuntimeError, match="share one dtype"):
        forward(value, shapes, starts, loc.double(), weights)
    with pytest.raises(RuntimeError, match="sampling_locations .* must be contiguous"):
        forward(value, shapes, starts, loc.transpose(1, 2).contiguous().transpose(1, 2), weights)
    with pytest.raises(RuntimeError, match="grad_output must be"):
        msda_function._C.ms_deform_attn_backward(value, shapes, starts, loc, weights, torch.zeros(1, 3, 5))


def test_module_rejects_bad_configuration_and_reference_points():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        MSDeformAttn(d_model=30, n_heads=8)
    module = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=1)
    shapes, starts, total = level_tensors([(2, 2), (1, 1)])
    with pytest.raises(ValueError, match="last dim of reference_points"):
        module(torch.zeros(1, 3, 8), torch.zeros(1, 3, 2, 3), torch.zeros(1, total, 8), shapes, starts)
    with pytest.raises(ValueError, match="input_padding_mask"):
        module(torch.zeros(1, 3, 8), torch.zeros(1, 3, 2, 2), torch.zeros(1, total, 8), shapes, starts,
               input_padding_mask=torch.zeros(1, total + 1, dtype=torch.bool))


def test_benchmark_helper_interleaves_and_reports_medians():
    order = []
    timings = benchmark({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, repeats=3)
    assert order == ["a", "b"] + ["a", "b"] * 3  # warm-up, then round-robin repetitions
    assert [(len(t.times), len(t.cpu_times)) for t in timings.values()] == [(3, 3), (3, 3)]
    assert all(t.min <= t.median <= t.max and t.cpu_median >= 0 for t in timings.values())
    table = format_table(timings, baseline="a").splitlines()
    assert len(table) == 4 and table[2].startswith("| a |") and table[2].endswith(" 1.00x |")
    with pytest.raises(ValueError, match="repeats"):
        benchmark({"a": lambda: None}, repeats=0)
    assert not math.isnan(timings["b"].median)
