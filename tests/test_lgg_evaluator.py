"""Tests of the LGG evaluator and the evaluator factory on tiny self-made datasets
(masks written to tmp_path, throwaway catalog entries, COCO json built with pycocotools)."""

import csv
import json
import math
import random
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.engine import launch
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm

from brainseg.data.io import LGGDataError
from brainseg.evaluation import (
    LGGCOCOEvaluator,
    LGGEvaluator,
    build_evaluators,
    hausdorff_distance_95,
    seed_iou_dice,
    surface_metrics,
)
from brainseg.utils.workers import end_finished_worker

SIZE = 32


def square(top, left, size):
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


EMPTY = np.zeros((SIZE, SIZE), dtype=bool)
# (patient, slice_index, truth, prediction). Counts: A2 tp 70 fp 30 fn 30; A3 fn 100; B2 fp 4.
CASES = [
    ("A", 1, EMPTY, EMPTY),
    ("A", 2, square(5, 5, 10), square(5, 8, 10)),
    ("A", 3, square(5, 5, 10), EMPTY),
    ("B", 1, EMPTY, EMPTY),
    ("B", 2, EMPTY, square(20, 20, 2)),
]


def make_records(tmp_path, cases=CASES, on_disk=True):
    records = []
    for image_id, (patient, k, truth, _) in enumerate(cases):
        record = {
            "file_name": str(tmp_path / f"{patient}_{k}.tif"),
            "patient_id": patient,
            "slice_index": k,
            "height": SIZE,
            "width": SIZE,
            "image_id": image_id,
        }
        if on_disk:
            path = tmp_path / f"{patient}_{k}_mask.tif"
            Image.fromarray(truth.astype(np.uint8) * 255).save(path)
            record["sem_seg_file_name"] = str(path)
        else:
            record["sem_seg"] = torch.from_numpy(truth.astype(np.int64))
        records.append(record)
    return records


def sem_seg_output(prediction):
    tumour = torch.from_numpy(0.1 + 0.8 * prediction.astype(np.float32))
    return {"sem_seg": torch.stack([1 - tumour, tumour])}


def instances_output(masks, scores):
    instances = Instances((SIZE, SIZE))
    instances.pred_masks = (
        torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, SIZE, SIZE), dtype=torch.bool)
    )
    boxes = [mask_util.toBbox(mask_util.encode(np.asfortranarray(m.astype(np.uint8)))) for m in masks]
    instances.pred_boxes = Boxes(
        torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32).reshape(-1, 4)
    )
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    instances.pred_classes = torch.zeros(len(masks), dtype=torch.int64)
    return {"instances": instances}


def run(evaluator, records, outputs, batches):
    evaluator.reset()
    for batch in batches:
        evaluator.process([records[i] for i in batch], [outputs[i] for i in batch])
    return evaluator.evaluate()["lgg"]


def stacked(patient, order, cases=CASES):
    by_slice = {k: (t, p) for pid, k, t, p in cases if pid == patient}
    return np.stack([by_slice[k][1] for k in order]), np.stack([by_slice[k][0] for k in order])


