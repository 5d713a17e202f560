"""LGG TIFF trees and NIfTI volumes: discovery, patient split, catalog registration, COCO conversion,
per-volume intensity normalisation, mapper."""
from .build import build_lgg_test_loader, build_lgg_train_loader
from .catalog import datasets_root, register_all_lgg, register_lgg_dataset, register_volume_dataset
from .coco import convert_lgg_to_coco, ensure_coco_json, load_coco_records
from .folds import Fold, fold_of_patient, load_folds, patient_folds, save_folds
from .instances import annotations_to_mask, mask_to_annotations
from .io import LGGDataError, read_lgg_image, read_lgg_mask
from .lgg import LGGPatient, LGGSlice, discover_lgg, find_kaggle_root
from .mapper import LGGDatasetMapper, build_lgg_augmentations, build_lgg_test_augmentations, read_record_image
from .normalization import INTENSITY_NORMALIZATIONS, normalize_intensities, volume_intensity_range
from .records import load_lgg_records
from .samplers import PositionalDataset, ResumableTrainingSampler
from .split import DEFAULT_SPLIT_RATIOS, DEFAULT_SPLIT_SEED, split_patients
from .volume_dataset import load_volume_records, read_volume_slice
from .volumes import CHANNELS, LoadedCase, VolumeCase, find_case, find_case_folders, find_cases, is_volume_case, is_volume_input, load_case, save_like

register_all_lgg()
