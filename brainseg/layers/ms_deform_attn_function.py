"""Multi-scale deformable attention: the core sampling op and its dispatch.

The op (Zhu et al., "Deformable DETR", 2021) gathers, for every query and head, a
weighted sum of bilinear samples taken at a few learned locations on every level of a
multi-scale feature pyramid. Three implementations share one contract:

* ``brainseg._C`` C++ CPU kernel (forward + backward, float32/float64, parallel with
  ``at::parallel_for``), used for CPU tensors;
* ``brainseg._C`` CUDA kernel, used for CUDA tensors when the extension was built with
  CUDA. It is compiled by ``tools/check_cuda_build.py`` but has not been run on a GPU
  in this project's CI (there is no GPU there);
* :func:`ms_deform_attn_pytorch`, a pure PyTorch ``grid_sample`` reference, used when
  the extension is missing (with a one-time warning), for dtypes/devices the kernels do
  not serve, or when ``BRAINSEG_MSDA_FORCE_PYTORCH=1`` is set in the environment.

Sampling convention (all paths): locations are normalised ``(x, y)`` in ``[0, 1]``
with pixel centres at ``(i + 0.5) / W`` (``align_corners=False``); bilinear
interpolation; positions outside the map read zeros.
"""
import logging
import os
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from .extension import C_EXTENSION as _C
from .extension import C_IMPORT_ERROR as _C_IMPORT_ERROR

__all__ = ["ms_deform_attn", "ms_deform_attn_pytorch", "MSDeformAttnFunction", "extension_status"]

FORCE_PYTORCH_ENV = "BRAINSEG_MSDA_FORCE_PYTORCH"
_KERNEL_DTYPES = (torch.float32, torch.float64)

logger = logging.getLogger(__name__)
_warned: set = set()




def extension_status() -> dict:
    """Describe which compiled kernels are available.

    Returns:
        dict with ``"cpu"`` (bool), ``"cpu_isa"`` (the instruction set the CPU kernels run:
        "avx512", "avx2" or "default", chosen at run time like PyTorch's own kernels, so
        ``ATEN_CPU_CAPABILITY`` holds it too; None without the extension), ``"cuda"`` (bool:
        compiled with CUDA) and ``"error"`` (the import error message when ``brainseg._C`` could
        not be imported, else None).
    """
    return {
        "cpu": _C is not None,
        "cpu_isa": _C.ms_deform_attn_cpu_isa() if _C is not None else None,
        "cuda": _C is not None and bool(_C.ms_deform_attn_has_cuda()),
        "error": _C_IMPORT_ERROR,
    }


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


