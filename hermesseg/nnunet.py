"""Datasets in the nnU-Net v2 layout (read by training, evaluation and add-task), validated before any work starts.

A dataset folder holds ``dataset.json`` (name, modality, labels name -> value, file_ending), ``imagesTr/<case>_0000
<ending>`` (one channel) and ``labelsTr/<case><ending>``. Every problem found is a ``DatasetError`` naming the dataset
and, where it applies, the case: missing or unreadable ``dataset.json``, no training cases, a missing label, a label on
another grid than its image (size, spacing, origin, direction), label values not listed in ``labels``, a modality the
model does not have.

Optional per-label display block (written by Slicer; validated as untrusted input)::

    "label_info": {"<label>": {"color": [r, g, b],
                               "terminology": {"category": [scheme, code, meaning], "type": [scheme, code, meaning],
                                               "modifier": [scheme, code, meaning] or null},
                               "display_name": "..."}}

Every key is optional; given values replace the colour and SNOMED terminology derived from the label's name.

Tasks. Each dataset's non-background labels become tasks ``<dataset>_<label>`` in group ``<dataset>`` with the
dataset's (mapped) modality. Per dataset the config may rename labels (``"tasks": {"liver": "abdomen_liver"}``), merge
several labels into one task (map them to the same name), drop a label (map it to ``null``: its voxels become
background for this dataset's tasks), and set the group. Two datasets that produce the same task name share one task
row (e.g. the same structure under two modalities). Label values need not be contiguous (TotalSegmentator ids): in the
preprocessing cache each dataset's label map is stored as slot indices 1..K in the order of its tasks.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import DatasetError
from .names import check_name, check_text

log = logging.getLogger(__name__)

CHANNEL_SUFFIX = "_0000"
_OTHER_CHANNEL = re.compile(r"_(000[1-9]|00[1-9]\d|0[1-9]\d\d|[1-9]\d\d\d)$")
# Geometry tolerances for "the label is on the image's grid".
_SPACING_RTOL = 1e-4
_ORIGIN_ATOL_MM = 1e-3
_DIRECTION_ATOL = 1e-5
MAX_TASKS_PER_DATASET = 255  # label slots are stored as uint8


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    label: Path


@dataclass
class Dataset:
    """A validated dataset folder."""

    name: str
    root: Path
    modality: str  # as written in dataset.json
    model_modality: str  # the model modality it is trained as
    labels: dict[str, int]  # name -> value, background included
    file_ending: str
    cases: list[Case]
    shippable: bool | None = None
    license: str = ""
    description: str = ""
    label_info: dict[str, dict] = field(default_factory=dict)  # label -> validated label_info entry

    def case(self, name: str) -> Case:
        for c in self.cases:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass
class TaskSpec:
    """One task the run trains: a model task row (new or inherited)."""

    name: str
    group: str
    structure: str  # the label (or mapped) name colours and terminology are derived from
    modalities: list[str]
    datasets: list[str] = field(default_factory=list)
    color: tuple[int, int, int] | None = None  # from dataset.json label_info, else derived from the structure
    terminology: dict | None = None
    display_name: str | None = None


@dataclass
class DatasetTasks:
    """How one dataset's label values become its query: slot k (1-based) is ``task_names[k-1]``."""

    dataset: str
    task_names: list[str]
    value_to_slot: dict[int, int]  # label value -> slot; 0 = background (and dropped labels)

    def lut(self) -> np.ndarray:
        """Lookup table label value -> slot (uint8), covering every listed value."""
        size = max(self.value_to_slot, default=0) + 1
        table = np.zeros(size, dtype=np.uint8)
        for value, slot in self.value_to_slot.items():
            table[value] = slot
        return table


@dataclass
class TaskPlan:
    tasks: list[TaskSpec]
    per_dataset: dict[str, DatasetTasks]

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------------- reading

