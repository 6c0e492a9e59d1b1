"""The engine stops when the program that started it dies (Slicer crashed or was killed in the middle of a run).

A parent that wants this sets ``HERMESSEG_PARENT_PID`` to its own process id in the child's environment (the Slicer
modules do). :func:`watch_parent_from_environment`, called by the command line before any command runs, starts a
daemon thread that checks once per :data:`POLL_SECONDS` whether that process still lives; when it is gone, the
thread raises SIGTERM in this process, so the run stops exactly as on Cancel (``segment`` removes partial outputs,
training stops cleanly). A given id is watched rather than ``os.getppid()``: Slicer starts the engine through the
``PythonSlicer`` launcher, so the direct parent is the launcher, which can outlive Slicer.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

PARENT_PID_ENV = "HERMESSEG_PARENT_PID"
POLL_SECONDS = 0.5

log = logging.getLogger(__name__)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a Linux zombie, killed but not reaped, counts as exited)."""
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return False
        try:
            return kernel32.WaitForSingleObject(handle, 0) == 0x00000102  # WAIT_TIMEOUT: still running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(pid, 0) is all we know


def _watch(pid: int, stop: threading.Event) -> None:
    while not stop.wait(POLL_SECONDS):
        if not process_alive(pid):
            log.warning("the parent process %d is gone: stopping", pid)
            signal.raise_signal(signal.SIGTERM)
            return


def watch_parent_from_environment(environ=os.environ) -> threading.Event | None:
    """Start watching ``$HERMESSEG_PARENT_PID`` if it is set; returns an event that stops the watch."""
    value = environ.get(PARENT_PID_ENV, "").strip()
    if not value:
        return None
    try:
        pid = int(value)
    except ValueError:
        log.warning("ignoring %s=%r: not a process id", PARENT_PID_ENV, value)
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    stop = threading.Event()
    threading.Thread(target=_watch, args=(pid, stop), name="hermesseg-parent-watch", daemon=True).start()
    return stop
