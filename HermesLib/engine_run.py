"""Running one engine command in the background: the one recipe both modules use.

``startEngineCommand("segment", [...])`` locates the engine, starts ``python -m hermesseg.cli SUBCOMMAND ...`` in a
:class:`~HermesLib.process.BackgroundProcess` with the engine's environment (engine folder on ``PYTHONPATH``, this
process's id in ``HERMESSEG_PARENT_PID``), feeds every output line to a :class:`~HermesLib.progress.ProgressParser`,
and calls back on the owner's thread: ``onProgress(event)`` for each JSON progress object, ``onLog(text)`` for
everything else (and for progress messages), ``onFinished(run)`` once, when the process has exited or was
cancelled. ``run.succeeded``, ``run.cancelled`` and ``run.errorMessage`` say how it ended; ``run.outputs`` holds the
``done`` event's outputs. Commands without ``--progress json`` (``import-official``) work too: their error line
becomes ``errorMessage``. ``startFileCommand`` is the same for a command whose result is one file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from . import engine
from .process import BackgroundProcess, ProcessState
from .progress import ProgressEvent, ProgressParser


class LogSink:
    """Log lines kept for the record and passed to a callback that can never break the run."""

    def __init__(self, onLog: Callable[[str], None] | None = None):
        self.onLog = onLog
        self.lines: list[str] = []

    def emit(self, text: str) -> None:
        self.lines.append(text)
        if self.onLog is not None:
            try:
                self.onLog(text)
            except Exception:  # noqa: BLE001 - a log callback must not break the run
                logging.exception("log callback failed")


class EngineRun:
    """One engine command: its process, its parsed progress, its log, and how it ended.

    ``onLog``: a callback, or a :class:`LogSink` shared with the caller's own messages (one log per job)."""

    def __init__(self, command: list[str], onProgress: Callable[[ProgressEvent], None] | None = None,
                 onLog: Callable[[str], None] | LogSink | None = None,
                 onFinished: Callable[["EngineRun"], None] | None = None):
        self.command = command
        self.onProgress = onProgress
        self.logSink = onLog if isinstance(onLog, LogSink) else LogSink(onLog)
        self.onFinished = onFinished
        self.parser = ProgressParser()
        self.reportsProgress = any(a == "--progress" and b == "json" for a, b in zip(command, command[1:]))
        self.process = BackgroundProcess(command, env=engine.engineEnvironment(), onOutputLine=self._onLine,
                                         onFinished=self._onProcessFinished)

    # ------------------------------------------------------------------ state
    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def log(self) -> list[str]:
        return self.logSink.lines

    @property
    def finished(self) -> bool:
        return self.process.finished

    @property
    def cancelled(self) -> bool:
        return self.process.state == ProcessState.CANCELLED

    @property
    def succeeded(self) -> bool:
        """Exit status 0, no callback error, and (with ``--progress json``) a ``done`` event."""
        return (self.process.state == ProcessState.SUCCEEDED and self.process.callbackError is None
                and (not self.reportsProgress or self.parser.doneEvent is not None))

    @property
    def outputs(self) -> list[dict]:
        return self.parser.doneEvent.outputs if self.parser.doneEvent is not None else []

    @property
    def errorMessage(self) -> str | None:
        """Why it failed, for the user (None while running, on success and on cancel)."""
        if not self.finished or self.succeeded or self.cancelled:
            return None
        if self.process.callbackError is not None:
            return f"progress handling failed: {self.process.callbackError}"
        code = self.process.returnCode
        if code == 0:
            return "the engine finished without reporting its outputs"
        message = self.parser.failureMessage(code)
        return f"the engine was interrupted: {message}" if code == 130 else message

    # ------------------------------------------------------------------ control
    def poll(self) -> bool:
        """Deliver pending output (scripts without a Qt event loop); True while running."""
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> "EngineRun":
        """Block until finished, delivering callbacks here; raises TimeoutError."""
        self.process.wait(timeout)
        return self

    def cancel(self) -> None:
        """Kill the engine's process tree; ``onFinished`` is called before this returns."""
        self.process.cancel()

    # ------------------------------------------------------------------ callbacks
    def _onLine(self, line: str) -> None:
        event = self.parser.feed(line)
        if event is None:
            if line.strip():
                self.logSink.emit(line)
            return
        if event.isError:
            self.logSink.emit(f"Error: {event.message}")
            return
        if event.message:
            self.logSink.emit(f"[{event.stage}] {event.message}")
        if self.onProgress is not None:
            self.onProgress(event)  # an exception here stops the process (BackgroundProcess.callbackError)

    def _onProcessFinished(self, process: BackgroundProcess) -> None:
        if self.onFinished is not None:
            self.onFinished(self)


def startEngineCommand(subcommand: str, args: list[str], onProgress: Callable[[ProgressEvent], None] | None = None,
                       onLog: Callable[[str], None] | LogSink | None = None,
                       onFinished: Callable[[EngineRun], None] | None = None, python: str | None = None,
                       pollWithQtTimer: bool | None = None) -> EngineRun:
    """Start ``hermesseg SUBCOMMAND ARGS`` in the background (see the module docstring); returns the running run.

    ``pollWithQtTimer``: None = inside Slicer a Qt timer delivers the callbacks; False = the caller calls
    ``run.wait()`` or ``run.poll()`` (scripts, blocking calls). No callback runs before this returns, so the caller
    can keep the run before any callback needs it. Raises EngineNotFoundError when the engine is missing and
    OSError when the interpreter cannot start.
    """
    engine.requireEngine()
    run = EngineRun(engine.engineCommand(subcommand, *args, python=python), onProgress, onLog, onFinished)
    run.process.start(useTimer=pollWithQtTimer)
    return run


def startFileCommand(subcommand: str, args: list[str], output: Path,
                     onFinished: Callable[[Path | None, str | None], None] | None = None,
                     onLog: Callable[[str], None] | None = None, python: str | None = None,
                     waitForCompletion: bool = False, error: type[Exception] = RuntimeError) -> EngineRun:
    """Run an engine command whose result is the one file ``output`` (import-official, export-task, import-task).

    ``onFinished(output, None)`` on success, ``(None, message)`` otherwise (also when the engine exits 0 but wrote
    no file); in blocking mode the failure is raised as ``error(message)``."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {}

    def finished(run: EngineRun) -> None:
        if run.cancelled:
            result["error"] = "cancelled"
        elif not run.succeeded or not output.is_file():
            result["error"] = run.errorMessage or f"the engine wrote no file at {output}"
        if onFinished is not None:
            onFinished(None if "error" in result else output, result.get("error"))

    run = startEngineCommand(subcommand, args, onLog=onLog, onFinished=finished, python=python,
                             pollWithQtTimer=False if waitForCompletion else None)
    if waitForCompletion:
        run.wait()
        if "error" in result:
            raise error(result["error"])
    return run
