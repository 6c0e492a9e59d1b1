"""Forgetting measured, not assumed (finetune; spec 4, "Transfer"): Dice of the parent's tasks before (the parent
model) and after (the new model) on cases that label them, each dataset queried with its parent tasks.

Dice per task on the model grid (the base model's spacing and normalisation, threshold 0.5, mean over the cases,
as the held-out figure of the new tasks). The record is ``{"measured_on": ["dataset/case", ...], "tasks":
{task: {"before": dice, "after": dice}}}``, or ``{"not_measured": reason}`` when no case labels a parent task.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..network import NULL_TASK
from ..preprocessing import Preprocessing
from .cache import CachedCase, build_cache
from .parent_task_data import ParentTaskData
from .validation import mean_dice_per_task


def cache_parent_task_cases(data: ParentTaskData, pre: Preprocessing, cache_dir: Path) -> list[CachedCase]:
    """Every case of ``data`` on the model grid, label slots following each dataset's parent-task query."""
    norms = {d.model_modality: pre.norm_for(d.model_modality) for d in data.datasets}
    cache = build_cache(data.datasets, data.plan.per_dataset, list(pre.spacing), norms, cache_dir)
    return [cache[(d.name, c.name)] for d in data.datasets for c in d.cases]


def parent_task_dice(network: torch.nn.Module, data: ParentTaskData, cases: list[CachedCase], patch_size,
                     device) -> dict[str, float | None]:
    """Mean Dice per parent task over ``cases`` (the datasets' tasks are disjoint: names are <dataset>_<label>)."""
    out: dict[str, float | None] = {}
    for ds in data.datasets:
        mine = [c for c in cases if c.dataset == ds.name]
        out.update(mean_dice_per_task(network, mine, data.queries[ds.name] + [NULL_TASK], data.modality_ids[ds.name],
                                      data.task_names[ds.name], patch_size, device))
    return out


class ForgettingMeasure:
    """The parent's tasks on fixed cases: ``before(parent)``, then ``after(child)`` gives the record; ``seconds``
    is how long one measurement took (the time limit reserves as much for the second)."""

    def __init__(self, data: ParentTaskData, cases: list[CachedCase], patch_size, device, reason: str):
        self.data, self.cases, self.patch_size, self.device = data, cases, patch_size, device
        self.reason = reason  # why nothing is measured, when no case labels a parent task
        self.dice_before: dict | None = None
        self.seconds = 0.0

    def before(self, parent: torch.nn.Module, clock) -> None:
        if self.cases:
            clock.event("forgetting", f"Dice of the base model's tasks on {len(self.cases)} case(s), before")
            started = time.monotonic()
            self.dice_before = parent_task_dice(parent.to(self.device), self.data, self.cases, self.patch_size,
                                                self.device)
            self.seconds = time.monotonic() - started

    def after(self, child: torch.nn.Module, clock) -> dict:
        """The record; ``child`` is measured on the run's device and returned to the CPU."""
        if not self.cases:
            return {"not_measured": self.reason}
        clock.event("forgetting", f"Dice of the base model's tasks on {len(self.cases)} case(s), after")
        after = parent_task_dice(child.to(self.device), self.data, self.cases, self.patch_size, self.device)
        child.cpu()
        record = {"measured_on": [f"{c.dataset}/{c.case}" for c in self.cases],
                  "tasks": {n: {"before": self.dice_before[n], "after": after[n]} for n in self.dice_before}}
        clock.event("forgetting", forgetting_note(record))
        return record


def forgetting_note(record: dict) -> str:
    """The record in words, for lineage notes and model cards."""
    if "not_measured" in record:
        return f"forgetting not measured: {record['not_measured']}"
    pairs = ", ".join(f"{k} {v['before']}->{v['after']}" for k, v in record["tasks"].items())
    return f"forgetting (Dice of base tasks before->after on {len(record['measured_on'])} case(s)): {pairs}"
