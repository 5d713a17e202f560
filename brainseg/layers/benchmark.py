"""Benchmark multi-scale deformable attention on CPU: ours vs PyTorch vs a PyPI peer.

Times forward and forward+backward (gradients for value, locations and weights) of

* ``ours``: ``brainseg.layers.ms_deform_attn`` (the C++ kernel of ``brainseg._C``);
* ``pytorch``: ``brainseg.layers.ms_deform_attn_pytorch`` (``grid_sample`` path);
* ``peer``: ``torch_ms_deform_attn.ms_deform_attn`` from the PyPI package
  ``torch-ms-deform-attn==0.1.1``, if importable (install it into the venv for
  benchmarking only: ``pip install --no-build-isolation torch-ms-deform-attn==0.1.1``).

Candidates are checked to agree numerically before timing. Timing: warm-up, then the
median of interleaved repetitions (:mod:`brainseg.utils.benchmark`).

Usage::

    python tools/benchmark.py ms_deform_attn [--threads 2] [--repeats 15] [--queries 1000]
"""
import argparse
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..utils.benchmark import benchmark, cpu_model_name, format_table
from .extension import missing_extension_message
from .ms_deform_attn_function import extension_status, ms_deform_attn, ms_deform_attn_pytorch

CASES: Dict[str, List[Tuple[int, int]]] = {
    "3 levels (32², 16², 8²)": [(32, 32), (16, 16), (8, 8)],
    "4 levels (64², 32², 16², 8²)": [(64, 64), (32, 32), (16, 16), (8, 8)],
}
OpFn = Callable[..., torch.Tensor]


def load_peer():
    """The peer op with our signature, or None when the package is not installed."""
    try:
        import torch_ms_deform_attn
    except ImportError:
        return None
    return torch_ms_deform_attn.ms_deform_attn


def make_inputs(
    levels: Sequence[Tuple[int, int]], *, batch: int, queries: int, heads: int, channels: int, points: int
) -> Tuple[torch.Tensor, ...]:
    """Random inputs; ~15% of the sampling points fall outside their map."""
    generator = torch.Generator().manual_seed(0)
    shapes = torch.tensor(levels, dtype=torch.int64)
    sizes = shapes.prod(1)
    starts = torch.cumsum(sizes, 0) - sizes
    value = torch.randn(batch, int(sizes.sum()), heads, channels, generator=generator)
    locations = torch.rand(batch, queries, heads, len(levels), points, 2, generator=generator) * 1.2 - 0.1
    logits = torch.randn(batch, queries, heads, len(levels) * points, generator=generator)
    weights = logits.softmax(-1).view(batch, queries, heads, len(levels), points)
    grad = torch.randn(batch, queries, heads * channels, generator=generator)
    return value, shapes, starts, locations, weights, grad


def forward_fn(op: OpFn, inputs: Tuple[torch.Tensor, ...]) -> Callable[[], object]:
    value, shapes, starts, locations, weights, _ = inputs

    def run():
        with torch.no_grad():
            return op(value, shapes, starts, locations, weights)

    return run


def forward_backward_fn(op: OpFn, inputs: Tuple[torch.Tensor, ...]) -> Callable[[], object]:
    value, shapes, starts, locations, weights, grad = inputs
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]

    def run():
        out = op(leaves[0], shapes, starts, leaves[1], leaves[2])
        return torch.autograd.grad(out, leaves, grad)

    return run


def max_difference(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/benchmark.py ms_deform_attn``: prints the tables; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--channels", type=int, default=32, help="channels per head")
    parser.add_argument("--points", type=int, default=4)
    args = parser.parse_args(argv)

    missing = missing_extension_message()
    if missing:
        print(missing, file=sys.stderr)
        return 1
    status = extension_status()
    torch.set_num_threads(args.threads)
    ops: Dict[str, OpFn] = {"ours": ms_deform_attn, "pytorch": ms_deform_attn_pytorch}
    peer = load_peer()
    if peer is None:
        print("peer not installed (torch-ms-deform-attn==0.1.1): comparing ours with pytorch only")
    else:
        ops["peer"] = peer
    load_before = os.getloadavg()[0]
    print(
        f"CPU: {cpu_model_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"N={args.batch}, Lq={args.queries}, {args.heads} heads x {args.channels} ch, {args.points} points, "
        f"float32, median of {args.repeats} interleaved repetitions after {args.warmup} warm-up runs; "
        f"ours: {status['cpu_isa']} kernels"
    )
    for case, levels in CASES.items():
        inputs = make_inputs(
            levels,
            batch=args.batch,
            queries=args.queries,
            heads=args.heads,
            channels=args.channels,
            points=args.points,
        )
        for label, make_fn in (("forward", forward_fn), ("forward+backward", forward_backward_fn)):
            fns = {name: make_fn(op, inputs) for name, op in ops.items()}
            reference = fns["pytorch"]()
            reference = reference if isinstance(reference, tuple) else (reference,)
            for name, fn in fns.items():
                result = fn()
                diff = max_difference(result if isinstance(result, tuple) else (result,), reference)
                if diff > 1e-3:
                    print(f"{name} disagrees with pytorch on {case} {label}: max |diff| {diff:.3g}")
                    return 1
            timings = benchmark(fns, warmup=args.warmup, repeats=args.repeats)
            print(f"\n{case}, {label}\n")
            print(format_table(timings, baseline="pytorch"))
    print(f"\nload average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    return 0
