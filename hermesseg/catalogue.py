"""The structure catalogue: what a user sees for a model's task (spec 7.14).

One catalogue serves every model. It lives in ``hermesseg/resources/structures.json``: per structure a display name
("Left kidney"), SNOMED CT terminology (category, type, modifier, region) and a colour. A task named
``<group>_<structure>`` maps to the entry whose key or alias is ``<structure>``; tasks of different datasets that mean
the same structure (``ct_abdomen_ts_spinal_cord``, ``ct_body_tsdataset_spinal_cord``) are one :class:`StructureChoice`,
whose preferred task is the one with the best measured quality. Protocol differences stay visible as per-task notes
(LiTS's liver excludes the tumour).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

CATALOGUE_FILE = Path(__file__).resolve().parent / "resources" / "structures.json"


@dataclass(frozen=True)
class Structure:
    """One catalogue entry; ``terminology`` is None only where ``no_code`` says why."""

    key: str
    name: str
    color: tuple[int, int, int]
    terminology: dict | None = None  # {"category": [scheme, code, meaning], "type": [...], "modifier": [...]|None}
    no_code: str | None = None
    source: str | None = None


@dataclass
class StructureChoice:
    """A structure as one model answers it for one modality: its tasks, the preferred (best measured) one first."""

    structure: Structure
    tasks: list = field(default_factory=list)  # TaskEntry, preferred first

    @property
    def preferred(self):
        return self.tasks[0]


class Catalogue:
    def __init__(self, doc: dict):
        categories, modifiers = doc["categories"], doc["modifiers"]
        self.structures: dict[str, Structure] = {}
        for s in doc["structures"]:
            terminology = None
            if s.get("type"):
                terminology = {"category": list(categories[s["category"]]), "type": list(s["type"]),
                               "modifier": list(modifiers[s["modifier"]]) if s.get("modifier") else None}
                if s.get("region"):
                    terminology["region"] = list(s["region"])
            self.structures[s["key"]] = Structure(s["key"], s["name"], tuple(s["color"]), terminology,
                                                  s.get("no_code"), s.get("source"))
        self.aliases: dict[str, str] = doc.get("aliases", {})
        self.task_notes: dict[str, str] = doc.get("task_notes", {})
        self.group_notes: dict[str, str] = doc.get("group_notes", {})

    # ------------------------------------------------------------------ structure names -> entries
    def structure(self, key: str) -> Structure | None:
        """The entry for a structure name such as ``kidney_left`` or an alias (``portal_splenic_vein``)."""
        key = key.strip().lower()
        key = self.aliases.get(key, key)
        return self.structures.get(key) or next((s for k, s in self.structures.items() if k.lower() == key), None)

    def structure_of(self, task) -> Structure | None:
        """The catalogue entry a model task answers, or None for a task outside the catalogue."""
        return self.structure(structure_key(task))

    # ------------------------------------------------------------------ what a task shows
    def display_name(self, task) -> str:
        s = self.structure_of(task)
        return s.name if s else structure_key(task).replace("_", " ").capitalize()

    def terminology(self, task) -> dict | None:
        s = self.structure_of(task)
        return s.terminology if s and s.terminology else task.terminology

    def color(self, task) -> tuple[int, int, int]:
        s = self.structure_of(task)
        return s.color if s else tuple(task.color)

    def note(self, task) -> str:
        """Protocol notes of the task's dataset (empty when there are none)."""
        notes = [self.task_notes.get(f"{task.group}/{structure_key(task)}"), self.group_notes.get(task.group)]
        return "; ".join(n for n in notes if n)

    # ------------------------------------------------------------------ one entry per structure
    def choices(self, tasks: Iterable, modality: str | None = None) -> list[StructureChoice]:
        """The structures ``tasks`` answer (for ``modality`` if given), in task order, duplicates merged; within an
        entry the task with the best measured quality comes first; on a tie, one without a protocol caveat (LiTS's
        tumour-free liver), then task order."""
        groups: dict[str, StructureChoice] = {}
        for task in tasks:
            if modality is not None and modality not in task.modalities:
                continue
            s = self.structure_of(task) or Structure(task.name, self.display_name(task), tuple(task.color),
                                                     task.terminology)
            groups.setdefault(s.key, StructureChoice(s)).tasks.append(task)
        for choice in groups.values():
            choice.tasks.sort(key=lambda t: (-quality_dice(t), f"{t.group}/{structure_key(t)}" in self.task_notes))
        return list(groups.values())


def structure_key(task) -> str:
    """``<group>_<structure>`` -> ``<structure>`` (the whole name when it does not start with its group)."""
    prefix = f"{task.group}_"
    return task.name[len(prefix):] if task.name.startswith(prefix) and len(task.name) > len(prefix) else task.name


def quality_dice(task) -> float:
    """A task's measured held-out Dice, -1 when it has none (seen in training only)."""
    quality = getattr(task, "quality", None)
    return float(quality["heldout_dice"]) if quality else -1.0


@lru_cache(maxsize=1)
def catalogue() -> Catalogue:
    return Catalogue(json.loads(CATALOGUE_FILE.read_text(encoding="utf-8")))
