"""Parsing ``hermesseg ... --progress json`` output: one JSON object per stdout line.

``{"stage": str, "fraction": 0..1, "message": str}`` while running; ``{"stage": "done", ..., "outputs": [...]}`` last
on success; ``{"stage": "error", "message": str}`` before a non-zero exit. Anything else on the stream (warnings,
tracebacks, stderr merged into stdout) is kept as log text and never breaks the parser.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field

STAGE_DONE = "done"
STAGE_ERROR = "error"


@dataclass
class ProgressEvent:
    stage: str
    fraction: float
    message: str = ""
    outputs: list[dict] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # the whole object (training adds step, loss, held-out Dice, ETA)

    @property
    def isDone(self) -> bool:
        return self.stage == STAGE_DONE

    @property
    def isError(self) -> bool:
        return self.stage == STAGE_ERROR


def parseProgressLine(line: str) -> ProgressEvent | None:
    """A progress event, or None when the line is not a progress object (plain text, other JSON)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("stage"), str):
        return None
    try:
        fraction = float(obj.get("fraction", 0.0))
    except (TypeError, ValueError):
        fraction = 0.0
    fraction = min(max(fraction, 0.0), 1.0) if fraction == fraction else 0.0  # NaN -> 0
    outputs = obj.get("outputs") or []
    if not isinstance(outputs, list):
        outputs = []
    return ProgressEvent(stage=obj["stage"], fraction=fraction, message=str(obj.get("message", "")),
                         outputs=[o for o in outputs if isinstance(o, dict)], data=obj)


class ProgressParser:
    """Feed it lines; it remembers the last fraction, the final ``done`` event, the ``error`` message and the tail
    of non-JSON text (used as the error message when the process dies without an ``error`` line)."""

    def __init__(self, tailLines: int = 40):
        self.fraction = 0.0
        self.lastEvent: ProgressEvent | None = None
        self.doneEvent: ProgressEvent | None = None
        self.errorMessage: str | None = None
        self.textTail: collections.deque[str] = collections.deque(maxlen=tailLines)

    def feed(self, line: str) -> ProgressEvent | None:
        event = parseProgressLine(line)
        if event is None:
            text = line.rstrip("\r\n")
            if text.strip():
                self.textTail.append(text)
            return None
        self.lastEvent = event
        if event.isError:
            self.errorMessage = event.message or "the engine reported an error"
        else:
            self.fraction = max(self.fraction, event.fraction)
            if event.isDone:
                self.doneEvent = event
        return event

    def failureMessage(self, returnCode: int | None) -> str:
        """The best explanation of a failed run: the engine's ``error`` event, else its one-line error
        (``hermesseg CMD: error: MESSAGE`` -> MESSAGE), else another line that mentions an error, else the last
        text lines."""
        if self.errorMessage:
            return self.errorMessage
        for line in reversed(self.textTail):
            if ": error:" in line:
                return line.split(": error:", 1)[1].strip()
        errorLines = [t for t in self.textTail if "error" in t.lower()]
        if errorLines:
            return errorLines[-1].strip()
        if self.textTail:
            return "\n".join(list(self.textTail)[-5:])
        return f"the engine exited with code {returnCode} without a message"
