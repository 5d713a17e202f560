"""Precision policies: what "auto" picks on which machine (CPU detection mocked), explicit values,
errors, the train.precision / train.amp.enabled precedence, and bf16 training and prediction."""
import itertools
import logging
import math

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from torch import nn

from brainseg.engine import BrainSegTrainer
from brainseg.engine.defaults import TRAIN_DEFAULTS, resolve_train_precision
from brainseg.inference.predictor import SlicePredictor
from brainseg.modeling import BrainSegSemantic
from brainseg.modeling.losses import BCEDiceLoss
from brainseg.modeling.nets import UNeXt
from brainseg.utils import precision as precision_module
from brainseg.utils.errors import ConfigError
from brainseg.utils.precision import (
    PrecisionPolicy,
    cpu_supports_native_bf16,
    native_bf16_flags,
    resolve_precision,
    to_float32,
)

AMX_XEON = "fpu vme sse sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8"
AVX512_BF16_ONLY = "fpu sse2 avx avx2 avx512f avx512bw avx512_bf16"
AVX2_EPYC = "fpu vme sse sse2 avx avx2 fma bmi2 sha_ni"


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend to run on a CPU with the given /proc/cpuinfo flags, no kernel limits set."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(name, raising=False)

    def pretend(flags: str) -> None:
        monkeypatch.setattr(precision_module, "_read_cpu_flags", lambda: flags)

    return pretend


# ---------------------------------------------------------------- detection


def test_bf16_flags_are_read_from_the_flags_text():
    assert native_bf16_flags(AMX_XEON) == ("amx_bf16", "avx512_bf16")
    assert native_bf16_flags(AVX512_BF16_ONLY) == ("avx512_bf16",)
    assert native_bf16_flags(AVX2_EPYC) == ()
    assert native_bf16_flags("amx_bf16x avx512_bf16_extra") == ()  # whole words only


def test_this_machine_reports_flags_and_a_consistent_answer():
    flags = precision_module._read_cpu_flags()
    assert flags.split()  # /proc/cpuinfo (or torch's cpuinfo) was read
    assert isinstance(cpu_supports_native_bf16(), bool)


@pytest.mark.parametrize("flags, reason", [(AMX_XEON, "CPU has AMX-BF16"), (AVX512_BF16_ONLY, "CPU has AVX512-BF16")])
def test_auto_picks_bf16_on_a_cpu_with_native_bf16(cpu_flags, flags, reason):
    cpu_flags(flags)
    policy = resolve_precision("auto", "cpu")
    assert (policy.name, policy.dtype, policy.device_type) == ("bf16", torch.bfloat16, "cpu")
    assert policy.enabled and not policy.use_grad_scaler
    assert policy.describe() == f"bf16 autocast ({reason})"
    assert cpu_supports_native_bf16()


def test_auto_picks_fp32_on_an_avx2_only_cpu(cpu_flags):
    cpu_flags(AVX2_EPYC)
    policy = resolve_precision("auto", torch.device("cpu"))
    assert (policy.name, policy.dtype, policy.enabled) == ("fp32", None, False)
    assert policy.describe() == "fp32 (no native bf16 on this CPU)"
    assert not cpu_supports_native_bf16()


@pytest.mark.parametrize("isa, native", [("AVX2", False), ("avx2", False), ("AVX512_CORE", False),
                                         ("AVX512_CORE_VNNI", False), ("AVX512_CORE_BF16", True),
                                         ("AVX512_CORE_AMX", True), ("ALL", True)])
def test_onednn_held_below_bf16_makes_auto_fp32(cpu_flags, monkeypatch, isa, native):
    cpu_flags(AMX_XEON)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    policy = resolve_precision("auto", "cpu")
    assert policy.name == ("bf16" if native else "fp32") and cpu_supports_native_bf16() is native
    if not native:
        assert f"ONEDNN_MAX_CPU_ISA={isa}" in policy.reason


def test_the_old_onednn_variable_name_counts_too(cpu_flags, monkeypatch):
    cpu_flags(AMX_XEON)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert resolve_precision("auto", "cpu").name == "fp32"


def test_aten_held_to_avx2_makes_auto_fp32(cpu_flags, monkeypatch):
    cpu_flags(AMX_XEON)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    policy = resolve_precision("auto", "cpu")
    assert policy.name == "fp32" and "ATEN_CPU_CAPABILITY=avx2" in policy.reason
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    assert resolve_precision("auto", "cpu").name == "bf16"


# ---------------------------------------------------------------- CUDA, explicit values, errors


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_auto_is_fp16_with_a_grad_scaler_on_cuda(device):
    policy = resolve_precision("auto", device)  # no GPU needed: only the device type is read
    assert (policy.name, policy.dtype, policy.device_type) == ("fp16", torch.float16, "cuda")
    assert policy.use_grad_scaler and policy.describe().startswith("fp16 autocast + GradScaler")


