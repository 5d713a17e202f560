"""tools/export.py and brainseg.inference.export: TorchScript/ONNX round trips of the semantic
nets (dynamic batch 1 and 3) against the model's own eval pipeline, and refused exports."""
import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from detectron2.config import instantiate
from torch import nn

from brainseg.engine import load_config
from brainseg.inference import ExportableSegmenter, ExportError, SlicePredictor, export_model, synthetic_slices
from brainseg.inference.commands import export_main
from brainseg.modeling import BCEDiceLoss, BrainSegSemantic
from brainseg.utils.cli import run_cli
from lgg_tree import write_lgg_tree

REPO = Path(__file__).resolve().parents[1]
NETS = {
    "unet": ["model.net.base_channels=4", "model.net.depth=2"],
    "resunet": ["model.net.base_channels=4", "model.net.depth=2"],
    "unext": ["model.net.conv_channels=[4,8,16]", "model.net.token_channels=[16,24]"],
}
TOLERANCE = 1e-4


def export_cli(argv) -> int:
    """``tools/export.py argv``: the exit code."""
    return run_cli(export_main, argv)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lgg_slices(tmp_path_factory):
    root = tmp_path_factory.mktemp("lgg")
    write_lgg_tree(root, patients=["TCGA_AA_0001_20000101"], num_slices=3, size=64)
    return root


def _trained_like_model(name: str, weights: Path) -> nn.Module:
    """A tiny model whose BatchNorm statistics are not the identity, saved to ``weights``."""
    torch.manual_seed(0)
    model = instantiate(load_config(str(REPO / f"configs/lgg/{name}.py"), NETS[name]).model)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model.net(torch.randn(2, 3, 64, 64) * 2 + 0.5)
    torch.save({"model": model.state_dict()}, weights)
    return model.eval()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", sorted(NETS))
def test_round_trip_matches_the_model(name, lgg_slices, tmp_path, capsys):
    model = _trained_like_model(name, tmp_path / "w.pth")
    out = tmp_path / "export"
    code = export_cli(["--config-file", str(REPO / f"configs/lgg/{name}.py"), "--weights", str(tmp_path / "w.pth"),
                            "--output", str(out), "--height", "64", "--width", "64",
                            "--sample-input", str(lgg_slices), *NETS[name]])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx", "model.torchscript.pt"]
    report = json.loads((out / "export.json").read_text())
    assert report["samples"] == f"3 slices from {lgg_slices}"
    assert [(f["format"], f["verified"], f["opset"]) for f in report["formats"]] == [
        ("torchscript", True, None), ("onnx", True, 17)]
    assert all(f["max_abs_diff"] <= TOLERANCE for f in report["formats"])

    # independent check on new slices: the exported files against the model's own eval outputs
    images = synthetic_slices(3, 64, 64, seed=7)
    expected = torch.stack(fp32_probabilities(model, images)).numpy()[:, None]
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (images[:1], images):
        with torch.no_grad():
            from_uint8 = scripted(torch.from_numpy(batch)).numpy()
            from_float = scripted(torch.from_numpy(batch).float()).numpy()
        from_onnx = session.run(None, {"image": batch.astype(np.float32)})[0]
        for got in (from_uint8, from_float, from_onnx):
            assert got.shape == (len(batch), 1, 64, 64)
            np.testing.assert_allclose(got, expected[:len(batch)], atol=TOLERANCE, rtol=0)


def test_dynamo_onnx_exporter(tmp_path):
    model = _trained_like_model("unet", tmp_path / "w.pth")
    checks = export_model(model, tmp_path, synthetic_slices(3, 64, 64), formats=["onnx"], dynamo=True)
    assert checks[0].verified and checks[0].max_abs_diff <= TOLERANCE and checks[0].opset >= 17
    session = onnxruntime.InferenceSession(checks[0].path, providers=["CPUExecutionProvider"])
    images = synthetic_slices(2, 64, 64, seed=3)
    expected = torch.stack(fp32_probabilities(model, images)).numpy()[:, None]
    np.testing.assert_allclose(session.run(None, {"image": images.astype(np.float32)})[0], expected, atol=TOLERANCE)


def test_a_fitted_temperature_is_exported(tmp_path):
    """A checkpoint calibrated on validation (temperature 2.5) exports ``sigmoid(logit / 2.5)``."""
    model = _trained_like_model("unext", tmp_path / "w.pth")
    model.temperature = 2.5
    checks = export_model(model, tmp_path / "out", synthetic_slices(3, 64, 64), formats=["torchscript"])
    assert checks[0].verified and checks[0].max_abs_diff <= TOLERANCE
    images = synthetic_slices(2, 64, 64, seed=4)
    expected = torch.stack(fp32_probabilities(model, images))[:, None]
    plain = ExportableSegmenter.from_model(model)
    plain.temperature = 1.0
    with torch.no_grad():
        exported = torch.jit.load(checks[0].path)(torch.from_numpy(images))
        uncalibrated = plain(torch.from_numpy(images))
    torch.testing.assert_close(exported, expected, atol=TOLERANCE, rtol=0)
    assert (exported - uncalibrated).abs().max() > 1e-3  # the temperature changed the probabilities


class BranchingNet(nn.Module):
    """Python control flow on the data: tracing records only the branch of the example batch."""

    size_divisibility = 1
    out_channels = 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if bool(x.mean() > 0) else -self.conv(x) - 1.0


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_that_disagrees_is_not_written(fmt, tmp_path):
    model = BrainSegSemantic(net=BranchingNet(), loss=BCEDiceLoss(), pixel_mean=[24.0] * 3, pixel_std=[36.0] * 3,
                             channels_last=False).eval()
    samples = np.zeros((3, 3, 8, 8), np.uint8)
    samples[1:] = 255  # the batch of 3 takes the first branch, its first slice alone the second
    with pytest.raises(ExportError, match=f"{fmt} export disagrees with PyTorch .* nothing written"):
        export_model(model, tmp_path, samples, formats=[fmt])
    assert list(tmp_path.iterdir()) == []


def test_unsupported_models_and_sizes(tmp_path, capsys):
    with pytest.raises(ExportError, match="Linear cannot be exported: only semantic models"):
        ExportableSegmenter.from_model(nn.Linear(2, 2))
    _trained_like_model("unext", tmp_path / "w.pth")
    code = export_cli(["--config-file", str(REPO / "configs/lgg/unext.py"), "--weights", str(tmp_path / "w.pth"),
                            "--output", str(tmp_path / "out"), "--height", "48", "--width", "64", *NETS["unext"]])
    err = capsys.readouterr().err
    assert code == 1 and err == "error: export size 48x64 must be a multiple of the net's stride 32\n"
    assert not (tmp_path / "out").exists()


def fp32_probabilities(model, images):
    """The eager model's probabilities of (B, 3, H, W) images, in fp32 like the exported graphs."""
    return SlicePredictor(model, precision="fp32")(list(images.transpose(0, 2, 3, 1)))
