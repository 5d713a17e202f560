"""The evaluator factory used by the configs' ``dataloader.evaluator``: the LGG medical
metrics plus detectron2's COCO AP on the split's COCO json."""

import logging
import os
from typing import Any, Mapping, Optional, Sequence, Union

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluators
from detectron2.utils import comm

from .coco_evaluation import LGGCOCOEvaluator
from .lgg_evaluation import LGGEvaluator

__all__ = ["build_evaluators", "resolve_dataset_name"]

COCO_TASKS = ("segm", "bbox")


def resolve_dataset_name(dataset_name: Union[str, Sequence[str]]) -> str:
    """Accept a dataset name or a one-element list of names (as ``dataloader.test.dataset.names``
    may be) and return the name.

    Raises:
        ValueError: several names, or none.
    """
    if isinstance(dataset_name, str):
        return dataset_name
    names = list(dataset_name)
    if len(names) != 1 or not isinstance(names[0], str):
        raise ValueError(f"evaluators are built for exactly one dataset; got {names}")
    return names[0]


def _ensure_json_file(dataset_name: str) -> None:
    """Make sure the COCO json of ``dataset_name`` exists before COCOEvaluator reads it.

    Registered LGG splits are (re)converted by :func:`brainseg.data.coco.ensure_coco_json`
    when missing or stale, on the main process first so that processes do not race on the
    file. Other datasets must name an existing ``json_file``, or have none (detectron2 then
    converts their dataset dicts into ``output_dir``).
    """
    meta = MetadataCatalog.get(dataset_name)
    if hasattr(meta, "root") and hasattr(meta, "split"):
        from brainseg.data.coco import ensure_coco_json

        if comm.is_main_process():
            ensure_coco_json(dataset_name)
        comm.synchronize()
        if not comm.is_main_process():
            ensure_coco_json(dataset_name)
        return
    json_file = meta.get("json_file", None)
    if json_file is not None and not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO json of dataset '{dataset_name}' not found: {json_file}")


def build_evaluators(
    dataset_name: Union[str, Sequence[str]],
    output_dir: Optional[str] = None,
    *,
    coco: bool = True,
    tasks: Sequence[str] = COCO_TASKS,
    distributed: bool = True,
    lgg_options: Optional[Mapping[str, Any]] = None,
) -> DatasetEvaluators:
    """Build the evaluators of a brainseg model on one dataset.

    Example (LazyConfig)::

        dataloader.evaluator = L(build_evaluators)(
            dataset_name="${..test.dataset.names}", output_dir="${...train.output_dir}")

    Args:
        dataset_name: the registered dataset (or a one-element list of names).
        output_dir: where evaluators write their files (``lgg_per_patient.csv``, COCO
            predictions); None writes nothing.
        coco: also run COCO AP (:class:`LGGCOCOEvaluator`, detectron2's COCOEvaluator with the
            official COCOeval; needs ``instances`` in the model outputs); set False for models
            that only output ``sem_seg``.
        tasks: COCO tasks, a subset of ("segm", "bbox").
        distributed: gather the results of all processes before evaluating.
        lgg_options: extra keyword arguments of :class:`LGGEvaluator` (``threshold``,
            ``score_threshold``, ``min_presence_area``, ``mask_source``, ``spacing``,
            ``patient_spacing``, ``compute_hd95``, ``nsd_tolerances``, ``largest_component``).

    Returns:
        DatasetEvaluators: results ``{"lgg": {...}}`` plus, with ``coco``, ``{"segm": {...},
        "bbox": {...}}`` (COCO AP in percent, detectron2's convention).
    """
    dataset_name = resolve_dataset_name(dataset_name)
    evaluators = [LGGEvaluator(dataset_name, distributed, output_dir, **dict(lgg_options or {}))]
    if coco:
        tasks = tuple(tasks)
        unknown = sorted(set(tasks) - set(COCO_TASKS))
        if unknown or not tasks:
            raise ValueError(f"COCO tasks must be a non-empty subset of {COCO_TASKS}; got {tasks}")
        _ensure_json_file(dataset_name)
        evaluators.append(LGGCOCOEvaluator(dataset_name, tasks, distributed, output_dir))
    logging.getLogger(__name__).info(
        f"Evaluators for {dataset_name}: " + ", ".join(type(e).__name__ for e in evaluators)
    )
    return DatasetEvaluators(evaluators)
