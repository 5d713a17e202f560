"""The plan of a comparison study (:mod:`brainseg.engine.compare`): models, sweep settings,
patient folds, the fold datasets and one :class:`StudyRun` per model x setting x fold x seed.

Every run is a ``tools/train_net.py`` run of its model's config with, in order, the study's
overrides, the model's own (``<model or config stem>:key=value``), the setting's, then the fold's
datasets, ``train.seed`` and ``train.output_dir`` (``<output>/runs/<model>/<setting>/fold<k>_seed<s>``).
Fold datasets are registered as ``cmp<hash>_f<k>_{train,val,test}``, the hash of the data root
and the folds, so that two studies in one process never collide.
"""
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog

from brainseg.data.catalog import register_patient_dataset
from brainseg.data.folds import Fold, load_folds, patient_folds, save_folds
from brainseg.data.lgg import discover_lgg
from brainseg.data.volumes import find_cases, is_volume_input
from brainseg.utils.config import load_config
from brainseg.utils.errors import ConfigError

__all__ = [
    "MODEL_NAMES",
    "DEFAULT_SETTING",
    "ModelSpec",
    "Setting",
    "StudyRun",
    "folder_name",
    "model_name",
    "study_models",
    "split_model_overrides",
    "parse_sweep",
    "study_patients",
    "study_folds",
    "fold_dataset_names",
    "register_fold_datasets",
    "plan_runs",
]

# config file stem prefix -> the model's display name (the longest matching prefix wins)
MODEL_NAMES = {"unet": "UNet", "resunet": "ResUNet", "unext": "UNeXt", "maskdino": "Mask DINO"}
DEFAULT_SETTING = "default"
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class ModelSpec:
    """A compared model: display name, LazyConfig file and the overrides given to it alone."""

    name: str
    config_file: str
    overrides: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Setting:
    """One point of the ``--sweep`` grid: a name and its overrides (:data:`DEFAULT_SETTING`, none,
    without a sweep)."""

    name: str = DEFAULT_SETTING
    overrides: Tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """The setting as a folder name, e.g. ``optimizer.lr-1e-4_dataloader.train.total_batch_size-8``."""
        return folder_name("_".join(self.overrides) or self.name)


@dataclass(frozen=True)
class StudyRun:
    """One training run of the study.

    Attributes:
        model, setting, fold, seed: what it trains.
        entry: the row it contributes to, the model's name (with the setting when there are several).
        output_dir: its ``train.output_dir``.
        overrides: every override of its ``tools/train_net.py`` run.
    """

    model: ModelSpec
    setting: Setting
    fold: int
    seed: int
    entry: str
    output_dir: Path
    overrides: Tuple[str, ...]

    @property
    def label(self) -> str:
        """e.g. ``UNeXt fold 2 seed 0`` (``UNeXt [optimizer.lr=1e-4] fold 2 seed 0`` in a sweep)."""
        return f"{self.entry} fold {self.fold} seed {self.seed}"


