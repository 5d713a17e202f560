"""Tests of the peer benchmark: the peer registry, the reference-UNeXt loader, the interleaved
runner and its ratios, and ``tools/benchmark.py --peers`` / ``--json`` (tiny sizes; no timing
is asserted)."""

import json
import sys
import textwrap
import types

import pytest
import torch
from torch import nn

from brainseg.engine import benchmark as bench
from brainseg.engine.benchmark import BenchmarkRow, compare_with_peers, ratios_to_best_peer
from brainseg.engine.peers import PEERS, PeerUnavailableError, load_reference_unext
from brainseg.modeling import BrainSegSemantic
from brainseg.modeling.losses import BCEDiceLoss
from brainseg.modeling.nets import UNeXt
from brainseg.utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

SMP_MISSING = "segmentation_models_pytorch is not installed: pip install segmentation-models-pytorch"
TINY_UNEXT = ["model.net.conv_channels=[4,8,16]", "model.net.token_channels=[16,24]"]


def tiny_model() -> BrainSegSemantic:
    torch.manual_seed(0)
    net = UNeXt(conv_channels=(4, 8, 16), token_channels=(16, 24))
    return BrainSegSemantic(net=net, loss=BCEDiceLoss(), pixel_mean=[20.0] * 3, pixel_std=[30.0] * 3)


def tiny_peer() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))


class BrokenPeer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        raise RuntimeError("boom\nsecond line")


def row(model: str, variant: str, phase: str, images_per_s: float) -> BenchmarkRow:
    return BenchmarkRow(model, variant, phase, 1, images_per_s, 1e3 / images_per_s, 1e3 / images_per_s)


# ---------------------------------------------------------------- registry


def test_monai_basicunet_gives_one_logit_per_pixel():
    net = PEERS["monai_basicunet"]().eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 1, 64, 64)


def test_smp_unet_is_built_as_documented(monkeypatch):
    calls = []

    def unet(**kwargs):
        calls.append(kwargs)
        return nn.Conv2d(3, 1, 1)

    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", types.SimpleNamespace(Unet=unet))
    assert isinstance(PEERS["smp_unet"](), nn.Conv2d)
    assert calls == [dict(encoder_name="resnet34", encoder_weights=None, in_channels=3, classes=1)]


def test_missing_peer_package_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # import fails
    monkeypatch.setitem(sys.modules, "monai.networks.nets", None)
    with pytest.raises(PeerUnavailableError) as smp_error:
        PEERS["smp_unet"]()
    assert str(smp_error.value) == SMP_MISSING
    with pytest.raises(PeerUnavailableError, match=r"^monai is not installed: pip install monai$"):
        PEERS["monai_basicunet"]()


# ---------------------------------------------------------------- reference UNeXt


