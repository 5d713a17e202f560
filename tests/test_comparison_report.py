"""The output files of a model comparison (brainseg.visualization.comparison_report): tables, figures
and the self-contained report.html, checked in headless Chromium."""
import csv
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from brainseg.visualization.comparison_figures import slice_dice, slice_dice_labels
from brainseg.visualization.comparison_report import (
    ComparisonReportError,
    ComparisonResults,
    SlicePanel,
    write_comparison_outputs,
)
from browser import ChromiumNotFound, evaluate, find_chromium, screenshot

MODELS = ["UNet", "ResUNet", "UNeXt", "Mask DINO"]
PATIENTS = [f"TCGA_XX_{i:04d}_20000101" for i in range(6)]
TITLE = "LGG <demo> & co: 2 folds"
FIGURE_FILES = {"slices.png", "dice_boxplot.png", "training_curves.png"}
TABLE_FILES = {"comparison.csv", "comparison.md", "per_patient.csv", "report.html"}
SCREENSHOT_COPY = Path(__file__).resolve().parents[1] / "output" / "test_artifacts" / "report_screenshot.png"


def _square(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((64, 64), dtype=bool)
    mask[rows, cols] = True
    return mask


def _panels(rng: np.random.Generator):
    """Two 64x64 slices with known Dice per model (listed in the same order as MODELS)."""
    tumour = _square(slice(20, 36), slice(20, 36))  # 256 px
    first = SlicePanel("TCGA_XX_0000_20000101 slice 12", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), tumour, {
        "UNet": tumour.copy(),  # 1.0
        "ResUNet": _square(slice(20, 36), slice(28, 44)),  # half overlaps: 2*128 / 512 = 0.5
        "UNeXt": np.zeros((64, 64), dtype=bool),  # 0.0
        "Mask DINO": _square(slice(20, 28), slice(20, 36)),  # inside: 2*128 / 384 = 0.667
    })
    empty = np.zeros((64, 64), dtype=bool)
    false_positive = _square(slice(5, 8), slice(5, 8))
    second = SlicePanel("TCGA_XX_0001_20000101 slice 3", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), empty, {
        "UNet": empty, "ResUNet": false_positive, "UNeXt": empty, "Mask DINO": false_positive,
    })
    return [first, second]


