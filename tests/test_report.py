"""tools/report.py (brainseg.visualization.report) on fabricated run dirs, and the overlay figures of
brainseg.visualization.overlay."""

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from brainseg.utils.cli import run_cli
from brainseg.visualization import report
from brainseg.visualization.overlay import (
    PREDICTION_COLOR,
    TRUTH_COLOR,
    OverlaySample,
    display_image,
    draw_overlay,
    save_overlay_figure,
    save_overlay_png,
    write_dataset_overlays,
)



def make_run(root, name, *, results, lines, net="UNeXt"):
    run = root / name
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    (run / "metrics.json").write_text("\n".join(lines) + "\n")
    (run / "config.yaml").write_text(
        f"model:\n  _target_: brainseg.modeling.BrainSegSemantic\n  net:\n    _target_: brainseg.modeling.{net}\n"
        "train:\n  max_iter: 60\n"
    )
    return run


LGG = {
    "dice_volume_mean": 0.8125,
    "dice_volume_median": 0.85,
    "dice_global": 0.79,
    "iou_global": 0.65,
    "hd95": 7.5,
    "assd": 1.25,
    "nsd_1mm": 0.875,
    "lesion_f1_mean": 0.5,
    "lesion_dice_mean": 0.625,
    "dice_volume_mean_lcc": 0.8375,
    "seed_dice": 0.83,
    "seed_iou": 0.71,
}


@pytest.fixture
def runs(tmp_path):
    unext = make_run(
        tmp_path,
        "lgg_unext",
        results={"lgg": LGG, "segm": {"AP": 41.5, "AP50": 70.25, "AP75": 40.0}, "bbox": {"AP": 38.0, "AP50": 66.0}},
        lines=[
            json.dumps({"iteration": 19, "total_loss": 0.9}),
            json.dumps({"iteration": 39, "total_loss": 0.7}),
            json.dumps({"iteration": 39, "lgg/dice_volume_mean": 0.55, "lgg/dice_global": 0.5}),
            json.dumps({"iteration": 59, "total_loss": 0.5, "lgg/dice_volume_mean": 0.75}),
            '{"iteration": 79, "total_lo',
        ],  # a run still writing: truncated last line
    )
    unet = make_run(
        tmp_path,
        "lgg_unet",
        net="UNet",
        results={"lgg": {k: v for k, v in dict(LGG, dice_volume_mean=0.6, hd95=float("nan")).items()
                         if not k.endswith("_lcc")}},
        lines=[json.dumps({"iteration": 9, "total_loss": 1.2}), json.dumps({"iteration": 9, "lgg/dice_global": 0.3})],
    )
    return unext, unet


