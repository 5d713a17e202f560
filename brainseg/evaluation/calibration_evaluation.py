"""A detectron2 :class:`DatasetEvaluator` that accumulates, in one pass over a split, the
reliability bins (ECE, reliability diagram), the per-threshold Dice counts (threshold choice) and,
optionally, the logit histogram (temperature scaling) of a model's tumour probabilities. Meant for
the validation split: nothing it computes may be chosen on the test split."""
import logging
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from brainseg.modeling.postprocessing import tumour_probability

from .calibration import DEFAULT_NUM_BINS, ReliabilityBins
from .masks import describe_record, truth_mask
from .temperature import LogitHistogram
from .threshold_choice import DEFAULT_THRESHOLD_GRID, ThresholdChoice, ThresholdDiceCounts

__all__ = ["CalibrationEvaluator"]


class CalibrationEvaluator(DatasetEvaluator):
    """Pixel-level calibration and per-threshold Dice of a split, streamed.

    After :meth:`evaluate`, :attr:`bins` (all processes' :class:`ReliabilityBins`),
    :attr:`threshold_counts` (:class:`ThresholdDiceCounts`) and :attr:`logits`
    (:class:`LogitHistogram`, or None) are set on the main process.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        num_bins: int = DEFAULT_NUM_BINS,
        thresholds: Sequence[float] = DEFAULT_THRESHOLD_GRID,
        criterion: str = "dice_volume_mean",
        collect_logits: bool = False,
        distributed: bool = True,
    ):
        """
        Args:
            dataset_name: name of the evaluated dataset (for the log).
            num_bins: equal-width reliability bins (see :mod:`.calibration`).
            thresholds: candidate thresholds for :meth:`choose_threshold`.
            criterion: what the threshold maximises (see :data:`.threshold_choice.THRESHOLD_CRITERIA`).
            collect_logits: also accumulate the :class:`LogitHistogram` (for :func:`.temperature.fit_temperature`).
            distributed: gather the counts of all processes on the main one.
        """
        self._dataset_name = dataset_name
        self._num_bins = num_bins
        self._thresholds = tuple(thresholds)
        self._criterion = criterion
        self._collect_logits = collect_logits
        self._distributed = distributed
        self._logger = logging.getLogger(__name__)
        self.reset()

    def reset(self) -> None:
        self.bins = ReliabilityBins.empty(self._num_bins)
        self.threshold_counts = ThresholdDiceCounts(self._thresholds)
        self.logits = LogitHistogram.empty() if self._collect_logits else None

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Add the pixels of a batch (records need ``patient_id`` and the truth, as for
        :class:`~brainseg.evaluation.LGGEvaluator`)."""
        for record, output in zip(inputs, outputs):
            if "patient_id" not in record:
                raise KeyError(f"CalibrationEvaluator needs 'patient_id' in the record of {describe_record(record)}")
            probability = tumour_probability(output).detach().cpu().numpy()
            truth = truth_mask(record, probability.shape)
            self.bins.update(probability, truth)
            self.threshold_counts.update(str(record["patient_id"]), probability, truth)
            if self.logits is not None:
                self.logits.update(probability, truth)

    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        """Merge all processes' counts.

        Returns:
            ``{"calibration": {"ece": ..., "num_bins": ..., "n_pixels": ...}}`` on the main process,
            ``{}`` elsewhere.
        """
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather((self.bins, dict(self.threshold_counts.patients), self.logits), dst=0)
            if not comm.is_main_process():
                return OrderedDict()
            bins = ReliabilityBins.empty(self._num_bins)
            counts = ThresholdDiceCounts(self._thresholds)
            logits = LogitHistogram.empty() if self._collect_logits else None
            for other_bins, patients, other_logits in gathered:
                bins = bins.merge(other_bins)
                logits = logits.merge(other_logits) if logits is not None else None
                other = ThresholdDiceCounts(self._thresholds)
                other.patients.update(patients)
                counts.merge(other)
            self.bins, self.threshold_counts, self.logits = bins, counts, logits
        ece = self.bins.ece()
        self._logger.info(f"Calibration on {self._dataset_name}: ECE {ece:.4f} "
                          f"({self._num_bins} equal-width bins, {int(self.bins.counts.sum())} pixels)")
        return OrderedDict(calibration={"ece": ece, "num_bins": self._num_bins,
                                        "n_pixels": int(self.bins.counts.sum())})

    def choose_threshold(self) -> Optional[ThresholdChoice]:
        """The Dice-maximising threshold of the evaluated split (call after :meth:`evaluate`)."""
        return self.threshold_counts.choose(self._criterion)

