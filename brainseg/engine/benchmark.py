"""Benchmark a brainseg model: training and inference speed, FLOP rate and peak memory.

Usage::

    python tools/benchmark.py --config-file configs/lgg/unext.py [--batch 8] [--size 256]
        [--threads 2] [--repeats 12] [--warmup 3] [--compile] [key=value ...]
    python tools/benchmark.py ms_deform_attn [args]   # brainseg.layers.benchmark
    python tools/benchmark.py loader --config-file configs/lgg/unext_demo.py   # brainseg.data.benchmark

The model is ``instantiate(cfg.model)`` after the ``key=value`` overrides (detectron2 lazy
syntax, e.g. ``model.channels_last=False``). Inputs are dataset-mapper-style dicts (uint8
images, 0/1 ``sem_seg`` with tumour blobs). Phases run in this order, each timed with
:func:`brainseg.utils.benchmark.benchmark` (warm-up, then the median of the repetitions):

* ``inference``: ``model.eval()``, ``torch.no_grad()``, the full ``model(inputs)``
  (normalisation, padding, net, resizing, connected components);
* ``inference (compiled)`` with ``--compile``: the same with ``model.compile_inference=True``;
* ``training``: forward, sum of the losses, backward and an Adam step.

By default glibc's malloc is tuned first (:func:`brainseg.utils.malloc.tune_glibc_malloc`; ``--no-tune-malloc``
keeps the defaults). Reported per phase: images/s, median ms per batch, median process CPU
time per batch (all threads; with ``--threads 1`` it measures the work itself even on a busy
machine), GFLOP/s (matmul/conv FLOPs counted with ``torch.utils.flop_counter`` for one batch,
divided by the median time) and the peak RSS of the process up to the end of the phase.
"""

import argparse
import os
import resource
import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch
from detectron2.config import LazyConfig, instantiate
from torch.utils.flop_counter import FlopCounterMode

from brainseg.data import benchmark as loader_benchmark
from brainseg.layers import benchmark as ms_deform_attn_benchmark
from brainseg.utils.benchmark import benchmark, cpu_model_name
from brainseg.utils.errors import ConfigError
from brainseg.utils.malloc import tune_glibc_malloc

__all__ = ["main", "make_inputs", "build_phases"]

def make_inputs(batch: int, size: int, *, seed: int = 0) -> List[Dict]:
    """Mapper-style inputs: random uint8 (3, size, size) images and 0/1 masks with a disk."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inputs = []
    for _ in range(batch):
        cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=generator).tolist()
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < (size // 8) ** 2).long()
        image = torch.randint(0, 200, (3, size, size), dtype=torch.uint8, generator=generator)
        image[:, mask.bool()] += 50
        inputs.append({"image": image, "sem_seg": mask, "height": size, "width": size})
    return inputs


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def build_phases(model: torch.nn.Module, inputs: List[Dict], *, compiled: bool) -> Dict[str, Callable[[], object]]:
    """The timed units of work, by phase name."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def inference(compile_inference: bool) -> Callable[[], object]:
        def run():
            model.eval()
            model.compile_inference = compile_inference
            with torch.no_grad():
                return model(inputs)

        return run

    def training():
        model.train()
        losses = model(inputs)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return total

    phases = {"inference": inference(False)}
    if compiled:
        phases["inference (compiled)"] = inference(True)
    phases["training"] = training
    return phases


def run_model_benchmark(args: argparse.Namespace) -> int:
    malloc_tuned = tune_glibc_malloc() if args.tune_malloc else False
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = instantiate(cfg.model).to(device)
    inputs = make_inputs(args.batch, args.size)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else None
    cpu_name = cpu_model_name()
    params = sum(p.numel() for p in model.parameters())
    load_before = os.getloadavg()

    rows = []
    for name, fn in build_phases(model, inputs, compiled=args.compile).items():
        flops = count_flops(fn)
        timing = benchmark({name: fn}, warmup=args.warmup, repeats=args.repeats, synchronize=synchronize)[name]
        cpu_ms = timing.cpu_median * 1e3
        if name == "inference (compiled)" and not model.compile_inference:
            name = "inference (compile failed: eager)"
        rows.append(
            (name, args.batch / timing.median, timing.median * 1e3, cpu_ms, flops / timing.median / 1e9, peak_rss_mb())
        )

    net = type(getattr(model, "net", model)).__name__
    print(
        f"{net} ({params / 1e6:.3f} M parameters) from {args.config_file} {' '.join(args.opts)}\n"
        f"device {device} ({cpu_name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"batch {args.batch} x 3 x {args.size} x {args.size}, float32, median of {args.repeats} runs "
        f"after {args.warmup} warm-up runs; glibc malloc tuned: {malloc_tuned}; "
        f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}\n"
    )
    print("| phase | images/s | ms/batch | CPU ms/batch | GFLOP/s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, images_per_s, ms, cpu_ms, gflops, rss in rows:
        print(f"| {name} | {images_per_s:.1f} | {ms:.1f} | {cpu_ms:.0f} | {gflops:.1f} | {rss:.0f} |")
    return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, help="LazyConfig .py file with cfg.model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--compile", action="store_true", help="also time inference with torch.compile")
    parser.add_argument(
        "--no-tune-malloc",
        dest="tune_malloc",
        action="store_false",
        help="keep glibc's default malloc thresholds (see tune_glibc_malloc)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return parser.parse_args(argv)


def main(argv: Sequence[str] = None) -> int:
    """``tools/benchmark.py``: prints the tables; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    subcommands = {"ms_deform_attn": ms_deform_attn_benchmark.main, "loader": loader_benchmark.main}
    if argv and argv[0] in subcommands:
        return subcommands[argv[0]](argv[1:])
    args = parse_args(argv)
    if not Path(args.config_file).is_file():
        raise ConfigError(f"config file not found: {args.config_file}")
    return run_model_benchmark(args)