def test_known_answers_and_per_patient_csv(tmp_path):
    records = make_records(tmp_path)
    outputs = [sem_seg_output(p) for *_, p in CASES]
    res = run(
        LGGEvaluator("lgg_eval_known", distributed=False, output_dir=str(tmp_path / "out")),
        records,
        outputs,
        batches=[[0, 1], [2, 3, 4]],
    )
    tp, fp, fn = 70, 34, 130
    assert res["dice_global"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert res["iou_global"] == pytest.approx(tp / (tp + fp + fn))
    assert res["sensitivity"] == pytest.approx(70 / 200)
    assert res["precision"] == pytest.approx(70 / 104)
    assert res["pixel_accuracy"] == pytest.approx(1 - (fp + fn) / (5 * SIZE * SIZE))
    # Scored slices A2 (Dice 0.7, IoU 7/13), A3 (0), B2 (0); A1 and B1 are empty-empty.
    assert res["dice_slice_mean"] == pytest.approx(0.7 / 3)
    assert res["iou_slice_mean"] == pytest.approx(7 / 13 / 3)
    assert res["n_empty_slices"] == 2 and res["n_slices"] == 5
    # Patient A: tp 70, fp 30, fn 130 -> Dice 140/300; patient B: only false positives -> 0.
    assert res["dice_volume_mean"] == pytest.approx(140 / 300 / 2)
    assert res["dice_volume_median"] == pytest.approx(140 / 300 / 2)
    assert res["iou_volume_mean"] == pytest.approx(70 / 230 / 2)
    assert (res["n_patients"], res["n_empty_patients"]) == (2, 0)
    # HD95 only for A (B has no truth): A's slices stacked by slice index.
    assert res["hd95"] == pytest.approx(hausdorff_distance_95(*stacked("A", [1, 2, 3])))
    assert res["n_hd95_excluded"] == 1
    # Presence: truth positive A2, A3; predicted positive A2, B2.
    assert res["presence_accuracy"] == pytest.approx(3 / 5)
    assert res["presence_sensitivity"] == pytest.approx(1 / 2)
    assert res["presence_specificity"] == pytest.approx(2 / 3)
    # UNeXt figures: batch 1 pools I=70, U=130; batch 2 pools I=0, U=104; weighted by batch size.
    (iou1, dice1), (iou2, dice2) = seed_iou_dice(70, 130), seed_iou_dice(0, 104)
    assert res["seed_iou"] == pytest.approx((2 * iou1 + 3 * iou2) / 5)
    assert res["seed_dice"] == pytest.approx((2 * dice1 + 3 * dice2) / 5)

    with open(tmp_path / "out" / "lgg_per_patient.csv") as f:
        rows = {row["patient_id"]: row for row in csv.DictReader(f)}
    assert float(rows["A"]["dice"]) == pytest.approx(140 / 300, abs=1e-6)
    assert (rows["A"]["n_slices"], rows["A"]["truth_slices"], rows["A"]["prediction_slices"]) == ("3", "2", "1")
    assert float(rows["B"]["dice"]) == 0.0 and rows["B"]["hd95"] == "nan"


def test_presence_min_area_and_threshold(tmp_path):
    records = make_records(tmp_path)
    outputs = [sem_seg_output(p) for *_, p in CASES]
    res = run(
        LGGEvaluator("lgg_eval_area", distributed=False, min_presence_area=5), records, outputs, [[i] for i in range(5)]
    )
    # B2's 4-pixel prediction is below the minimum area: slice B2 becomes a true negative.
    assert res["presence_accuracy"] == pytest.approx(4 / 5)
    assert res["presence_specificity"] == 1.0
    # Tumour probabilities are 0.9 / 0.1: a threshold of 0.95 predicts nothing.
    res = run(LGGEvaluator("lgg_eval_thr", distributed=False, threshold=0.95), records, outputs, [[0, 1, 2, 3, 4]])
    assert res["sensitivity"] == 0.0 and math.isnan(res["precision"])


def test_slice_order_across_process_calls_does_not_matter(tmp_path):
    # Patient C: a false positive 3 slices away from the truth, so stacking order matters for HD95.
    blob = square(8, 8, 6)
    cases = CASES + [("C", 1, blob, blob), ("C", 2, EMPTY, EMPTY), ("C", 3, EMPTY, EMPTY), ("C", 4, EMPTY, blob)]
    records = make_records(tmp_path, cases)
    outputs = [sem_seg_output(p) for *_, p in cases]
    n = len(cases)
    in_order = run(
        LGGEvaluator("lgg_eval_order", distributed=False, output_dir=str(tmp_path)),
        records,
        outputs,
        [[i] for i in range(n)],
    )
    csv_in_order = (tmp_path / "lgg_per_patient.csv").read_text()
    for seed in range(3):
        order = list(range(n))
        random.Random(seed).shuffle(order)
        evaluator = LGGEvaluator("lgg_eval_order", distributed=False, output_dir=str(tmp_path))
        assert run(evaluator, records, outputs, [[i] for i in order]) == in_order
        assert (tmp_path / "lgg_per_patient.csv").read_text() == csv_in_order
    expected_hd95 = [
        hausdorff_distance_95(*stacked("A", [1, 2, 3], cases)),
        hausdorff_distance_95(*stacked("C", [1, 2, 3, 4], cases)),
    ]
    assert in_order["hd95"] == pytest.approx(np.mean(expected_hd95))
    # The check is discriminative: stacking C's slices in arrival order would change its HD95.
    assert hausdorff_distance_95(*stacked("C", [1, 4, 2, 3], cases)) < expected_hd95[1]


def test_instances_outputs_and_truth_from_tensors(tmp_path):
    from_files = make_records(tmp_path)
    sem_seg = run(
        LGGEvaluator("lgg_eval_src", distributed=False),
        from_files,
        [sem_seg_output(p) for *_, p in CASES],
        [[0, 1, 2, 3, 4]],
    )
    # Instances: the prediction plus a low-score junk mask that must be ignored.
    junk = square(0, 0, 4)
    outputs = [instances_output([p, junk] if p.any() else [junk], [0.9, 0.2] if p.any() else [0.2]) for *_, p in CASES]
    in_memory = make_records(tmp_path, on_disk=False)
    assert "sem_seg_file_name" not in in_memory[0]
    assert run(LGGEvaluator("lgg_eval_src", distributed=False), in_memory, outputs, [[0, 1, 2, 3, 4]]) == sem_seg
    with_junk = run(
        LGGEvaluator("lgg_eval_src", distributed=False, score_threshold=0.1), in_memory, outputs, [[0, 1, 2, 3, 4]]
    )
    assert with_junk["precision"] < sem_seg["precision"]


def test_all_empty_split(tmp_path):
    cases = [("A", 1, EMPTY, EMPTY), ("B", 1, EMPTY, EMPTY)]
    records = make_records(tmp_path, cases)
    res = run(LGGEvaluator("lgg_eval_empty", distributed=False), records, [sem_seg_output(EMPTY)] * 2, [[0], [1]])
    assert math.isnan(res["dice_global"]) and math.isnan(res["dice_volume_mean"]) and math.isnan(res["hd95"])
    # Both masks empty for every patient: no surface metric is defined.
    assert math.isnan(res["assd"]) and math.isnan(res["nsd_1vox"]) and math.isnan(res["nsd_2vox"])
    assert (res["n_empty_slices"], res["n_empty_patients"], res["n_hd95_excluded"]) == (2, 2, 2)
    assert res["pixel_accuracy"] == 1.0 and res["presence_accuracy"] == 1.0
    assert res["seed_iou"] == 1.0 and res["seed_dice"] == 1.0


def test_spacing_from_metadata(tmp_path):
    name = f"lgg_eval_spacing_{uuid.uuid4().hex}"
    MetadataCatalog.get(name).spacing = (3.0, 0.5, 0.5)
    records = make_records(tmp_path)
    res = run(LGGEvaluator(name, distributed=False), records, [sem_seg_output(p) for *_, p in CASES], [[0, 1, 2, 3, 4]])
    assert res["hd95"] == pytest.approx(hausdorff_distance_95(*stacked("A", [1, 2, 3]), spacing=(3.0, 0.5, 0.5)))


def test_bad_inputs_raise_clear_errors(tmp_path):
    records = make_records(tmp_path)
    evaluator = LGGEvaluator("lgg_eval_errors", distributed=False)
    output = sem_seg_output(EMPTY)
    with pytest.raises(KeyError, match="patient_id"):
        evaluator.process([{k: v for k, v in records[0].items() if k != "patient_id"}], [output])
    with pytest.raises(ValueError, match="A_1.tif is 16x16; the record says 32x32"):
        evaluator.process([records[0]], [{"sem_seg": torch.zeros(2, 16, 16)}])
    with pytest.raises(KeyError, match="needs 'tumour_probability', 'sem_seg' or 'instances' in the model output"):
        evaluator.process([records[0]], [{"panoptic_seg": None}])
    with pytest.raises(KeyError, match="mask_source='instances' needs 'instances'"):
        LGGEvaluator("lgg_eval_errors", mask_source="instances").process([records[0]], [output])
    with pytest.raises(LGGDataError, match="file not found"):
        evaluator.process([dict(records[0], sem_seg_file_name=str(tmp_path / "missing_mask.tif"))], [output])
    with pytest.raises(ValueError, match="mask_source"):
        LGGEvaluator("lgg_eval_errors", mask_source="boxes")
    evaluator.reset()
    evaluator.process([records[0], records[0]], [output, output])
    with pytest.raises(ValueError, match="slice 1 of patient A was evaluated twice"):
        evaluator.evaluate()


def read_per_patient_csv(path):
    with open(path) as f:
        return {row["patient_id"]: row for row in csv.DictReader(f)}


def test_surface_metrics_units_and_empty_patients(tmp_path):
    records = make_records(tmp_path)
    outputs = [sem_seg_output(p) for *_, p in CASES]
    in_voxels = run(
        LGGEvaluator("lgg_eval_surface", distributed=False, output_dir=str(tmp_path)),
        records,
        outputs,
        [[0, 1, 2, 3, 4]],
    )
    # A has both masks; B only a prediction: HD95 and ASSD from A alone, NSD 0 for B in the mean.
    a = surface_metrics(*stacked("A", [1, 2, 3]), tolerances=(1.0, 2.0))
    assert in_voxels["surface_in_mm"] == 0 and "nsd_1mm" not in in_voxels
    assert in_voxels["hd95"] == pytest.approx(a.hd95) and in_voxels["assd"] == pytest.approx(a.assd)
    assert in_voxels["nsd_1vox"] == pytest.approx(a.nsd[0] / 2) and in_voxels["nsd_2vox"] == pytest.approx(a.nsd[1] / 2)
    assert 0 < a.nsd[0] < a.nsd[1] < 1
    rows = read_per_patient_csv(tmp_path / "lgg_per_patient.csv")
    assert float(rows["A"]["assd"]) == pytest.approx(a.assd, abs=1e-6) and rows["A"]["surface_units"] == "voxels"
    assert (rows["B"]["hd95"], rows["B"]["assd"], float(rows["B"]["nsd_1vox"])) == ("nan", "nan", 0.0)

    spacing = (3.0, 0.5, 0.5)
    in_mm = run(
        LGGEvaluator("lgg_eval_surface", distributed=False, spacing=spacing, nsd_tolerances=[0.5, 1.5]),
        records,
        outputs,
        [[0, 1, 2, 3, 4]],
    )
    a = surface_metrics(*stacked("A", [1, 2, 3]), spacing=spacing, tolerances=(0.5, 1.5))
    assert in_mm["surface_in_mm"] == 1 and in_mm["hd95"] == pytest.approx(a.hd95)
    assert in_mm["assd"] == pytest.approx(a.assd)
    assert (in_mm["nsd_0.5mm"], in_mm["nsd_1.5mm"]) == (pytest.approx(a.nsd[0] / 2), pytest.approx(a.nsd[1] / 2))
    # Everything else is independent of the spacing and the tolerances.
    for key in ("dice_volume_mean", "dice_global", "n_hd95_excluded", "seed_dice"):
        assert in_mm[key] == in_voxels[key]
    with pytest.raises(ValueError, match="distinct"):
        LGGEvaluator("lgg_eval_surface", nsd_tolerances=[1, 1.0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        LGGEvaluator("lgg_eval_surface", nsd_tolerances=[-1.0])


# Patient C has both masks, for the spacing fallback.
CASES_C = CASES + [("C", 1, square(4, 4, 6), square(4, 6, 6)), ("C", 2, square(4, 4, 6), EMPTY)]


def test_patient_spacing_table_with_fallback(tmp_path):
    records = make_records(tmp_path, CASES_C)
    outputs = [sem_seg_output(p) for *_, p in CASES_C]
    table = tmp_path / "spacing.csv"
    table.write_text("patient,spacing_z,spacing_y,spacing_x,comment\nA,3.0,0.5,0.5,from DICOM\nB,2.5,0.8,0.8,\n")
    evaluator = LGGEvaluator(
        "lgg_eval_patient_spacing",
        distributed=False,
        output_dir=str(tmp_path),
        patient_spacing=str(table),
        spacing=(6.0, 1.0, 1.0),
    )
    batches = [[i] for i in range(len(CASES_C))]
    res = run(evaluator, records, outputs, batches)
    rows = read_per_patient_csv(tmp_path / "lgg_per_patient.csv")
    expected = {
        "A": hausdorff_distance_95(*stacked("A", [1, 2, 3], CASES_C), spacing=(3.0, 0.5, 0.5)),
        "C": hausdorff_distance_95(*stacked("C", [1, 2], CASES_C), spacing=(6.0, 1.0, 1.0)),  # the fallback
    }
    for patient, hd95 in expected.items():
        assert float(rows[patient]["hd95"]) == pytest.approx(hd95, abs=1e-6)
    assert expected["A"] != hausdorff_distance_95(*stacked("A", [1, 2, 3], CASES_C), spacing=(6.0, 1.0, 1.0))
    assert res["hd95"] == pytest.approx(np.mean(list(expected.values())))
    assert [rows[p]["spacing_z"] for p in "ABC"] == ["3.000000", "2.500000", "6.000000"]
    assert res["surface_in_mm"] == 1 and rows["C"]["surface_units"] == "mm"
    # The same table as a dict, and from the dataset metadata, give the same results.
    as_dict = {"A": (3.0, 0.5, 0.5), "B": [2.5, 0.8, 0.8]}
    kwargs = dict(distributed=False, spacing=(6.0, 1.0, 1.0))
    assert (
        run(LGGEvaluator("lgg_eval_patient_spacing", patient_spacing=as_dict, **kwargs), records, outputs, batches)
        == res
    )
    name = f"lgg_eval_meta_spacing_{uuid.uuid4().hex}"
    MetadataCatalog.get(name).set(patient_spacing=as_dict, spacing=(6.0, 1.0, 1.0))
    assert run(LGGEvaluator(name, distributed=False), records, outputs, batches) == res


def test_patient_spacing_errors(tmp_path):
    records = make_records(tmp_path, CASES_C)
    output = sem_seg_output(EMPTY)
    table = tmp_path / "spacing.csv"
    table.write_text("patient,spacing_z,spacing_y,spacing_x\nA,3.0,0.5,0.5\n")
    evaluator = LGGEvaluator("lgg_eval_spacing_errors", distributed=False, patient_spacing=table)
    evaluator.process([records[0]], [output])  # patient A is in the table
    with pytest.raises(LGGDataError, match="patient B is not in the patient spacing table and no global spacing"):
        evaluator.process([records[3]], [output])
    bad_tables = {
        "patient,spacing_z,spacing_y\nA,1,1\n": r"lacks the column\(s\) \['spacing_x'\]",
        "patient,spacing_z,spacing_y,spacing_x\nA,1,1,1\nA,2,2,2\n": "line 3: patient A is listed twice",
        "patient,spacing_z,spacing_y,spacing_x\nA,1,0,1\n": "line 2: spacing must be 3 positive numbers",
        "patient,spacing_z,spacing_y,spacing_x\nA,1,one,1\n": "line 2: spacing must be 3 numbers",
        "patient,spacing_z,spacing_y,spacing_x\n": "lists no patient",
    }
    for text, message in bad_tables.items():
        table.write_text(text)
        with pytest.raises(LGGDataError, match=message):
            LGGEvaluator("lgg_eval_spacing_errors", patient_spacing=table)
    with pytest.raises(LGGDataError, match="not found: .*nowhere.csv"):
        LGGEvaluator("lgg_eval_spacing_errors", patient_spacing=tmp_path / "nowhere.csv")
    with pytest.raises(LGGDataError, match="patient spacing of A: spacing must be 3 positive numbers"):
        LGGEvaluator("lgg_eval_spacing_errors", patient_spacing={"A": (1.0, 1.0)})


def test_largest_component_mode(tmp_path):
    # P: truth a 4x4 square on slices 1-3 (48 voxels, one component across slices); the prediction
    # adds a 6x6 false positive on slice 2, larger than the truth's part of that slice but smaller
    # than the 3-D component: only the 3-D largest component keeps the tumour.
    tumour, false_positive = square(4, 4, 4), square(20, 20, 6)
    cases = [
        ("P", 1, tumour, tumour),
        ("P", 2, tumour, tumour | false_positive),
        ("P", 3, tumour, tumour),
        ("Q", 1, square(5, 5, 10), square(5, 8, 10)),  # one component: LCC changes nothing
        ("R", 1, square(5, 5, 10), EMPTY),  # nothing predicted
        ("S", 1, EMPTY, EMPTY),
    ]
    records = make_records(tmp_path, cases)
    outputs = [sem_seg_output(p) for *_, p in cases]
    plain = run(LGGEvaluator("lgg_eval_lcc", distributed=False), records, outputs, [list(range(6))])
    lcc = run(
        LGGEvaluator("lgg_eval_lcc", distributed=False, output_dir=str(tmp_path), largest_component=True),
        records,
        outputs,
        [list(range(6))],
    )
    new_keys = {"dice_volume_mean_lcc", "dice_volume_median_lcc", "iou_volume_mean_lcc", "hd95_lcc", "assd_lcc"}
    assert lcc.keys() - plain.keys() == new_keys | {"nsd_1vox_lcc", "nsd_2vox_lcc"}
    for key, value in plain.items():
        assert lcc[key] == pytest.approx(value, nan_ok=True), key
    # Plain Dice of P: 2*48 / (48 + 84) = 8/11; with the largest component it is perfect.
    assert plain["dice_volume_mean"] == pytest.approx((8 / 11 + 0.7 + 0) / 3)
    assert lcc["dice_volume_mean_lcc"] == pytest.approx((1 + 0.7 + 0) / 3)
    assert plain["dice_volume_median"] == pytest.approx(0.7) and lcc["dice_volume_median_lcc"] == pytest.approx(0.7)
    assert lcc["iou_volume_mean_lcc"] == pytest.approx((1 + 7 / 13 + 0) / 3)
    hd95_q = hausdorff_distance_95(*stacked("Q", [1], cases))
    assert lcc["hd95_lcc"] == pytest.approx((0 + hd95_q) / 2) and plain["hd95"] > lcc["hd95_lcc"]
    nsd_q = surface_metrics(*stacked("Q", [1], cases), tolerances=(1.0,)).nsd[0]
    assert lcc["nsd_1vox_lcc"] == pytest.approx((1 + nsd_q + 0) / 3)  # R: one mask empty -> 0; S skipped
    rows = read_per_patient_csv(tmp_path / "lgg_per_patient.csv")
    assert (rows["P"]["prediction_voxels"], rows["P"]["prediction_voxels_lcc"]) == ("84", "48")
    assert (float(rows["P"]["dice"]), float(rows["P"]["dice_lcc"])) == (pytest.approx(8 / 11, abs=1e-6), 1.0)
    assert float(rows["P"]["assd_lcc"]) == 0.0 and float(rows["Q"]["dice_lcc"]) == pytest.approx(0.7)
    assert (rows["R"]["prediction_voxels_lcc"], rows["S"]["dice_lcc"]) == ("0", "nan")



def test_lesion_wise_metrics_per_patient(tmp_path):
    # L: truth lesion 1 = a 4x4 square on slices 1-2 (32 voxels), lesion 2 = a 4x4 square on slice 2;
    # the prediction covers lesion 1 on slice 1 only (16 voxels), misses lesion 2 and adds a 2x2
    # false positive on slice 3: TP 1, FN 1, FP 1 -> F1 2/4; lesion Dice (2*16/48 + 0 + 0) / 3.
    # E: both masks empty -> nothing missed, nothing wrongly found: F1 and lesion Dice 1.
    first, second = square(2, 2, 4), square(20, 20, 4)
    cases = [
        ("L", 1, first, first),
        ("L", 2, first | second, EMPTY),
        ("L", 3, EMPTY, square(10, 20, 2)),
        ("E", 1, EMPTY, EMPTY),
    ]
    records = make_records(tmp_path, cases)
    outputs = [sem_seg_output(p) for *_, p in cases]
    res = run(LGGEvaluator("lgg_eval_lesions", distributed=False, output_dir=str(tmp_path), compute_hd95=False),
              records, outputs, [[0, 1], [2, 3]])
    assert res["lesion_f1_mean"] == pytest.approx((0.5 + 1) / 2)
    assert res["lesion_dice_mean"] == pytest.approx((2 / 9 + 1) / 2)
    rows = read_per_patient_csv(tmp_path / "lgg_per_patient.csv")
    assert [rows["L"][f"lesion_{k}"] for k in ("tp", "fp", "fn")] == ["1", "1", "1"]
    assert (float(rows["L"]["lesion_f1"]), float(rows["L"]["lesion_dice"])) == (0.5, pytest.approx(2 / 9, abs=1e-6))
    assert [rows["E"][f"lesion_{k}"] for k in ("tp", "fp", "fn", "f1", "dice")] == ["0", "0", "0", "1.000000", "1.000000"]


def _evaluate_in_two_processes(records, outputs, result_prefix, options):
    torch.set_num_threads(1)
    try:
        rank = comm.get_rank()
        evaluator = LGGEvaluator("lgg_eval_dist", **options)  # distributed=True
        evaluator.reset()
        for i in range(rank, len(records), 2):  # interleaved: both patients are split across processes
            evaluator.process([records[i]], [outputs[i]])
        with open(f"{result_prefix}{rank}.json", "w") as f:
            json.dump(evaluator.evaluate(), f)
        comm.synchronize()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()
    end_finished_worker()  # as train_net's workers end


def test_two_processes_equal_one_process(tmp_path):
    records = make_records(tmp_path)
    outputs = [sem_seg_output(p) for *_, p in CASES]
    options = dict(largest_component=True, patient_spacing={"A": (3.0, 0.5, 0.5)}, spacing=(1.0, 1.0, 1.0))
    single = run(LGGEvaluator("lgg_eval_dist", distributed=False, **options), records, outputs, [[i] for i in range(5)])
    assert {"dice_volume_mean_lcc", "hd95_lcc", "nsd_1mm", "nsd_2mm_lcc"} <= single.keys()
    prefix = str(tmp_path / "rank")
    launch(_evaluate_in_two_processes, 2, dist_url="auto", args=(records, outputs, prefix, options))
    with open(prefix + "0.json") as f:
        main = json.load(f)
    with open(prefix + "1.json") as f:
        assert json.load(f) == {}  # only the main process returns results
    assert main["lgg"].keys() == single.keys()
    for key, value in single.items():
        assert main["lgg"][key] == pytest.approx(value, nan_ok=True), key


def register_coco_dataset(tmp_path, cases):
    """A throwaway dataset whose COCO json is built here: one annotation per truth mask."""
    name = f"lgg_eval_coco_{uuid.uuid4().hex}"
    images, annotations = [], []
    for image_id, (patient, k, truth, _) in enumerate(cases):
        images.append({"id": image_id, "file_name": f"{patient}_{k}.tif", "height": SIZE, "width": SIZE})
        if truth.any():
            rle = mask_util.encode(np.asfortranarray(truth.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "area": float(mask_util.area(rle)),
                    "bbox": mask_util.toBbox(rle).tolist(),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                }
            )
    json_file = tmp_path / f"{name}.json"
    json_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "tumor"}]})
    )
    MetadataCatalog.get(name).set(
        json_file=str(json_file), thing_classes=["tumor"], thing_dataset_id_to_contiguous_id={1: 0}
    )
    return name


