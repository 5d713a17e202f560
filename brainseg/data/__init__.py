"""LGG data: discovery, patient split, catalog registration, COCO conversion, mapper."""
from .build import build_lgg_test_loader, build_lgg_train_loader
from .catalog import datasets_root, register_all_lgg, register_lgg_dataset
from .coco import convert_lgg_to_coco, ensure_coco_json, load_coco_records
from .instances import annotations_to_mask, mask_to_annotations
from .io import LGGDataError, read_lgg_image, read_lgg_mask
from .lgg import LGGPatient, LGGSlice, discover_lgg, find_kaggle_root
from .mapper import LGGDatasetMapper, build_lgg_augmentations, build_lgg_test_augmentations
from .records import load_lgg_records
from .samplers import PositionalDataset, ResumableTrainingSampler
from .split import DEFAULT_SPLIT_RATIOS, DEFAULT_SPLIT_SEED, split_patients

register_all_lgg()
