"""``tools/gpu_selftest.py``: one command that checks a CUDA machine end to end.

On a machine with a CUDA GPU it

1. builds the CUDA kernels of ``brainseg._C`` when the installed extension has none
   (``FORCE_CUDA=1 setup.py build_ext`` for this GPU's architecture, into a temporary folder; the
   result replaces the package's ``_C`` file atomically, then the checks re-run in a fresh process,
   which loads it);
2. compares the CUDA multi-scale deformable-attention kernels with the CPU kernel (float64 on the
   CPU): the output and the gradients of value, sampling locations and attention weights, in
   float32 and float64, for one level, several levels with odd sizes, and Mask DINO R50's four
   levels, all with batch > 1 except the first;
3. trains UNeXt (``configs/lgg/unext_demo.py``) and the small Mask DINO
   (``projects/MaskDINO/configs/maskdino_small_lgg_demo.py``) for 50 iterations each with AMP
   (fp16 autocast + GradScaler: ``precision="auto"`` on CUDA) on synthetic slices (a noisy image with
   tumour discs; no dataset needed) and reports images/s.

Each check prints ``PASS``/``FAIL``/``SKIPPED`` with its numbers; the exit code is 0 when every
check passed, 1 otherwise. It is meant to take under 5 minutes on one GPU (the CUDA build, when
needed, takes most of it). Without a CUDA device it prints ``SKIPPED: no CUDA device``, lists what
was not checked and exits 0: skipped, not passed.

Verified on CPU only in development; the GPU path is untested on real hardware (the machines this
was written on have no GPU). The CPU parts (:func:`compare_kernels` with ``device="cpu"`` against the
pure-PyTorch reference, :func:`train_iterations` on the CPU, the report) are tested.

Usage::

    python tools/gpu_selftest.py [--iterations 50] [--no-build]
"""
import argparse
import dataclasses
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.engine import HookBase
from omegaconf import DictConfig

import brainseg
from brainseg.data.mapper import mask_to_instances
from brainseg.layers import MSDeformAttnFunction, extension_status, ms_deform_attn_pytorch
from brainseg.utils.cli import positive_int, run_cli
from brainseg.utils.config import load_config

from .defaults import with_train_defaults
from .trainer import BrainSegTrainer

__all__ = ["CheckResult", "KernelCase", "KERNEL_CASES", "TRAINING_CONFIGS", "compare_kernels",
           "train_iterations", "build_cuda_extension", "format_result", "main"]

