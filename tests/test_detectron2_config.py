"""Any detectron2 LazyConfig runs in tools/train_net.py: the model zoo's Mask R-CNN R50-FPN
(configs/lgg/mask_rcnn_R_50_FPN.py, the stock config with LGG's dataset names) trains for 2
iterations on a small COCO-registered LGG split and is evaluated; brainseg's train.* keys that
the stock config lacks take their defaults."""
import json
from pathlib import Path

import pytest
import torch

from brainseg.engine import TRAIN_DEFAULTS, ConfigError, launch, load_config, with_train_defaults
from brainseg.model_zoo import get_config
from lgg_tree import registered_lgg_splits, write_lgg_tree

REPO = Path(__file__).resolve().parents[1]
PATIENTS = [f"TCGA_HT_{i:04d}_20000101" for i in range(5)]


def test_train_defaults_fill_only_missing_keys():
    stock = get_config("lgg/mask_rcnn_R_50_FPN.py")
    assert "best_metric" not in stock.train and stock.train.checkpointer.max_to_keep == 100
    with_train_defaults(stock)
    assert stock.train.best_metric == TRAIN_DEFAULTS["best_metric"] and stock.train.epochs is None
    assert stock.train.checkpointer.max_to_keep == 100 and stock.train.max_iter == 90000  # kept
    assert stock.train.overlays.max_patients == TRAIN_DEFAULTS["overlays"]["max_patients"]


def test_model_zoo_mask_rcnn_trains_and_evaluates(tmp_path):
    root = tmp_path / "lgg"
    write_lgg_tree(root, patients=PATIENTS, num_slices=4, size=64)
    out = tmp_path / "run"
    with registered_lgg_splits(root, "lgg_zoo", ("train", "test"), ratios=(0.6, 0.0, 0.4), seed=3):
        args = launch.parse_args([
            "--config-file", str(REPO / "configs/lgg/mask_rcnn_R_50_FPN.py"),
            "dataloader.train.dataset.names=lgg_zoo_train_coco", "dataloader.test.dataset.names=lgg_zoo_test_coco",
            "dataloader.train.dataset.filter_empty=False", "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
            "dataloader.train.mapper.augmentations.0.short_edge_length=64",
            "dataloader.train.mapper.augmentations.0.max_size=64",
            "dataloader.test.mapper.augmentations.0.short_edge_length=64",
            "dataloader.test.mapper.augmentations.0.max_size=64",
            "train.max_iter=2", "train.device=cpu",
            f"train.output_dir={out}",
        ])
        launch.main(args)
    results = json.loads((out / "results.json").read_text())
    # the stock COCOEvaluator's tasks; a 2-iteration model detects nothing, so AP is NaN and
    # detectron2 reports the bbox task only
    assert "bbox" in results and set(results) <= {"bbox", "segm"}
    assert {"AP", "AP50", "AP75"} <= set(results["bbox"])
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 1
    # the json of a non-default split has its own name, next to the default split's
    assert (root / "coco" / "lgg_test_split60-0-40_seed3.json").is_file()


def test_one_evaluator_config_per_split_and_added_keys():
    cfg = load_config(str(REPO / "configs/lgg/unext_demo.py"), ["+dataloader.evaluator.lgg_options.largest_component=True"])
    test, val = cfg.dataloader.evaluator, cfg.dataloader.val_evaluator
    assert (test.dataset_name, val.dataset_name) == ("lgg_demo_test", "lgg_demo_val")
    assert test.output_dir.endswith("/inference_test") and val.output_dir.endswith("/inference_val")
    assert val.lgg_options.largest_component is True and val.lgg_options.threshold == cfg.model.mask_threshold
    with pytest.raises(ConfigError, match="unknown config key 'dataloader.evaluator.lgg_options.largest_component'"):
        load_config(str(REPO / "configs/lgg/unext_demo.py"), ["dataloader.evaluator.lgg_options.largest_component=True"])
    with pytest.raises(ConfigError, match="config key 'train.max_iter' exists already: set it without the '\\+'"):
        load_config(str(REPO / "configs/lgg/unext_demo.py"), ["+train.max_iter=3"])
