"""The one tumour decision (brainseg.modeling.postprocessing): where the probability comes from,
the threshold, and that ``model.mask_threshold`` is what evaluation, overlays and predict use."""
import math
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate

from brainseg.engine import load_config
from brainseg.evaluation.masks import prediction_mask
from brainseg.modeling.postprocessing import (
    DEFAULT_MASK_THRESHOLD,
    TUMOUR_PROBABILITY,
    model_mask_threshold,
    tumour_mask,
    tumour_probability,
)

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.net.conv_channels=[4,8,16]", "model.net.token_channels=[16,24]"]


def test_the_explicit_probability_wins_and_sem_seg_scores_are_logits():
    probability = torch.tensor([[0.7, 0.4]])
    explicit = {TUMOUR_PROBABILITY: probability, "sem_seg": torch.zeros(2, 1, 2)}
    assert torch.equal(tumour_probability(explicit), probability)
    logits = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), -math.log(3.0)]]])  # detectron2: sem_seg = logits
    torch.testing.assert_close(tumour_probability({"sem_seg": logits}), torch.tensor([[0.75, 0.25]]))
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        tumour_probability({"sem_seg": torch.zeros(3, 4, 4)})
    with pytest.raises(KeyError, match="no 'tumour_probability' nor 'sem_seg'"):
        tumour_probability({"instances": None})


def test_the_mask_is_probability_above_the_threshold():
    probability = torch.tensor([0.2, 0.5, 0.51, 0.9])
    assert tumour_mask(probability).tolist() == [False, False, True, True]
    assert tumour_mask(probability, 0.85).tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match=r"mask threshold must be in \[0, 1\); got 1.0"):
        tumour_mask(probability, 1.0)


def test_model_mask_threshold_reaches_the_evaluator_overlays_and_predict():
    cfg = load_config(str(REPO / "configs/lgg/unext.py"), [*TINY, "model.mask_threshold=0.8"])
    assert cfg.dataloader.evaluator.lgg_options.threshold == 0.8  # interpolated from the model
    model = instantiate(cfg.model).eval()
    assert model_mask_threshold(model) == 0.8
    assert model_mask_threshold(torch.nn.Linear(1, 1)) == DEFAULT_MASK_THRESHOLD
    with torch.no_grad():
        output = model([{"image": torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8), "height": 32, "width": 32}])[0]
    probability = output[TUMOUR_PROBABILITY]
    record = {"height": 32, "width": 32}
    # evaluation and overlays threshold through prediction_mask; the instances come from the same mask
    mask = prediction_mask(record, output, threshold=model.mask_threshold)
    assert (torch.from_numpy(mask) == (probability > 0.8)).all()
    union = output["instances"].pred_masks.any(0) if len(output["instances"]) else torch.zeros(32, 32, dtype=torch.bool)
    assert torch.equal(union, torch.from_numpy(mask))
