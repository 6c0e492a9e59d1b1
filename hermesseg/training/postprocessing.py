"""Which new tasks keep only their largest connected piece: decided on the held-out cases, the way nnU-Net chooses
its post-processing (Isensee et al., Nature Methods 2021): a task keeps it when that raises its mean held-out Dice.

Why: a structure learned from a few volumes is often found in the right place and also, in small pieces, on
look-alike tissue elsewhere (for the cine-MR left ventricle taught from 5 ACDC patients: bright vessels and bowel
far from the heart). Removing every piece but the largest removes those and keeps the structure, unless the largest
piece is itself a wrong one; the held-out Dice says which happens more.

Each candidate is scored as ``segment`` would draw it: the piece rule first, then the found rule (``DEFAULT_RULE``;
a mask it rejects scores 0 where the truth has the structure), thresholded at 0.5 on the model grid. So the stored
held-out quality is the quality of what a user sees.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from ..evaluation.metrics import dice
from ..inference.found_rule import DEFAULT_RULE, FoundRule, task_evidence
from ..inference.pipeline import InferenceOptions
from ..manifest import TaskEntry
from ..masks import largest_piece_only
from .validation import predict_volume

THRESHOLD = InferenceOptions.threshold  # segment's


@dataclass
class HeldOutScores:
    """Mean held-out Dice per task with every piece drawn and with the largest piece only (None: the task was empty
    and undrawn on every held-out case)."""

    all_pieces: dict[str, float | None]
    largest_piece: dict[str, float | None]

    @property
    def keep_largest(self) -> list[str]:
        """The tasks whose held-out Dice is higher with the largest piece only."""
        return [n for n, d in self.all_pieces.items()
                if d is not None and self.largest_piece[n] is not None and self.largest_piece[n] > d]

    @property
    def chosen(self) -> dict[str, float | None]:
        """Each task's held-out Dice under the choice it gets."""
        keep = set(self.keep_largest)
        return {n: self.largest_piece[n] if n in keep else d for n, d in self.all_pieces.items()}


def drawn_dice(probability: torch.Tensor, truth: np.ndarray, spacing, rule: FoundRule) -> float | None:
    """Dice of the mask segment draws from ``probability`` (z y x, model grid) against ``truth``; None when both
    are empty."""
    evidence = task_evidence(probability, THRESHOLD, spacing)
    drawn = (probability >= THRESHOLD).numpy() if rule.reason(evidence, THRESHOLD) is None else np.zeros_like(truth)
    return None if not (drawn.any() or truth.any()) else dice(drawn, truth)


def held_out_scores(network: torch.nn.Module, cases, query: Sequence[int], modality_id: int, names: Sequence[str],
                    patch_size, spacing, device, rule: FoundRule = DEFAULT_RULE) -> HeldOutScores:
    """Predict each held-out case once (``cases``: CachedCase whose label slots follow ``query``'s order) and score
    both candidates of every task in ``names``; means rounded to 4 decimals."""
    scores = {variant: {n: [] for n in names} for variant in ("all", "largest")}
    for case in cases:
        probs = torch.from_numpy(predict_volume(network, np.asarray(case.image), query, modality_id, patch_size,
                                                device))
        label = np.asarray(case.label)
        for k, name in enumerate(names):
            truth = label == k + 1
            for variant, channel in (("all", probs[k]), ("largest", largest_piece_only(probs[k], THRESHOLD))):
                value = drawn_dice(channel, truth, spacing, rule)
                if value is not None:
                    scores[variant][name].append(value)

    def means(per_task: dict[str, list[float]]) -> dict[str, float | None]:
        return {n: round(float(np.mean(v)), 4) if v else None for n, v in per_task.items()}

    return HeldOutScores(means(scores["all"]), means(scores["largest"]))


def with_largest_piece(tasks: Sequence[TaskEntry], keep: Sequence[str], measured: set[str]) -> list[TaskEntry]:
    """``tasks`` with ``keep_largest_component`` set for the tasks in ``keep`` and cleared for the other tasks of
    this run (``measured``); other tasks keep what they had."""
    chosen = set(keep)
    return [replace(t, keep_largest_component=t.name in chosen) if t.name in measured else t for t in tasks]
