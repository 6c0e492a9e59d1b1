"""How each new task is drawn, decided on the held-out cases the way nnU-Net chooses its post-processing (Isensee et
al., Nature Methods 2021): at which probability (``CANDIDATE_THRESHOLDS``) and whether only the largest connected
piece is kept; a change from segment's usual drawing (0.5, every piece) is taken when it raises the held-out Dice.

Why the largest piece: a structure learned from a few volumes is often found in the right place and also, in small
pieces, on look-alike tissue elsewhere (for the cine-MR left ventricle taught from 5 ACDC patients: bright vessels
and bowel far from the heart). Removing every piece but the largest removes those and keeps the structure, unless
the largest piece is itself a wrong one; the held-out Dice says which happens more.

Why a lower threshold: a structure learned in minutes is drawn too small at 0.5, most of all a thin one on the
coarse model grid (the myocardium at 3 mm is 2-3 voxels thick). On the four ACDC models of
``benchmarks/add_task_results.md`` (5 patients each), every new task drawn at 0.3 instead of 0.5 raised the mean
Dice on the 10 test patients by 0.012-0.019 per model (largest piece kept); choosing the threshold per task on one
test patient's model-grid Dice, as add-task does on its held-out patient, raised it on the other nine by 0.010-0.017
(mean over the choice of patient), and by at least 0.005 for every choice.

Each candidate is scored as ``segment`` would draw it: the piece rule first, then the found rule (``DEFAULT_RULE``,
its evidence at 0.5 whatever the candidate's threshold; a mask it rejects scores 0 where the truth has the
structure), on the model grid. So the stored held-out quality is the quality of what a user sees.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from ..evaluation.metrics import dice
from ..inference.found_rule import DEFAULT_RULE, EVIDENCE_THRESHOLD, FoundRule, task_evidence
from ..manifest import DEFAULT_THRESHOLD, TaskEntry
from ..masks import largest_piece_only
from .validation import predict_volume

# The thresholds a new task may be drawn at, in order of preference on a tie (0.5, what every other task uses, first).
CANDIDATE_THRESHOLDS = (DEFAULT_THRESHOLD, 0.4, 0.3)


@dataclass(frozen=True)
class Drawing:
    """How segment draws a task: at which probability, and whether it keeps only the largest piece."""

    threshold: float = DEFAULT_THRESHOLD
    largest_piece: bool = False

    @property
    def name(self) -> str:
        return f"{self.threshold:g}" + (", largest piece" if self.largest_piece else "")


# every candidate, in order of preference on a tie: the fewest changes from segment's usual drawing first
CANDIDATES = tuple(Drawing(t, piece) for t in CANDIDATE_THRESHOLDS for piece in (False, True))


@dataclass
class HeldOutScores:
    """Held-out Dice per candidate ``Drawing``, task and case (None: the case has neither the structure nor a mask of
    it under that drawing)."""

    per_case: dict[Drawing, dict[str, list[float | None]]]

    @property
    def dice(self) -> dict[Drawing, dict[str, float | None]]:
        """Mean over the cases that have the structure or a mask of it (None: no such case), rounded to 4 decimals:
        the held-out quality a task reports."""
        return {d: {n: round(float(np.mean([v for v in values if v is not None])), 4)
                    if any(v is not None for v in values) else None for n, values in tasks.items()}
                for d, tasks in self.per_case.items()}

    @property
    def choice(self) -> dict[str, Drawing]:
        """Per task, the candidate that agrees best with the held-out truth: mean Dice over every case, a case with
        neither structure nor mask counting 1 (so a lower threshold that draws a false mask where the structure is
        absent loses); a later candidate wins only when strictly better, so ties keep segment's usual drawing."""
        def agreement(values: list[float | None]) -> float:
            return float(np.mean([1.0 if v is None else v for v in values])) if values else 1.0

        return {name: max(CANDIDATES, key=lambda c: (round(agreement(self.per_case[c][name]), 4),
                                                     -CANDIDATES.index(c)))
                for name in self.per_case[CANDIDATES[0]]}

    @property
    def chosen(self) -> dict[str, float | None]:
        """Each task's held-out Dice under the drawing it gets."""
        dice = self.dice
        return {name: dice[drawing][name] for name, drawing in self.choice.items()}

    @property
    def keep_largest(self) -> list[str]:
        return [name for name, drawing in self.choice.items() if drawing.largest_piece]

    @property
    def record(self) -> dict:
        """For lineage: the Dice of every candidate (keyed by ``Drawing.name``) and each task's choice."""
        dice = self.dice
        return {"dice_by_drawing": {d.name: scores for d, scores in dice.items()},
                "dice_all_pieces": dice[Drawing()], "dice_largest_piece": dice[Drawing(largest_piece=True)],
                "keep_largest_component": self.keep_largest,
                "threshold": {name: d.threshold for name, d in self.choice.items()}}


def drawn_dice(probability: torch.Tensor, truth: np.ndarray, spacing, rule: FoundRule,
               threshold: float = DEFAULT_THRESHOLD) -> float | None:
    """Dice of the mask segment draws from ``probability`` (z y x, model grid) at ``threshold`` against ``truth``;
    None when both are empty."""
    evidence = task_evidence(probability, EVIDENCE_THRESHOLD, spacing)
    found = rule.reason(evidence, EVIDENCE_THRESHOLD) is None
    drawn = (probability >= threshold).numpy() if found else np.zeros_like(truth)
    return None if not (drawn.any() or truth.any()) else dice(drawn, truth)


def drawn(probability: torch.Tensor, drawing: Drawing) -> torch.Tensor:
    return largest_piece_only(probability, drawing.threshold) if drawing.largest_piece else probability


def held_out_scores(network: torch.nn.Module, cases, query: Sequence[int], modality_id: int, names: Sequence[str],
                    patch_size, spacing, device, rule: FoundRule = DEFAULT_RULE) -> HeldOutScores:
    """Predict each held-out case once (``cases``: CachedCase whose label slots follow ``query``'s order) and score
    every candidate drawing of every task in ``names``."""
    scores = {candidate: {n: [] for n in names} for candidate in CANDIDATES}
    for case in cases:
        probs = torch.from_numpy(predict_volume(network, np.asarray(case.image), query, modality_id, patch_size,
                                                device))
        label = np.asarray(case.label)
        for k, name in enumerate(names):
            truth = label == k + 1
            for candidate in CANDIDATES:
                scores[candidate][name].append(drawn_dice(drawn(probs[k], candidate), truth, spacing, rule,
                                                          candidate.threshold))
    return HeldOutScores(scores)


def with_drawing(tasks: Sequence[TaskEntry], choice: dict[str, Drawing], measured: set[str]) -> list[TaskEntry]:
    """``tasks`` with ``keep_largest_component`` and ``threshold`` set from ``choice`` for the tasks of this run
    (``measured``; segment's usual drawing where ``choice`` has none); other tasks keep what they had."""
    def drawing(name: str) -> Drawing:
        return choice.get(name, Drawing())

    return [replace(t, keep_largest_component=drawing(t.name).largest_piece, threshold=drawing(t.name).threshold)
            if t.name in measured else t for t in tasks]