def folder_name(text: str) -> str:
    """``text`` as a folder name: runs of characters other than letters, digits, ``._-`` become ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def model_name(config_file: str) -> str:
    """The display name of a config (:data:`MODEL_NAMES`, e.g. ``unext_demo.py`` -> "UNeXt"), else its stem."""
    stem = Path(config_file).stem
    prefix = max((p for p in MODEL_NAMES if stem.lower().startswith(p)), key=len, default=None)
    return MODEL_NAMES[prefix] if prefix else stem


def study_models(config_files: Sequence[str], names: Optional[Sequence[str]] = None) -> List[ModelSpec]:
    """The models of a study, named by ``names`` or :func:`model_name`.

    Raises:
        ConfigError: no or a missing config file, ``names`` of another length, or two models of one
            name (or run folder name).
    """
    if not config_files:
        raise ConfigError("no config file to compare (--config-file A.py B.py ...)")
    for config_file in config_files:
        if not Path(config_file).is_file():
            raise ConfigError(f"config file not found: {config_file}")
    if names is not None and len(names) != len(config_files):
        raise ConfigError(f"--names gives {len(names)} names for {len(config_files)} config files")
    names = list(names) if names is not None else [model_name(f) for f in config_files]
    folders = [folder_name(n) for n in names]
    clash = next((n for n, f in zip(names, folders) if folders.count(f) > 1), None)
    if clash is not None:
        raise ConfigError(f"two models share the name {clash!r} (run folder {folder_name(clash)!r}): "
                          "give each its own with --names")
    return [ModelSpec(name, str(config_file)) for name, config_file in zip(names, config_files)]


def split_model_overrides(opts: Sequence[str], models: Sequence[ModelSpec]) -> Tuple[List[str], List[ModelSpec]]:
    """Separate the study's overrides from those of one model, written ``<selector>:key=value``
    (selector: the model's name or its config file's stem).

    Returns:
        (overrides of every model, the models with their own overrides added).

    Raises:
        ConfigError: a selector that names no model.
    """
    common: List[str] = []
    own: Dict[str, List[str]] = {m.name: [] for m in models}
    for text in opts:
        selector, colon, override = text.partition("=")[0].partition(":")
        if not colon:
            common.append(text)
            continue
        matches = [m for m in models if selector in (m.name, Path(m.config_file).stem)]
        if not matches:
            known = ", ".join(sorted({m.name for m in models} | {Path(m.config_file).stem for m in models}))
            raise ConfigError(f"override {text!r} is for {selector!r}, which is no model of the study ({known})")
        for model in matches:
            own[model.name].append(text[len(selector) + 1:])
    return common, [ModelSpec(m.name, m.config_file, tuple(own[m.name])) for m in models]


def _split_values(text: str) -> List[str]:
    """Comma-separated values, commas inside brackets or quotes kept (``[4,8],[8,16]`` is two)."""
    values, depth, quote, current = [], 0, None, ""
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    return values + [current]


def parse_sweep(entries: Sequence[str]) -> Tuple[List[Setting], List[str]]:
    """The grid of ``--sweep key=v1,v2 ...`` entries (their cartesian product, first key slowest).

    An entry with one value is an ordinary override (it names no setting).

    Returns:
        (settings, overrides): ``[Setting()]`` without a sweep.

    Raises:
        ConfigError: an entry that is not ``key=v1,v2,...``, an empty value or a key swept twice.
    """
    axes, plain = [], []
    for entry in entries:
        key, equals, text = entry.partition("=")
        values = _split_values(text)
        if not equals or not key.strip() or any(not v.strip() for v in values):
            raise ConfigError(f"--sweep {entry!r}: expected key=value1,value2,...")
        if key in (k for k, _ in axes):
            raise ConfigError(f"--sweep: {key} is swept twice")
        if len(values) == 1:
            plain.append(entry)
        else:
            axes.append((key, values))
    if not axes:
        return [Setting()], plain
    settings = []
    for combination in itertools.product(*(values for _, values in axes)):
        overrides = tuple(f"{key}={value}" for (key, _), value in zip(axes, combination))
        settings.append(Setting(" ".join(overrides), overrides))
    return settings, plain


def study_patients(root: str) -> List[str]:
    """The patient ids of a dataset root: an LGG TIFF tree, or a NIfTI root (its cases with a
    segmentation).

    Raises:
        LGGDataError: the root is not a dataset (missing, no patient folders, no labelled case).
    """
    if is_volume_input(root):
        return sorted(case.case_id for case in find_cases(root) if case.segmentation is not None)
    return [patient.patient_id for patient in discover_lgg(root)[1]]


def study_folds(path: Path, patients: Sequence[str], num_folds: int) -> List[Fold]:
    """The study's folds: those saved in ``path`` (checked against ``patients``), else new ones,
    saved there before anything else happens.

    Raises:
        ConfigError: ``num_folds`` impossible for the patients, or unlike the saved folds.
        LGGDataError: a saved file that is invalid or of other patients.
    """
    if path.is_file():
        folds = load_folds(path, patients=patients)
        if len(folds) != num_folds:
            raise ConfigError(f"{path} holds {len(folds)} folds, not --folds {num_folds}: "
                              f"use --folds {len(folds)} or another --output")
        return folds
    folds = patient_folds(patients, num_folds=num_folds)
    save_folds(path, folds)
    return folds


def fold_dataset_names(root: str, folds: Sequence[Fold]) -> List[Dict[str, str]]:
    """The dataset names of the folds' parts, ``cmp<hash>_f<k>_<part>`` (hash of root and folds).

    Returns:
        per fold, ``{"train": name, "val": name, "test": name}``.
    """
    key = json.dumps({"root": str(Path(root).expanduser().resolve()), "folds": [f.as_dict() for f in folds]},
                     sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return [{part: f"cmp{digest}_f{fold.index}_{part}" for part in PARTS} for fold in folds]


def register_fold_datasets(root: str, folds: Sequence[Fold], coco_dir: Path) -> List[Dict[str, str]]:
    """Register each fold's train/val/test patients as datasets named by
    :func:`fold_dataset_names` (val and test with a COCO json in ``coco_dir``, for segm AP);
    names already registered (a re-run in one process) are kept.

    Returns:
        per fold, ``{"train": name, "val": name, "test": name}``.
    """
    registered = set(DatasetCatalog.list())
    names = fold_dataset_names(root, folds)
    for fold, parts in zip(folds, names):
        for part, name in parts.items():
            if name not in registered:
                register_patient_dataset(name, root, getattr(fold, part),
                                         json_file=None if part == "train" else coco_dir / f"{name}.json")
    return names


def _quoted(value: str) -> str:
    """A hydra override value in single quotes (paths may hold spaces, '=' or ',')."""
    return "'" + value.replace("'", "\\'") + "'"


def plan_runs(
    models: Sequence[ModelSpec],
    settings: Sequence[Setting],
    datasets: Sequence[Mapping[str, str]],
    seeds: Sequence[int],
    output: Path,
    overrides: Sequence[str] = (),
) -> List[StudyRun]:
    """One run per fold, seed, setting and model (in that nesting, so that an interrupted study
    has every model on its first folds). Each model x setting config is loaded once, which checks
    the overrides before anything trains.

    Args:
        models: the models (with their own overrides).
        settings: the sweep grid.
        datasets: per fold, the names of its train/val/test datasets.
        seeds: the ``train.seed`` values.
        output: the study folder.
        overrides: the overrides of every model.

    Returns:
        the runs.

    Raises:
        ConfigError: a missing config file or a bad override.
    """
    has_val = {}
    for model, setting in itertools.product(models, settings):
        cfg = load_config(model.config_file, [*overrides, *model.overrides, *setting.overrides])
        has_val[model, setting] = "val" in cfg.get("dataloader", {})
    runs = []
    for fold, names in enumerate(datasets):
        for seed, setting, model in itertools.product(seeds, settings, models):
            entry = model.name if len(settings) == 1 else f"{model.name} [{setting.name}]"
            output_dir = output / "runs" / folder_name(model.name) / setting.slug / f"fold{fold}_seed{seed}"
            parts = [p for p in PARTS if p != "val" or has_val[model, setting]]
            run_overrides = (*overrides, *model.overrides, *setting.overrides,
                             *(f"dataloader.{p}.dataset.names={names[p]}" for p in parts),
                             f"train.seed={seed}", f"train.output_dir={_quoted(str(output_dir))}")
            runs.append(StudyRun(model, setting, fold, seed, entry, output_dir, run_overrides))
    return runs
