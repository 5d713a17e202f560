"""What a comparison study (:mod:`brainseg.engine.compare`) asks of its trained models besides
the training runs' own files: size and speed, the panel slices, and K-fold ensembles.

* :func:`measure_model`: parameters, GFLOPs per slice (matmul/conv FLOPs of one evaluation
  forward at the config's evaluation size, ``torch.utils.flop_counter``) and slices per second
  (forward passes over the run's test slices, loaded beforehand, under the run's precision).
* :class:`EntryModels`: the weights behind one table row (one fold model, or the K of an
  ensemble) as :class:`~brainseg.inference.SlicePredictor` s, with :meth:`~EntryModels.predict_masks`
  for the panel slices and :meth:`~EntryModels.evaluate` for a whole dataset (the ensemble's
  probability is the mean of the models', :func:`brainseg.inference.ensemble.average_probabilities`).
* :func:`choose_panel_slices`: the slices shown for every model.

Slices go through the config's test mapper (its resize and intensity normalisation), and
probabilities come back at the slice's own size, as in the evaluation.
"""
import logging
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import instantiate
from omegaconf import DictConfig

from brainseg.data.instances import annotations_to_mask
from brainseg.data.mapper import read_record_image
from brainseg.evaluation.lgg_evaluation import LGGEvaluator
from brainseg.inference.ensemble import average_probabilities
from brainseg.inference.model import build_inference_model
from brainseg.inference.predictor import SlicePredictor
from brainseg.modeling.postprocessing import TUMOUR_PROBABILITY, model_mask_threshold, tumour_mask
from brainseg.utils.errors import CheckpointError

from .benchmark import count_flops
from .compare_plan import StudyRun
from .defaults import resolve_train_precision

__all__ = ["MAX_TIMED_SLICES", "run_weights", "measure_model", "EntryModels", "choose_panel_slices", "display_slice"]

logger = logging.getLogger("brainseg")

# slices per run whose forward passes are timed (after one warm-up batch)
MAX_TIMED_SLICES = 64


def run_weights(output_dir: Path) -> Path:
    """The weights a run was evaluated with: ``model_best.pth``, else ``model_final.pth``.

    Raises:
        CheckpointError: neither exists.
    """
    for name in ("model_best.pth", "model_final.pth"):
        if (output_dir / name).is_file():
            return output_dir / name
    raise CheckpointError(f"run {output_dir} has neither model_best.pth nor model_final.pth")


def _chw_to_hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def measure_model(model: torch.nn.Module, cfg: DictConfig, *, max_slices: int = MAX_TIMED_SLICES) -> Dict[str, float]:
    """Size and speed of a trained model on its run's test slices.

    Args:
        model: the model in eval mode.
        cfg: its run's config (``dataloader.test`` gives the slices, ``train`` the precision).
        max_slices: at most this many slices are timed (whole test batches).

    Returns:
        ``params``, ``gflops_per_slice`` and ``slices_per_s``.
    """
    batches, count = [], 0
    for batch in instantiate(cfg.dataloader.test):
        batches.append(batch)
        count += len(batch)
        if count >= max_slices:
            break
    device = next(model.parameters()).device
    precision = resolve_train_precision(cfg.get("train", {}), device)
    with torch.inference_mode():
        flops = count_flops(lambda: model(batches[0][:1]))
        precision.run(model, batches[0])  # warm-up
        start = time.perf_counter()
        for batch in batches:
            precision.run(model, batch)
        seconds = time.perf_counter() - start
    return {"params": int(sum(p.numel() for p in model.parameters())), "gflops_per_slice": flops / 1e9,
            "slices_per_s": count / seconds}


class EntryModels:
    """The trained models of one table row: a single run's, or the runs of a K-fold ensemble."""

    def __init__(self, runs: Sequence[StudyRun]):
        """
        Args:
            runs: finished runs of one model and setting (their configs differ only in the folds).

        Raises:
            CheckpointError: a run without weights, or weights that do not fit its config.
        """
        loaded = [build_inference_model(r.model.config_file, str(run_weights(r.output_dir)), r.overrides)
                  for r in runs]
        self.cfg = loaded[0][1]
        self.predictors = [SlicePredictor(model, precision="fp32") for model, _ in loaded]
        # fold models may have chosen their thresholds on their validation patients: the ensemble takes the mean
        self.threshold = float(np.mean([model_mask_threshold(model) for model, _ in loaded]))
        self.mapper = instantiate(self.cfg.dataloader.test.mapper)

    def probabilities(self, inputs: Sequence[dict]) -> List[torch.Tensor]:
        """Mean tumour probability of the models for mapped inputs, at each record's size."""
        images = [_chw_to_hwc(item["image"]) for item in inputs]
        return average_probabilities(self.predictors, images, [(item["height"], item["width"]) for item in inputs])

    def predict_masks(self, records: Sequence[dict]) -> List[np.ndarray]:
        """(H, W) bool tumour masks of dataset records."""
        probabilities = self.probabilities([self.mapper(record) for record in records])
        return [tumour_mask(p, self.threshold).numpy() for p in probabilities]

    def evaluate(self, dataset_name: str, output_dir: Path) -> Path:
        """Score the models' mean probability on a registered dataset with :class:`LGGEvaluator`.

        Returns:
            the path of the ``lgg_per_patient.csv`` written into ``output_dir``.
        """
        self.cfg.dataloader.test.dataset.names = dataset_name
        evaluator = LGGEvaluator(dataset_name, distributed=False, output_dir=str(output_dir), threshold=self.threshold)
        evaluator.reset()
        for batch in instantiate(self.cfg.dataloader.test):
            evaluator.process(batch, [{TUMOUR_PROBABILITY: p} for p in self.probabilities(batch)])
        evaluator.evaluate()
        return output_dir / "lgg_per_patient.csv"


def choose_panel_slices(records_per_fold: Sequence[Sequence[dict]], count: int = 4) -> List[Tuple[int, dict]]:
    """Deterministic test slices with tumour for the figure, spread over patients and folds.

    Each patient contributes its slice with the largest tumour area (the first such slice on a
    tie); then, round after round, each fold gives its largest remaining one (ties: patient id).

    Args:
        records_per_fold: the test records of each fold.
        count: how many slices.

    Returns:
        up to ``count`` (fold index, record) pairs.
    """
    ranked = []
    for records in records_per_fold:
        best: Dict[str, Tuple[float, dict]] = {}
        for record in records:
            area = float(sum(ann.get("area", 0) for ann in record.get("annotations", [])))
            patient = str(record["patient_id"])
            if area > 0 and (patient not in best or area > best[patient][0]):
                best[patient] = (area, record)
        ranked.append([r for _, r in sorted(best.values(), key=lambda x: (-x[0], str(x[1]["patient_id"])))])
    chosen = []
    for depth in range(max(map(len, ranked), default=0)):
        chosen += [(fold, records[depth]) for fold, records in enumerate(ranked) if depth < len(records)]
    return chosen[:count]


def display_slice(record: dict) -> Tuple[np.ndarray, np.ndarray]:
    """The (H, W, 3) uint8 image (TIFF intensities; NIfTI normalised per volume) and the (H, W)
    bool truth of a record, for the figure."""
    image = read_record_image(record)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    truth = annotations_to_mask(record.get("annotations", []), record["height"], record["width"]).astype(bool)
    return image, truth
