"""Progress for people (a tqdm bar on stderr) or for programs (one JSON object per line on stdout)."""

from __future__ import annotations

import json
import sys

from tqdm import tqdm


class Progress:
    """``update(stage, fraction, message)`` with fraction in 0..1 over the whole run; ``done(outputs)`` at the end."""

    def __init__(self, mode: str | None = None, stream=None):
        self.mode = mode
        self.stream = stream or sys.stdout
        self._bar = None if mode == "json" else tqdm(total=1000, unit="‰", file=sys.stderr, leave=False,
                                                       bar_format="{l_bar}{bar}| {elapsed}<{remaining}",
                                                       disable=mode == "none")
        self._last = 0.0

    def _emit(self, obj: dict) -> None:
        self.stream.write(json.dumps(obj) + "\n")
        self.stream.flush()

    def update(self, stage: str, fraction: float, message: str = "") -> None:
        fraction = min(max(fraction, self._last), 1.0)
        self._last = fraction
        if self.mode == "json":
            self._emit({"stage": stage, "fraction": round(fraction, 4), "message": message})
        elif self._bar is not None:
            self._bar.set_description_str(message or stage)
            self._bar.n = int(fraction * 1000)
            self._bar.refresh()

    def done(self, outputs: list[dict], message: str = "done") -> None:
        if self.mode == "json":
            self._emit({"stage": "done", "fraction": 1.0, "message": message, "outputs": outputs})
        elif self._bar is not None:
            self._bar.close()

    def error(self, message: str) -> None:
        if self.mode == "json":
            self._emit({"stage": "error", "fraction": self._last, "message": message})
        elif self._bar is not None:
            self._bar.close()
