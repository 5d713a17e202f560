"""Benchmark the fused resampling kernels and inference convolutions of UNeXt against the PyTorch
compositions they replace.

Times, at the shapes one batch of UNeXt meets (batch 8 of 256x256 images, the paper's widths),

* ``upsample2x_relu`` (the four decoder steps: 2x bilinear upsampling, ReLU, skip addition),
* ``upsample2x_relu_conv1x1`` (the head: the same at full resolution, then the 1x1 logit conv),
* ``max_pool2x2_relu`` (the three encoder steps: 2x2 max pooling, ReLU),
* ``batch_norm_max_pool2x2_relu`` (the same steps in training, with their batch norm; forward +
  backward only: without gradients it is the composition) and
* ``conv3x3_max_pool2x2_relu`` (the encoder's conv steps in the inference copy: 3x3 conv, pooling,
  ReLU; the direct kernel from the 3 image channels, Winograd's for the two later stages),
* ``conv3x3`` (the decoder's and the head's 3x3 convolutions of the inference copy: Winograd's,
  :mod:`brainseg.layers.conv`) and
* ``linear`` (the token MLPs' linear layers of the inference copy: oneDNN's 1x1 convolution,
  :mod:`brainseg.layers.linear`) - these last three forward only (with gradients they are the
  compositions) and in float32 only (16-bit inputs get the compositions),

each as the kernel (:mod:`brainseg.layers.upsample`, :mod:`brainseg.layers.max_pool`, ...) and as
the composition (``*_reference``, ``F.conv2d``, ``F.linear``), forward without gradients and forward
+ backward, in float32 and bfloat16, on channels-last tensors, with glibc's malloc tuned as in training. Results are checked to agree before timing; timing is the
median of interleaved repetitions after warm-up (:mod:`brainseg.utils.benchmark`).

Usage::

    python tools/benchmark.py resampling [--threads 2] [--repeats 20] [--warmup 3]
"""
import argparse
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..utils.benchmark import benchmark, cpu_model_name, format_table
from ..utils.malloc import tune_glibc_malloc
from .extension import missing_extension_message
from .linear import linear
from .max_pool import (
    batch_norm_max_pool2x2_relu,
    conv3x3_max_pool2x2_relu,
    conv3x3_max_pool2x2_relu_reference,
    max_pool2x2_relu,
    max_pool2x2_relu_reference,
)
from .ms_deform_attn_function import extension_status
from .upsample import (
    upsample2x_relu,
    upsample2x_relu_conv1x1,
    upsample2x_relu_conv1x1_reference,
    upsample2x_relu_reference,
)
from .conv import conv3x3

# (x shape, with a skip): UNeXt's decoder inputs, deepest first, and its encoder pooling inputs
UPSAMPLE_SHAPES = [((8, 160, 8, 8), True), ((8, 128, 16, 16), True), ((8, 32, 32, 32), True),
                   ((8, 16, 64, 64), True)]
HEAD_SHAPE = (8, 16, 128, 128)  # projected to 1 channel at 256x256
POOL_SHAPES = [(8, 16, 256, 256), (8, 32, 128, 128), (8, 128, 64, 64)]
# (input shape, output channels) of the encoder's conv steps and of the decoder's and head's convolutions
CONV_POOL_SHAPES = [((8, 3, 256, 256), 16), ((8, 16, 128, 128), 32), ((8, 32, 64, 64), 128)]
CONV_SHAPES = [((8, 256, 8, 8), 160), ((8, 160, 16, 16), 128), ((8, 128, 32, 32), 32), ((8, 32, 64, 64), 16),
               ((8, 16, 128, 128), 16)]
TOKEN_SHAPES = [(8, 32, 32, 128), (8, 16, 16, 160), (8, 8, 8, 256)]  # (B, H, W, C) into C -> C linears
# ops timed forward only and in float32 only (inference kernels: elsewhere the layer is the composition)
INFERENCE_ONLY = ("conv3x3_max_pool2x2_relu", "conv3x3", "linear")


def _channels_last(*shape: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last)


