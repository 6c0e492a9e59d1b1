"""Train / validation / test splits per dataset, written once to the run directory (``splits.json``) and reused.

Cases are shuffled with the run's seed and the dataset name, grouped first when ``split_group_pattern`` is set (its
first regex group is the group key, e.g. ``"^(patient\\d+)_"`` keeps both ACDC frames of a patient together, so no
patient is in two splits). A dataset with fewer than ``min_cases_to_hold_out`` groups (default 3) holds nothing out:
every case trains, validation and test are empty, and the dataset's entry says ``"held_out": false`` with a note;
with 1-2 cases there is nothing to spare, and the run's model is then selected as the final EMA weights (no
validation Dice), which the model card records. Otherwise at least one group goes to validation and one to test
when their fractions are > 0, and at least one stays for training.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..atomic import atomic_path
from ..errors import DatasetError
from ..nnunet import Dataset

SPLITS_FORMAT = "hermes-train-splits"


def _group_key(case: str, pattern: str | None) -> str:
    if not pattern:
        return case
    m = re.search(pattern, case)
    if not m:
        return case
    return m.group(1) if m.groups() else m.group(0)


def make_splits(datasets: Sequence[Dataset], seed: int, split_cfg: Mapping, dataset_settings: Mapping) -> dict:
    out: dict = {"format": SPLITS_FORMAT, "seed": seed, "datasets": {}}
    for ds in datasets:
        pattern = (dataset_settings.get(ds.name) or {}).get("split_group_pattern")
        groups: dict[str, list[str]] = {}
        for case in ds.cases:
            groups.setdefault(_group_key(case.name, pattern), []).append(case.name)
        keys = sorted(groups)
        digest = hashlib.sha256(f"{seed}|{ds.name}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        order = [keys[i] for i in rng.permutation(len(keys))]
        n = len(order)
        entry: dict = {"held_out": n >= int(split_cfg["min_cases_to_hold_out"]), "groups": n}
        if not entry["held_out"]:
            entry.update(train=sorted(ds.case(c).name for k in order for c in groups[k]), validation=[], test=[],
                         note=f"only {n} case group(s): all train, none held out (validation and test are empty)")
        else:
            n_val = _count(n, float(split_cfg["validation_fraction"]))
            n_test = _count(n, float(split_cfg["test_fraction"]))
            while n_val + n_test > n - 1:
                if n_test >= n_val and n_test > 0:
                    n_test -= 1
                else:
                    n_val -= 1
            val, test, train = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
            entry.update(train=sorted(c for k in train for c in groups[k]),
                         validation=sorted(c for k in val for c in groups[k]),
                         test=sorted(c for k in test for c in groups[k]))
        if pattern:
            entry["split_group_pattern"] = pattern
        out["datasets"][ds.name] = entry
    return out


def _count(n: int, fraction: float) -> int:
    return 0 if fraction <= 0 else max(1, int(math.floor(n * fraction + 0.5)))


def write_splits(path: Path, splits: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(splits, indent=1) + "\n")


def read_splits(path: Path, datasets: Sequence[Dataset]) -> dict:
    """Splits of a run being resumed; every listed case must still exist, new cases are ignored."""
    try:
        splits = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"cannot read the run's splits {path} ({e})") from None
    if splits.get("format") != SPLITS_FORMAT:
        raise DatasetError(f"{path} is not a splits file")
    for ds in datasets:
        entry = splits["datasets"].get(ds.name)
        if entry is None:
            raise DatasetError(f"dataset {ds.name} is not part of the run being resumed ({path})")
        names = {c.name for c in ds.cases}
        for part in ("train", "validation", "test"):
            for case in entry[part]:
                if case not in names:
                    raise DatasetError(f"dataset {ds.name}, case {case}: listed in the run's {part} split but no "
                                       f"longer in {ds.root}")
    missing = set(splits["datasets"]) - {d.name for d in datasets}
    if missing:
        raise DatasetError(f"the run being resumed also trained {', '.join(sorted(missing))}; give the same --data")
    return splits