def test_explicit_values_win_over_the_machine(cpu_flags, caplog):
    cpu_flags(AMX_XEON)
    assert resolve_precision("fp32", "cpu").name == "fp32"
    assert resolve_precision("fp32", "cuda").name == "fp32"
    cuda_bf16 = resolve_precision("bf16", "cuda")
    assert cuda_bf16.dtype == torch.bfloat16 and not cuda_bf16.use_grad_scaler
    assert resolve_precision(" BF16 ", "cpu").name == "bf16"
    cpu_flags(AVX2_EPYC)
    with caplog.at_level(logging.WARNING, logger=precision_module.__name__):
        emulated = resolve_precision("bf16", "cpu")
    assert emulated.name == "bf16" and "emulated" in emulated.reason
    assert "emulated" in caplog.text and "'auto' would choose fp32" in caplog.text


@pytest.mark.parametrize("bad", ["fp64", "half", "", "amp"])
def test_an_unknown_precision_is_a_config_error_naming_it(bad):
    with pytest.raises(ConfigError, match=f"unknown precision '{bad}'.*auto, fp32, bf16, fp16"):
        resolve_precision(bad, "cpu")


@pytest.mark.parametrize("bad", [None, True, 16])
def test_a_precision_that_is_not_a_string_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=f"unknown precision {bad!r}"):
        resolve_precision(bad, "cpu")


def test_fp16_on_the_cpu_and_mixed_precision_elsewhere_are_config_errors():
    with pytest.raises(ConfigError, match="precision 'fp16' is for CUDA devices"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="precision 'bf16' on device type 'meta'"):
        resolve_precision("bf16", "meta")
    assert resolve_precision("auto", "meta").name == "fp32"


def test_the_policy_is_frozen_and_fp32_needs_no_autocast():
    policy = resolve_precision("fp32", "cpu")
    with pytest.raises(AttributeError):
        policy.name = "bf16"
    with policy.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with resolve_precision("bf16", "cpu").autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


# ---------------------------------------------------------------- train.precision and train.amp.enabled


def test_train_precision_defaults_to_auto():
    assert TRAIN_DEFAULTS["precision"] == "auto" and TRAIN_DEFAULTS["amp"] == {"enabled": False}


def test_amp_enabled_wins_over_auto_and_explicit_values_win_over_amp(cpu_flags):
    cpu_flags(AVX2_EPYC)
    assert resolve_train_precision({"precision": "auto", "amp": {"enabled": False}}, "cpu").name == "fp32"
    assert resolve_train_precision({"precision": "auto", "amp": {"enabled": True}}, "cpu").name == "bf16"
    assert resolve_train_precision({"amp": {"enabled": True}}, "cuda").name == "fp16"
    assert resolve_train_precision({"precision": "bf16", "amp": {"enabled": True}}, "cuda").name == "bf16"
    assert resolve_train_precision({"precision": "bf16"}, "cpu").name == "bf16"
    assert resolve_train_precision({}, "cuda").name == "fp16"  # auto


def test_amp_enabled_with_fp32_and_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="train.amp.enabled=True .* train.precision='fp32'"):
        resolve_train_precision({"precision": "fp32", "amp": {"enabled": True}}, "cpu")
    with pytest.raises(ConfigError, match="train.precision: unknown precision 'fp8'"):
        resolve_train_precision({"precision": "fp8"}, "cpu")
    with pytest.raises(ConfigError, match="train.precision: precision 'fp16' is for CUDA"):
        resolve_train_precision({"precision": "fp16"}, "cpu")


# ---------------------------------------------------------------- outputs back in float32


def test_low_precision_outputs_come_back_as_float32():
    instances = Instances((4, 4), scores=torch.ones(2, dtype=torch.bfloat16),
                          pred_boxes=Boxes(torch.zeros(2, 4, dtype=torch.float16)),
                          pred_masks=torch.zeros(2, 4, 4, dtype=torch.bool))
    outputs = to_float32([{"sem_seg": torch.zeros(2, 4, 4, dtype=torch.bfloat16), "instances": instances,
                           "index": torch.arange(3), "exact": torch.zeros(1, dtype=torch.float64)},
                          (torch.zeros(1, dtype=torch.float16), "name")])
    assert outputs[0]["sem_seg"].dtype == torch.float32 and outputs[0]["index"].dtype == torch.int64
    assert outputs[0]["exact"].dtype == torch.float64  # only fp16/bf16 are cast
    assert instances.scores.dtype == torch.float32 and instances.pred_boxes.tensor.dtype == torch.float32
    assert instances.pred_masks.dtype == torch.bool
    assert outputs[1][0].dtype == torch.float32 and outputs[1][1] == "name"


