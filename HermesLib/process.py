"""Running a command in the background without blocking Slicer, with a cancel that kills the whole process tree.

Design (the MONAIAuto3DSeg ``BackgroundProcess`` pattern, which works on every Slicer version; Slicer 5.10 has no
``launchConsoleProcess(blocking=False)``):

- ``subprocess.Popen`` with stderr merged into stdout, text mode; on POSIX in a new session (its own process group),
  on Windows in a new process group without a console window;
- a reader thread pushes output lines into a ``queue.Queue``; it never calls back into Slicer;
- the owner thread drains the queue in :meth:`BackgroundProcess.poll`, which dispatches the callbacks. Inside Slicer
  a ``qt.QTimer`` calls ``poll`` every ``pollIntervalMsec``; scripts and tests call :meth:`wait` (blocking) or
  ``poll`` themselves. So every callback (and every MRML change it makes) runs on the thread that owns the object;
- :meth:`cancel` kills the process tree (``psutil`` when importable; else ``os.killpg`` on POSIX, ``taskkill /T`` on
  Windows), reaps the process and records :data:`USER_CANCELLED`, so completion handlers import nothing.

This module is GUI-free and Slicer-free. Engine commands go through :mod:`HermesLib.engine_run`, which adds the
engine's environment and progress parsing.
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from typing import Callable

USER_CANCELLED = 1001  # returnCode recorded for a run the user cancelled (same convention as MONAIAuto3DSeg)

_CREATE_NEW_PROCESS_GROUP = 0x00000200
_CREATE_NO_WINDOW = 0x08000000


class ProcessState(enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


def _qtTimerAvailable() -> bool:
    """A Qt event loop to poll from: true inside the Slicer application only."""
    try:
        import qt  # noqa: F401
        import slicer
    except ImportError:
        return False
    return getattr(slicer, "app", None) is not None


def pidAlive(pid: int) -> bool:
    """Whether a process with this id exists and has not exited (a zombie counts as exited): the engine's own
    check (``hermesseg.parent_watch.process_alive``, torch-free), with which the engine watches Slicer."""
    from .engine import importEngineModule

    return importEngineModule("hermesseg.parent_watch").process_alive(pid)


def killProcessTree(process: subprocess.Popen, gracePeriod: float = 3.0) -> None:
    """Stop ``process`` and all its descendants; returns once ``process`` is reaped.

    First a polite request (SIGTERM: the engine turns it into a clean cancellation that removes partial files), then,
    after ``gracePeriod`` seconds, a hard kill of whatever is left.
    """
    pid = process.pid
    try:
        import psutil
    except ImportError:
        psutil = None

    if psutil is not None:
        try:
            parent = psutil.Process(pid)
            procs = [parent] + parent.children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=gracePeriod)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
    elif os.name == "posix":
        try:
            os.killpg(pid, signal.SIGTERM)  # start_new_session=True: the group id is the child's pid
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=gracePeriod)
        except subprocess.TimeoutExpired:
            pass
    else:
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True,
                       creationflags=_CREATE_NO_WINDOW)

    if os.name == "posix":
        try:
            os.killpg(pid, signal.SIGKILL)  # stragglers that left the tree but stayed in the group
        except (ProcessLookupError, PermissionError):
            pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class BackgroundProcess:
    """One child process whose output lines are delivered through callbacks on the owner's thread.

    ``onOutputLine(line)`` for every output line (without the newline); ``onFinished(process)`` once, when the
    process has exited and all its output was delivered, or right after :meth:`cancel`.
    """

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 onOutputLine: Callable[[str], None] | None = None,
                 onFinished: Callable[["BackgroundProcess"], None] | None = None,
                 pollIntervalMsec: int = 100):
        self.args = [str(a) for a in args]
        self.env = env
        self.cwd = cwd
        self.onOutputLine = onOutputLine
        self.onFinished = onFinished
        self.pollIntervalMsec = pollIntervalMsec
        self.state = ProcessState.NOT_STARTED
        self.returnCode: int | None = None         # USER_CANCELLED after cancel()
        self.processReturnCode: int | None = None  # what the OS reported
        self.callbackError: BaseException | None = None
        self._process: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None
        self._eof = False
        self._finished = False
        self._useTimer = False

    # ------------------------------------------------------------------ state
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def isRunning(self) -> bool:
        return self.state == ProcessState.RUNNING

    @property
    def finished(self) -> bool:
        return self._finished

    # ------------------------------------------------------------------ start
    def start(self, useTimer: bool | None = None) -> "BackgroundProcess":
        """Start the process. ``useTimer`` None: poll with a ``qt.QTimer`` inside Slicer, else the caller polls."""
        if self.state != ProcessState.NOT_STARTED:
            raise RuntimeError("a BackgroundProcess can be started only once")
        kwargs: dict = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True
        else:
            kwargs["creationflags"] = _CREATE_NEW_PROCESS_GROUP | _CREATE_NO_WINDOW
            info = subprocess.STARTUPINFO()
            info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
            info.wShowWindow = 0  # SW_HIDE
            kwargs["startupinfo"] = info
        logging.debug("Starting: %s", " ".join(self.args))
        self._process = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        self.state = ProcessState.RUNNING
        self._reader = threading.Thread(target=self._readOutput, name=f"hermes-reader-{self._process.pid}",
                                        daemon=True)
        self._reader.start()
        self._useTimer = _qtTimerAvailable() if useTimer is None else useTimer
        if self._useTimer:
            self._scheduleTimer()
        return self

    def _readOutput(self) -> None:
        stream = self._process.stdout
        try:
            for line in iter(stream.readline, ""):
                self._queue.put(line.rstrip("\r\n"))
        except (OSError, ValueError):  # the pipe was closed under us (kill)
            pass
        finally:
            self._queue.put(None)

    def _scheduleTimer(self) -> None:
        import qt
        qt.QTimer.singleShot(self.pollIntervalMsec, self._onTimer)

    def _onTimer(self) -> None:
        if self.poll():
            self._scheduleTimer()

    # ------------------------------------------------------------------ polling
    def _dispatch(self, line: str) -> None:
        if self.onOutputLine is None:
            return
        try:
            self.onOutputLine(line)
        except Exception as e:  # noqa: BLE001 - a faulty callback must not leave a zombie process behind
            logging.exception("Output callback failed; stopping the process")
            self.callbackError = e
            self._kill()

    def poll(self, maxLines: int = 1000) -> bool:
        """Deliver pending output; finish when the process is done. Returns True while there is more to come."""
        if self._finished:
            return False
        if self._process is None:
            return False
        for _ in range(maxLines):
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._eof = True
                break
            self._dispatch(line)
            if self._finished:  # a callback cancelled the run
                return False
        if self._eof and self._process.poll() is not None:
            self._drainRemaining()
            self._finish(self._process.returncode)
            return False
        return True

    def _drainRemaining(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self._dispatch(line)

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until finished (delivering callbacks here); returns ``returnCode``. Raises TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"process {self.pid} still running after {timeout} s")
            try:  # sleep until a line arrives, at most 50 ms
                line = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if line is None:
                self._eof = True
            else:
                self._dispatch(line)
        return self.returnCode

    # ------------------------------------------------------------------ finishing
    def _finish(self, processReturnCode: int | None, cancelled: bool = False) -> None:
        if self._finished:
            return
        self._finished = True
        self.processReturnCode = processReturnCode
        if cancelled:
            self.state, self.returnCode = ProcessState.CANCELLED, USER_CANCELLED
        else:
            self.returnCode = processReturnCode
            self.state = ProcessState.SUCCEEDED if processReturnCode == 0 else ProcessState.FAILED
        if self._process is not None and self._process.stdout is not None:
            try:
                self._process.stdout.close()
            except OSError:
                pass
        if self.onFinished is not None:
            try:
                self.onFinished(self)
            except Exception as e:  # noqa: BLE001
                logging.exception("Completion callback failed")
                self.callbackError = self.callbackError or e

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            killProcessTree(self._process)
        elif self._process is not None and os.name == "posix":
            try:
                os.killpg(self._process.pid, signal.SIGKILL)  # leader gone, children may remain
            except (ProcessLookupError, PermissionError):
                pass

    def cancel(self) -> None:
        """Kill the process tree now and finish as CANCELLED (``onFinished`` is called before this returns)."""
        if self._finished or self._process is None:
            return
        self._kill()
        if self._reader is not None:
            self._reader.join(timeout=5)
        # Output that arrived before the kill is still delivered, so logs are complete.
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None and self.onOutputLine is not None:
                try:
                    self.onOutputLine(line)
                except Exception:  # noqa: BLE001
                    logging.exception("Output callback failed while cancelling")
        self._finish(self._process.returncode, cancelled=True)

    def __del__(self):
        # Never leave an orphan engine running when the owner forgets to cancel.
        try:
            if not self._finished and self._process is not None and self._process.poll() is None:
                killProcessTree(self._process, gracePeriod=0.5)
        except Exception:  # noqa: BLE001
            pass