def read_dataset(root: str | Path) -> tuple[dict, list[Case]]:
    """Parse ``dataset.json`` and pair images with labels; structural problems raise DatasetError."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(f"dataset {root.name}: no dataset.json in {root} (expected the nnU-Net v2 layout: "
                           f"dataset.json, imagesTr/<case>_0000<ending>, labelsTr/<case><ending>)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"dataset {root.name}: dataset.json is not readable JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"dataset {root.name}: dataset.json is not a JSON object")
    name = check_name(meta.get("name") or root.name, f"dataset {root.name}: the dataset name", DatasetError)
    for key in ("labels", "file_ending"):
        if key not in meta:
            raise DatasetError(f"dataset {name}: dataset.json has no {key!r}")
    if not meta.get("modality") and not meta.get("channel_names"):
        raise DatasetError(f"dataset {name}: dataset.json has neither 'modality' nor 'channel_names'")
    labels = meta["labels"]
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(f"dataset {name}: 'labels' in dataset.json must map label names to integer values")
    for label, value in labels.items():
        check_name(label, f"dataset {name}: the label name", DatasetError)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DatasetError(f"dataset {name}: label {label!r} has value {value!r}; values must be integers >= 0 "
                               f"(nnU-Net region lists are not supported)")
    if len(set(labels.values())) != len(labels):
        raise DatasetError(f"dataset {name}: two labels in dataset.json share a value")
    ending = meta["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        raise DatasetError(f"dataset {name}: file_ending {ending!r} must start with '.' (e.g. '.nii.gz')")

    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise DatasetError(f"dataset {name}: no imagesTr folder in {root}")
    if not labels_dir.is_dir():
        raise DatasetError(f"dataset {name}: no labelsTr folder in {root}")
    cases: list[Case] = []
    for path in sorted(images_dir.iterdir()):
        if not path.name.endswith(ending) or path.name.startswith("."):
            continue
        stem = path.name[: -len(ending)]
        if _OTHER_CHANNEL.search(stem):
            raise DatasetError(f"dataset {name}, case {_OTHER_CHANNEL.sub('', stem)}: image channel {path.name} found; "
                               f"only single-channel images (_0000) are supported")
        if not stem.endswith(CHANNEL_SUFFIX):
            raise DatasetError(f"dataset {name}: image file {path.name} does not end in {CHANNEL_SUFFIX}{ending}")
        case = check_name(stem[: -len(CHANNEL_SUFFIX)], f"dataset {name}: the case name (from {path.name})",
                          DatasetError)
        label = labels_dir / f"{case}{ending}"
        if not label.is_file():
            raise DatasetError(f"dataset {name}, case {case}: label file {label} is missing")
        cases.append(Case(case, path, label))
    if not cases:
        raise DatasetError(f"dataset {name}: no training cases (no imagesTr/<case>_0000{ending} files in {root})")
    known = {c.name for c in cases}
    for path in sorted(labels_dir.iterdir()):
        if path.name.endswith(ending) and not path.name.startswith("."):
            case = path.name[: -len(ending)]
            if case not in known:
                raise DatasetError(f"dataset {name}, case {case}: label {path.name} has no image "
                                   f"imagesTr/{case}{CHANNEL_SUFFIX}{ending}")
    n = meta.get("numTraining")
    if isinstance(n, int) and n != len(cases):
        log.warning("dataset %s: dataset.json says numTraining=%d but %d cases were found", name, n, len(cases))
    return {**meta, "name": name}, cases


def resolve_modality(dataset: str, raw: str, model_modalities: Sequence[str], modality_map: Mapping[str, str],
                     inherited: bool = False) -> str:
    """The model modality a dataset modality string trains as (exact or case-insensitive name, or via the map)."""
    by_lower = {m.lower(): m for m in model_modalities}
    target = modality_map.get(raw, raw)
    if target.lower() in by_lower:
        return by_lower[target.lower()]
    where = "the parent model (--init) has" if inherited else "the model has"
    if raw in modality_map:
        raise DatasetError(f"dataset {dataset}: modality_map sends {raw!r} to {target!r}, which is not a model "
                           f"modality; {where}: {', '.join(model_modalities)}")
    hint = (" A model started with --init cannot learn a new modality (its modality tables are fixed)."
            if inherited else " Add it to the config's 'modalities' or map it.")
    raise DatasetError(f"dataset {dataset}: unknown modality {raw!r}; {where}: {', '.join(model_modalities)}. "
                       f"Map it in the config, e.g. \"modality_map\": {{\"{raw}\": \"{model_modalities[0]}\"}}.{hint}")


_LABEL_INFO_KEYS = {"color", "terminology", "display_name"}
_TERMINOLOGY_KEYS = {"category", "type", "modifier"}
_MAX_TEXT = 128


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where} must be a non-empty string")
    return check_text(value.strip(), where, DatasetError, max_length=_MAX_TEXT)


def _code_triplet(value, where: str) -> list[str]:
    if not (isinstance(value, list) and len(value) == 3):
        raise DatasetError(f"{where} must be [coding scheme, code, meaning], e.g. [\"SCT\", \"10200004\", \"Liver\"]")
    return [_text(v, where) for v in value]


def read_label_info(meta: dict, labels: Mapping[str, int], dataset: str) -> dict[str, dict]:
    """Validate dataset.json's optional ``label_info`` block (see the module docstring)."""
    info = meta.get("label_info")
    if info is None:
        return {}
    if not isinstance(info, dict):
        raise DatasetError(f"dataset {dataset}: label_info must map label names to objects")
    out: dict[str, dict] = {}
    for label, entry in info.items():
        where = f"dataset {dataset}: label_info[{label!r}]"
        if label not in labels or labels[label] == 0:
            raise DatasetError(f"{where}: not a non-background label of 'labels'")
        if not isinstance(entry, dict) or set(entry) - _LABEL_INFO_KEYS:
            raise DatasetError(f"{where} must be an object with keys among {', '.join(sorted(_LABEL_INFO_KEYS))}")
        clean: dict = {}
        if "color" in entry:
            c = entry["color"]
            if not (isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                               and 0 <= v <= 255 for v in c)):
                raise DatasetError(f"{where}.color must be three integers 0..255")
            clean["color"] = tuple(c)
        if "terminology" in entry:
            t = entry["terminology"]
            if not isinstance(t, dict) or set(t) - _TERMINOLOGY_KEYS or not {"category", "type"} <= set(t):
                raise DatasetError(f"{where}.terminology must be an object with 'category', 'type' and optionally "
                                   f"'modifier'")
            clean["terminology"] = {
                "category": _code_triplet(t["category"], f"{where}.terminology.category"),
                "type": _code_triplet(t["type"], f"{where}.terminology.type"),
                "modifier": None if t.get("modifier") is None else _code_triplet(t["modifier"],
                                                                                 f"{where}.terminology.modifier")}
        if "display_name" in entry:
            clean["display_name"] = _text(entry["display_name"], f"{where}.display_name")
        out[label] = clean
    return out