def write_checkout(folder, archs_header: str = "") -> None:
    """A fake UNeXt-pytorch checkout: archs.py imports the checkout's own utils.py."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "utils.py").write_text("WIDTH = 4\n")
    (folder / "archs.py").write_text(archs_header + textwrap.dedent("""
        from torch import nn
        from utils import *

        class UNext(nn.Module):
            def __init__(self, num_classes, input_channels=3, deep_supervision=False, img_size=224, **kwargs):
                super().__init__()
                self.args = (num_classes, input_channels, deep_supervision, img_size)
                self.conv = nn.Conv2d(input_channels, WIDTH, 3, padding=1)
                self.final = nn.Conv2d(WIDTH, num_classes, 1)

            def forward(self, x):
                return self.final(self.conv(x))
    """))


def test_reference_unext_is_imported_from_the_checkout(tmp_path, monkeypatch):
    checkout = tmp_path / "UNeXt-pytorch"
    write_checkout(checkout)
    monkeypatch.delitem(sys.modules, "utils", raising=False)
    path_before = list(sys.path)
    net = load_reference_unext(checkout, img_size=64)
    assert type(net).__name__ == "UNext" and net.args == (1, 3, False, 64)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 1, 64, 64)
    assert sys.path == path_before


def test_reference_unext_refuses_a_folder_without_archs_py(tmp_path):
    with pytest.raises(ConfigError, match=rf"no archs\.py in {tmp_path}.*UNeXt-pytorch"):
        load_reference_unext(tmp_path)


def test_reference_unext_without_timm_is_one_clear_line(tmp_path, monkeypatch):
    write_checkout(tmp_path, archs_header="import timm\n")
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.delitem(sys.modules, "utils", raising=False)
    message = r"^timm is not installed \(needed by the reference UNeXt .*archs\.py\): pip install timm$"
    with pytest.raises(PeerUnavailableError, match=message):
        load_reference_unext(tmp_path)


# ---------------------------------------------------------------- runner and ratios


def test_ratio_is_brainseg_over_the_best_peer_row_per_phase():
    rows = [
        row("brainseg UNeXt", "as configured", "inference", 90.0),
        row("brainseg UNeXt", "as configured", "training", 20.0),
        row("smp_unet", "eager", "inference", 30.0),
        row("smp_unet", "channels_last", "inference", 45.0),
        row("smp_unet", "eager", "training", 8.0),
        row("monai_basicunet", "eager", "inference", 40.0),
        row("monai_basicunet", "channels_last", "training", 25.0),
        row("monai_basicunet", "eager", "export", 1.0),  # no brainseg row in this phase: no ratio
    ]
    ratios = ratios_to_best_peer(rows, "brainseg UNeXt")
    assert set(ratios) == {"inference", "training"}
    assert ratios["inference"].ratio == pytest.approx(2.0)
    assert (ratios["inference"].best_peer.model, ratios["inference"].best_peer.variant) == ("smp_unet", "channels_last")
    assert ratios["training"].ratio == pytest.approx(0.8)
    assert ratios["training"].best_peer.model == "monai_basicunet"
    assert ratios["training"].ours.images_per_s == 20.0
    assert ratios_to_best_peer(rows[:2], "brainseg UNeXt") == {}


def test_interleaved_runner_rows_ratios_and_unavailable_peers(monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)
    peers = {"smp_unet": PEERS["smp_unet"], "tiny": tiny_peer, "broken": BrokenPeer}
    result = compare_with_peers(tiny_model(), peers, batch=2, size=32, warmup=1, repeats=2)
    keys = [(r.model, r.variant, r.phase) for r in result.rows]
    expected = {("brainseg UNeXt", "as configured", phase) for phase in ("inference", "training")}
    expected |= {("tiny", v, p) for v in ("eager", "channels_last") for p in ("inference", "training")}
    assert len(keys) == len(set(keys)) == 6 and set(keys) == expected
    assert [r.phase for r in result.rows] == ["inference"] * 3 + ["training"] * 3
    assert result.rows[0].model == "brainseg UNeXt" and result.rows[0].parameters == sum(
        p.numel() for p in tiny_model().parameters())
    assert all(r.images_per_s > 0 and r.ms_per_batch == pytest.approx(2e3 / r.images_per_s) for r in result.rows)
    for phase in ("inference", "training"):
        ours = next(r for r in result.rows if r.phase == phase and r.model == "brainseg UNeXt")
        best = max((r for r in result.rows if r.phase == phase and r.model == "tiny"), key=lambda r: r.images_per_s)
        assert result.ratios[phase].best_peer == best
        assert result.ratios[phase].ratio == pytest.approx(ours.images_per_s / best.images_per_s)
    assert result.unavailable == {
        "smp_unet": SMP_MISSING,
        **{f"broken {v} {p}": "RuntimeError: boom"
           for v in ("eager", "channels_last") for p in ("inference", "training")},
    }


# ---------------------------------------------------------------- command line


def run_cli(capsys, *extra) -> str:
    argv = ["--config-file", "configs/lgg/unext.py", "--batch", "1", "--size", "64", "--threads", "1",
            "--repeats", "1", "--warmup", "0", "--no-tune-malloc", *extra, *TINY_UNEXT]
    assert bench.main(argv) == 0
    return capsys.readouterr().out


def test_cli_peers_with_a_missing_package_and_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)
    out = run_cli(capsys, "--peers", "smp_unet", "monai_basicunet", "--json", str(tmp_path / "out" / "peers.json"))
    assert f"not run: smp_unet: {SMP_MISSING}" in out
    assert "| monai_basicunet | channels_last | training |" in out
    assert "inference: brainseg / best peer (monai_basicunet, " in out
    payload = json.loads((tmp_path / "out" / "peers.json").read_text())
    assert {(r["model"], r["variant"], r["phase"]) for r in payload["rows"]} == {
        ("brainseg UNeXt", "as configured", "inference"),
        ("brainseg UNeXt", "as configured", "training"),
        *{("monai_basicunet", v, p) for v in ("eager", "channels_last") for p in ("inference", "training")},
    }
    assert set(payload["ratios"]) == {"inference", "training"}
    assert payload["unavailable"] == {"smp_unet": SMP_MISSING}
    assert payload["machine"]["threads"] == 1 and payload["machine"]["torch"] == torch.__version__
    assert set(payload["machine"]["instruction_sets"]) <= {"AVX2", "FMA", "AVX-512", "AVX512-BF16", "AMX", "AMX-BF16"}
    assert payload["settings"]["precision"] in ("fp32", "bf16")
    assert payload["brainseg"] == {"channels_last": True, "compile_inference": False, "fuse_for_inference": True}
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_cli_model_alone_writes_json(tmp_path, capsys):
    out = run_cli(capsys, "--json", str(tmp_path / "model.json"))
    assert "| inference |" in out and "| training |" in out
    payload = json.loads((tmp_path / "model.json").read_text())
    assert [r["phase"] for r in payload["rows"]] == ["inference", "training"]
    assert payload["model"] == "UNeXt" and all(r["gflops_per_s"] > 0 for r in payload["rows"])


def test_overrides_go_last_and_may_follow_peers_after_a_separator():
    args = bench.parse_args(["--config-file", "c.py", "--peers", "smp_unet", "monai_basicunet", "--", "train.seed=1"])
    assert args.peers == ["smp_unet", "monai_basicunet"] and args.opts == ["train.seed=1"]
    with pytest.raises(ConfigError, match="--json comes after the key=value overrides"):
        bench.parse_args(["--config-file", "c.py", "train.seed=1", "--json", "out.json"])


def test_cli_loads_trained_weights_and_records_them(tmp_path, capsys):
    """--weights loads a checkpoint strictly before timing; a checkpoint of another net is refused."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate

    from brainseg.utils.config import load_config
    from brainseg.utils.errors import CheckpointError

    cfg = load_config("configs/lgg/unext.py", TINY_UNEXT)
    trained = instantiate(cfg.model)
    with torch.no_grad():
        for p in trained.parameters():
            p.fill_(0.01)
    DetectionCheckpointer(trained, str(tmp_path)).save("tiny")
    out = run_cli(capsys, "--weights", str(tmp_path / "tiny.pth"), "--json", str(tmp_path / "w.json"))
    assert f"weights {tmp_path / 'tiny.pth'}" in out
    assert json.loads((tmp_path / "w.json").read_text())["settings"]["weights"] == str(tmp_path / "tiny.pth")
    other = instantiate(load_config("configs/lgg/unext.py", ["model.net.conv_channels=[4,8,8]",
                                                             "model.net.token_channels=[16,24]"]).model)
    DetectionCheckpointer(other, str(tmp_path)).save("other")
    with pytest.raises(CheckpointError):
        run_cli(capsys, "--weights", str(tmp_path / "other.pth"))


def test_training_phase_uses_the_configs_optimizer():
    from brainseg.utils.config import load_config

    model = tiny_model()
    optimizer = bench.config_optimizer(load_config("configs/lgg/unext.py", []))(model)
    # configs/common/optim.py: Adam, lr 1e-4, weight decay 1e-4 (not on norms), fused
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["fused"] is True
    assert {g["lr"] for g in optimizer.param_groups} == {1e-4}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 1e-4}
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters())
    # a config without an optimizer (and every peer) trains with PyTorch's default Adam
    fallback = bench.config_optimizer({"model": None})(model)
    assert type(fallback) is torch.optim.Adam and not fallback.defaults["fused"]
    assert bench.default_optimizer(model).defaults["lr"] == 1e-4