def check_ms_deform_attn_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> None:
    """Validate shapes, dtypes and devices of the op's inputs.

    Raises:
        ValueError: naming the offending argument and what was expected.
    """
    named = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"ms_deform_attn: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name in ("value", "sampling_locations", "attention_weights"):
        if not named[name].is_floating_point():
            raise ValueError(f"ms_deform_attn: {name} must be floating point, got {named[name].dtype}")
    for name in ("spatial_shapes", "level_start_index"):
        if named[name].dtype != torch.int64:
            raise ValueError(f"ms_deform_attn: {name} must be int64, got {named[name].dtype}")
    devices = {name: t.device for name, t in named.items()}
    if len(set(devices.values())) != 1:
        raise ValueError(f"ms_deform_attn: all inputs must be on one device, got {devices}")
    if value.dim() != 4:
        raise ValueError(f"ms_deform_attn: value must be (N, S, M, D), got shape {tuple(value.shape)}")
    n, s, m, _ = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes must be (L, 2), got shape {tuple(spatial_shapes.shape)}"
        )
    num_levels = spatial_shapes.shape[0]
    if tuple(level_start_index.shape) != (num_levels,):
        raise ValueError(
            f"ms_deform_attn: level_start_index must be ({num_levels},) like spatial_shapes, "
            f"got shape {tuple(level_start_index.shape)}"
        )
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2), "
            f"got shape {tuple(sampling_locations.shape)}"
        )
    n_l, lq, m_l, l_l, p, _ = sampling_locations.shape
    if (n_l, m_l, l_l) != (n, m, num_levels):
        raise ValueError(
            f"ms_deform_attn: sampling_locations shape {tuple(sampling_locations.shape)} does not match "
            f"N={n}, M={m} of value and L={num_levels} of spatial_shapes"
        )
    if tuple(attention_weights.shape) != (n, lq, m, num_levels, p):
        raise ValueError(
            f"ms_deform_attn: attention_weights must be {(n, lq, m, num_levels, p)} (N, Lq, M, L, P), "
            f"got shape {tuple(attention_weights.shape)}"
        )
    if spatial_shapes.device.type == "cpu":  # reading it back from a GPU would synchronise
        sizes = spatial_shapes.prod(1)
        if int(sizes.sum()) != s:
            raise ValueError(
                f"ms_deform_attn: value has S={s} positions but spatial_shapes "
                f"{spatial_shapes.tolist()} sum to {int(sizes.sum())}"
            )
        expected_start = torch.cumsum(sizes, 0) - sizes
        if not torch.equal(level_start_index.cpu(), expected_start):
            raise ValueError(
                f"ms_deform_attn: level_start_index {level_start_index.tolist()} is inconsistent with "
                f"spatial_shapes (expected {expected_start.tolist()})"
            )


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Pure PyTorch multi-scale deformable attention (reference, any device/dtype).

    Args:
        value: (N, S, M, D) values of all levels, flattened level by level.
        spatial_shapes: (L, 2) int64, (H, W) of each level.
        level_start_index: (L,) int64, first position of each level in S. Only used for
            validation here: the levels are split by ``spatial_shapes``.
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y) sampling points.
        attention_weights: (N, Lq, M, L, P) weight of each sample.

    Returns:
        (N, Lq, M * D) attended values.
    """
    del level_start_index  # the split below follows spatial_shapes
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    shapes: Sequence[Tuple[int, int]] = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    value_per_level = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample works in [-1, 1] with align_corners=False: x_grid = 2 * x - 1.
    grids = 2 * sampling_locations - 1
    samples = []
    for level, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = value_per_level[level].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, level].transpose(1, 2).reshape(n * m, lq, p, 2)
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N*M, D, Lq, L*P) weighted by (N*M, 1, Lq, L*P)
    stacked = torch.cat(samples, dim=-1)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * p)
    out = (stacked * weights).sum(-1)  # (N*M, D, Lq)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


class MSDeformAttnFunction(Function):
    """Autograd wrapper of the compiled kernels (``brainseg._C``).

    Inputs must already be validated, share one float dtype the kernels support
    (float32/float64) and live on a device the extension was built for; use
    :func:`ms_deform_attn` for dispatch.
    """

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        value, sampling_locations, attention_weights = (
            t.contiguous() for t in (value, sampling_locations, attention_weights)
        )
        spatial_shapes, level_start_index = spatial_shapes.contiguous(), level_start_index.contiguous()
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return _C.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = _C.ms_deform_attn_backward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            grad_output.contiguous(),
        )
        return grad_value, None, None, grad_locations, grad_weights


def _kernel_unavailable_reason(device: torch.device) -> Optional[str]:
    """Why the compiled kernel cannot serve ``device`` (None when it can)."""
    if os.environ.get(FORCE_PYTORCH_ENV, "0") not in ("", "0"):
        return "forced"
    if _C is None:
        return f"brainseg._C is not available ({_C_IMPORT_ERROR}); rebuild with `make install`"
    if device.type == "cuda" and not _C.ms_deform_attn_has_cuda():
        return "brainseg._C was built without CUDA (set FORCE_CUDA=1 and reinstall)"
    if device.type not in ("cpu", "cuda"):
        return f"no compiled kernel for device type {device.type!r}"
    return None


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention, dispatched to the fastest available kernel.

    CPU tensors use the C++ kernel and CUDA tensors the CUDA kernel of ``brainseg._C``.
    Half/bfloat16 inputs are computed in float32 and the result is cast back to
    ``value.dtype``. Without the extension (or with ``BRAINSEG_MSDA_FORCE_PYTORCH=1``)
    the pure PyTorch path :func:`ms_deform_attn_pytorch` is used; a missing extension
    is reported once as a warning.

    Args:
        value: (N, S, M, D) values of all levels, flattened level by level.
        spatial_shapes: (L, 2) int64, (H, W) of each level.
        level_start_index: (L,) int64, first position of each level in S.
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y) sampling points in
            [0, 1]; pixel centres at (i + 0.5) / W, zeros outside the map.
        attention_weights: (N, Lq, M, L, P) weight of each sample.

    Returns:
        (N, Lq, M * D) tensor of ``value.dtype``.

    Raises:
        ValueError: if shapes, dtypes or devices are inconsistent (the message names the
            argument).
    """
    check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    reason = _kernel_unavailable_reason(value.device)
    if reason is not None:
        if reason != "forced":
            _warn_once(reason, f"ms_deform_attn: using the slow PyTorch path: {reason}")
        return ms_deform_attn_pytorch(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    compute_dtype = torch.promote_types(
        torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype
    )
    if compute_dtype not in _KERNEL_DTYPES:
        compute_dtype = torch.float32
    out = MSDeformAttnFunction.apply(
        value.to(compute_dtype),
        spatial_shapes,
        level_start_index,
        sampling_locations.to(compute_dtype),
        attention_weights.to(compute_dtype),
    )
    return out.to(value.dtype)
