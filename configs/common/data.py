"""LGG data loaders and evaluators (LazyConfig).

Switch datasets with overrides, e.g. the demo data:
``dataloader.train.dataset.names=lgg_demo_train dataloader.val.dataset.names=lgg_demo_val
dataloader.test.dataset.names=lgg_demo_test`` (or use a ``*_demo.py`` config).
``dataloader.val`` is evaluated periodically during training (best checkpoint, early
stopping); ``dataloader.test`` at the end of training and by ``--eval-only``.
"""
from detectron2.config import LazyCall as L
from detectron2.data import get_detection_dataset_dicts
from omegaconf import OmegaConf

from brainseg.data import LGGDatasetMapper, build_lgg_augmentations, build_lgg_test_loader, build_lgg_train_loader
from brainseg.evaluation import build_evaluators

dataloader = OmegaConf.create()

# Resumable and reproducible: samples and augmentations are functions of (seed, stream
# position); tools/train_net.py sets seed from train.seed and start_iter on --resume.
dataloader.train = L(build_lgg_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="lgg_train", filter_empty=False),
    mapper=L(LGGDatasetMapper)(
        is_train=True,
        augmentations=L(build_lgg_augmentations)(),
        intensity_normalization="${...test.mapper.intensity_normalization}",
    ),
    total_batch_size=8,
    num_workers=2,
    seed="${...train.seed}",
    start_iter=0,
)

dataloader.val = L(build_lgg_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="lgg_val", filter_empty=False),
    mapper=L(LGGDatasetMapper)(is_train=False, intensity_normalization="${...test.mapper.intensity_normalization}"),
    batch_size=8,
    num_workers=2,
)

# Intensities: "volume" (per patient and channel, see brainseg.data.normalization) or "none"
# (the TIFF slices' uint8 values); set here once, the train and val mappers follow, and
# tools/predict.py applies the same to TIFF input (NIfTI input is always normalised per volume).
# "volume" is the default by measurement (BENCHMARKS.md): equal demo Dice over 3 seeds, and the
# same Dice when a scanner's intensities are scaled (0.6x, 1.5x) where "none" falls to 0.47.
dataloader.test = L(build_lgg_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="lgg_test", filter_empty=False),
    mapper=L(LGGDatasetMapper)(is_train=False, intensity_normalization="volume"),
    batch_size=8,
    num_workers=2,
)

# One evaluator per split: dataloader.evaluator (test, detectron2's name) and
# dataloader.val_evaluator (periodic validation, best checkpoint). The tumour threshold is the
# model's: one decision for Dice, COCO instances, overlays, predict and export.
dataloader.evaluator = L(build_evaluators)(
    dataset_name="${..test.dataset.names}",
    output_dir="${...train.output_dir}/inference_test",
    coco=True,
    lgg_options={"threshold": "${....model.mask_threshold}"},
)
dataloader.val_evaluator = L(build_evaluators)(
    dataset_name="${..val.dataset.names}",
    output_dir="${...train.output_dir}/inference_val",
    coco="${..evaluator.coco}",
    lgg_options="${..evaluator.lgg_options}",
)
