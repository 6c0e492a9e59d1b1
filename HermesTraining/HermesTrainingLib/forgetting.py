"""The forgetting report of a fine-tune: per task the base model knew, its Dice before and after.

``hermesseg finetune`` trains all weights, so the structures the base knew may get worse. The engine measures it
(spec: incremental learning, forgetting check) and writes the same record into its ``done`` event
(``outputs[0]["forgetting"]``) and into the new model's card (``card["fine_tuned"][-1]["forgetting"]``)::

    {"measured_on": ["case", ...], "tasks": {"task": {"before": dice, "after": dice}, ...}}
    {"not_measured": "reason"}

The card is the record that stays with the model, so it is read from there; the event is the fallback for a model
whose card cannot be read. Anything else is reported as not measured, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ForgettingRow:
    task: str
    before: float | None
    after: float | None

    @property
    def change(self) -> float | None:
        return None if self.before is None or self.after is None else self.after - self.before

    def cells(self) -> tuple[str, str, str, str]:
        """Task, Dice before, Dice after, change, as shown (a missing figure is "n/a")."""
        return (self.task, _dice(self.before), _dice(self.after),
                "n/a" if self.change is None else f"{self.change:+.3f}")


@dataclass
class ForgettingReport:
    """``rows`` (measured) or ``notMeasured`` (the engine's reason); ``cases``: what it was measured on."""

    rows: list[ForgettingRow] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)
    notMeasured: str | None = None

    @property
    def measured(self) -> bool:
        return self.notMeasured is None

    def lines(self) -> list[str]:
        """The report as text, for the log and the result label."""
        if not self.measured:
            return [f"Forgetting check: not measured: {self.notMeasured}"]
        lines = [f"Forgetting check on {len(self.cases)} case(s) ({', '.join(self.cases)}): Dice before -> after"]
        for row in self.rows:
            task, before, after, change = row.cells()
            lines.append(f"  {task}: {before} -> {after}" + (f" ({change})" if row.change is not None else ""))
        return lines


def _dice(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _figure(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parseForgetting(record) -> ForgettingReport:
    """A report from the engine's forgetting record (see the module docstring)."""
    if not isinstance(record, dict):
        return ForgettingReport(notMeasured="the engine wrote no forgetting record")
    if "not_measured" in record:
        return ForgettingReport(notMeasured=str(record["not_measured"]))
    tasks = record.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        return ForgettingReport(notMeasured="the engine's forgetting record has no tasks")
    rows = [ForgettingRow(str(name), _figure(d.get("before")), _figure(d.get("after")))
            for name, d in tasks.items() if isinstance(d, dict)]
    cases = [str(c) for c in record.get("measured_on") or []]
    return ForgettingReport(rows=rows, cases=cases)


def forgettingRecord(card: dict | None, outputs: list[dict] | None) -> dict | None:
    """The record from the model card's last fine-tune entry, else from the ``done`` event's first output."""
    history = (card or {}).get("fine_tuned")
    if isinstance(history, list) and history and isinstance(history[-1], dict) and "forgetting" in history[-1]:
        return history[-1]["forgetting"]
    for output in outputs or []:
        if isinstance(output, dict) and "forgetting" in output:
            return output["forgetting"]
    return None
