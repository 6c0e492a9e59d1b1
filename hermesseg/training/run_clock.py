"""The deadline of a command that trains in phases (add-task, finetune) and its progress events.

``--time-limit`` bounds the whole command: each training phase gets a share of what is left, less a reserve for the
work after training (checks, writing), counted in training steps. Events carry ``step``/``total`` over every phase,
``eta_s`` (steps left at the measured step time, never past the deadline) and ``elapsed_s``.
"""

from __future__ import annotations

import math
import time


class RunClock:
    """The command's deadline and a global step counter for progress events (``progress``: ``hermesseg.progress
    .Progress`` or None)."""

    def __init__(self, time_limit: float | None, planned_steps: int, progress):
        self.t0 = time.monotonic()
        self.deadline = None if time_limit is None else self.t0 + float(time_limit)
        self.planned, self.done, self.progress = planned_steps, 0, progress
        self.step_s: float | None = None

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def budget(self, share: float, reserve_steps: int, reserve_s: float = 0.0) -> float:
        """Seconds for a training phase: ``share`` of what is left, less the work after training (about as long as
        ``reserve_steps`` training steps, plus ``reserve_s`` seconds) so that the time limit bounds the whole
        command."""
        return max(self.left() * share - reserve_steps * (self.step_s or 0.0) - reserve_s, 0.0)

    def event(self, stage: str, message: str, **fields) -> None:
        if self.progress is None:
            return
        eta = None
        if self.step_s is not None:
            eta = round(min(self.step_s * max(self.planned - self.done, 0), max(self.left(), 0.0)), 1)
        self.progress.update(stage, self.done / max(self.planned, 1), message, step=self.done, total=self.planned,
                             eta_s=eta, elapsed_s=round(time.monotonic() - self.t0, 1), **fields)
