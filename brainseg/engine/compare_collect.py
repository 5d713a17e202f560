"""From the finished runs of a comparison study to its
:class:`~brainseg.visualization.comparison_report.ComparisonResults`.

Per run: the test patients' metrics (``inference_test/lgg_per_patient.csv`` of the run, written by
:class:`~brainseg.evaluation.lgg_evaluation.LGGEvaluator`), segm AP50 (``results.json``), the
training curves (``metrics.json``), the training wall time and the size and speed of the model
(``compare_run.json``, measured once and kept there).

Per table row (model, or model x setting in a sweep): each patient's metrics averaged over the
seeds, then over patients: Dice mean ± SD, median and a 95 % BCa bootstrap CI of the mean
(:mod:`brainseg.evaluation.comparison_statistics`), the mean and SD of the fold means, HD95,
sensitivity, precision, lesion-wise F1 and Dice; segm AP50 as mean ± SD over folds; training
minutes and slices/s as means over runs. Pairwise Wilcoxon signed-rank tests on the per-patient
Dice, Holm-corrected over the pairs, compare the models of each setting (the ensembles, on
their own dataset, among themselves).
"""
import csv
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog

from brainseg.evaluation.comparison_statistics import pairwise_wilcoxon_holm, summarize
from brainseg.utils.errors import UserError
from brainseg.utils.io import atomic_write
from brainseg.visualization.comparison_report import ComparisonResults, SlicePanel

from .compare_plan import DEFAULT_SETTING, StudyRun, folder_name
from .compare_predict import EntryModels, choose_panel_slices, display_slice, measure_model

__all__ = ["RUN_INFO", "PATIENT_METRICS", "read_json", "update_run_info", "read_per_patient", "read_curves",
           "average_curves", "summary_row", "collect_study"]

logger = logging.getLogger("brainseg")

RUN_INFO = "compare_run.json"
PER_PATIENT_CSV = Path("inference_test") / "lgg_per_patient.csv"
# per-patient columns of lgg_per_patient.csv carried into the study (seed-averaged)
PATIENT_METRICS = ("dice", "iou", "hd95", "sensitivity", "precision", "lesion_f1", "lesion_dice")
# metrics.json key -> curve name
CURVE_KEYS = {"total_loss": "loss", "lgg/dice_volume_mean": "val dice"}


def read_json(path: Path) -> Dict[str, Any]:
    """A json file's content, ``{}`` when it does not exist."""
    return json.loads(path.read_text()) if path.is_file() else {}


def update_run_info(run: StudyRun, **values: Any) -> Dict[str, Any]:
    """Merge ``values`` into the run's ``compare_run.json`` (written atomically) and return it."""
    path = run.output_dir / RUN_INFO
    info = {**read_json(path), "entry": run.entry, "model": run.model.name, "setting": run.setting.name,
            "fold": run.fold, "seed": run.seed, "config_file": run.model.config_file,
            "overrides": list(run.overrides), **values}
    atomic_write(path, json.dumps(info, indent=1) + "\n")
    return info


def read_per_patient(path: Path) -> Dict[str, Dict[str, float]]:
    """``{patient: {metric: value}}`` of an ``lgg_per_patient.csv`` (:data:`PATIENT_METRICS`;
    ``nan`` where the file has no value).

    Raises:
        UserError: the file does not exist (the run did not finish its test evaluation).
    """
    if not path.is_file():
        raise UserError(f"{path} not found: the run's test evaluation did not write its per-patient metrics")
    with open(path, newline="") as f:
        return {row["patient_id"]: {m: float(row.get(m) or "nan") for m in PATIENT_METRICS}
                for row in csv.DictReader(f)}


def read_curves(metrics_json: Path) -> Dict[str, Dict[int, float]]:
    """The logged training loss and validation Dice of a run by iteration (detectron2's
    ``metrics.json``, one json object per line; after a resume the later value of an iteration wins)."""
    curves: Dict[str, Dict[int, float]] = {name: {} for name in CURVE_KEYS.values()}
    if metrics_json.is_file():
        for line in metrics_json.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by an interruption
            for key, name in CURVE_KEYS.items():
                if key in entry and "iteration" in entry:
                    curves[name][int(entry["iteration"])] = float(entry[key])
    return curves