def make_cases(dtype: torch.dtype) -> Dict[str, List[Tuple[Tuple[Optional[torch.Tensor], ...], torch.Tensor]]]:
    """Per op name, its (inputs, upstream gradient) at every UNeXt stage."""
    generator = torch.Generator().manual_seed(0)
    upsample = []
    for (n, c, h, w), with_skip in UPSAMPLE_SHAPES:
        x = _channels_last(n, c, h, w, dtype=dtype, generator=generator)
        skip = _channels_last(n, c, 2 * h, 2 * w, dtype=dtype, generator=generator) if with_skip else None
        upsample.append(((x, skip), _channels_last(n, c, 2 * h, 2 * w, dtype=dtype, generator=generator)))
    pool = [((_channels_last(n, c, h, w, dtype=dtype, generator=generator),),
             _channels_last(n, c, h // 2, w // 2, dtype=dtype, generator=generator)) for n, c, h, w in POOL_SHAPES]
    n, c, h, w = HEAD_SHAPE
    head = [((_channels_last(n, c, h, w, dtype=dtype, generator=generator),
              torch.randn(1, c, 1, 1, generator=generator).to(dtype), torch.zeros(1, dtype=dtype)),
             _channels_last(n, 1, 2 * h, 2 * w, dtype=dtype, generator=generator))]
    def conv_cases(shapes):
        return [((_channels_last(*shape, dtype=dtype, generator=generator),
                  (torch.randn(cout, shape[1], 3, 3, generator=generator) / (3 * shape[1] ** 0.5)).to(dtype),
                  torch.randn(cout, generator=generator).to(dtype)), None) for shape, cout in shapes]

    tokens = [((torch.randn(shape, generator=generator).to(dtype),
                (torch.randn(shape[-1], shape[-1], generator=generator) / shape[-1] ** 0.5).to(dtype),
                torch.randn(shape[-1], generator=generator).to(dtype)), None) for shape in TOKEN_SHAPES]
    return {"upsample2x_relu": upsample, "upsample2x_relu_conv1x1": head, "max_pool2x2_relu": pool,
            "batch_norm_max_pool2x2_relu": pool, "conv3x3_max_pool2x2_relu": conv_cases(CONV_POOL_SHAPES),
            "conv3x3": conv_cases(CONV_SHAPES), "linear": tokens}


def _with_batch_norm(pool: Callable) -> Callable:
    """``x -> pool(x, norm)`` with a training-mode BatchNorm2d per channel count."""
    norms: Dict[int, torch.nn.BatchNorm2d] = {}

    def run(x: torch.Tensor) -> torch.Tensor:
        norm = norms.setdefault(x.shape[1], torch.nn.BatchNorm2d(x.shape[1]))
        return pool(x, norm)
    return run


def forward_fn(op: Callable, cases) -> Callable[[], List[torch.Tensor]]:
    """All stages' forward without gradients."""
    def run():
        with torch.no_grad():
            return [op(*inputs) for inputs, _ in cases]
    return run


def forward_backward_fn(op: Callable, cases) -> Callable[[], List[torch.Tensor]]:
    """All stages' forward and backward; returns the input gradients."""
    leaves = [tuple(None if t is None else t.detach().clone().requires_grad_() for t in inputs)
              for inputs, _ in cases]

    def run():
        grads = []
        for inputs, (_, upstream) in zip(leaves, cases):
            wrt = [t for t in inputs if t is not None]
            grads += torch.autograd.grad(op(*inputs), wrt, upstream)
        return grads
    return run


def agree(ours: torch.Tensor, theirs: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether a fused result matches the composition's: to float32 rounding of sums over a batch
    (relative to the largest value), or in bf16 to its rounding, where at most 0.1 % of the
    elements may differ more (a pooling window whose maxima tie after one version's rounding sends
    its gradient to another input)."""
    ours, theirs = ours.float(), theirs.float()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    outside = ~torch.isclose(ours, theirs, rtol=tol, atol=tol * max(1.0, theirs.abs().max().item()))
    return not outside.any() or (dtype == torch.bfloat16 and outside.float().mean().item() <= 1e-3)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/benchmark.py resampling``: prints the tables; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    missing = missing_extension_message()
    if missing:
        print(missing, file=sys.stderr)
        return 1
    status = extension_status()
    torch.set_num_threads(args.threads)
    malloc_tuned = tune_glibc_malloc()  # as training and the model benchmark run
    ops = {"upsample2x_relu": (upsample2x_relu, upsample2x_relu_reference),
           "upsample2x_relu_conv1x1": (upsample2x_relu_conv1x1, upsample2x_relu_conv1x1_reference),
           "max_pool2x2_relu": (max_pool2x2_relu, max_pool2x2_relu_reference),
           "batch_norm_max_pool2x2_relu": (_with_batch_norm(batch_norm_max_pool2x2_relu),
                                           _with_batch_norm(lambda x, norm: max_pool2x2_relu_reference(norm(x)))),
           "conv3x3_max_pool2x2_relu": (conv3x3_max_pool2x2_relu, conv3x3_max_pool2x2_relu_reference),
           "conv3x3": (conv3x3, lambda x, weight, bias: F.conv2d(x, weight, bias, padding=1)),
           "linear": (linear, F.linear)}
    load_before = os.getloadavg()[0]
    print(f"CPU: {cpu_model_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"UNeXt's shapes for a batch of 8 x 256x256 (all stages per call), channels-last; median of "
          f"{args.repeats} interleaved repetitions after {args.warmup} warm-up runs; {status['cpu_isa']} kernels; "
          f"glibc malloc tuned: {malloc_tuned}")
    for dtype in (torch.float32, torch.bfloat16):
        for name, cases in make_cases(dtype).items():
            if name in INFERENCE_ONLY and dtype != torch.float32:
                continue  # (the layer runs the composition for 16-bit inputs)
            fused, composition = ops[name]
            passes = (("forward", forward_fn), ("forward+backward", forward_backward_fn))
            if name == "batch_norm_max_pool2x2_relu":
                passes = passes[1:]
            elif name in INFERENCE_ONLY:
                passes = passes[:1]
            for label, make_fn in passes:
                fns = {"fused": make_fn(fused, cases), "composition": make_fn(composition, cases)}
                if not all(agree(ours, theirs, dtype) for ours, theirs in zip(fns["fused"](), fns["composition"]())):
                    print(f"{name} {label} ({dtype}) disagrees with the composition", file=sys.stderr)
                    return 1
                timings = benchmark(fns, warmup=args.warmup, repeats=args.repeats)
                print(f"\n{name}, {str(dtype).replace('torch.', '')}, {label}\n")
                print(format_table(timings, baseline="composition"))
    print(f"\nload average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    return 0