def test_a_wrapped_module_runs_under_autocast_keeps_its_mode_and_returns_float32():
    linear = nn.Linear(4, 3).eval()
    policy = resolve_precision("bf16", "cpu")
    wrapped = policy.wrap(linear)
    assert not wrapped.training
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(torch.ones(2, 4)).dtype == torch.bfloat16  # what autocast alone gives
    out = wrapped(torch.ones(2, 4))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, linear(torch.ones(2, 4)), atol=2e-2, rtol=2e-2)
    assert resolve_precision("fp32", "cpu").wrap(linear) is linear


# ---------------------------------------------------------------- bf16 training and prediction

MEAN, STD = [60.0, 60.0, 60.0], [50.0, 50.0, 50.0]


def tiny_model() -> BrainSegSemantic:
    torch.manual_seed(0)
    net = UNeXt(conv_channels=(4, 8, 16), token_channels=(16, 24))
    return BrainSegSemantic(net=net, loss=BCEDiceLoss(), pixel_mean=MEAN, pixel_std=STD)


def disc_batch(seed: int, size: int = 32, count: int = 4) -> list:
    """Noisy images with a bright disc; the target is the disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    batch = []
    for _ in range(count):
        cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(3, 7))]
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.int64)
        image = rng.integers(0, 80, (3, size, size)) + 120 * mask
        batch.append({"image": torch.from_numpy(image.astype(np.uint8)), "sem_seg": torch.from_numpy(mask)})
    return batch


@pytest.fixture(scope="module")
def bf16_run(one_thread):
    """30 Adam steps of a tiny UNeXt with explicit bf16 on the CPU; the model, its losses, the
    dtypes its convolutions produced and the trainer's log."""
    model = tiny_model().train()
    conv_dtypes = set()
    for module in model.net.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(lambda m, i, o: conv_dtypes.add(o.dtype))
    batches = [disc_batch(seed) for seed in range(4)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = BrainSegTrainer(model, itertools.cycle(batches), optimizer, precision="bf16", device="cpu")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    trainer_logger = logging.getLogger("brainseg.engine.trainer")
    trainer_logger.addHandler(handler)
    level = trainer_logger.level
    trainer_logger.setLevel(logging.INFO)
    try:
        trainer.train(0, 30)
    finally:
        trainer_logger.removeHandler(handler)
        trainer_logger.setLevel(level)
    losses = [value for value, _ in trainer.storage.history("total_loss").values()]
    return model, losses, conv_dtypes, [r.getMessage() for r in records]


def test_bf16_training_is_finite_and_the_loss_falls(bf16_run):
    model, losses, conv_dtypes, messages = bf16_run
    assert conv_dtypes == {torch.bfloat16}  # the convolutions really ran in bf16
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.7 * first, (first, last)
    assert any(m.startswith("precision: bf16 autocast (explicit") for m in messages), messages


def test_bf16_training_keeps_parameters_and_batchnorm_statistics_in_float32(bf16_run):
    model = bf16_run[0]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.running_mean.dtype == m.running_var.dtype == torch.float32 for m in norms)
    assert all(torch.isfinite(m.running_mean).all() and torch.isfinite(m.running_var).all() for m in norms)


def test_the_loss_is_computed_in_float32_under_bf16_autocast():
    model = tiny_model().train()
    seen = []
    model.loss.register_forward_pre_hook(lambda m, args: seen.append((args[0].dtype, torch.is_autocast_enabled("cpu"))))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(disc_batch(0, count=2))["loss_sem_seg"]
    assert seen == [(torch.float32, False)] and loss.dtype == torch.float32


def test_bf16_prediction_returns_float32_probabilities_close_to_fp32(bf16_run):
    model = bf16_run[0]
    images = [b["image"].numpy().transpose(1, 2, 0) for b in disc_batch(11)]
    fp32 = SlicePredictor(model, precision="fp32")
    bf16 = SlicePredictor(model, precision="bf16")
    assert (fp32.precision.name, bf16.precision.name) == ("fp32", "bf16")
    reference, got = fp32(images), bf16(images)
    assert all(p.dtype == torch.float32 and p.shape == (32, 32) for p in got)
    assert max(float((a - b).abs().max()) for a, b in zip(got, reference)) < 2e-2
    assert max(float(r.std()) for r in reference) > 0.1  # a trained model, not a constant map


def test_the_predictor_resolves_auto_for_the_model_device(cpu_flags):
    model = tiny_model()
    cpu_flags(AVX2_EPYC)
    assert SlicePredictor(model).precision == PrecisionPolicy("fp32", "cpu", None, "no native bf16 on this CPU")
    cpu_flags(AMX_XEON)
    assert SlicePredictor(model).precision.name == "bf16"
    with pytest.raises(ConfigError, match="'fp16' is for CUDA"):
        SlicePredictor(model, precision="fp16")
