#!/usr/bin/env python
"""Check that the CUDA kernels of ``brainseg._C`` compile (and run, if a GPU is visible).

``make install`` builds the CPU extension only unless a GPU is visible, so this script
is what proves the CUDA sources (``brainseg/layers/csrc/**/*.cu``) compile: it runs
``FORCE_CUDA=1 setup.py build_ext`` into a temporary directory (the installed
extension is left alone), loads the result and checks it reports CUDA support and
still runs on CPU tensors. When a GPU is visible it also compares the CUDA kernel
with the CPU kernel, forward and backward. Without a GPU (this project's CI) the
CUDA kernels are compiled but never executed.

Usage::

    python tools/check_cuda_build.py [--arch 8.0] [--keep-build-dir]

Prints ``nvcc not found: skipped`` and exits 0 when there is no CUDA toolkit; exits
1 with the compiler's output when the build fails.
"""
import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_setup_module():
    """Import setup.py without running setup() (it is guarded by ``__main__``)."""
    spec = importlib.util.spec_from_file_location("brainseg_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(build_dir: Path, arch: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=arch)
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    cmd = [
        sys.executable,
        "setup.py",
        "build_ext",
        "--build-temp",
        str(build_dir / "temp"),
        "--build-lib",
        str(build_dir / "lib"),
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)


def load_built_extension(build_dir: Path):
    import torch  # noqa: F401  (loads libtorch and the CUDA runtime the extension links to)

    candidates = sorted((build_dir / "lib" / "brainseg").glob("_C*.so"))
    if not candidates:
        raise RuntimeError(f"no brainseg/_C*.so under {build_dir / 'lib'}")
    spec = importlib.util.spec_from_file_location("brainseg._C", candidates[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smoke_test(ext) -> str:
    """Run the built extension on CPU (and on the GPU if there is one); describe what ran."""
    import torch

    torch.manual_seed(0)
    shapes = torch.tensor([[6, 5], [3, 2], [1, 1]])
    starts = torch.tensor([0, 30, 36])
    value = torch.randn(2, 37, 2, 4, dtype=torch.float64)
    locations = torch.rand(2, 7, 2, 3, 2, 2, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(2, 7, 2, 3, 2, dtype=torch.float64)
    grad = torch.randn(2, 7, 8, dtype=torch.float64)
    cpu_out = ext.ms_deform_attn_forward(value, shapes, starts, locations, weights)
    cpu_grads = ext.ms_deform_attn_backward(value, shapes, starts, locations, weights, grad)
    if not torch.cuda.is_available():
        return "CPU kernel ran; CUDA kernels not run (no GPU visible)"
    to_gpu = [t.cuda() for t in (value, shapes, starts, locations, weights, grad)]
    gpu_out = ext.ms_deform_attn_forward(*to_gpu[:5])
    gpu_grads = ext.ms_deform_attn_backward(*to_gpu)
    for name, a, b in zip(
        ("output", "grad_value", "grad_locations", "grad_weights"), [cpu_out, *cpu_grads], [gpu_out, *gpu_grads]
    ):
        if not torch.allclose(a, b.cpu(), atol=1e-10):
            raise RuntimeError(f"CUDA {name} differs from CPU by {(a - b.cpu()).abs().max().item():.3g}")
    return "CUDA kernels ran on the GPU and match the CPU kernel"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch",
        default=os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0"),
        help="TORCH_CUDA_ARCH_LIST for the check (one arch keeps it fast; default 8.0)",
    )
    parser.add_argument("--keep-build-dir", action="store_true", help="keep and print the build directory")
    args = parser.parse_args()

    cuda_home = load_setup_module().find_cuda_home()
    if cuda_home is None:
        print("nvcc not found: skipped")
        return 0
    build_dir = Path(tempfile.mkdtemp(prefix="brainseg-cuda-build-"))
    try:
        start = time.perf_counter()
        result = build(build_dir, args.arch)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            output = (result.stdout + result.stderr).splitlines()
            print("\n".join(output[-60:]), file=sys.stderr)
            print(f"CUDA build FAILED after {seconds:.0f} s (CUDA_HOME={cuda_home}, arch {args.arch})")
            return 1
        ext = load_built_extension(build_dir)
        if not ext.ms_deform_attn_has_cuda():
            print("CUDA build FAILED: the built brainseg._C reports no CUDA support")
            return 1
        ran = smoke_test(ext)
        print(f"CUDA build OK: brainseg._C compiled with CUDA (CUDA_HOME={cuda_home}, arch {args.arch}) "
              f"in {seconds:.0f} s; {ran}")
        return 0
    except Exception as e:  # report one readable line, as CLIs here do
        print(f"CUDA build check FAILED: {e}")
        return 1
    finally:
        if args.keep_build_dir:
            print(f"build directory kept: {build_dir}")
        else:
            shutil.rmtree(build_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
