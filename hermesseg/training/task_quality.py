"""The per-task measured quality a training run writes into its model file (``TaskEntry.quality``, issue 10).

A task's quality is its mean Dice over the held-out cases that have it (the validation split of the run, scored with
the weights that are saved) and how many cases that is; a task without such a case keeps ``quality: None``, shown
as "seen in training only". The same shape (``{"heldout_dice", "heldout_cases", "source"}``) is what the manifest
checks, what ``hermesseg tasks`` shows and what the default task selection reads.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np

from ..manifest import TaskEntry


def quality_from_scores(scores: Mapping[str, Sequence[float | None]], source: str) -> dict[str, dict]:
    """Task name -> quality from per-task lists of case Dice (None = the case had neither truth nor prediction,
    so it says nothing about the task); tasks without a scored case are left out."""
    out = {}
    for name, values in scores.items():
        scored = [float(v) for v in values if v is not None]
        if scored:
            out[name] = {"heldout_dice": round(float(np.mean(scored)), 4), "heldout_cases": len(scored),
                         "source": source}
    return out


def scores_by_task(per_case: Mapping[str, Sequence[float | None]], task_names_of) -> dict[str, list[float | None]]:
    """``per_case``: ``"dataset/case"`` -> Dice per queried task (``validation.evaluate_cases``'s ``cases``);
    ``task_names_of(dataset)``: the task names in that query's order."""
    scores: dict[str, list[float | None]] = {}
    for key, values in per_case.items():
        for name, value in zip(task_names_of(key.split("/", 1)[0]), values):
            scores.setdefault(name, []).append(value)
    return scores


def held_out_quality(record: dict | None, refit: bool) -> dict[str, dict]:
    """Task name -> quality from a held-out phase's record (``held_out_training``: mean Dice per new task and the
    held-out cases); {} without a held-out split. ``refit``: the saved weights went on training on every case."""
    if not record:
        return {}
    source = "held-out cases of its split" + ("; the saved weights then went on training on every case"
                                              if refit else "")
    return {name: {"heldout_dice": float(d), "heldout_cases": len(record["held_out_cases"]), "source": source}
            for name, d in record["dice"].items() if d is not None}


def with_quality(tasks: Sequence[TaskEntry], quality: Mapping[str, dict], measured: set[str]) -> list[TaskEntry]:
    """``tasks`` with the quality of those in ``measured`` (this run's tasks) replaced by ``quality`` (None where
    it has none: seen in training only); the others keep what they had."""
    return [replace(t, quality=quality.get(t.name)) if t.name in measured else t for t in tasks]
