"""The JSON manifest stored in every model file: architecture, task and modality tables, preprocessing, lineage.

It is what makes a model file self-describing: the CLI, the Slicer modules and training read tasks, colours,
terminology and preprocessing from here, never from hard-coded tables.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ModelFileError
from .network import HermesRConfig

FORMAT_NAME = "hermes-model"
FORMAT_VERSION = 1
ARCHITECTURES = ("hermes-r",)


@dataclass
class TaskEntry:
    """One row of the task table: a structure as annotated in one dataset (the group) for some modalities."""

    id: int
    name: str
    group: str
    modalities: list[str]
    color: tuple[int, int, int] = (128, 174, 128)
    terminology: dict | None = None  # {"category": [scheme, code, meaning], "type": [...], "modifier": [...]|None}
    description: str = ""


@dataclass
class ModalityEntry:
    """One row of the modality table; ``dicom`` lists the DICOM Modality values that suggest it (CT, MR, PT)."""

    id: int
    name: str
    description: str = ""
    dicom: list[str] = field(default_factory=list)


@dataclass
class LineageRecord:
    """What produced a model: from which parent (weights fingerprint), how, when, on which datasets."""

    operation: str
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    parent: str | None = None
    datasets: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    notes: str = ""


@dataclass
class Manifest:
    name: str
    architecture: dict
    tasks: list[TaskEntry]
    modalities: list[ModalityEntry]
    preprocessing: dict
    lineage: list[LineageRecord] = field(default_factory=list)
    version: str = "1.0.0"
    card: dict = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    weights_sha256: str | None = None

    # ------------------------------------------------------------------ lookups
    @property
    def config(self) -> HermesRConfig:
        arch = {k: v for k, v in self.architecture.items() if k != "name"}
        return HermesRConfig.from_dict(arch)

    def task(self, name_or_id: str | int) -> TaskEntry:
        for t in self.tasks:
            if t.id == name_or_id or t.name == name_or_id:
                return t
        raise KeyError(name_or_id)

    def modality(self, name_or_id: str | int) -> ModalityEntry:
        for m in self.modalities:
            if m.id == name_or_id or (isinstance(name_or_id, str) and m.name.lower() == name_or_id.lower()):
                return m
        raise KeyError(name_or_id)

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(t.group for t in self.tasks))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        """Parse and validate; every problem is reported as a ModelFileError that names the offending field."""
        if not isinstance(d, dict):
            raise ModelFileError("manifest is not a JSON object")
        if d.get("format") != FORMAT_NAME:
            raise ModelFileError(f"not a Hermes model manifest (format is {d.get('format')!r}, "
                                 f"expected {FORMAT_NAME!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise ModelFileError(f"unsupported model format version {d.get('format_version')!r}; "
                                 f"this hermesseg reads version {FORMAT_VERSION}")
        try:
            tasks = [TaskEntry(**{**t, "color": tuple(t.get("color", (128, 174, 128)))}) for t in d["tasks"]]
            modalities = [ModalityEntry(**m) for m in d["modalities"]]
            lineage = [LineageRecord(**r) for r in d.get("lineage", [])]
            m = cls(name=d["name"], architecture=d["architecture"], tasks=tasks, modalities=modalities,
                    preprocessing=d["preprocessing"], lineage=lineage, version=d.get("version", "1.0.0"),
                    card=d.get("card", {}), format=d["format"], format_version=d["format_version"],
                    weights_sha256=d.get("weights_sha256"))
        except KeyError as e:
            raise ModelFileError(f"manifest is missing the field {e.args[0]!r}") from None
        except TypeError as e:
            raise ModelFileError(f"manifest has a malformed entry: {e}") from None
        m.validate()
        return m

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ModelFileError(f"manifest is not valid JSON: {e}") from None

    def validate(self) -> None:
        if self.architecture.get("name") not in ARCHITECTURES:
            raise ModelFileError(f"unknown architecture {self.architecture.get('name')!r}; known: {ARCHITECTURES}")
        try:
            config = self.config
        except (TypeError, ValueError) as e:
            raise ModelFileError(f"invalid architecture configuration: {e}") from None
        ids = [m.id for m in self.modalities]
        if ids != list(range(config.num_modalities)):
            raise ModelFileError(f"modality ids must be 0..{config.num_modalities - 1} in order, got {ids}")
        modality_names = {m.name for m in self.modalities}
        if len(modality_names) != len(self.modalities):
            raise ModelFileError("modality names are not unique")
        seen_ids: set[int] = set()
        seen_names: set[str] = set()
        for t in self.tasks:
            if not isinstance(t.id, int) or not 0 <= t.id < config.num_task_rows:
                raise ModelFileError(f"task {t.name!r} has id {t.id!r} outside the task table "
                                     f"(0..{config.num_task_rows - 1})")
            if t.id in seen_ids:
                raise ModelFileError(f"task id {t.id} is used twice")
            if t.name in seen_names:
                raise ModelFileError(f"task name {t.name!r} is used twice")
            unknown = [m for m in t.modalities if m not in modality_names]
            if unknown or not t.modalities:
                raise ModelFileError(f"task {t.name!r} names unknown modalities {unknown or '(none given)'}; "
                                     f"known: {sorted(modality_names)}")
            if len(t.color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in t.color):
                raise ModelFileError(f"task {t.name!r} has an invalid colour {t.color!r}")
            seen_ids.add(t.id)
            seen_names.add(t.name)
        for key in ("spacing", "intensity"):
            if key not in self.preprocessing:
                raise ModelFileError(f"manifest preprocessing is missing {key!r}")
        missing_norm = modality_names - set(self.preprocessing["intensity"])
        if missing_norm:
            raise ModelFileError(f"no intensity normalisation for modalities {sorted(missing_norm)}")


def architecture_dict(config: HermesRConfig) -> dict[str, Any]:
    return {"name": "hermes-r", **config.to_dict()}