def _study() -> ComparisonResults:
    rng = np.random.default_rng(0)
    table = [
        {"model": m, "dice_mean": 0.7 + 0.03 * i + 1e-9 / 3, "dice_sd": 0.1 + 0.01 * i, "dice_median": 0.75 + 0.02 * i,
         "dice_ci_low": 0.65 + 0.03 * i, "dice_ci_high": 0.78 + 0.03 * i,
         "dice_fold_mean": 0.69 + 0.03 * i, "dice_fold_sd": 0.04, "hd95_mean": 9.5 - i, "sensitivity": 0.8,
         "params": 1_472_000 * (i + 1), "train_minutes": 3.25 * (i + 1), "epochs": 12}
        for i, m in enumerate(MODELS)
    ]
    per_patient = [{"patient": p, "model": m, "fold": j % 2, "dice": float(rng.uniform(0.4, 0.95)), "hd95": 4.0}
                   for j, p in enumerate(PATIENTS) for m in MODELS]
    per_patient[0]["dice"] = float("nan")  # no tumour in truth nor prediction: left out of the box plot
    pairs = [(a, b) for i, a in enumerate(MODELS) for b in MODELS[i + 1:]]
    pairwise = [{"model_a": a, "model_b": b, "n": 6, "median_difference": 0.01 - 0.02 * k, "p_value": 0.004 * (k + 1),
                 "p_holm": 0.02 * (k + 1)} for k, (a, b) in enumerate(pairs)]
    curves = {m: {"loss": [(it, 1.0 / (it + 1) + 0.1 * i) for it in range(0, 100, 20)],
                  "val dice": [(it, 0.5 + 0.003 * it - 0.02 * i) for it in (40, 80)]} for i, m in enumerate(MODELS)}
    return ComparisonResults(
        title=TITLE, models=list(MODELS), table=table[::-1],  # any order: shown in display order
        per_patient=per_patient, pairwise=pairwise, curves=curves, panels=_panels(rng),
        commands=["python tools/compare.py --config-file configs/lgg/unet.py configs/lgg/unext.py --folds 2 "
                  "--data datasets/lgg_demo --output output/compare"],
        notes=["demo data (synthetic)", "2 CPU cores"],
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The study written once: (results, {file name: path})."""
    results = _study()
    return results, write_comparison_outputs(results, tmp_path_factory.mktemp("comparison"))


def _read_csv(path: Path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


class _TableRows(HTMLParser):
    """Counts the ``<tr>`` inside the ``<tbody>`` of ``<table id=...>``, and the ``<img>`` of the page."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.inside, self.in_body, self.rows, self.images = table_id, False, False, 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == self.table_id:
            self.inside = True
        elif tag == "tbody" and self.inside:
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows += 1
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = self.in_body = False


def test_all_files_written(written):
    _, paths = written
    assert set(paths) == TABLE_FILES | FIGURE_FILES
    for name, path in paths.items():
        assert path.name == name and path.stat().st_size > 0
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_csv_round_trips(written):
    results, paths = written
    columns, rows = _read_csv(paths["comparison.csv"])
    assert columns == list(results.table[0])
    assert [r["model"] for r in rows] == MODELS
    by_model = {row["model"]: row for row in results.table}
    for row in rows:
        expected = by_model[row["model"]]
        assert float(row["dice_mean"]) == expected["dice_mean"]  # full precision
        assert int(row["params"]) == expected["params"] and int(row["epochs"]) == 12


def test_per_patient_csv_has_a_row_per_patient_and_model(written):
    results, paths = written
    columns, rows = _read_csv(paths["per_patient.csv"])
    assert columns == ["patient", "model", "fold", "dice", "hd95"]
    assert len(rows) == len(PATIENTS) * len(MODELS)
    assert {(r["patient"], r["model"]) for r in rows} == {(p, m) for p in PATIENTS for m in MODELS}
    assert {r["fold"] for r in rows} == {"0", "1"}
    assert rows[0]["dice"] == "nan" and float(rows[1]["dice"]) == results.per_patient[1]["dice"]


def test_markdown_tables(written):
    _, paths = written
    text = paths["comparison.md"].read_text(encoding="utf-8")
    assert ("| Model | Dice per patient (mean ± SD) | Dice over folds (mean ± SD) | Dice median | Dice 95 % CI "
            "| HD95 mean (px) |") in text
    assert "| UNet | 0.700 ± 0.100 | 0.690 ± 0.040 | 0.750 | [0.650, 0.780] | 9.5 |" in text
    assert "| ResUNet | 0.730 ± 0.110 |" in text
    assert "1.47 | 3.2 | 12 |" in text  # params in millions, minutes, an unknown key as it is
    assert "| Model A | Model B | n | Median difference (A − B) | p | p (Holm) |" in text
    assert "| UNet | ResUNet | 6 | 0.010 | 0.0040 | 0.0200 * |" in text
    assert "| UNeXt | Mask DINO | 6 | -0.090 | 0.0240 | 0.1200 |" in text
    assert "![Test slices](slices.png)" in text and "- demo data (synthetic)" in text
    assert "python tools/compare.py --config-file" in text


def test_slice_dice_known_answers():
    truth = np.array([[1, 1, 0, 0]], dtype=bool)
    assert slice_dice(np.array([[0, 1, 1, 0]], dtype=bool), truth) == 0.5
    assert slice_dice(truth, truth) == 1.0
    assert slice_dice(np.zeros_like(truth), truth) == 0.0
    assert slice_dice(np.zeros_like(truth), np.zeros_like(truth)) == 1.0  # both empty
    first, second = _panels(np.random.default_rng(0))
    assert slice_dice_labels(first, MODELS) == {
        "UNet": "Dice 1.000", "ResUNet": "Dice 0.500", "UNeXt": "Dice 0.000", "Mask DINO": "Dice 0.667"}
    assert slice_dice_labels(second, MODELS) == {
        "UNet": "Dice 1.000", "ResUNet": "Dice 0.000", "UNeXt": "Dice 1.000", "Mask DINO": "Dice 0.000"}


def test_report_html_is_self_contained(written):
    _, paths = written
    text = paths["report.html"].read_text(encoding="utf-8")
    for external in ("http://", "https://", 'src="file', "<script", "<link", "@import", "url("):
        assert external not in text
    parser = _TableRows("models")
    parser.feed(text)
    assert parser.rows == len(MODELS)
    assert len(parser.images) == 3 and all(s.startswith("data:image/png;base64,") for s in parser.images)
    assert '<table id="pairwise">' in text and "<pre>python tools/compare.py" in text
    assert "LGG &lt;demo&gt; &amp; co" in text and TITLE not in text  # escaped
    assert "not available" not in text


def test_missing_parts_still_give_a_report(tmp_path):
    (tmp_path / "slices.png").write_bytes(b"an older study's figure")
    results = ComparisonResults(title="table only", models=["UNet", "UNeXt"],
                                table=[{"model": "UNet", "dice_mean": 0.8}, {"model": "UNeXt", "dice_mean": 0.85}])
    paths = write_comparison_outputs(results, tmp_path)
    assert set(paths) == TABLE_FILES
    assert not (tmp_path / "slices.png").exists()
    text = paths["report.html"].read_text(encoding="utf-8")
    assert text.count("not available") == 6  # notes, pairwise tests, three figures, commands
    parser = _TableRows("models")
    parser.feed(text)
    assert parser.rows == 2 and parser.images == []
    assert "| UNeXt | 0.850 |" in paths["comparison.md"].read_text(encoding="utf-8")
    assert _read_csv(paths["per_patient.csv"]) == (["patient", "model", "fold"], [])


def test_inconsistent_results_are_refused(tmp_path):
    results = _study()
    results.table = results.table[1:]
    with pytest.raises(ComparisonReportError, match="exactly one row per model"):
        write_comparison_outputs(results, tmp_path)
    results = _study()
    del results.panels[1].predictions["UNeXt"]
    with pytest.raises(ComparisonReportError, match="has no prediction of model 'UNeXt'"):
        write_comparison_outputs(results, tmp_path)
    results = _study()
    results.curves["SegFormer"] = {"loss": [(0, 1.0)]}
    with pytest.raises(ComparisonReportError, match=r"curves names models \['SegFormer'\]"):
        write_comparison_outputs(results, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_missing_chromium_fails_with_the_install_command(monkeypatch):
    monkeypatch.setenv("BRAINSEG_CHROMIUM", "no-such-chromium-binary")
    with pytest.raises(ChromiumNotFound, match="apt-get install -y chromium"):
        find_chromium()


# What the browser shows: every <img> decoded, the model table's rows, the page height.
PAGE_CHECK = """({
  images: Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1),
  modelRows: document.querySelectorAll("#models tbody tr").length,
  height: document.documentElement.scrollHeight
})"""


def test_report_renders_in_headless_chromium(written, tmp_path):
    """A hard requirement: a missing Chromium fails this test (see tests/browser.py), never skips it."""
    _, paths = written
    page = evaluate(paths["report.html"], PAGE_CHECK)
    assert len(page["images"]) == 3 and all(width > 0 for width in page["images"]), page
    assert page["modelRows"] == len(MODELS)
    height = min(int(page["height"]), 8000)
    shot = screenshot(paths["report.html"], tmp_path / "report_screenshot.png", width=1200, height=height)
    width, shot_height = struct.unpack(">II", shot.read_bytes()[16:24])  # the PNG's IHDR
    assert (width, shot_height) == (1200, height)
    SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT_COPY)
