"""LGG data layer: discovery, split, records, COCO round trip, mapper, bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image

from brainseg.data import (
    LGGDataError,
    LGGDatasetMapper,
    annotations_to_mask,
    convert_lgg_to_coco,
    discover_lgg,
    ensure_coco_json,
    find_kaggle_root,
    load_coco_records,
    load_lgg_records,
    register_lgg_dataset,
    split_patients,
)
from brainseg.data.io import read_lgg_image
from brainseg.data.mapper import RandomRot90, Rot90Transform, mask_to_instances
from brainseg.data.statistics import pixel_statistics
from lgg_tree import write_lgg_tree

REPO = Path(__file__).resolve().parents[1]


def test_discovery_orders_unpadded_slices_numerically(lgg_tree):
    root, _ = lgg_tree
    kaggle, patients = discover_lgg(root)
    assert kaggle == root / "kaggle_3m"
    assert [p.patient_id for p in patients] == sorted(p.patient_id for p in patients)
    assert len(patients) == 3
    for patient in patients:
        assert [s.slice_index for s in patient.slices] == list(range(1, 13))
        assert patient.slices[9].image_path.endswith(f"{patient.patient_id}_10.tif")
        assert patient.slices[9].mask_path.endswith(f"{patient.patient_id}_10_mask.tif")


@pytest.mark.parametrize("layout", ["kaggle_3m", "parent", "lgg-mri-segmentation"])
def test_find_kaggle_root_accepts_the_three_layouts(lgg_tree, tmp_path, layout):
    root, _ = lgg_tree
    if layout == "kaggle_3m":
        assert find_kaggle_root(root / "kaggle_3m") == root / "kaggle_3m"
    elif layout == "parent":
        assert find_kaggle_root(root) == root / "kaggle_3m"
    else:
        nested = tmp_path / "download"
        (nested / "lgg-mri-segmentation").mkdir(parents=True)
        shutil.move(str(root / "kaggle_3m"), nested / "lgg-mri-segmentation" / "kaggle_3m")
        assert find_kaggle_root(nested) == nested / "lgg-mri-segmentation" / "kaggle_3m"


def test_clinical_csv_is_optional_and_matched_by_patient_prefix(lgg_tree):
    root, _ = lgg_tree
    _, patients = discover_lgg(root)
    assert all(p.clinical == {} for p in patients)
    (root / "kaggle_3m" / "data.csv").write_text("Patient,RNASeqCluster,age_at_initial_pathologic\n"
                                                 "TCGA_CS_4941,2,67\nTCGA_DU_5851,,40\n")
    _, patients = discover_lgg(root)
    by_id = {p.patient_id: p.clinical for p in patients}
    assert by_id["TCGA_CS_4941_19960909"]["age_at_initial_pathologic"] == "67"
    assert by_id["TCGA_DU_5851_19950428"]["RNASeqCluster"] == ""
    assert by_id["TCGA_FG_6690_20020226"] == {}


def test_patient_split_is_disjoint_complete_and_deterministic():
    ids = [f"TCGA_XX_{i:04d}_20000101" for i in range(110)]
    split = split_patients(ids, ratios=(0.7, 0.15, 0.15), seed=3)
    sets = [set(split[k]) for k in ("train", "val", "test")]
    assert sum(len(s) for s in sets) == 110 and set().union(*sets) == set(ids)
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (78, 16, 16)
    assert split == split_patients(list(reversed(ids)), ratios=(0.7, 0.15, 0.15), seed=3)
    assert split != split_patients(ids, ratios=(0.7, 0.15, 0.15), seed=4)
    with pytest.raises(ValueError, match="summing to 1"):
        split_patients(ids, ratios=(0.5, 0.2, 0.2))


def test_records_carry_the_contract_fields_and_split_ids(lgg_tree):
    root, masks = lgg_tree
    everything = load_lgg_records(root)
    assert [r["image_id"] for r in everything] == list(range(36))
    by_split = {s: load_lgg_records(root, s) for s in ("train", "val", "test")}
    patients = [{r["patient_id"] for r in recs} for recs in by_split.values()]
    assert all(len(p) == 1 for p in patients) and len(set().union(*patients)) == 3
    ids = sorted(r["image_id"] for recs in by_split.values() for r in recs)
    assert ids == list(range(36))
    record = everything[4]
    assert set(record) == {"file_name", "sem_seg_file_name", "height", "width", "image_id",
                           "patient_id", "slice_index", "annotations"}
    assert (record["height"], record["width"], record["slice_index"]) == (32, 32, 5)
    for r in everything:
        np.testing.assert_array_equal(annotations_to_mask(r["annotations"], 32, 32), masks[r["file_name"]])
        for ann in r["annotations"]:
            assert ann["category_id"] == 0 and isinstance(ann["segmentation"]["counts"], str)


@pytest.mark.parametrize("polygons", [False, True])
def test_coco_round_trip_is_exact(lgg_tree, tmp_path, polygons):
    root, masks = lgg_tree
    paths = convert_lgg_to_coco(root, tmp_path / "coco", polygons=polygons)
    assert sorted(Path(p).name for p in paths.values()) == ["lgg_test.json", "lgg_train.json", "lgg_val.json"]
    seen = 0
    for split, path in paths.items():
        coco = json.loads(Path(path).read_text())
        assert coco["info"]["split"] == split and len(coco["info"]["patients"]) == 1
        assert coco["categories"] == [{"id": 1, "name": "tumor", "supercategory": "lesion"}]
        for image in coco["images"]:
            assert image["patient_id"] in coco["info"]["patients"] and image["slice_index"] >= 1
        for record in load_coco_records(path):
            truth = masks[record["file_name"]]
            np.testing.assert_array_equal(annotations_to_mask(record["annotations"], 32, 32), truth)
            assert len(record["annotations"]) == _count_components(truth)
            seen += 1
        for ann in coco["annotations"]:
            assert isinstance(ann["segmentation"], list) == polygons
    assert seen == 36


def _count_components(mask):
    import cv2

    return cv2.connectedComponents(mask, connectivity=8)[0] - 1


def test_polygons_reproduce_holes_and_diagonal_touches():
    from brainseg.data.instances import mask_to_annotations

    mask = np.zeros((16, 16), np.uint8)
    mask[2:12, 2:12] = 1
    mask[5:8, 5:8] = 0  # a hole
    mask[9, 9] = 0  # a one-pixel hole
    mask[12, 12] = 1  # touches the square only diagonally: same 8-connected component
    annotations = mask_to_annotations(mask, polygons=True)
    assert len(annotations) == 1
    np.testing.assert_array_equal(annotations_to_mask(annotations, 16, 16), mask)
    assert annotations[0]["area"] == mask.sum() and annotations[0]["bbox"] == [2.0, 2.0, 11.0, 11.0]


def test_registration_and_coco_json_on_demand(lgg_tree):
    root, _ = lgg_tree
    register_lgg_dataset("lgg_unit_test", root, "test")
    try:
        records = DatasetCatalog.get("lgg_unit_test")
        meta = MetadataCatalog.get("lgg_unit_test")
        assert meta.thing_classes == ["tumor"] and meta.ignore_label == 255 and meta.evaluator_type == "lgg"
        assert len(records) == 12 and not Path(meta.json_file).exists()
        path = ensure_coco_json("lgg_unit_test")
        assert path == meta.json_file and Path(path).is_file()
        coco_records = DatasetCatalog.get("lgg_unit_test_coco")
        assert [r["image_id"] for r in coco_records] == [r["image_id"] for r in records]
    finally:
        for name in ("lgg_unit_test", "lgg_unit_test_coco"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_unknown_dataset_name_is_named_in_the_error():
    with pytest.raises(KeyError, match="lgg_no_such_split"):
        DatasetCatalog.get("lgg_no_such_split")


def test_mapper_moves_image_and_mask_together(lgg_tree):
    root, _ = lgg_tree
    records = [r for r in load_lgg_records(root) if r["annotations"]]
    geometric = [T.RandomFlip(prob=0.5, horizontal=True, vertical=False),
                 T.RandomFlip(prob=0.5, horizontal=False, vertical=True), RandomRot90(prob=0.9)]
    mapper = LGGDatasetMapper(is_train=True, augmentations=geometric)
    np.random.seed(0)
    for record in records:
        # Make the FLAIR channel carry the mask, so alignment is checkable after augmentation.
        image = np.asarray(Image.open(record["file_name"])).copy()
        mask = np.asarray(Image.open(record["sem_seg_file_name"])) > 0
        image[..., 1] = mask * 255
        Image.fromarray(image).save(record["file_name"])
        for _ in range(4):
            out = mapper(record)
            assert out["image"].dtype == torch.uint8 and out["sem_seg"].dtype == torch.int64
            np.testing.assert_array_equal((out["image"][1] > 127).numpy(), out["sem_seg"].numpy() == 1)
            instances = out["instances"]
            union = instances.gt_masks.tensor.any(0) if len(instances) else torch.zeros(32, 32, dtype=bool)
            assert torch.equal(union, out["sem_seg"] == 1)


def test_mapper_small_rotation_keeps_alignment_up_to_interpolation(lgg_tree):
    root, _ = lgg_tree
    record = next(r for r in load_lgg_records(root) if r["annotations"])
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 1] = (np.asarray(Image.open(record["sem_seg_file_name"])) > 0) * 255
    Image.fromarray(image).save(record["file_name"])
    mapper = LGGDatasetMapper(is_train=True, augmentations=[T.RandomRotation([10, 10], expand=False)])
    out = mapper(record)
    agreement = ((out["image"][1] > 127) == (out["sem_seg"] == 1)).float().mean().item()
    assert agreement > 0.97 and out["sem_seg"].sum() > 0
    assert set(out["sem_seg"].unique().tolist()) <= {0, 1}


def test_rot90_coords_follow_the_pixels():
    image = np.zeros((6, 10), np.uint8)
    image[1, 7] = 1  # pixel centre (x, y) = (7.5, 1.5)
    for k in range(4):
        t = Rot90Transform(k, 6, 10)
        rotated = t.apply_image(image)
        y, x = np.argwhere(rotated)[0]
        np.testing.assert_allclose(t.apply_coords(np.array([[7.5, 1.5]])), [[x + 0.5, y + 0.5]])
        np.testing.assert_array_equal(t.inverse().apply_image(rotated), image)


def test_mask_to_instances_handles_empty_masks():
    instances = mask_to_instances(np.zeros((8, 8), np.uint8))
    assert len(instances) == 0 and instances.gt_masks.tensor.shape == (0, 8, 8)


# ---------------------------------------------------------------- bad input
def _first_slice(root):
    return discover_lgg(root)[1][0].slices[0]


def test_corrupt_tiff_is_named(lgg_tree):
    root, _ = lgg_tree
    item = _first_slice(root)
    data = Path(item.image_path).read_bytes()
    Path(item.image_path).write_bytes(data[: len(data) // 3])
    with pytest.raises(LGGDataError, match=f"cannot read image {item.image_path}"):
        load_lgg_records(root)


def test_image_without_mask_is_named(lgg_tree):
    root, _ = lgg_tree
    item = _first_slice(root)
    Path(item.mask_path).unlink()
    with pytest.raises(LGGDataError, match=f"image {item.image_path} has no mask"):
        discover_lgg(root)


def test_non_binary_mask_is_named(lgg_tree):
    root, _ = lgg_tree
    item = _first_slice(root)
    mask = np.zeros((32, 32), np.uint8)
    mask[:4, :4] = 128
    mask[8:, 8:] = 255
    Image.fromarray(mask).save(item.mask_path)
    with pytest.raises(LGGDataError, match=r"mask .* has values \{0, 128, 255\}"):
        load_lgg_records(root)


def test_size_mismatch_is_named(lgg_tree):
    root, _ = lgg_tree
    item = _first_slice(root)
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(item.mask_path)
    with pytest.raises(LGGDataError, match=f"mask {item.mask_path} is 16x32 but its image is 32x32"):
        load_lgg_records(root)


def test_grayscale_image_is_named(lgg_tree):
    root, _ = lgg_tree
    item = _first_slice(root)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(item.image_path)
    with pytest.raises(LGGDataError, match=f"image {item.image_path} is grayscale"):
        load_lgg_records(root)


def test_missing_and_empty_roots_are_named(tmp_path):
    with pytest.raises(LGGDataError, match="does not exist"):
        discover_lgg(tmp_path / "nope")
    with pytest.raises(LGGDataError, match="no LGG patient folders found"):
        discover_lgg(tmp_path)


def test_converter_cli_fails_cleanly_and_writes_nothing(lgg_tree, tmp_path):
    root, _ = lgg_tree
    item = _first_slice(root)
    Path(item.image_path).write_bytes(b"not a tiff at all")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert_lgg_to_coco.py"), "--root", str(root),
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot read image {item.image_path}")
    assert not out.exists() or not any(out.iterdir())


def test_converter_cli_writes_three_files(lgg_tree, tmp_path):
    root, _ = lgg_tree
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert_lgg_to_coco.py"), "--root", str(root),
                           "--out", str(out), "--polygons"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["lgg_test.json", "lgg_train.json", "lgg_val.json"]


def test_mapper_resize_for_low_resolution_runs(lgg_tree):
    from brainseg.data import build_lgg_test_augmentations

    root, masks = lgg_tree
    record = next(r for r in load_lgg_records(root) if r["annotations"])
    out = LGGDatasetMapper(is_train=False, augmentations=build_lgg_test_augmentations(resize_to=16))(record)
    assert out["image"].shape == (3, 16, 16) and out["sem_seg"].shape == (16, 16)
    assert (out["height"], out["width"]) == (32, 32)  # predictions are returned at the original size
    expected = masks[record["file_name"]][::2, ::2]  # nearest-neighbour halving of the mask
    assert (out["sem_seg"].numpy() == expected).mean() > 0.9
    assert build_lgg_test_augmentations() == []


def test_pixel_statistics_match_numpy(tmp_path):
    masks = write_lgg_tree(tmp_path, num_slices=4, size=16)
    paths = sorted(masks)
    for every in (1, 3):
        pixels = np.stack([read_lgg_image(p) for p in paths[::every]]).reshape(-1, 3).astype(np.float64)
        mean, std = pixel_statistics([{"file_name": p} for p in paths], every=every)
        np.testing.assert_allclose(mean, pixels.mean(0), atol=0.05 + 1e-9)
        np.testing.assert_allclose(std, pixels.std(0), atol=0.05 + 1e-9)
    with pytest.raises(ValueError, match="at least one record"):
        pixel_statistics([])
