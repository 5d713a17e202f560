"""Build and install brainseg, with its C++/CUDA extension ``brainseg._C``.

The extension holds the multi-scale deformable attention kernels
(``brainseg/layers/csrc``):

* The C++ CPU kernels are always built (a few seconds on 2 cores).
* The CUDA kernels are built only when ``FORCE_CUDA=1`` is set, or when torch is a
  CUDA build *and* a GPU is visible (``torch.cuda.is_available()``), and a CUDA toolkit
  is found (``CUDA_HOME``/``CUDA_PATH``, ``nvcc`` on ``PATH`` or ``/usr/local/cuda``).
  A toolkit alone is not enough: CPU-only machines with nvcc installed keep the quick
  CPU build, and ``tools/check_cuda_build.py`` proves the CUDA sources compile.
  ``TORCH_CUDA_ARCH_LIST`` is honoured by torch's cpp_extension; the nvidia pip
  wheels' ``include`` dirs (cusparse.h etc. needed by torch's CUDA headers) are added.
* ``BRAINSEG_NO_EXT=1`` installs the pure-Python package only (the ops then fall back
  to PyTorch with a warning).

Usage: ``pip install --no-deps --no-build-isolation -e .`` (what ``make install`` runs)
or ``python setup.py build_ext --inplace``.
"""
import glob
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "brainseg" / "layers" / "csrc"


def find_cuda_home() -> Optional[str]:
    """Locate a CUDA toolkit: env vars first, then ``nvcc`` on PATH, then /usr/local/cuda.

    A candidate counts only if it holds ``bin/nvcc`` and ``include/cuda_runtime.h``:
    an ``nvcc`` on PATH may be a wrapper script (e.g. /usr/local/bin/nvcc) whose
    parent directory is not the toolkit.
    """

    def is_toolkit(path: Path) -> bool:
        return (path / "bin" / "nvcc").exists() and (path / "include" / "cuda_runtime.h").exists()

    candidates = [os.environ.get(var) for var in ("CUDA_HOME", "CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for path in candidates:
        if path and is_toolkit(Path(path)):
            return path
    return None


def nvidia_pip_include_dirs() -> List[str]:
    """Header dirs shipped by NVIDIA's pip wheels (cusparse.h etc. for torch's CUDA headers)."""
    dirs = []
    for site in sys.path:
        for pattern in ("nvidia/cu*/include", "nvidia/*/include"):
            dirs.extend(sorted(glob.glob(os.path.join(site, pattern))))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def get_extensions() -> list:
    """Return the extension modules to build (empty when there are no sources)."""
    if os.environ.get("BRAINSEG_NO_EXT") == "1":
        return []
    sources = sorted(glob.glob(str(CSRC / "**" / "*.cpp"), recursive=True))
    if not sources:
        return []
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cuda_sources = sorted(glob.glob(str(CSRC / "**" / "*.cu"), recursive=True))
    cuda_home = find_cuda_home()
    force_cuda = os.environ.get("FORCE_CUDA") == "1"
    gpu_visible = bool(cuda_home and torch.version.cuda and torch.cuda.is_available())
    use_cuda = bool(cuda_sources) and (force_cuda or gpu_visible)
    if use_cuda and not cuda_home:
        sys.exit("setup.py: FORCE_CUDA=1 but no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)")

    extra_compile_args = {"cxx": ["-O3", "-std=c++20"]}
    if sys.platform.startswith("linux"):
        extra_compile_args["cxx"].append("-fopenmp")
    define_macros = []
    include_dirs = [str(CSRC)]
    rel = lambda paths: [os.path.relpath(p, ROOT) for p in paths]  # noqa: E731
    if use_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        import torch.utils.cpp_extension as cpp_ext

        cpp_ext.CUDA_HOME = cuda_home
        include_dirs += nvidia_pip_include_dirs()
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = [
            "-O3",
            "-std=c++20",
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__",
        ]
        return [
            CUDAExtension(
                "brainseg._C",
                rel(sources + cuda_sources),
                include_dirs=include_dirs,
                define_macros=define_macros,
                extra_compile_args=extra_compile_args,
                extra_link_args=["-fopenmp"] if sys.platform.startswith("linux") else [],
            )
        ]
    return [
        CppExtension(
            "brainseg._C",
            rel(sources),
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": extra_compile_args["cxx"]},
            extra_link_args=["-fopenmp"] if sys.platform.startswith("linux") else [],
        )
    ]


def project_packages() -> Dict[str, str]:
    """The Python packages of ``projects/<Name>/`` (e.g. ``projects/MaskDINO/maskdino``), each
    installed under its own name (``import maskdino``): a new project needs no edit here.

    Returns:
        {package name: its folder relative to the repository}, subpackages included.
    """
    mapping = {}
    for project in sorted((ROOT / "projects").iterdir()):
        if not project.is_dir():
            continue
        for package in find_packages(str(project), exclude=("tests", "tests.*", "configs", "configs.*")):
            mapping[package] = str(Path("projects", project.name, *package.split(".")))
    return mapping


def get_cmdclass() -> dict:
    """Use torch's BuildExtension (ninja) when there is something to build."""
    if not get_extensions():
        return {}
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


if __name__ == "__main__":  # setuptools runs this file as __main__; tools/check_cuda_build.py imports it
    setup(
        name="brainseg",
        version="0.1.0",
        description="Detectron2-based brain-tumour segmentation toolkit for LGG MRI",
        python_requires=">=3.10",
        packages=find_packages(exclude=("tests", "configs", "tools", "projects", "datasets")) + list(project_packages()),
        package_dir=project_packages(),
        package_data={"brainseg": ["layers/csrc/**/*"]},
        ext_modules=get_extensions(),
        cmdclass=get_cmdclass(),
        zip_safe=False,
    )
