"""The new tasks' cases on the base model's grid, and the seeded held-out split (add-task, finetune).

Cases are preprocessed into the training cache with the base model's spacing and normalisation (a new modality gets
the default normalisation of its kind). With ``MIN_GROUPS_FOR_HELD_OUT`` or more case groups in every dataset
(patients: ``split_group_pattern``), about ``HELD_OUT_FRACTION`` of the groups are held out, seeded; with fewer
there is no held-out figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..modalities import default_intensity
from ..preprocessing import IntensityNorm, Preprocessing
from .cache import CachedCase, build_cache, default_cache_dir
from .new_task_request import NewTaskData, NewTaskRequest
from .splits import make_splits

MIN_GROUPS_FOR_HELD_OUT = 3
HELD_OUT_FRACTION = 0.2


@dataclass
class NewTaskCases:
    preprocessing: Preprocessing  # the base model's
    norm: IntensityNorm  # the new tasks' modality normalisation
    held_out: bool  # every dataset has enough case groups to hold some out
    train: list[CachedCase]  # the split's training cases (every case without a held-out split)
    held: list[CachedCase]  # the held-out cases (empty without a split)
    every: list[CachedCase]  # every case, dataset and case order

    @property
    def first_phase(self) -> list[CachedCase]:
        """The cases the first training phase (and the initial-row choice) sees."""
        return self.train if self.held_out else self.every


def cache_dir_of(request: NewTaskRequest) -> Path:
    return Path(request.cache_dir).expanduser() if request.cache_dir else default_cache_dir()


def held_out_split(checked: NewTaskData, request: NewTaskRequest) -> dict:
    names = [d.name for d in checked.datasets]
    return make_splits(checked.datasets, int(request.seed),
                       {"validation_fraction": HELD_OUT_FRACTION, "test_fraction": 0.0,
                        "min_cases_to_hold_out": MIN_GROUPS_FOR_HELD_OUT},
                       {n: {"split_group_pattern": request.split_group_pattern} for n in names})


def holds_out(splits: dict) -> bool:
    """Whether every dataset of ``held_out_split`` holds cases out."""
    return all(entry["held_out"] for entry in splits["datasets"].values())


def new_task_norm(checked: NewTaskData) -> IntensityNorm:
    pre = Preprocessing.from_dict(checked.base.manifest.preprocessing)
    return (IntensityNorm.from_dict(default_intensity(checked.modality)) if checked.new_modality
            else pre.norm_for(checked.modality))


def prepare_cases(checked: NewTaskData, request: NewTaskRequest, splits: dict) -> NewTaskCases:
    """Build (or reuse) the cache entries of every case and sort them by ``splits``."""
    pre = Preprocessing.from_dict(checked.base.manifest.preprocessing)
    norm = new_task_norm(checked)
    names = [d.name for d in checked.datasets]
    cache = build_cache(checked.datasets, checked.plan.per_dataset, list(pre.spacing), {checked.modality: norm},
                        cache_dir_of(request))
    return NewTaskCases(pre, norm, holds_out(splits),
                        [cache[(n, c)] for n in names for c in splits["datasets"][n]["train"]],
                        [cache[(n, c)] for n in names for c in splits["datasets"][n]["validation"]],
                        [cache[(d.name, c.name)] for d in checked.datasets for c in d.cases])


def held_out_note(dice: dict | None, keep_largest=(), thresholds: dict | None = None) -> str:
    """The held-out figure in words, for lineage notes and model cards."""
    if not dice:
        return f"no held-out figure (fewer than {MIN_GROUPS_FOR_HELD_OUT} case groups)"
    drawn = ([f"largest piece only: {', '.join(keep_largest)}"] if keep_largest else []) + \
        [f"{name} drawn at probability {t:g}" for name, t in (thresholds or {}).items()]
    kept = f" ({'; '.join(drawn)})" if drawn else ""
    return "held-out Dice as segment draws it " + ", ".join(f"{k}={v}" for k, v in dice.items()) + kept
