"""Installing SIGINT/SIGTERM handlers for the duration of a job (main thread only; elsewhere a no-op)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signal_handler(handler: Callable[[int, object], None]):
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