PASS, FAIL, SKIPPED = "PASS", "FAIL", "SKIPPED"
REPO_ROOT = Path(brainseg.__file__).resolve().parents[1]
TRAINING_CONFIGS = ("configs/lgg/unext_demo.py", "projects/MaskDINO/configs/maskdino_small_lgg_demo.py")
# largest error allowed, relative to the largest reference value (gradients of the locations are
# scaled by the map sizes and the weights' gradients sum D products, so errors grow with range)
TOLERANCES = {torch.float32: 1e-4, torch.float64: 1e-10}


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of one check.

    Attributes:
        name: what was checked.
        status: ``"PASS"``, ``"FAIL"`` or ``"SKIPPED"``.
        detail: the numbers measured, or why it failed or was skipped.
        images_per_second: training speed (training checks only).
    """

    name: str
    status: str
    detail: str = ""
    images_per_second: Optional[float] = None

    @property
    def passed(self) -> bool:
        return self.status == PASS


def format_result(result: CheckResult) -> str:
    """One line: ``"PASS    <name>: <detail>"``."""
    return f"{result.status:<7} {result.name}" + (f": {result.detail}" if result.detail else "")


@dataclasses.dataclass(frozen=True)
class KernelCase:
    """Shapes of one deformable-attention comparison (names as in Deformable DETR)."""

    levels: Tuple[Tuple[int, int], ...]
    batch: int = 2
    queries: int = 40
    heads: int = 4
    channels: int = 8
    points: int = 4

    def describe(self) -> str:
        levels = ",".join(f"{h}x{w}" for h, w in self.levels)
        return (f"N={self.batch} L={len(self.levels)} ({levels}) Lq={self.queries} M={self.heads} "
                f"D={self.channels} P={self.points}")


KERNEL_CASES = (
    KernelCase(levels=((8, 8),), batch=1, queries=20, heads=2, channels=4, points=2),
    KernelCase(levels=((12, 10), (6, 5), (3, 3), (1, 1)), batch=2, queries=40, heads=4, channels=8, points=4),
    KernelCase(levels=((64, 64), (32, 32), (16, 16), (8, 8)), batch=2, queries=1000, heads=8, channels=32, points=4),
)


def _kernel_inputs(case: KernelCase, seed: int) -> List[torch.Tensor]:
    """float64 CPU inputs: value, spatial shapes, level starts, locations (partly outside the
    maps), weights, and the gradient of the output."""
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(case.levels, dtype=torch.int64)
    sizes = shapes.prod(1)
    starts = torch.cumsum(sizes, 0) - sizes
    n, lq, m, d, p, num_levels = case.batch, case.queries, case.heads, case.channels, case.points, len(case.levels)
    value = torch.randn(n, int(sizes.sum()), m, d, generator=generator, dtype=torch.float64)
    locations = torch.rand(n, lq, m, num_levels, p, 2, generator=generator, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(n, lq, m, num_levels, p, generator=generator, dtype=torch.float64)
    grad_output = torch.randn(n, lq, m * d, generator=generator, dtype=torch.float64)
    return [value, shapes, starts, locations, weights, grad_output]


def _output_and_gradients(op: Callable, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``op``'s output and the gradients of value, locations and weights, on the CPU in float64."""
    value, shapes, starts, locations, weights, grad_output = inputs
    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    output = op(leaves[0], shapes, starts, leaves[1], leaves[2])
    gradients = torch.autograd.grad(output, leaves, grad_output)
    return [t.detach().cpu().double() for t in (output, *gradients)]


def compare_kernels(device: Union[str, torch.device], dtype: torch.dtype,
                    shapes: Sequence[KernelCase] = KERNEL_CASES, *, seed: int = 0) -> List[CheckResult]:
    """Compare the compiled deformable-attention kernel on ``device`` with a float64 CPU reference.

    The reference is the C++ CPU kernel when ``device`` is a GPU, and the pure-PyTorch
    :func:`~brainseg.layers.ms_deform_attn_pytorch` when it is the CPU (checking the CPU kernel).
    Both see the same inputs (rounded to ``dtype``); the error of the output and of each gradient
    is its largest absolute difference divided by ``max(1, largest reference value)``.

    Args:
        device: where the kernel under test runs (``"cuda"``, ``"cpu"``).
        dtype: the kernel's dtype (float32 or float64).
        shapes: the cases compared.
        seed: seed of the random inputs.

    Returns:
        one result per case: PASS when every error is within :data:`TOLERANCES`.
    """
    device = torch.device(device)
    status = extension_status()
    missing = None if status["cpu"] else f"brainseg._C is not available ({status['error']}); run `make install`"
    if missing is None and device.type == "cuda" and not status["cuda"]:
        missing = "brainseg._C was built without CUDA kernels"
    reference_op = MSDeformAttnFunction.apply if device.type == "cuda" else ms_deform_attn_pytorch
    label = f"ms_deform_attn {device.type} {str(dtype).replace('torch.', '')} vs " + (
        "CPU kernel" if device.type == "cuda" else "PyTorch")
    tolerance = TOLERANCES[dtype]
    results = []
    for index, case in enumerate(shapes):
        name = f"{label} {case.describe()}"
        if missing is not None:
            results.append(CheckResult(name, FAIL, missing))
            continue
        inputs = [t.to(dtype) if t.is_floating_point() else t for t in _kernel_inputs(case, seed + index)]
        try:
            expected = _output_and_gradients(reference_op, [t.double() if t.is_floating_point() else t for t in inputs])
            got = _output_and_gradients(MSDeformAttnFunction.apply, [t.to(device) for t in inputs])
        except Exception as e:  # a kernel that crashes fails its check; the others still run
            results.append(CheckResult(name, FAIL, f"{type(e).__name__}: {e}"))
            continue
        errors = {}
        for what, a, b in zip(("output", "grad_value", "grad_locations", "grad_weights"), got, expected):
            errors[what] = float("inf") if a.shape != b.shape else \
                float((a - b).abs().max()) / max(1.0, float(b.abs().max()))
        ok = all(error <= tolerance for error in errors.values())  # NaN fails
        detail = ", ".join(f"{what} {error:.1e}" for what, error in errors.items())
        results.append(CheckResult(name, PASS if ok else FAIL,
                                   f"max relative error {detail} ({'<=' if ok else '>'} {tolerance:g})"))
    return results


