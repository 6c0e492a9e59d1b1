"""The JSON manifest stored in every model file: architecture, task and modality tables, preprocessing, lineage.

It is what makes a model file self-describing: the CLI, the Slicer modules and training read tasks, colours,
terminology and preprocessing from here, never from hard-coded tables.

A model file is untrusted input: every string is checked on reading and writing (``hermesseg.names``: task, group,
modality, model, dataset names follow the name rule; descriptions, card text and terminology meanings the free-text
rule), because task names become file names and every string reaches logs and the Slicer GUI.

Identity. ``weights_sha256`` identifies the weights alone (lineage records a parent by it, so renaming tasks keeps
the parent link). The model's identity is :func:`manifest_digest`, the sha256 of the manifest text as stored: the
manifest holds ``weights_sha256``, so the digest covers names, tables, preprocessing and weights together, and
renaming a task changes it. Model files written since this digest exists store it beside the manifest and readers
verify it; older files (such as the shipped ``hermes-mini``) have none and are accepted, their identity computed on
reading. A digest is not a signature: anyone who edits a file can recompute it. It detects accidental edits and
corruption and names a model unambiguously; it does not prove who made it (that is why names are validated).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ModelFileError
from .names import check_name, check_text, shown
from .network.config import HermesRConfig, patch_size_problem  # not .network: that would import torch
from .preprocessing_config import Preprocessing  # not .preprocessing: that imports torch

FORMAT_NAME = "hermes-model"
FORMAT_VERSION = 1
ARCHITECTURES = ("hermes-r",)
DEFAULT_THRESHOLD = 0.5  # the probability at which a task's mask is drawn unless its entry says otherwise
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Terminology codes end up in Slicer's "scheme^code^meaning~..." tag strings: these characters would split them.
_TERMINOLOGY_SEPARATORS = "^~|"


def manifest_digest(text: str) -> str:
    """The model's identity: sha256 of the manifest JSON text exactly as stored (see the module docstring)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    # Measured on images the task's labels never came from: {"heldout_dice": float, "heldout_cases": int,
    # "source": str}; None = seen in training only (no such measurement).
    quality: dict | None = None
    # Keep only the largest connected piece of the mask (segment removes the others before the found rule): chosen
    # by add-task and finetune when it raised the Dice on their held-out cases (training/postprocessing.py).
    keep_largest_component: bool = False
    # The probability at which segment draws the mask (whether the task is found is still judged at 0.5,
    # found_rule.EVIDENCE_THRESHOLD): chosen by add-task and finetune on their held-out cases
    # (training/postprocessing.py); 0.5 otherwise.
    threshold: float = DEFAULT_THRESHOLD


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
    details: dict = field(default_factory=dict)  # e.g. add-task: mode, case ids, data hash, steps, measured figures


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
        except (TypeError, AttributeError) as e:
            raise ModelFileError(f"manifest has a malformed entry: {e}") from None
        if m.weights_sha256 is not None and not (isinstance(m.weights_sha256, str)
                                                 and _SHA256.fullmatch(m.weights_sha256)):
            raise ModelFileError(f"manifest weights_sha256 {shown(m.weights_sha256)} is not a sha256 hex digest")
        m.validate()
        return m

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelFileError(f"manifest is not valid JSON: {e}") from None
        except RecursionError:
            raise ModelFileError("manifest is nested too deeply to be a Hermes manifest") from None
        return cls.from_dict(data)

    def validate(self) -> None:
        self._validate_strings()
        if not isinstance(self.architecture, dict) or not isinstance(self.preprocessing, dict):
            raise ModelFileError("manifest architecture and preprocessing must be JSON objects")
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
            if isinstance(t.id, bool) or not isinstance(t.id, int) or not 0 <= t.id < config.num_task_rows:
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
            if len(t.color) != 3 or not all(type(c) is int and 0 <= c <= 255 for c in t.color):
                raise ModelFileError(f"task {t.name!r} has an invalid colour {t.color!r}")
            check_quality(t)
            if not isinstance(t.keep_largest_component, bool):
                raise ModelFileError(f"task {t.name!r}: keep_largest_component must be true or false, "
                                     f"not {shown(t.keep_largest_component)}")
            if type(t.threshold) not in (int, float) or not 0.0 < t.threshold < 1.0:
                raise ModelFileError(f"task {t.name!r}: threshold must be a number between 0 and 1, "
                                     f"not {shown(t.threshold)}")
            seen_ids.add(t.id)
            seen_names.add(t.name)
        by_id = {t.id: t for t in self.tasks}
        for adapter in config.adapters:  # an adapter serves tasks of its own group only (spec 4, zero forgetting)
            stray = [i for i in adapter.task_ids if i not in by_id or by_id[i].group != adapter.group]
            if stray:
                raise ModelFileError(f"adapter {adapter.group!r} names task row {stray[0]}, which is not a task of "
                                     f"group {adapter.group!r}")
        for key in ("spacing", "intensity"):
            if key not in self.preprocessing:
                raise ModelFileError(f"manifest preprocessing is missing {key!r}")
        try:
            pre = Preprocessing.from_dict(self.preprocessing)
        except (TypeError, ValueError, AttributeError) as e:
            raise ModelFileError(f"invalid manifest preprocessing: {e}") from None
        if patch_size_problem(pre.patch_size):
            raise ModelFileError(f"manifest preprocessing: {patch_size_problem(pre.patch_size)}")
        if not isinstance(self.preprocessing["intensity"], dict):
            raise ModelFileError("manifest preprocessing.intensity must map modality names to normalisations")
        missing_norm = modality_names - set(self.preprocessing["intensity"])
        if missing_norm:
            raise ModelFileError(f"no intensity normalisation for modalities {sorted(missing_norm)}")

    def _validate_strings(self) -> None:
        """Every string that can reach a path, a log or the GUI follows ``hermesseg.names``' rules."""
        check_name(self.name, "model name", ModelFileError)
        check_name(self.version, "model version", ModelFileError)
        for m in _entries(self.modalities, "modalities"):
            check_name(m.name, "modality name", ModelFileError)
            check_text(m.description, f"modality {m.name} description", ModelFileError)
            for code in _entries(m.dicom, f"modality {m.name} dicom"):
                check_name(code, f"modality {m.name} DICOM modality", ModelFileError)
        for t in _entries(self.tasks, "tasks"):
            check_name(t.name, "task name", ModelFileError)
            check_name(t.group, f"task {t.name} group", ModelFileError)
            for m in _entries(t.modalities, f"task {t.name} modalities"):
                check_name(m, f"task {t.name} modality", ModelFileError)
            check_text(t.description, f"task {t.name} description", ModelFileError)
            _check_terminology(t.terminology, f"task {t.name} terminology")
        for i, r in enumerate(_entries(self.lineage, "lineage")):
            check_name(r.operation, f"lineage[{i}] operation", ModelFileError)
            check_text(r.created, f"lineage[{i}] created", ModelFileError, max_length=64)
            if r.parent is not None and not (isinstance(r.parent, str) and _SHA256.fullmatch(r.parent)):
                raise ModelFileError(f"lineage[{i}] parent {shown(r.parent)} is not a sha256 hex digest")
            for name in _entries(r.datasets, f"lineage[{i}] datasets"):
                check_name(name, f"lineage[{i}] dataset", ModelFileError)
            for name in _entries(r.tasks, f"lineage[{i}] tasks"):
                check_name(name, f"lineage[{i}] task", ModelFileError)
            check_text(r.notes, f"lineage[{i}] notes", ModelFileError)
            if not isinstance(r.details, dict):
                raise ModelFileError(f"lineage[{i}] details must be a JSON object, not {type(r.details).__name__}")
            _check_card(r.details, f"lineage[{i}] details")
        if not isinstance(self.card, dict):
            raise ModelFileError(f"manifest card must be a JSON object, not {type(self.card).__name__}")
        _check_card(self.card, "card")


def _entries(value, field: str) -> list:
    if not isinstance(value, list):
        raise ModelFileError(f"manifest {field} must be a list, not {type(value).__name__}")
    return value


def _check_terminology(term, field: str) -> None:
    """None, or {"category": [scheme, code, meaning], "type": [...], "modifier": [...] | None, ...}."""
    if term is None:
        return
    if not isinstance(term, dict):
        raise ModelFileError(f"{field} must be an object, not {type(term).__name__}")
    for key, code in term.items():
        check_name(key, f"{field} key", ModelFileError)
        if code is None and key not in ("category", "type"):
            continue
        if not (isinstance(code, list) and len(code) == 3):
            raise ModelFileError(f"{field}.{key} must be [scheme, code, meaning], got {shown(code)}")
        for part in code:
            check_text(part, f"{field}.{key}", ModelFileError, max_length=256)
            if any(c in part for c in _TERMINOLOGY_SEPARATORS):
                raise ModelFileError(f"{field}.{key} {shown(part)} contains one of {_TERMINOLOGY_SEPARATORS!r}, "
                                     f"which separate Slicer terminology fields")


def _check_card(value, field: str) -> None:
    """The model card: JSON of any shape, whose every key and string is acceptable free text."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_text(key, f"{field} key", ModelFileError, max_length=256)
            _check_card(item, f"{field}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_card(item, f"{field}[{i}]")
    elif isinstance(value, str):
        check_text(value, field, ModelFileError)


def check_quality(task: TaskEntry) -> None:
    """A task's measured quality is None or {"heldout_dice": 0..1, "heldout_cases": int >= 1, "source": text}."""
    q = task.quality
    if q is None:
        return
    ok = (isinstance(q, dict) and set(q) == {"heldout_dice", "heldout_cases", "source"}
          and isinstance(q["heldout_dice"], (int, float)) and not isinstance(q["heldout_dice"], bool)
          and 0.0 <= q["heldout_dice"] <= 1.0
          and isinstance(q["heldout_cases"], int) and not isinstance(q["heldout_cases"], bool)
          and q["heldout_cases"] >= 1 and isinstance(q["source"], str) and q["source"].strip())
    if not ok:
        raise ModelFileError(f"task {task.name!r} has an invalid quality {q!r}; expected null or "
                             f'{{"heldout_dice": 0..1, "heldout_cases": >= 1, "source": "how it was measured"}}')


def architecture_dict(config: HermesRConfig) -> dict[str, Any]:
    return {"name": "hermes-r", **config.to_dict()}
