"""Per-slice tumour probabilities saved during an evaluation, and the LGG metrics recomputed
from them without the model.

Layout of the folder (one compressed ``.npz`` per slice, written atomically as the slices are
evaluated, so nothing is held in memory)::

    <folder>/<patient_id>/<slice_index>.npz   probability: float16 (H, W); file_name; patient_id;
                                               slice_index
    <folder>/probabilities.json               dataset, mask_threshold, n_slices (written last)
"""
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from brainseg.modeling.postprocessing import TUMOUR_PROBABILITY, tumour_probability
from brainseg.utils.errors import UserError
from brainseg.utils.io import atomic_write

from .lgg_evaluation import LGGEvaluator
from .masks import describe_record

__all__ = ["ProbabilityWriter", "probability_path", "load_probability", "recompute_lgg_metrics"]

INDEX_FILE = "probabilities.json"


def probability_path(folder: Union[str, os.PathLike], patient_id: str, slice_index: int) -> Path:
    """Where the probabilities of one slice are saved."""
    return Path(folder) / str(patient_id) / f"{int(slice_index)}.npz"


def load_probability(path: Union[str, os.PathLike]) -> np.ndarray:
    """The float16 (H, W) probability map of a saved slice."""
    with np.load(path) as data:
        return data["probability"]


class ProbabilityWriter(DatasetEvaluator):
    """Writes each evaluated slice's tumour probability as float16 into ``folder`` (see the module
    docstring); it computes no metric."""

    def __init__(self, folder: str, dataset_name: str, *, mask_threshold: float):
        """
        Args:
            folder: output folder (created).
            dataset_name: the evaluated dataset, recorded in ``probabilities.json``.
            mask_threshold: the model's threshold, recorded for :func:`recompute_lgg_metrics`.
        """
        self._folder = folder
        self._dataset_name = dataset_name
        self._mask_threshold = float(mask_threshold)
        self.reset()

    def reset(self) -> None:
        self._written = 0

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        for record, output in zip(inputs, outputs):
            for key in ("patient_id", "slice_index"):
                if key not in record:
                    raise KeyError(f"ProbabilityWriter needs '{key}' in the record of {describe_record(record)}")
            probability = tumour_probability(output).detach().cpu().numpy().astype(np.float16)
            buffer = io.BytesIO()
            np.savez_compressed(buffer, probability=probability, file_name=str(record.get("file_name", "")),
                                patient_id=str(record["patient_id"]), slice_index=int(record["slice_index"]))
            atomic_write(probability_path(self._folder, record["patient_id"], record["slice_index"]),
                         buffer.getvalue())
            self._written += 1

    def evaluate(self) -> Dict:
        """Write ``probabilities.json`` once every process is done; returns no metric."""
        written = sum(comm.all_gather(self._written)) if comm.get_world_size() > 1 else self._written
        if comm.is_main_process():
            index = {"dataset": self._dataset_name, "mask_threshold": self._mask_threshold, "n_slices": written}
            atomic_write(os.path.join(self._folder, INDEX_FILE), json.dumps(index, indent=2))
            logging.getLogger(__name__).info(f"Saved the probabilities of {written} slices to {self._folder}")
        return {}


def recompute_lgg_metrics(
    folder: Union[str, os.PathLike],
    dataset_name: Optional[str] = None,
    *,
    batch_size: int = 1,
    threshold: Optional[float] = None,
    **evaluator_options: Any,
) -> Dict[str, float]:
    """The LGG metrics of saved probabilities and the dataset's records, without a model.

    The records are fed to :class:`~brainseg.evaluation.LGGEvaluator` in dataset order, in batches
    of ``batch_size`` (only the UNeXt-compatible ``seed_*`` figures depend on the batching: use the
    evaluation's ``dataloader.test.batch_size`` to reproduce them), with outputs
    ``{TUMOUR_PROBABILITY: saved float16 probability as float32}``.

    Args:
        folder: a folder written by :class:`ProbabilityWriter`.
        dataset_name: the registered dataset the probabilities are of; default the one recorded.
        batch_size: records per evaluator batch.
        threshold: tumour threshold; default the ``mask_threshold`` recorded.
        evaluator_options: further :class:`LGGEvaluator` keyword arguments.

    Returns:
        the ``lgg`` metrics dict.

    Raises:
        UserError: no ``probabilities.json`` in ``folder``, or a record without saved probabilities.
    """
    index_file = Path(folder) / INDEX_FILE
    if not index_file.is_file():
        raise UserError(f"no saved probabilities in {folder} ({INDEX_FILE} missing)")
    index = json.loads(index_file.read_text())
    dataset_name = dataset_name or index["dataset"]
    threshold = index["mask_threshold"] if threshold is None else threshold
    evaluator = LGGEvaluator(dataset_name, distributed=False, threshold=threshold, **evaluator_options)
    records = DatasetCatalog.get(dataset_name)
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        outputs = []
        for record in batch:
            path = probability_path(folder, record["patient_id"], record["slice_index"])
            if not path.is_file():
                raise UserError(f"no saved probabilities for {describe_record(record)} ({path} missing)")
            outputs.append({TUMOUR_PROBABILITY: torch.from_numpy(load_probability(path).astype(np.float32))})
        evaluator.process(batch, outputs)
    return dict(evaluator.evaluate()["lgg"])
