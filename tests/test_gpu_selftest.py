"""tools/gpu_selftest.py's CPU-side parts: the kernel comparison (which can fail), training
iterations on the CPU, the report, the exit codes, and the no-GPU path (SKIPPED, exit 0)."""
import math
import re
import subprocess

import pytest
import torch

from brainseg.engine import gpu_selftest
from brainseg.engine.gpu_selftest import (
    KERNEL_CASES,
    CheckResult,
    compare_kernels,
    format_result,
    main,
    synthetic_batches,
    train_iterations,
)
from brainseg.layers import MSDeformAttnFunction

SMALL_CASES = KERNEL_CASES[:2]  # one level, batch 1; four levels with odd sizes, batch 2
TINY_UNEXT = ["model.net.conv_channels=[4,8,16]", "model.net.token_channels=[16,24]",
              "dataloader.train.total_batch_size=2", "dataloader.train.mapper.augmentations.resize_to=32"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_cpu_kernel_passes_against_the_pytorch_reference(dtype):
    results = compare_kernels("cpu", dtype, SMALL_CASES)
    assert [r.status for r in results] == ["PASS", "PASS"], [format_result(r) for r in results]
    assert "L=4 (12x10,6x5,3x3,1x1)" in results[1].name and "N=2" in results[1].name
    assert all(what in results[0].detail for what in ("output", "grad_value", "grad_locations", "grad_weights"))


class _WrongOutput:
    @staticmethod
    def apply(value, shapes, starts, locations, weights):
        return MSDeformAttnFunction.apply(value, shapes, starts, locations, weights) * 1.001


class _WrongLocationGradient:
    """Right output, half the gradient of the sampling locations."""

    @staticmethod
    def apply(value, shapes, starts, locations, weights):
        half = 0.5 * locations + 0.5 * locations.detach()
        return MSDeformAttnFunction.apply(value, shapes, starts, half, weights)


class _Crashing:
    @staticmethod
    def apply(*inputs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_wrong_kernel_fails_the_check(monkeypatch):
    monkeypatch.setattr(gpu_selftest, "MSDeformAttnFunction", _WrongOutput)
    results = compare_kernels("cpu", torch.float64, SMALL_CASES)
    assert [r.status for r in results] == ["FAIL", "FAIL"] and "(> 1e-10)" in results[0].detail
    monkeypatch.setattr(gpu_selftest, "MSDeformAttnFunction", _WrongLocationGradient)
    result = compare_kernels("cpu", torch.float32, SMALL_CASES[1:])[0]
    errors = {name: float(value) for name, value in re.findall(r"(output|grad_\w+) ([-+.e\d]+)", result.detail)}
    assert result.status == "FAIL" and errors["output"] < 1e-4 < errors["grad_locations"], result.detail


def test_a_crashing_kernel_fails_its_checks_and_the_others_still_run(monkeypatch):
    monkeypatch.setattr(gpu_selftest, "MSDeformAttnFunction", _Crashing)
    results = compare_kernels("cpu", torch.float32, SMALL_CASES)
    assert [r.status for r in results] == ["FAIL", "FAIL"]
    assert results[0].detail == "RuntimeError: CUDA error: an illegal memory access was encountered"


def test_cuda_kernels_missing_from_the_extension_fail_without_touching_a_gpu(monkeypatch):
    monkeypatch.setattr(gpu_selftest, "extension_status", lambda: {"cpu": True, "cuda": False, "error": None})
    results = compare_kernels("cuda", torch.float32, SMALL_CASES)
    assert [r.status for r in results] == ["FAIL", "FAIL"]
    assert results[0].detail == "brainseg._C was built without CUDA kernels"
    assert results[0].name.startswith("ms_deform_attn cuda float32 vs CPU kernel N=1 L=1 (8x8)")


def test_result_lines():
    assert format_result(CheckResult("kernel", "PASS", "error 1e-7")) == "PASS    kernel: error 1e-7"
    assert format_result(CheckResult("train", "FAIL")) == "FAIL    train"
    assert format_result(CheckResult("build", "SKIPPED", "no CUDA device")) == "SKIPPED build: no CUDA device"
    assert CheckResult("x", "PASS").passed and not CheckResult("x", "SKIPPED").passed


def test_synthetic_batches_follow_the_mapper_format():
    batches = synthetic_batches(3, 48, count=2)
    assert len(batches) == 2 and len(batches[0]) == 3
    record = batches[0][0]
    assert record["image"].dtype == torch.uint8 and record["image"].shape == (3, 48, 48)
    union = record["instances"].gt_masks.tensor.any(0)
    assert len(record["instances"]) >= 1 and torch.equal(union, record["sem_seg"].bool())


def test_a_few_training_iterations_on_the_cpu_give_a_finite_speed():
    result = train_iterations("configs/lgg/unext_demo.py", "cpu", 3, overrides=TINY_UNEXT, precision="fp32")
    assert result.status == "PASS", result.detail
    assert math.isfinite(result.images_per_second) and result.images_per_second > 0
    assert result.name == "train configs/lgg/unext_demo.py (3 iterations on cpu)"
    assert "img/s (batch 2, 32px, fp32" in result.detail


def test_a_training_that_cannot_run_fails_its_check():
    result = train_iterations("configs/lgg/unext_demo.py", "cpu", 2, overrides=TINY_UNEXT, precision="fp16")
    assert result.status == "FAIL" and result.detail.startswith("ConfigError: precision 'fp16' is for CUDA")


def test_without_a_gpu_everything_is_skipped_and_the_exit_code_is_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_selftest, "compare_kernels", pytest.fail)  # nothing may run
    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("SKIPPED: no CUDA device")
    assert lines[-1] == "Nothing was checked: exit code 0 means skipped, not passed."
    assert any("maskdino_small_lgg_demo.py" in line for line in lines)
    assert not any(line.startswith(("PASS", "FAIL")) for line in lines)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA machine whose checks return what the test sets."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (8, 0))
    monkeypatch.setattr(gpu_selftest, "build_cuda_extension", lambda: (CheckResult("build", "PASS"), False))
    monkeypatch.setattr(gpu_selftest, "compare_kernels",
                        lambda device, dtype, shapes: [CheckResult(f"kernel {dtype}", "PASS")])
    training = {}
    monkeypatch.setattr(gpu_selftest, "train_iterations",
                        lambda config, device, iterations: CheckResult(f"train {config}", training.get(config, "PASS"),
                                                                       "123.4 img/s"))
    return training


def test_all_checks_passing_exit_0_and_any_failure_exits_1(fake_gpu, capsys):
    assert main(["--no-build"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("GPU: Fake GPU (compute capability 8.0)")
    assert "PASS    train configs/lgg/unext_demo.py: 123.4 img/s" in out
    assert out.rstrip().splitlines()[-1].startswith("4 passed, 0 failed")
    fake_gpu["projects/MaskDINO/configs/maskdino_small_lgg_demo.py"] = "FAIL"
    assert main([]) == 1
    out = capsys.readouterr().out
    assert "PASS    build" in out and out.rstrip().endswith("FAIL")


def test_a_failed_build_stops_with_exit_1(fake_gpu, monkeypatch, capsys):
    monkeypatch.setattr(gpu_selftest, "build_cuda_extension", lambda: (CheckResult("build", "FAIL", "nvcc"), False))
    assert main([]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "FAIL    build: nvcc"


def test_a_build_failure_reports_the_compiler_output(monkeypatch):
    monkeypatch.setattr(gpu_selftest, "extension_status", lambda: {"cpu": True, "cuda": False, "error": None})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (9, 0))
    calls = []

    def failing_build(command, **kwargs):
        calls.append((command, kwargs["env"]))
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="nvcc fatal: unsupported gpu architecture")

    monkeypatch.setattr(gpu_selftest.subprocess, "run", failing_build)
    result, rebuilt = gpu_selftest.build_cuda_extension()
    assert result.status == "FAIL" and not rebuilt
    assert result.detail == "setup.py build_ext failed (exit 1): nvcc fatal: unsupported gpu architecture"
    (command, env), = calls
    assert command[1:3] == ["setup.py", "build_ext"] and env["FORCE_CUDA"] == "1"
    assert env["TORCH_CUDA_ARCH_LIST"] == "9.0"


def test_an_extension_with_cuda_is_not_rebuilt(monkeypatch):
    monkeypatch.setattr(gpu_selftest, "extension_status", lambda: {"cpu": True, "cuda": True, "error": None})
    monkeypatch.setattr(gpu_selftest.subprocess, "run", pytest.fail)
    result, rebuilt = gpu_selftest.build_cuda_extension()
    assert result.status == "PASS" and not rebuilt
