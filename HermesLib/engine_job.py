"""A module's job around one engine command: its state, timing and log, poll/wait/cancel, and how it ended.

Both modules' jobs (``SegmentationJob``: segment then import; ``TrainingJob``: export, train, register) are an
:class:`~HermesLib.engine_run.EngineRun` plus what the module does before and after it. The part they share is here
so that cancel, the end-of-run log line, the blocking wait and the ``onFinished`` call behave the same in both:

- a subclass starts its run with ``self.run = startEngineCommand(..., onLog=self.logSink,
  onFinished=self._onRunFinished)``;
- :meth:`_succeeded` does the module's work after a successful run and ends with ``self._finish(...)``;
- :meth:`_cleanUp` removes the job's temporary files (always called, whatever the outcome);
- :meth:`outcome` is the blocking mode's end: it raises the module's error for a failed or cancelled job.
"""

from __future__ import annotations

import time
from typing import Callable

from .engine_run import EngineRun, LogSink


class JobState:
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINAL = (SUCCEEDED, FAILED, CANCELLED)


class EngineJob:
    """``what``: the job's name in log lines and errors ("Segmentation", "Training"); ``cancelledNote``: what a
    cancelled job leaves (nothing). ``logic.job`` is cleared when the job ends."""

    what = "Run"
    cancelledNote = "nothing was written"

    def __init__(self, logic, onFinished: Callable[["EngineJob"], None] | None,
                 onLog: Callable[[str], None] | None):
        self.logic = logic
        self.onFinished = onFinished
        self.state = JobState.STARTING
        self.errorMessage: str | None = None
        self.logSink = LogSink(onLog)  # the engine's lines and the job's own messages, in order
        self.run: EngineRun | None = None
        self.startTime = time.monotonic()
        self.endTime: float | None = None

    # ------------------------------------------------------------------ public
    @property
    def isRunning(self) -> bool:
        return self.state not in JobState.FINAL

    @property
    def elapsedSeconds(self) -> float:
        return (self.endTime or time.monotonic()) - self.startTime

    @property
    def pid(self) -> int | None:
        return self.run.pid if self.run else None

    @property
    def command(self) -> list[str]:
        return self.run.command if self.run else []

    @property
    def log(self) -> list[str]:
        return self.logSink.lines

    def poll(self) -> bool:
        """Deliver pending progress (scripts without a Qt event loop). True while running."""
        if self.run is not None and not self.run.finished:
            self.run.poll()
        return self.isRunning

    def wait(self, timeout: float | None = None) -> "EngineJob":
        if self.run is not None and not self.run.finished:
            self.run.wait(timeout)
        return self

    def cancel(self) -> None:
        """Kill the engine's process tree; ``onFinished`` is called before this returns."""
        if not self.isRunning:
            return
        self._cancelling()
        if self.run is not None and not self.run.finished:
            self.run.cancel()  # -> _onRunFinished, cancelled
        else:
            self._finish(JobState.CANCELLED)

    def outcome(self, timeout: float | None, error: type[Exception], cancelled: type[Exception]) -> "EngineJob":
        """Blocking mode: wait (cancelling after ``timeout`` s), then raise ``cancelled`` or ``error`` with the
        message for the user, or return the succeeded job."""
        name = self.what.lower()
        if self.isRunning:
            try:
                self.wait(timeout)
            except TimeoutError:
                self.cancel()
                raise error(f"{name} did not finish within {timeout} s; it was cancelled") from None
        if self.state == JobState.CANCELLED:
            raise cancelled(f"{name} was cancelled; {self.cancelledNote}")
        if self.state == JobState.FAILED:
            raise error(self.errorMessage or f"{name} failed")
        return self

    # ------------------------------------------------------------------ for subclasses
    def _emitLog(self, text: str) -> None:
        self.logSink.emit(text)

    def _cancelling(self) -> None:
        """Called once when a cancel starts (e.g. to say so in the progress)."""

    def _succeeded(self, run: EngineRun) -> None:
        self._finish(JobState.SUCCEEDED)

    def _cleanUp(self) -> None:
        """Remove the job's temporary files."""

    def _resultText(self) -> str:
        """What a succeeded job produced, for its last log line."""
        return ""

    def _ended(self, state: str) -> None:
        """Called after the last log line, before ``onFinished``."""

    def _onRunFinished(self, run: EngineRun) -> None:
        if run.cancelled:
            self._finish(JobState.CANCELLED)
        elif not run.succeeded:
            self._finish(JobState.FAILED, error=run.errorMessage)
        else:
            self._succeeded(run)

    def _finish(self, state: str, error: str | None = None) -> None:
        self.state, self.errorMessage, self.endTime = state, error, time.monotonic()
        self._cleanUp()
        if state == JobState.SUCCEEDED:
            self._emitLog(f"{self.what} finished in {self.elapsedSeconds:.1f} s: {self._resultText()}")
        elif state == JobState.CANCELLED:
            self._emitLog(f"Cancelled after {self.elapsedSeconds:.1f} s; {self.cancelledNote}")
        else:
            self._emitLog(f"{self.what} failed: {error}")
        self._ended(state)
        if self.logic.job is self:
            self.logic.job = None
        if self.onFinished is not None:
            self.onFinished(self)