def synthetic_batches(batch_size: int, size: int, *, count: int = 4, seed: int = 0) -> List[List[dict]]:
    """``count`` training batches in the dataset mapper's format: noisy uint8 (3, size, size)
    images with one or two bright tumour discs, their 0/1 ``sem_seg`` and ``instances``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    batches = []
    for _ in range(count):
        batch = []
        for _ in range(batch_size):
            mask = np.zeros((size, size), np.uint8)
            for _ in range(int(rng.integers(1, 3))):
                cy, cx = rng.integers(size // 8, size - size // 8, 2)
                radius = rng.integers(max(2, size // 32), max(3, size // 8))
                mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = 1
            image = rng.integers(0, 100, (3, size, size)) + 100 * mask
            batch.append({"image": torch.from_numpy(image.astype(np.uint8)), "height": size, "width": size,
                          "sem_seg": torch.from_numpy(mask.astype(np.int64)), "instances": mask_to_instances(mask)})
        batches.append(batch)
    return batches


class _StepClock(HookBase):
    """Time stamps before training and after every step (after the GPU finished it)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: List[float] = []

    def _stamp(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())

    def before_train(self) -> None:
        self._stamp()

    def after_step(self) -> None:
        self._stamp()


def _image_size(cfg: DictConfig) -> int:
    """The training resolution: the mapper's ``resize_to``, else LGG's 256."""
    try:
        return int(cfg.dataloader.train.mapper.augmentations.get("resize_to") or 256)
    except (AttributeError, KeyError):
        return 256


