"""Progress for people (a tqdm bar on stderr) or for programs (one JSON object per line on stdout).

One protocol for every long command (segment, train): ``update(stage, fraction, message)``, then ``done(outputs)``
or ``error(message)``. The bar is drawn only on a terminal and is cleared before anything else is printed, so an
error line never follows leftover bar text.
"""

from __future__ import annotations

import json
import sys

from tqdm import tqdm


class Progress:
    """``update(stage, fraction, message)`` with fraction in 0..1 over the whole run; ``done(outputs)`` at the end.

    Modes: ``json`` (events on ``stream``), ``bar`` (a bar on stderr when it is a terminal, else nothing), ``none``.
    """

    def __init__(self, mode: str | None = None, stream=None):
        self.mode = mode
        self.stream = stream or sys.stdout
        self._bar = None
        if mode not in ("json", "none"):
            # disable=None: tqdm draws only when stderr is a terminal; a log file never gets carriage-return debris.
            self._bar = tqdm(total=1000, unit="‰", file=sys.stderr, leave=False, disable=None,
                             bar_format="{l_bar}{bar}| {elapsed}<{remaining}")
        self._last = 0.0

    def _emit(self, obj: dict) -> None:
        self.stream.write(json.dumps(obj) + "\n")
        self.stream.flush()

    def update(self, stage: str, fraction: float, message: str = "", **fields) -> None:
        """``fields``: extra JSON keys of this event (training: ``step``, ``total``, ``loss``, ``eta_s``...)."""
        fraction = min(max(fraction, self._last), 1.0)
        self._last = fraction
        if self.mode == "json":
            self._emit({"stage": stage, "fraction": round(fraction, 4), "message": message, **fields})
        elif self._bar is not None:
            self._bar.set_description_str(message or stage)
            self._bar.n = int(fraction * 1000)
            self._bar.refresh()

    def close(self) -> None:
        """Clear the bar from the terminal (idempotent); call before printing anything else to stderr."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def done(self, outputs: list[dict], message: str = "done") -> None:
        self.close()
        if self.mode == "json":
            self._emit({"stage": "done", "fraction": 1.0, "message": message, "outputs": outputs})

    def error(self, message: str) -> None:
        self.close()
        if self.mode == "json":
            self._emit({"stage": "error", "fraction": self._last, "message": message})
