"""--eval-only with train.save_probabilities: per-slice float16 probabilities on disk, and the LGG
metrics recomputed from them without the model."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog
from torch import nn

from brainseg.engine import launch as train_net
from brainseg.engine.defaults import with_train_defaults
from brainseg.evaluation import load_probability, probability_path, recompute_lgg_metrics
from brainseg.modeling.postprocessing import TUMOUR_PROBABILITY
from brainseg.utils.config import load_config
from brainseg.utils.errors import UserError
from lgg_tree import registered_lgg_splits, tiny_unext_overrides, write_lgg_tree

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/lgg/unext.py")
PATIENTS = [f"TCGA_CS_{i:04d}_20000101" for i in range(6)]


@pytest.fixture(scope="module")
def eval_only_run(tmp_path_factory):
    """A random-weights tiny UNeXt checkpoint, evaluated with --eval-only saving probabilities."""
    root = tmp_path_factory.mktemp("lgg")
    write_lgg_tree(root, patients=PATIENTS, num_slices=5, size=32, seed=5)
    with registered_lgg_splits(root, "lgg_sp"):
        yield _eval_only(tmp_path_factory)


def _eval_only(tmp_path_factory):
    overrides = [*tiny_unext_overrides("lgg_sp"), "dataloader.test.batch_size=3", "train.overlays.enabled=False"]
    cfg = load_config(CONFIG, overrides)
    with_train_defaults(cfg)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    out = tmp_path_factory.mktemp("run")
    checkpoint = out / "weights.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    train_net.main(train_net.parse_args(["--config-file", CONFIG, "--eval-only", *overrides,
                                         f"train.init_checkpoint={checkpoint}", "train.save_probabilities=True",
                                         f"train.output_dir={out}"]))
    return cfg, model, out


class Float16Probabilities(nn.Module):
    """The model with its probabilities rounded to float16, as they are saved."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.mask_threshold = model.mask_threshold

    def forward(self, batched_inputs):
        outputs = self.model(batched_inputs)
        return [{TUMOUR_PROBABILITY: o[TUMOUR_PROBABILITY].half().float()} for o in outputs]


def test_one_float16_file_per_test_slice(eval_only_run):
    _, _, out = eval_only_run
    folder = out / "probabilities"
    records = DatasetCatalog.get("lgg_sp_test")
    assert len(list(folder.glob("*/*.npz"))) == len(records)
    index = json.loads((folder / "probabilities.json").read_text())
    assert index == {"dataset": "lgg_sp_test", "mask_threshold": 0.5, "n_slices": len(records)}
    record = records[0]
    with np.load(probability_path(folder, record["patient_id"], record["slice_index"])) as data:
        assert data["probability"].dtype == np.float16 and data["probability"].shape == (32, 32)
        assert str(data["file_name"]) == record["file_name"] and int(data["slice_index"]) == record["slice_index"]
        assert 0 <= data["probability"].min() and data["probability"].max() <= 1


def test_recomputed_metrics_equal_an_evaluation_of_the_same_float16_probabilities(eval_only_run):
    """Same machine: evaluating the model with float16-rounded outputs gives exactly the metrics
    recomputed from the saved files (same probabilities, same thresholding, same batches)."""
    cfg, model, out = eval_only_run
    cfg.dataloader.evaluator.coco = False
    expected = train_net.evaluate(cfg, Float16Probabilities(model), "test")["lgg"]
    recomputed = recompute_lgg_metrics(out / "probabilities", batch_size=cfg.dataloader.test.batch_size)
    assert set(recomputed) == set(expected)
    for key, value in expected.items():
        assert recomputed[key] == value or math.isnan(recomputed[key]) and math.isnan(value), key
    stored = json.loads((out / "results.json").read_text())["lgg"]  # from float32 probabilities
    assert recomputed["n_slices"] == stored["n_slices"] == len(DatasetCatalog.get("lgg_sp_test"))


def test_recomputation_names_what_is_missing(eval_only_run, tmp_path):
    _, _, out = eval_only_run
    with pytest.raises(UserError, match="probabilities.json missing"):
        recompute_lgg_metrics(tmp_path)
    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / "probabilities.json").write_text((out / "probabilities" / "probabilities.json").read_text())
    with pytest.raises(UserError, match=r"no saved probabilities for .*\.tif"):
        recompute_lgg_metrics(folder)
    assert load_probability(next((out / "probabilities").glob("*/*.npz"))).dtype == np.float16