def average_curves(runs_curves: Sequence[Mapping[str, Mapping[int, float]]]) -> Dict[str, List[Tuple[int, float]]]:
    """Each series averaged over runs at the iterations every run logged (series that no
    iteration has in common are left out)."""
    averaged = {}
    for name in CURVE_KEYS.values():
        series = [curves.get(name, {}) for curves in runs_curves]
        common = sorted(set.intersection(*(set(s) for s in series))) if series else []
        if common:
            averaged[name] = [(i, float(np.mean([s[i] for s in series]))) for i in common]
    return averaged


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _sd(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan


def summary_row(name: str, patients: Mapping[str, Mapping[str, float]],
                fold_of: Optional[Mapping[str, int]] = None) -> Dict[str, Any]:
    """The patient-level statistics of one table row.

    Args:
        name: the row's model name.
        patients: ``{patient: {metric: value}}`` (already averaged over seeds).
        fold_of: the fold testing each patient (for the mean and SD of the fold means).

    Returns:
        ``model``, ``dice_mean``, ``dice_sd``, ``dice_median``, ``dice_ci_low``, ``dice_ci_high``,
        ``dice_fold_mean``, ``dice_fold_sd`` (with ``fold_of``), ``hd95_mean``, ``sensitivity``,
        ``precision``, ``lesion_f1``, ``lesion_dice`` and ``n_patients`` (with a finite Dice).
    """
    dice = [m["dice"] for m in patients.values() if math.isfinite(m["dice"])]
    stats = summarize(dice)
    row = {"model": name, **{f"dice_{k}": stats[k] for k in ("mean", "sd", "median", "ci_low", "ci_high")}}
    if fold_of is not None:
        by_fold = defaultdict(list)
        for patient, metrics in patients.items():
            by_fold[fold_of[patient]].append(metrics["dice"])
        fold_means = [_mean(values) for _, values in sorted(by_fold.items())]
        row.update(dice_fold_mean=_mean(fold_means), dice_fold_sd=_sd(fold_means))
    row["hd95_mean"] = _mean([m["hd95"] for m in patients.values()])
    for key in ("sensitivity", "precision", "lesion_f1", "lesion_dice"):
        row[key] = _mean([m[key] for m in patients.values()])
    row["n_patients"] = stats["n"]
    return row


def _seed_mean(per_run: Sequence[Mapping[str, Mapping[str, float]]]) -> Dict[str, Dict[str, float]]:
    """``{patient: {metric: mean over the runs that tested the patient}}``."""
    collected: Dict[str, List[Mapping[str, float]]] = defaultdict(list)
    for rows in per_run:
        for patient, metrics in rows.items():
            collected[patient].append(metrics)
    return {patient: {m: _mean([r[m] for r in rows]) for m in PATIENT_METRICS}
            for patient, rows in sorted(collected.items())}


def _run_measurements(run: StudyRun, info: Dict[str, Any]) -> Dict[str, float]:
    """The model's size and speed, from ``compare_run.json`` or measured now (and stored)."""
    if "measurements" not in info:
        models = EntryModels([run])
        info = update_run_info(run, measurements=measure_model(models.predictors[0].model, models.cfg))
    return info["measurements"]


def _entry_rows(entry: str, runs: Sequence[StudyRun], fold_of: Mapping[str, int]
                ) -> Tuple[Dict[str, Any], List[Dict[str, Any]], Dict[str, List[Tuple[int, float]]]]:
    """(table row, per-patient rows, averaged curves) of one model (x setting) from its runs."""
    infos = [read_json(run.output_dir / RUN_INFO) for run in runs]
    patients = _seed_mean([read_per_patient(run.output_dir / PER_PATIENT_CSV) for run in runs])
    row = summary_row(entry, patients, fold_of)
    ap50 = defaultdict(list)
    for run in runs:
        segm = read_json(run.output_dir / "results.json").get("segm", {})
        ap50[run.fold].append(float(segm.get("AP50", math.nan)))
    fold_ap50 = [_mean(values) for _, values in sorted(ap50.items())]
    measured = [_run_measurements(run, info) for run, info in zip(runs, infos)]
    row.update(segm_ap50=_mean(fold_ap50), segm_ap50_sd=_sd(fold_ap50),
               params=measured[0]["params"], gflops_per_slice=measured[0]["gflops_per_slice"],
               train_minutes=_mean([info.get("train_seconds", math.nan) / 60 for info in infos]),
               slices_per_s=_mean([m["slices_per_s"] for m in measured]), runs=len(runs))
    seeds = len({run.seed for run in runs})
    patient_rows = [{"patient": p, "model": entry, "fold": fold_of[p], "seeds": seeds, **metrics}
                    for p, metrics in patients.items()]
    curves = average_curves([read_curves(run.output_dir / "metrics.json") for run in runs])
    return row, patient_rows, curves


def _ensemble_rows(name: str, models: EntryModels, runs: Sequence[StudyRun], dataset_name: str, out_dir: Path
                   ) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """(table row, per-patient rows) of the ensemble of ``runs`` evaluated on ``dataset_name``."""
    patients = read_per_patient(models.evaluate(dataset_name, out_dir))
    row = {**summary_row(name, patients), "runs": len(runs)}
    seeds = len({run.seed for run in runs})
    logger.info(f"{name} on {dataset_name}: per-volume Dice {row['dice_mean']:.4f}")
    return row, [{"patient": p, "model": name, "fold": "ensemble", "seeds": seeds, **m} for p, m in patients.items()]


def _panels(panel_slices: Sequence[Tuple[int, dict]], where: Optional[str]) -> List[SlicePanel]:
    """The figure's slices (labelled with their fold, or ``where`` they come from), no prediction yet."""
    panels = []
    for fold, record in panel_slices:
        image, truth = display_slice(record)
        label = f"{record['patient_id']} slice {record['slice_index']} ({where or f'fold {fold}'})"
        panels.append(SlicePanel(label, image, truth))
    return panels


def _predict_panels(panels: Sequence[SlicePanel], panel_slices: Sequence[Tuple[int, dict]], entry: str,
                    runs: Sequence[StudyRun]) -> None:
    """Add ``entry``'s masks to the panels: each slice predicted by the first seed's model of its fold."""
    seed = runs[0].seed
    for fold in sorted({fold for fold, _ in panel_slices}):
        run = next(r for r in runs if r.fold == fold and r.seed == seed)
        indices = [i for i, (f, _) in enumerate(panel_slices) if f == fold]
        for i, mask in zip(indices, EntryModels([run]).predict_masks([panel_slices[i][1] for i in indices])):
            panels[i].predictions[entry] = mask


def _pairwise(groups: Mapping[Any, Sequence[str]], per_patient: Sequence[Mapping[str, Any]]) -> List[dict]:
    """Holm-corrected pairwise Wilcoxon tests within each group of two or more rows."""
    dice: Dict[str, Dict[str, float]] = defaultdict(dict)
    for row in per_patient:
        dice[row["model"]][row["patient"]] = row["dice"]
    tests = []
    for names in groups.values():
        if len(names) > 1:
            tests += pairwise_wilcoxon_holm({name: dice[name] for name in names})
    return tests


def collect_study(
    runs: Sequence[StudyRun],
    fold_datasets: Sequence[Mapping[str, str]],
    output: Path,
    *,
    title: str,
    test_dataset: Optional[str] = None,
    commands: Sequence[str] = (),
    notes: Sequence[str] = (),
    num_panels: int = 4,
) -> ComparisonResults:
    """Gather the finished runs into the comparison (see the module docstring).

    Args:
        runs: every run of the study, finished.
        fold_datasets: per fold, its train/val/test dataset names.
        output: the study folder (ensembles write into ``<output>/ensembles/<row>``).
        title: the report's title.
        test_dataset: a registered dataset on which each row's K-fold ensemble is evaluated (a
            row "<model> (K-fold ensemble)"); the panel slices then come from it too, shown for
            the fold-0 model of each row.
        commands, notes: for the report.
        num_panels: slices in the figure.

    Returns:
        the study's :class:`ComparisonResults`.
    """
    by_entry: Dict[str, List[StudyRun]] = defaultdict(list)
    for run in runs:
        by_entry[run.entry].append(run)
    tested = [DatasetCatalog.get(names["test"]) for names in fold_datasets]
    fold_of = {str(r["patient_id"]): fold for fold, records in enumerate(tested) for r in records}
    panel_slices = choose_panel_slices([DatasetCatalog.get(test_dataset)] if test_dataset else tested, num_panels)
    panels = _panels(panel_slices, test_dataset)
    table, per_patient, curves, groups, ensembles = [], [], {}, defaultdict(list), []
    for entry, entry_runs in by_entry.items():
        setting = entry_runs[0].setting.name
        shown = {} if setting == DEFAULT_SETTING else {"setting": setting}
        row, patient_rows, curves[entry] = _entry_rows(entry, entry_runs, fold_of)
        table.append({**row, **shown})
        per_patient += patient_rows
        groups["cv", setting].append(entry)
        _predict_panels(panels, panel_slices, entry, entry_runs)
        if test_dataset:
            name = f"{entry} ({len(fold_datasets)}-fold ensemble)"
            models = EntryModels(entry_runs)
            row, patient_rows = _ensemble_rows(name, models, entry_runs, test_dataset,
                                               output / "ensembles" / folder_name(entry))
            ensembles.append({**row, **shown})
            per_patient += patient_rows
            groups["ensemble", setting].append(name)
            for panel, mask in zip(panels, models.predict_masks([record for _, record in panel_slices])):
                panel.predictions[name] = mask
    table += ensembles
    return ComparisonResults(title=title, models=[row["model"] for row in table], table=table,
                             per_patient=per_patient, pairwise=_pairwise(groups, per_patient), curves=curves,
                             panels=panels, commands=list(commands), notes=list(notes))
