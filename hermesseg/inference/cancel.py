"""SIGINT/SIGTERM become a Cancelled exception in the main thread, so every atomic write unwinds cleanly."""

from __future__ import annotations

import signal

from ..errors import Cancelled
from ..signals import stop_signal_handler


def _raise_cancelled(signum, frame):
    raise Cancelled(f"cancelled by {signal.Signals(signum).name}; no output was written for the current input")


def cancel_on_signals():
    return stop_signal_handler(_raise_cancelled)
