"""The training configuration: one JSON object, every key optional, validated with messages that name the key.

The defaults are the small CPU configuration of the embedded model (base width 8, 64^3 patches at 3 mm, batch 2).
``resolve_config`` merges a user's JSON over ``DEFAULTS`` and rejects unknown keys, so a typo never silently falls back
to a default. The resolved object (plus the command-line facts: data folders, output, parent model) is what the run
directory's ``config.json`` stores and what ``--resume`` reads back.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Mapping

from ..errors import HermesError
from ..modalities import KNOWN_MODALITIES
from ..names import check_name, check_text
from ..network import HermesRConfig
from ..network.config import patch_size_problem
from ..preprocessing import IntensityNorm


class TrainingConfigError(HermesError):
    """The training configuration (JSON file or command-line values) is invalid."""


# Model modalities of a fresh model: the names of the official modality table, so models trained here and imported
# official models speak the same modality language (a dataset's modality string must equal one of them, or be
# mapped onto one with ``modality_map``).
DEFAULT_MODALITIES = [m.name for m in KNOWN_MODALITIES]

DEFAULTS: dict[str, Any] = {
    "name": "hermes-r-custom",
    "version": "1.0.0",
    "description": "",
    "seed": 0,
    # Hermes-R architecture (HermesRConfig keys); num_task_rows and num_modalities are derived from the tasks and
    # modalities and may not be given.
    "architecture": {"base_channels": 8, "head_dim": 16, "mask_padding": True},
    "modalities": list(DEFAULT_MODALITIES),
    "modality_map": {},  # dataset modality string -> model modality name, e.g. {"MR-T1c": "MR-T1"}
    "spacing": [3.0, 3.0, 3.0],  # model grid, mm (x, y, z)
    "intensity": {},  # modality name -> IntensityNorm dict; missing ones get the defaults below
    "patch_size": [64, 64, 64],  # training patch and sliding window, voxels (z, y, x)
    "batch_size": 2,  # per process; the global batch is batch_size x world size
    "iterations": 2000,
    "optimizer": "adamw",  # or "lamb"
    "lr": 1e-3,
    "weight_decay": 1e-5,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "warmup_iterations": 50,
    "warmup": "linear",  # or "exponential" (the reference's exp(10 (t/W - 1)) ramp)
    "poly_power": 0.9,
    "min_lr": 0.0,
    "ema_decay": 0.99,  # EMA decay is min(1 - 1/(step + 1), ema_decay)
    "grad_clip": 12.0,  # max global gradient norm; 0 disables
    "amp": True,  # bfloat16 autocast, used on CUDA only
    "foreground_probability": 0.5,  # chance a patch is centred on a random voxel of a random task of the sample
    "modality_loss_weight": 0.01,
    "augmentation": {
        "enabled": True,
        "affine_probability": 0.5,
        "rotate_degrees": [30.0, 30.0, 30.0],  # (z, y, x) axes; uniform in [-a, a]
        "scale": [0.8, 1.25],
        "crop_margin": 0.25,  # a patch that gets an affine is resampled from a crop this much larger
        "intensity_probability": 0.15,  # each intensity transform independently
        "intensity_scale": [0.75, 1.25],
        "intensity_shift_std": 0.1,
        "gamma": [0.7, 1.5],
        "noise_std": [0.0, 0.1],
        "blur_sigma": [0.5, 1.0],
    },
    "datasets": {},  # dataset name -> {"weight", "group", "tasks", "split_group_pattern"}
    "task_init": {},  # new task name -> existing task name whose rows initialise it (--init only)
    "split": {"validation_fraction": 0.1, "test_fraction": 0.2, "min_cases_to_hold_out": 3},
    "checkpoint_every": 50,
    "log_every": 10,
    "validate_every": 500,  # 0: never (the final EMA model is written)
    "select": "best",  # "best" (highest validation Dice, when there is validation) or "final"
    "num_workers": 2,  # DataLoader worker processes preparing batches
    "num_threads": None,  # torch CPU threads of the training process; None: torch's default (torchrun sets 1)
    "cache_dir": None,  # preprocessing cache; default $HERMESSEG_CACHE/training or ~/.cache/hermesseg/training
    "debug_rank_fingerprints": False,  # every rank writes rank<r>.json (weights fingerprints) into the run dir
}

DATASET_DEFAULTS: dict[str, Any] = {"weight": 1.0, "group": None, "tasks": {}, "split_group_pattern": None}

_FORBIDDEN_ARCH = {"num_task_rows", "num_modalities"}


def load_config_file(path: str | Path | None) -> dict:
    if path is None:
        return {}
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TrainingConfigError(f"config file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise TrainingConfigError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise TrainingConfigError(f"{path}: the configuration must be a JSON object")
    return data


def _merge(defaults: Mapping, user: Mapping, where: str) -> dict:
    out = copy.deepcopy(dict(defaults))
    for key, value in user.items():
        if key not in defaults:
            raise TrainingConfigError(f"unknown configuration key {where}{key!r}; valid: {', '.join(sorted(defaults))}")
        if isinstance(defaults[key], dict) and key in ("augmentation", "split"):
            if not isinstance(value, dict):
                raise TrainingConfigError(f"{where}{key} must be an object")
            out[key] = _merge(defaults[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config(user: Mapping[str, Any]) -> dict:
    """Defaults + ``user``, validated. Returns a plain JSON-able dict."""
    cfg = _merge(DEFAULTS, user, "")
    arch = dict(DEFAULTS["architecture"]) if "architecture" not in user else dict(cfg["architecture"])
    bad = _FORBIDDEN_ARCH & set(arch)
    if bad:
        raise TrainingConfigError(f"architecture.{sorted(bad)[0]} is derived from the tasks and modalities; remove it")
    try:
        HermesRConfig.from_dict({**arch, "num_task_rows": 1, "num_modalities": 1})
    except (TypeError, ValueError) as e:
        raise TrainingConfigError(f"architecture: {e}") from None
    cfg["architecture"] = arch

    _check_int(cfg, "seed", 0)
    for key in ("batch_size", "iterations", "checkpoint_every", "log_every"):
        _check_int(cfg, key, 1)
    if cfg["num_threads"] is not None:
        _check_int(cfg, "num_threads", 1)
    for key in ("warmup_iterations", "validate_every", "num_workers"):
        _check_int(cfg, key, 0)
    for key in ("lr", "weight_decay", "eps", "min_lr", "grad_clip", "modality_loss_weight", "poly_power"):
        _check_number(cfg, key, 0.0)
    if cfg["lr"] <= 0:
        raise TrainingConfigError("lr must be positive")
    if not 0.0 <= float(cfg["ema_decay"]) < 1.0:
        raise TrainingConfigError("ema_decay must be in [0, 1)")
    if not 0.0 <= float(cfg["foreground_probability"]) <= 1.0:
        raise TrainingConfigError("foreground_probability must be in [0, 1]")
    if cfg["optimizer"] not in ("adamw", "lamb"):
        raise TrainingConfigError(f"optimizer {cfg['optimizer']!r} is unknown; valid: adamw, lamb")
    if cfg["warmup"] not in ("linear", "exponential"):
        raise TrainingConfigError(f"warmup {cfg['warmup']!r} is unknown; valid: linear, exponential")
    if cfg["select"] not in ("best", "final"):
        raise TrainingConfigError(f"select {cfg['select']!r} is unknown; valid: best, final")
    betas = cfg["betas"]
    if not (isinstance(betas, list) and len(betas) == 2 and all(0 <= float(b) < 1 for b in betas)):
        raise TrainingConfigError("betas must be two numbers in [0, 1)")
    cfg["spacing"] = _positive_triple(cfg["spacing"], "spacing", float)
    cfg["patch_size"] = _positive_triple(cfg["patch_size"], "patch_size", int)
    if patch_size_problem(cfg["patch_size"]):
        raise TrainingConfigError(patch_size_problem(cfg["patch_size"]))

    check_name(cfg["name"], "name (the model name)", TrainingConfigError)
    check_name(cfg["version"], "version", TrainingConfigError)
    check_text(cfg["description"], "description", TrainingConfigError)
    mods = cfg["modalities"]
    if not (isinstance(mods, list) and mods):
        raise TrainingConfigError("modalities must be a non-empty list of names")
    for m in mods:
        check_name(m, "modalities entry", TrainingConfigError)
    if len({m.lower() for m in mods}) != len(mods):
        raise TrainingConfigError("modalities must be unique (case-insensitively)")
    if not isinstance(cfg["modality_map"], dict):
        raise TrainingConfigError("modality_map must be an object: dataset modality -> model modality")
    for source, target in cfg["modality_map"].items():
        check_text(source, "modality_map key", TrainingConfigError, max_length=64)
        check_name(target, f"modality_map[{source!r}]", TrainingConfigError)
    if not isinstance(cfg["intensity"], dict):
        raise TrainingConfigError("intensity must be an object: modality -> normalisation")
    for name, norm in cfg["intensity"].items():
        try:
            IntensityNorm.from_dict(norm)
        except (TypeError, ValueError) as e:
            raise TrainingConfigError(f"intensity[{name!r}]: {e}") from None

    if not isinstance(cfg["datasets"], dict):
        raise TrainingConfigError("datasets must be an object: dataset name -> settings")
    for name, settings in list(cfg["datasets"].items()):
        check_name(name, "datasets key (a dataset name)", TrainingConfigError)
        if not isinstance(settings, dict):
            raise TrainingConfigError(f"datasets.{name} must be an object")
        merged = _merge(DATASET_DEFAULTS, settings, f"datasets.{name}.")
        if not (isinstance(merged["weight"], (int, float)) and merged["weight"] > 0 and math.isfinite(merged["weight"])):
            raise TrainingConfigError(f"datasets.{name}.weight must be a positive number")
        if not isinstance(merged["tasks"], dict):
            raise TrainingConfigError(f"datasets.{name}.tasks must map label names to task names (or null)")
        for label, task in merged["tasks"].items():
            if task is not None:
                check_name(task, f"datasets.{name}.tasks[{label!r}]", TrainingConfigError)
        if merged["group"] is not None:
            check_name(merged["group"], f"datasets.{name}.group", TrainingConfigError)
        cfg["datasets"][name] = merged
    if not isinstance(cfg["task_init"], dict):
        raise TrainingConfigError("task_init must map new task names to existing task names")
    for task, source in cfg["task_init"].items():
        check_name(task, "task_init key", TrainingConfigError)
        check_name(source, f"task_init[{task!r}]", TrainingConfigError)

    aug = cfg["augmentation"]
    for key in ("affine_probability", "intensity_probability"):
        if not 0.0 <= float(aug[key]) <= 1.0:
            raise TrainingConfigError(f"augmentation.{key} must be in [0, 1]")
    for key in ("scale", "intensity_scale", "gamma", "noise_std", "blur_sigma"):
        v = aug[key]
        if not (isinstance(v, list) and len(v) == 2 and 0 <= float(v[0]) <= float(v[1])):
            raise TrainingConfigError(f"augmentation.{key} must be [lo, hi] with 0 <= lo <= hi")
    split = cfg["split"]
    for key in ("validation_fraction", "test_fraction"):
        if not 0.0 <= float(split[key]) < 1.0:
            raise TrainingConfigError(f"split.{key} must be in [0, 1)")
    if float(split["validation_fraction"]) + float(split["test_fraction"]) >= 1.0:
        raise TrainingConfigError("split.validation_fraction + split.test_fraction must be below 1")
    _check_int(split, "min_cases_to_hold_out", 2, where="split.")
    return cfg


def _check_int(cfg: Mapping, key: str, minimum: int, where: str = "") -> None:
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise TrainingConfigError(f"{where}{key} must be an integer >= {minimum}, got {v!r}")


def _check_number(cfg: Mapping, key: str, minimum: float) -> None:
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < minimum:
        raise TrainingConfigError(f"{key} must be a number >= {minimum}, got {v!r}")


def _positive_triple(value, name: str, kind):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * 3
    try:
        out = [kind(v) for v in value]
    except (TypeError, ValueError):
        raise TrainingConfigError(f"{name} must be one number or three") from None
    if len(out) != 3 or min(out) <= 0 or (kind is int and any(o != float(v) for o, v in zip(out, value))):
        raise TrainingConfigError(f"{name} must be three positive {'integers' if kind is int else 'numbers'}")
    return out