def train_iterations(config: Union[str, os.PathLike, DictConfig], device: Union[str, torch.device],
                     iterations: int, *, overrides: Sequence[str] = (), precision: str = "auto") -> CheckResult:
    """Train the config's model for ``iterations`` steps on synthetic batches.

    Uses the config's model, optimizer, ``dataloader.train.total_batch_size``, training resolution
    (``dataloader.train.mapper.augmentations.resize_to``, default 256) and
    ``train.clip_grad_norm``; no data set is read.

    Args:
        config: a LazyConfig file (relative paths from the repository root) or a loaded config.
        device: where to train.
        iterations: training steps; images/s is measured after ``min(5, iterations // 2)`` warm-up steps.
        overrides: ``key=value`` overrides of a config file.
        precision: "auto" (fp16 AMP on CUDA), "fp32", "bf16" or "fp16".

    Returns:
        PASS with images/s when training ran; FAIL with the error otherwise (a NaN or infinite loss
        stops the trainer with :class:`~brainseg.engine.trainer.NonFiniteLossError`).
    """
    device = torch.device(device)
    if isinstance(config, DictConfig):
        cfg, label = config, "config"
    else:
        path = Path(config) if Path(config).is_absolute() else REPO_ROOT / config
        cfg, label = load_config(str(path), list(overrides)), str(config)
    with_train_defaults(cfg)
    name = f"train {label} ({iterations} iterations on {device.type})"
    try:
        model = instantiate(cfg.model).to(device).train()
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        batch_size, size = int(cfg.dataloader.train.total_batch_size), _image_size(cfg)
        batches = synthetic_batches(batch_size, size)
        trainer = BrainSegTrainer(model, itertools.cycle(batches), optimizer, precision=precision, device=str(device),
                                  clip_grad_norm=cfg.train.get("clip_grad_norm"))
        clock = _StepClock(device)
        trainer.register_hooks([clock])
        trainer.train(0, iterations)
    except Exception as e:  # any failure (build, OOM, NaN loss, kernel error) fails this check only
        return CheckResult(name, FAIL, f"{type(e).__name__}: {e}")
    losses = [value for value, _ in trainer.storage.history("total_loss").values()]
    warmup = min(5, iterations // 2)
    images_per_second = batch_size * (iterations - warmup) / (clock.times[-1] - clock.times[warmup])
    return CheckResult(name, PASS, f"{images_per_second:.1f} img/s (batch {batch_size}, {size}px, "
                                   f"{trainer.precision.describe()}), loss {losses[0]:.3f} -> {losses[-1]:.3f}",
                       images_per_second=images_per_second)


def build_cuda_extension() -> Tuple[CheckResult, bool]:
    """Build ``brainseg._C`` with CUDA for this GPU when the installed one has no CUDA kernels.

    Returns:
        the result, and whether a new extension was installed (the running process still has the
        old one loaded: check it in a new process).
    """
    name = "CUDA build of brainseg._C"
    if extension_status()["cuda"]:
        return CheckResult(name, PASS, "the installed extension has CUDA kernels (not rebuilt)"), False
    if not (REPO_ROOT / "setup.py").is_file():
        return CheckResult(name, FAIL, f"no setup.py in {REPO_ROOT}: reinstall from a source checkout with "
                                       "FORCE_CUDA=1 pip install -e ."), False
    major, minor = torch.cuda.get_device_capability()
    env = dict(os.environ, FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=f"{major}.{minor}")
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="brainseg-cuda-build-") as build_dir:
        command = [sys.executable, "setup.py", "build_ext", "--build-temp", os.path.join(build_dir, "temp"),
                   "--build-lib", os.path.join(build_dir, "lib")]
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        built = sorted(Path(build_dir, "lib", "brainseg").glob("_C*.so"))
        if done.returncode != 0 or not built:
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            return CheckResult(name, FAIL, f"setup.py build_ext failed (exit {done.returncode}): {tail}"), False
        target = Path(brainseg.__file__).resolve().parent / built[0].name
        staged = target.with_name(target.name + ".new")
        shutil.copy2(built[0], staged)
        os.replace(staged, target)  # atomic: processes that loaded the old file keep it
    return CheckResult(name, PASS, f"built for compute capability {major}.{minor} in "
                                   f"{time.perf_counter() - start:.0f} s, installed as {target}"), True


def _print(result: CheckResult, results: List[CheckResult]) -> None:
    results.append(result)
    print(format_result(result), flush=True)


def _not_checked(iterations: int) -> List[str]:
    return ["CUDA build of brainseg._C",
            f"ms_deform_attn CUDA vs CPU kernel, float32 and float64, {len(KERNEL_CASES)} shapes",
            *(f"{iterations} training iterations with AMP of {config}" for config in TRAINING_CONFIGS)]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--iterations", type=positive_int, default=50,
                        help="training iterations per model (default 50)")
    parser.add_argument("--no-build", action="store_true", help="use the installed brainseg._C as it is")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/gpu_selftest.py``: returns 0 when every check passed (or there is no GPU), else 1."""
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA device (torch.cuda.is_available() is False)")
        for what in _not_checked(args.iterations):
            print(f"SKIPPED: not checked: {what}")
        print("Nothing was checked: exit code 0 means skipped, not passed.")
        return 0
    start = time.perf_counter()
    major, minor = torch.cuda.get_device_capability()
    print(f"GPU: {torch.cuda.get_device_name()} (compute capability {major}.{minor}), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}", flush=True)
    results: List[CheckResult] = []
    if not args.no_build:
        build, rebuilt = build_cuda_extension()
        _print(build, results)
        if not build.passed:
            return 1
        if rebuilt:  # this process still holds the old extension: check the new one in a fresh one
            return subprocess.call([sys.executable, "-m", "brainseg.engine.gpu_selftest", "--no-build",
                                    "--iterations", str(args.iterations)])
    for dtype in (torch.float32, torch.float64):
        for result in compare_kernels("cuda", dtype, KERNEL_CASES):
            _print(result, results)
    for config in TRAINING_CONFIGS:
        _print(train_iterations(config, "cuda", args.iterations), results)
    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed in {time.perf_counter() - start:.0f} s: "
          f"{'PASS' if not failed else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":  # the fresh process that checks a newly built extension
    sys.exit(run_cli(main))
