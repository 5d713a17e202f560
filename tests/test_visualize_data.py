"""tools/visualize_data.py (brainseg.visualization.browse_command): dataset grids with ground truth, COCO-json and mask-folder
predictions (tiles compared pixel for pixel with the overlay renderer), and bad arguments."""
import json
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools import mask as mask_util

from brainseg.data import read_lgg_image, register_lgg_dataset
from brainseg.utils.cli import run_cli
from brainseg.visualization import browse_command
from brainseg.visualization.browse import TITLE_HEIGHT
from brainseg.visualization.overlay import PREDICTION_COLOR, TRUTH_COLOR, draw_overlay
from lgg_tree import write_lgg_tree

NAME = "lgg_visualize_test"
SIZE = 64


def visualize_cli(argv) -> int:
    """``tools/visualize_data.py argv``: the exit code."""
    return run_cli(browse_command.main, argv)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A registered 3-patient, 4-slice, 64x64 dataset (all slices in the 'train' split)."""
    root = tmp_path_factory.mktemp("lgg")
    masks = write_lgg_tree(root, patients=[f"TCGA_CS_{i:04d}_20000101" for i in range(3)], num_slices=4, size=SIZE)
    register_lgg_dataset(NAME, root, "train", ratios=(1.0, 0.0, 0.0))
    yield DatasetCatalog.get(NAME), masks
    for name in (NAME, f"{NAME}_coco"):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _tile(grid: np.ndarray, index: int, cols: int) -> np.ndarray:
    top, left = (index // cols) * (SIZE + TITLE_HEIGHT) + TITLE_HEIGHT, (index % cols) * SIZE
    return grid[top:top + SIZE, left:left + SIZE]


def _expected(record, masks, prediction=None):
    return draw_overlay(read_lgg_image(record["file_name"]), prediction, masks[record["file_name"]])


def test_grids_of_ground_truth(dataset, tmp_path, capsys):
    records, masks = dataset
    assert visualize_cli(["--dataset", NAME, "--output", str(tmp_path), "--num", "5", "--grid", "2x2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{NAME}_000.png", f"{NAME}_001.png"]
    first, second = (np.asarray(Image.open(tmp_path / f"{NAME}_00{i}.png")) for i in (0, 1))
    assert first.shape == second.shape == (2 * (SIZE + TITLE_HEIGHT), 2 * SIZE, 3)
    for index in range(4):
        np.testing.assert_array_equal(_tile(first, index, 2), _expected(records[index], masks))
    np.testing.assert_array_equal(_tile(second, 0, 2), _expected(records[4], masks))
    assert not _tile(second, 1, 2).any()  # empty cell
    assert any((_tile(first, i, 2) == TRUTH_COLOR).all(-1).any() for i in range(4))


def test_coco_results_predictions(dataset, tmp_path):
    records, masks = dataset
    tumour = [r for r in records if r["annotations"]]
    results, predictions = [], {}
    for record in tumour:
        predicted = np.roll(masks[record["file_name"]], 3, axis=1)  # a shifted prediction
        predictions[record["image_id"]] = predicted.astype(bool)
        for mask, score in ((predicted, 0.9), (1 - predicted, 0.2)):  # the low-score one is ignored
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            results.append({"image_id": record["image_id"], "category_id": 1, "score": score,
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    path = tmp_path / "coco_instances_results.json"
    path.write_text(json.dumps(results))
    out = tmp_path / "out"
    assert visualize_cli(["--dataset", NAME, "--output", str(out), "--predictions", str(path),
                               "--only-tumour", "--grid", "3x3"]) == 0
    grid = np.asarray(Image.open(out / f"{NAME}_000.png"))
    for index, record in enumerate(tumour[:9]):
        expected = _expected(record, masks, predictions[record["image_id"]])
        np.testing.assert_array_equal(_tile(grid, index, 3), expected)
    assert (_tile(grid, 0, 3) == PREDICTION_COLOR).all(-1).any()


def test_mask_folder_predictions_and_missing_files(dataset, tmp_path):
    records, masks = dataset
    first = records[0]
    patient = first["patient_id"]
    folder = tmp_path / "pred" / "kaggle_3m" / patient
    folder.mkdir(parents=True)
    predicted = np.zeros((SIZE, SIZE), np.uint8)
    predicted[10:20, 30:45] = 1
    Image.fromarray(predicted * 255).save(folder / f"{Path(first['file_name']).stem}_mask.tif")
    out = tmp_path / "out"
    assert visualize_cli(["--dataset", NAME, "--output", str(out), "--predictions", str(tmp_path / "pred"),
                               "--patients", patient, "--grid", "1x4"]) == 0
    grid = np.asarray(Image.open(out / f"{NAME}_000.png"))
    np.testing.assert_array_equal(_tile(grid, 0, 4), _expected(first, masks, predicted.astype(bool)))
    for index, record in enumerate(records[1:4], start=1):  # no predicted file: truth only
        assert record["patient_id"] == patient
        np.testing.assert_array_equal(_tile(grid, index, 4), _expected(record, masks))


def test_bad_arguments_give_one_line_errors(dataset, tmp_path, capsys):
    cases = [
        (["--dataset", "lgg_visualize_tset"], f"error: dataset 'lgg_visualize_tset' is not registered; did you mean {NAME}"),
        (["--dataset", NAME, "--patients", "TCGA_XX_0000_20000101"], "patient(s) TCGA_XX_0000_20000101 not in"),
        (["--dataset", NAME, "--grid", "4by4"], "grid must look like ROWSxCOLS"),
        (["--dataset", NAME, "--predictions", str(tmp_path / "none.json")], f"predictions {tmp_path / 'none.json'} do"),
    ]
    for args, message in cases:
        assert visualize_cli([*args, "--output", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": []}))
    assert visualize_cli(["--dataset", NAME, "--output", str(tmp_path / "out"), "--predictions", str(bad)]) == 1
    assert f"predictions {bad} are not COCO instance results" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
