"""Using trained brainseg models: prediction over files and LGG trees (masks, overlays,
per-patient volumes), TorchScript/ONNX export, and their helpers."""
from .export import EXPORT_FORMATS, ExportableSegmenter, ExportError, FormatCheck, export_model
from .inputs import IMAGE_SUFFIXES, SliceInput, natural_key, resolve_inputs
from .model import StrictCheckpointer, build_inference_model
from .predictor import TTA_FLIPS, SlicePredictor
from .run import check_output_folder, encode_mask_tiff, predict_to_folder
from .samples import load_sample_slices, synthetic_slices
from .summary import PatientVolume, SliceArea, VolumeSummary

__all__ = [
    "EXPORT_FORMATS",
    "ExportableSegmenter",
    "ExportError",
    "FormatCheck",
    "export_model",
    "IMAGE_SUFFIXES",
    "SliceInput",
    "natural_key",
    "resolve_inputs",
    "StrictCheckpointer",
    "build_inference_model",
    "TTA_FLIPS",
    "SlicePredictor",
    "check_output_folder",
    "encode_mask_tiff",
    "predict_to_folder",
    "load_sample_slices",
    "synthetic_slices",
    "PatientVolume",
    "SliceArea",
    "VolumeSummary",
]