def test_coco_ap_of_perfect_and_empty_predictions(tmp_path):
    cases = [("A", 1, square(3, 3, 8), EMPTY), ("A", 2, EMPTY, EMPTY), ("B", 1, square(12, 10, 6), EMPTY)]
    name = register_coco_dataset(tmp_path, cases)
    records = make_records(tmp_path, cases)
    perfect = [
        dict(sem_seg_output(t), **instances_output([t] if t.any() else [], [1.0] if t.any() else []))
        for _, _, t, _ in cases
    ]
    empty = [dict(sem_seg_output(EMPTY), **instances_output([], [])) for _ in cases]
    evaluators = build_evaluators([name], output_dir=str(tmp_path / "out"))
    assert [type(e) for e in evaluators._evaluators] == [LGGEvaluator, LGGCOCOEvaluator]

    evaluators.reset()
    evaluators.process(records, perfect)
    results = evaluators.evaluate()
    assert results["segm"]["AP"] == pytest.approx(100.0) and results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP50"] == pytest.approx(100.0) and results["segm"]["APs"] == pytest.approx(100.0)
    assert results["lgg"]["dice_global"] == 1.0 and results["lgg"]["hd95"] == 0.0

    evaluators.reset()
    evaluators.process(records, empty)
    results = evaluators.evaluate()
    for task in ("segm", "bbox"):
        assert results[task]["AP"] == 0.0 and results[task]["AP75"] == 0.0 and results[task]["APs"] == 0.0
        assert math.isnan(results[task]["APm"])  # no medium-sized ground truth at all
    assert results["lgg"]["dice_global"] == 0.0


def test_factory_options_and_errors(tmp_path):
    name = register_coco_dataset(tmp_path, [("A", 1, square(3, 3, 8), EMPTY)])
    evaluators = build_evaluators(name, coco=False, lgg_options={"threshold": 0.3, "compute_hd95": False})
    (lgg,) = evaluators._evaluators
    assert isinstance(lgg, LGGEvaluator) and lgg._threshold == 0.3
    with pytest.raises(ValueError, match="subset of"):
        build_evaluators(name, tasks=("keypoints",))
    with pytest.raises(ValueError, match="exactly one dataset"):
        build_evaluators([name, name])
    missing = f"lgg_eval_nojson_{uuid.uuid4().hex}"
    MetadataCatalog.get(missing).json_file = str(tmp_path / "nowhere.json")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        build_evaluators(missing)
