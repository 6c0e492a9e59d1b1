"""SIGINT/SIGTERM become a Cancelled exception in the main thread, so every atomic write unwinds cleanly."""

from __future__ import annotations

import contextlib
import signal
import threading

from ..errors import Cancelled


@contextlib.contextmanager
def cancel_on_signals():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Cancelled(f"cancelled by {signal.Signals(signum).name}; no output was written for the current input")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