def dataset_modality_string(meta: dict) -> str:
    raw = meta.get("modality")
    if not raw:
        channels = meta.get("channel_names") or {}
        raw = channels.get("0") if isinstance(channels, dict) else None
    if not isinstance(raw, str) or not raw:
        raise DatasetError(f"dataset {meta.get('name')}: modality must be a non-empty string")
    return raw


# ---------------------------------------------------------------------------------------------------- validation

def _read_info(path: Path, dataset: str, case: str, what: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
        raise DatasetError(f"dataset {dataset}, case {case}: cannot read the {what} {path.name} ({reason})") from None
    dim = reader.GetDimension()
    size = reader.GetSize()
    if dim != 3 and not (dim == 4 and size[3] == 1):
        raise DatasetError(f"dataset {dataset}, case {case}: the {what} {path.name} is {dim}D (size {size}); "
                           f"a 3D volume is required")
    if reader.GetNumberOfComponents() != 1:
        raise DatasetError(f"dataset {dataset}, case {case}: the {what} {path.name} has "
                           f"{reader.GetNumberOfComponents()} components per voxel; a scalar image is required")
    return reader


def _geometry(reader: sitk.ImageFileReader):
    n = 3
    size = tuple(reader.GetSize()[:n])
    spacing = np.array(reader.GetSpacing()[:n])
    origin = np.array(reader.GetOrigin()[:n])
    d = np.array(reader.GetDirection())
    k = int(round(np.sqrt(d.size)))
    direction = d.reshape(k, k)[:n, :n]
    return size, spacing, origin, direction


def check_same_grid(dataset: str, case: Case) -> None:
    """The case's label must be on its image's grid (size, spacing, origin, direction), both readable 3D scalars:
    training and evaluation compare them voxel for voxel. Reads the headers only."""
    img = _geometry(_read_info(case.image, dataset, case.name, "image"))
    lab = _geometry(_read_info(case.label, dataset, case.name, "label"))
    prefix = f"dataset {dataset}, case {case.name}: label and image are on different grids"
    if img[0] != lab[0]:
        raise DatasetError(f"{prefix} (size {lab[0]} vs image {img[0]})")
    if not np.allclose(img[1], lab[1], rtol=_SPACING_RTOL, atol=0):
        raise DatasetError(f"{prefix} (spacing {tuple(np.round(lab[1], 6))} vs image {tuple(np.round(img[1], 6))})")
    if not np.allclose(img[2], lab[2], rtol=0, atol=_ORIGIN_ATOL_MM):
        raise DatasetError(f"{prefix} (origin {tuple(np.round(lab[2], 4))} vs image {tuple(np.round(img[2], 4))})")
    if not np.allclose(img[3], lab[3], rtol=0, atol=_DIRECTION_ATOL):
        raise DatasetError(f"{prefix} (direction {tuple(np.round(lab[3].ravel(), 5))} vs image "
                           f"{tuple(np.round(img[3].ravel(), 5))})")


def check_case(dataset: Dataset, case: Case) -> np.ndarray:
    """Check one case's image/label grids and label values; returns the label values present (sorted)."""
    check_same_grid(dataset.name, case)
    try:
        label = sitk.ReadImage(str(case.label))
    except RuntimeError as e:
        raise DatasetError(f"dataset {dataset.name}, case {case.name}: cannot read the label {case.label.name} "
                           f"({str(e).strip().splitlines()[-1] if str(e).strip() else 'unreadable'})") from None
    array = sitk.GetArrayViewFromImage(label)
    values = label_values(array)
    if array.dtype.kind == "f" and not np.all(np.isfinite(values) & (values == np.round(values))):
        raise DatasetError(f"dataset {dataset.name}, case {case.name}: the label map has non-integer values")
    allowed = set(dataset.labels.values())
    unknown = [v for v in values.tolist() if int(v) not in allowed]
    if unknown:
        shown = ", ".join(str(int(v)) for v in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise DatasetError(f"dataset {dataset.name}, case {case.name}: label values {shown} are not in dataset.json "
                           f"'labels' (listed: {', '.join(str(v) for v in sorted(allowed))})")
    return values.astype(np.int64)


def label_values(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind in "ui" and array.size and int(array.min()) >= 0 and int(array.max()) < 65536:
        counts = np.bincount(np.asarray(array).ravel().astype(np.int64, copy=False))
        return np.flatnonzero(counts)
    return np.unique(array)


def load_datasets(paths: Iterable[str | Path], model_modalities: Sequence[str], modality_map: Mapping[str, str],
                  inherited_modalities: bool = False, check_cases: bool = True) -> list[Dataset]:
    """Read and validate every dataset folder (all cases) before anything else happens."""
    datasets: list[Dataset] = []
    for path in paths:
        meta, cases = read_dataset(path)
        name = meta["name"]
        if any(d.name == name for d in datasets):
            raise DatasetError(f"dataset {name} is given twice (two folders with the same dataset.json name)")
        raw = dataset_modality_string(meta)
        model_modality = resolve_modality(name, raw, model_modalities, modality_map, inherited_modalities)
        labels = {str(k): int(v) for k, v in meta["labels"].items()}
        if 0 not in labels.values():
            raise DatasetError(f"dataset {name}: 'labels' must give background the value 0")
        shippable = meta.get("shippable")
        ds = Dataset(name=name, root=Path(path).resolve(), modality=raw, model_modality=model_modality,
                     labels=labels, file_ending=meta["file_ending"], cases=cases,
                     shippable=shippable if isinstance(shippable, bool) else None,
                     license=str(meta.get("license", "")), description=str(meta.get("description", "")),
                     label_info=read_label_info(meta, labels, name))
        if check_cases:
            for case in cases:
                check_case(ds, case)
        datasets.append(ds)
    if not datasets:
        raise DatasetError("no dataset given (use --data DIR, one or more nnU-Net v2 dataset folders)")
    return datasets


# ---------------------------------------------------------------------------------------------------- tasks

def plan_tasks(datasets: Sequence[Dataset], dataset_settings: Mapping[str, Mapping]) -> TaskPlan:
    """Tasks of all datasets (first-appearance order) and each dataset's label value -> slot mapping."""
    unknown = set(dataset_settings) - {d.name for d in datasets}
    if unknown:
        log.warning("config 'datasets' names datasets that are not being trained: %s", ", ".join(sorted(unknown)))
    tasks: dict[str, TaskSpec] = {}
    per_dataset: dict[str, DatasetTasks] = {}
    for ds in datasets:
        settings = dataset_settings.get(ds.name, {})
        mapping = settings.get("tasks", {}) or {}
        bad = set(mapping) - set(ds.labels)
        if bad:
            raise DatasetError(f"dataset {ds.name}: config datasets.{ds.name}.tasks names labels that are not in "
                               f"dataset.json: {', '.join(sorted(bad))}")
        group = settings.get("group") or ds.name
        names: list[str] = []
        value_to_slot: dict[int, int] = {}
        for label, value in sorted(ds.labels.items(), key=lambda kv: kv[1]):
            if value == 0:
                continue
            if label in mapping:
                target = mapping[label]
                if target is None:
                    value_to_slot[value] = 0
                    continue
                if not isinstance(target, str) or not target.strip():
                    raise DatasetError(f"dataset {ds.name}: datasets.{ds.name}.tasks[{label!r}] must be a task name "
                                       f"or null")
                task_name, structure = target.strip(), target.strip()
            else:
                task_name, structure = f"{ds.name}_{label}", label
                check_name(task_name, f"dataset {ds.name}: the task name of label {label} (rename it with the config's "
                                      f"datasets.{ds.name}.tasks)", DatasetError)
            if task_name not in names:
                names.append(task_name)
            value_to_slot[value] = names.index(task_name) + 1
            spec = tasks.get(task_name)
            if spec is None:
                shown = ds.label_info.get(label, {})
                tasks[task_name] = TaskSpec(task_name, group, structure, [ds.model_modality], [ds.name],
                                            shown.get("color"), shown.get("terminology"), shown.get("display_name"))
            else:
                if ds.model_modality not in spec.modalities:
                    spec.modalities.append(ds.model_modality)
                if ds.name not in spec.datasets:
                    spec.datasets.append(ds.name)
        if not names:
            raise DatasetError(f"dataset {ds.name}: no task left to train (every label is background or dropped)")
        if len(names) > MAX_TASKS_PER_DATASET:
            raise DatasetError(f"dataset {ds.name}: {len(names)} tasks; at most {MAX_TASKS_PER_DATASET} per dataset")
        per_dataset[ds.name] = DatasetTasks(ds.name, names, value_to_slot)
    return TaskPlan(list(tasks.values()), per_dataset)