def test_report_table_and_curves(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert report.main([str(r) for r in runs] + ["--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["model"], r["iterations"]) for r in rows] == [
        ("lgg_unext", "UNeXt", "59"),
        ("lgg_unet", "UNet", "9"),
    ]
    assert float(rows[0]["dice_volume_mean"]) == 0.8125 and float(rows[0]["segm/AP50"]) == 70.25
    assert float(rows[0]["bbox/AP"]) == 38.0 and float(rows[0]["seed_iou"]) == 0.71
    assert rows[1]["segm/AP"] == "" and math.isnan(float(rows[1]["hd95"]))
    # the reviewer metrics: surface distance, NSD at its tolerance, lesion-wise, largest component
    assert list(rows[0])[3:13] == ["dice_volume_mean", "dice_volume_median", "dice_global", "iou_global", "hd95",
                                   "assd", "nsd_1mm", "lesion_f1_mean", "lesion_dice_mean", "seed_dice"]
    assert list(rows[0])[14] == "dice_volume_mean_lcc" and list(rows[0])[15] == "segm/AP"
    assert (float(rows[0]["assd"]), float(rows[0]["nsd_1mm"]), float(rows[0]["lesion_dice_mean"]),
            float(rows[0]["dice_volume_mean_lcc"])) == (1.25, 0.875, 0.625, 0.8375)
    assert rows[1]["dice_volume_mean_lcc"] == ""  # absent in that run
    markdown = (out / "results.md").read_text()
    assert "| lgg_unext | UNeXt | 59 | 0.8125 | 0.8500 |" in markdown
    assert "| lgg_unet | UNet | 9 | 0.6000 |" in markdown and "| nan |" in markdown and "| - |" in markdown
    assert "fractions in [0, 1]" in markdown and "COCO AP in percent" in markdown
    with Image.open(out / "training_curves.png") as png:
        assert png.format == "PNG" and png.size == (1100, 400)
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.md", "training_curves.png"]


def test_read_history_merges_iterations(runs):
    history = report.read_history(str(runs[0] / "metrics.json"))
    assert [e["iteration"] for e in history] == [19, 39, 59]
    assert history[1] == {"iteration": 39, "total_loss": 0.7, "lgg/dice_volume_mean": 0.55, "lgg/dice_global": 0.5}


def test_report_errors_name_the_run(runs, tmp_path, capsys):
    (runs[1] / "results.json").unlink()
    assert run_cli(report.main, [str(r) for r in runs] + ["--out", str(tmp_path / "report")]) == 1
    err = capsys.readouterr().err
    assert (
        err.strip()
        == f"error: {runs[1]}: no results.json (is it a tools/train_net.py output dir of a finished run?)"
    )
    assert not (tmp_path / "report").exists()  # nothing half-written

    (runs[0] / "metrics.json").write_text('{"iteration": 1}\nnot json\n{"iteration": 2}\n')
    with pytest.raises(report.ReportError, match=r"metrics.json: line 2 is not valid JSON"):
        report.load_run(str(runs[0]))
    with pytest.raises(report.ReportError, match="run directory not found"):
        report.load_run(str(tmp_path / "nope"))


def test_display_image_and_overlay_colours():
    image = np.zeros((12, 12, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30
    assert np.array_equal(display_image(image)[0, 0], [20, 20, 20])  # FLAIR as gray
    assert np.array_equal(display_image(image, channel=None)[0, 0], [10, 20, 30])
    truth = np.zeros((12, 12), dtype=bool)
    truth[2:7, 2:7] = True
    prediction = np.zeros((12, 12), dtype=bool)
    prediction[6:10, 6:10] = True
    overlay = draw_overlay(image, prediction, truth)
    green = np.all(overlay == TRUTH_COLOR, axis=2)
    red = np.all(overlay == PREDICTION_COLOR, axis=2)
    assert red.sum() == 12  # the 4x4 ring, drawn on top
    assert green.sum() == 16 - 1  # the 5x5 ring minus the corner covered by the red ring
    assert np.all(overlay[~(green | red)] == 20)
    with pytest.raises(ValueError, match=r"prediction mask has shape \(3, 3\)"):
        draw_overlay(image, np.zeros((3, 3)))


def test_save_overlay_png_and_figure(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 100, (32, 32, 3), dtype=np.uint8)
    truth = np.zeros((32, 32), dtype=bool)
    truth[8:20, 8:20] = True
    prediction = np.roll(truth, 3, axis=1)
    save_overlay_png(tmp_path / "png" / "slice.png", image, prediction, truth, scale=2, label="P slice 3")
    written = cv2.imread(str(tmp_path / "png" / "slice.png"))[:, :, ::-1]
    assert written.shape == (64, 64, 3)
    assert np.all(written == TRUTH_COLOR, axis=2).any() and np.all(written == PREDICTION_COLOR, axis=2).any()
    assert [p.name for p in (tmp_path / "png").iterdir()] == ["slice.png"]  # no temporary file left

    samples = [
        OverlaySample(image, truth, prediction, "P slice 3"),
        OverlaySample(image, np.zeros_like(truth), np.zeros_like(truth)),
    ]
    from matplotlib.figure import Figure

    suptitles = []
    real_suptitle = Figure.suptitle
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Figure, "suptitle", lambda self, text, **kw: suptitles.append(text) or real_suptitle(self, text, **kw))
        save_overlay_figure(tmp_path / "figure.png", samples, title="P: 3-D Dice 0.5", panel_size=2.0, dpi=50)
    assert suptitles == ["P: 3-D Dice 0.5\nground-truth contour green, prediction contour red"]  # not a panel's title
    with Image.open(tmp_path / "figure.png") as png:
        assert png.size == (4 * 2.0 * 50, round(2 * (2.0 + 0.3) * 50))
    with pytest.raises(ValueError, match="at least one sample"):
        save_overlay_figure(tmp_path / "empty.png", [])


class ThresholdModel(torch.nn.Module):
    """Predicts tumour where the FLAIR channel is bright; counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, batch):
        assert not self.training
        self.calls += 1
        outputs = []
        for record in batch:
            tumour = (record["image"][1].float() > 200).float()
            outputs.append({"sem_seg": torch.stack([1 - tumour, tumour])})
        return outputs


def test_write_dataset_overlays(tmp_path):
    records = []
    for patient in ("P1", "P2", "P3"):
        for k in range(1, 4):
            image = np.full((16, 16, 3), 50, dtype=np.uint8)
            image[4:10, 4:10, 1] = 250 if k == 2 else 50  # predicted tumour on slice 2 only
            truth = np.zeros((16, 16), dtype=np.int64)
            truth[4:10, 5:11] = 1 if k >= 2 else 0
            path = tmp_path / f"{patient}_{k}.tif"
            Image.fromarray(image).save(path)
            records.append(
                {
                    "file_name": str(path),
                    "patient_id": patient,
                    "slice_index": k,
                    "height": 16,
                    "width": 16,
                    "image": torch.from_numpy(image).permute(2, 0, 1),
                    "sem_seg": torch.from_numpy(truth),
                }
            )
    loader = [records[i : i + 2] for i in range(0, len(records), 2)]
    model = ThresholdModel().train()
    paths = write_dataset_overlays(model, loader, str(tmp_path / "overlays"), max_patients=2, slices_per_patient=2)
    assert paths == [str(tmp_path / "overlays" / "P1.png"), str(tmp_path / "overlays" / "P2.png")]
    assert all(Path(p).is_file() for p in paths)
    assert model.calls == 4  # stopped at the batch where P3 begins
    assert model.training  # mode restored
