"""The held-out protocol add-task and finetune share: with enough case groups, train on the seeded split, report
Dice per new task on the held-out cases, then (unless ``--no-refit``) go on training from those weights on every
case; with fewer, train once on every case and say that no held-out figure exists. The held-out cases also choose
how each new task is drawn, at which threshold and whether only its largest piece is kept (``postprocessing``);
the reported Dice is the chosen drawing's.

Why the refit continues instead of starting again: within a CPU time limit each phase gets a few hundred steps and
the new structures are step-bound (ACDC, 5 patients, default adapter: held-out mean 0.27 with a fresh refit, 0.48
when the refit continued, about 390 steps per phase). The saved weights then have every step of both phases; the
held-out figure describes the first phase's weights, trained on fewer cases for fewer steps, so it errs low.

The time shares keep the whole command inside ``--time-limit``: the first phase gets 45 % of what is left when a
refit follows (90 % without), the last phase 95 % of what is then left; the caller's ``phase`` subtracts the work
after training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..add_task_options import DEFAULT_TOTAL_STEPS
from ..manifest import DEFAULT_THRESHOLD, TaskEntry
from ..network import HermesR
from .cache import CachedCase
from .new_rows import NewRows
from .new_task_cases import NewTaskCases
from .phase import PhaseResult
from .postprocessing import Drawing, held_out_scores, with_drawing
from .run_clock import RunClock
from .task_quality import held_out_quality, with_quality

# (cases, stage name, share of the time left, weights to continue from or None for the start) -> the phase's result
Phase = Callable[[list[CachedCase], str, float, HermesR | None], PhaseResult]


@dataclass
class HeldOutTraining:
    result: PhaseResult  # the last phase: the weights the model file gets
    steps: int  # over every phase
    dice: dict[str, float | None] | None  # held-out Dice per new task; None without a held-out split
    record: dict | None  # for lineage: train_cases, held_out_cases, steps, dice (and of both piece choices)
    drawing: dict[str, Drawing]  # how segment draws each new task (segment's usual drawing without a held-out split)

    @property
    def keep_largest(self) -> list[str]:
        """The new tasks that keep only their largest piece."""
        return [name for name, d in self.drawing.items() if d.largest_piece]

    @property
    def thresholds(self) -> dict[str, float]:
        """The new tasks drawn at another threshold than segment's usual 0.5, and that threshold."""
        return {name: d.threshold for name, d in self.drawing.items() if d.threshold != DEFAULT_THRESHOLD}

    def applied(self, tasks: Sequence[TaskEntry], new_tasks: Sequence[str], refit: bool) -> list[TaskEntry]:
        """The manifest's ``tasks`` with what the held-out cases measured on the ``new_tasks``: their quality
        (``task_quality``) and how segment draws them (``postprocessing``)."""
        measured = set(new_tasks)
        tasks = with_quality(tasks, held_out_quality(self.record, refit), measured)
        return with_drawing(tasks, self.drawing, measured)


def train_held_out_then_refit(phase: Phase, cases: NewTaskCases, rows: NewRows, refit: bool, device,
                              clock: RunClock) -> HeldOutTraining:
    steps, dice, record, result, drawing = 0, None, None, None, {}
    if cases.held_out:
        result = phase(cases.train, "held-out training", 0.45 if refit else 0.9, None)
        steps += result.steps
        clock.event("held-out", f"Dice on {len(cases.held)} held-out case(s)")
        scores = held_out_scores(result.network, cases.held, rows.query_with_null, rows.modality_id, rows.names,
                                 cases.preprocessing.patch_size, cases.preprocessing.spacing, device)
        dice, drawing = scores.chosen, scores.choice
        clock.event("held-out", "held-out Dice " + ", ".join(f"{k} {v} (drawn at {drawing[k].name})"
                                                             for k, v in dice.items()), held_out_dice=dice)
        record = {"train_cases": [c.case for c in cases.train], "held_out_cases": [c.case for c in cases.held],
                  "steps": result.steps, "dice": dice, **scores.record}
    if not cases.held_out or refit:
        result = phase(cases.every, "training" if not cases.held_out else "refit", 0.95,
                       result.network if cases.held_out else None)
        steps += result.steps
    return HeldOutTraining(result, steps, dice, record, drawing)


def phase_steps(steps: int | None, held_out: bool, refit: bool) -> tuple[int, int]:
    """(steps per phase, steps over every phase for progress totals). ``--steps`` is per phase; without it the
    phases share ``DEFAULT_TOTAL_STEPS`` (add_task_options)."""
    phases = 2 if held_out and refit else 1
    per_phase = int(steps) if steps is not None else DEFAULT_TOTAL_STEPS // phases
    return per_phase, phases * per_phase
