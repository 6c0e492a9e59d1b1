"""Task packs: a learned structure shared without a single image (issue 11).

A pack is a small safetensors file holding what a group of tasks owns in a model, under the model's own tensor names
with only the tasks' rows: ``fusion.<i>.task_prior`` (T, C_i), the blocks of the modalities the tasks are learned for
``fusion.<i>.modality_prior`` (M, L, C_i) and their modality-head rows ``modality_head.classifier.fc2.*`` (M, ...),
and the groups' adapters whole (``adapters.<group>.*``, add-task --mode adapter).
Its metadata (``hermes_task_pack``, JSON) holds the tasks' manifest entries, each modality's entry, intensity
normalisation and block sha256, each adapter's configuration (its ``task_ids`` are positions in the pack's task
list), the source model's lineage records for those tasks, the compatibility fingerprint of the base
(:mod:`hermesseg.compatibility`) and a sha256 of the pack's tensors.

Importing appends the rows (and the blocks of modalities the base lacks) to a base with the same compatibility
fingerprint. A task is always queried inside its group (:mod:`hermesseg.inference.query_plan`), so packs hold whole
groups: same shared weights, same rows, same query, hence bit-identical logits.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_path, check_output_file
from .compatibility import (ADAPTER_PREFIX, MODALITY_HEAD_ROWS, MODALITY_TABLE_SUFFIX, TASK_TABLE_SUFFIX,
                            compatibility_fingerprint, modality_block_sha256)
from .errors import ModelFileError, TaskPackError
from .manifest import LineageRecord, Manifest, ModalityEntry, TaskEntry, architecture_dict
from .model_file import expected_shapes, read_model_state, save_model, weights_fingerprint
from .names import shown
from .network import HermesR, HermesRConfig
from .network.config import AdapterConfig
from .preprocessing import IntensityNorm

PACK_KEY = "hermes_task_pack"
PACK_FORMAT = "hermes-task-pack"
PACK_VERSION = 1
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass
class PackModality:
    """A modality the pack's tasks are learned for: its entry, normalisation and the sha256 of its prior tokens."""

    entry: ModalityEntry
    intensity: dict
    block_sha256: str


@dataclass
class TaskPack:
    base_fingerprint: str
    source: dict  # name, version, weights_sha256 of the model the pack was exported from
    tasks: list[TaskEntry]  # ids as in the source model, in its manifest order
    modalities: list[PackModality]  # in the order of the pack's modality tensors
    lineage: list[LineageRecord]
    tensors: dict[str, torch.Tensor]
    adapters: list[AdapterConfig] = field(default_factory=list)  # task_ids: positions in ``tasks``

    def metadata(self) -> dict:
        return {"format": PACK_FORMAT, "format_version": PACK_VERSION, "base_fingerprint": self.base_fingerprint,
                "source": self.source, "tasks": [asdict(t) for t in self.tasks],
                "modalities": [{"entry": asdict(m.entry), "intensity": m.intensity, "block_sha256": m.block_sha256}
                               for m in self.modalities],
                "lineage": [asdict(r) for r in self.lineage], "tensors_sha256": weights_fingerprint(self.tensors),
                "adapters": [{**asdict(a), "task_ids": list(a.task_ids)} for a in self.adapters]}


def _is_pack_tensor(name: str) -> bool:
    """A per-task or per-modality table (the pack holds some of its rows)."""
    return name.endswith((TASK_TABLE_SUFFIX, MODALITY_TABLE_SUFFIX)) or name in MODALITY_HEAD_ROWS


def _adapter_group(name: str) -> str | None:
    """``adapters.<group>.…`` -> group; None for any other tensor name."""
    return name.split(".")[1] if name.startswith(ADAPTER_PREFIX) and name.count(".") >= 2 else None


# ---------------------------------------------------------------------------------------------------------- export
def select_groups(manifest: Manifest, names: list[str]) -> list[TaskEntry]:
    """Task or group names -> every task of the groups they name, in manifest order.

    A task named alone must be its group's only task: its logits depend on the group it is queried with (spec 1.7).
    """
    by_name = {t.name.lower(): t for t in manifest.tasks}
    groups = {g.lower(): g for g in manifest.groups}
    chosen: set[str] = set()
    for raw in names:
        key = raw.strip().lower()
        if key in groups:
            chosen.add(groups[key])
        elif key in by_name:
            task = by_name[key]
            mates = [t.name for t in manifest.tasks if t.group == task.group and t is not task]
            if mates:
                raise TaskPackError(f"task {task.name!r} is always queried with the rest of its group "
                                    f"{task.group!r} ({', '.join(mates)}), whose tokens shape its logits; "
                                    f"export the group {task.group!r}")
            chosen.add(task.group)
        else:
            raise TaskPackError(f"unknown task or group {raw!r}; see `hermesseg info MODEL` for the task list")
    return [t for t in manifest.tasks if t.group in chosen]


def build_pack(manifest: Manifest, state: dict[str, torch.Tensor], tasks: list[TaskEntry]) -> TaskPack:
    """Cut ``tasks``' rows, their modalities' blocks and their groups' adapters out of a model's tensors."""
    position = {t.id: k for k, t in enumerate(tasks)}
    adapters = [replace(a, task_ids=tuple(position[i] for i in a.task_ids)) for a in manifest.config.adapters
                if a.group in {t.group for t in tasks}]
    task_ids = torch.tensor([t.id for t in tasks], dtype=torch.long)
    modality_entries = [m for m in manifest.modalities if any(m.name in t.modalities for t in tasks)]
    modality_ids = torch.tensor([m.id for m in modality_entries], dtype=torch.long)
    tensors = {}
    for name, tensor in state.items():
        if name.endswith(TASK_TABLE_SUFFIX):
            tensors[name] = tensor[task_ids].contiguous()
        elif name.endswith(MODALITY_TABLE_SUFFIX) or name in MODALITY_HEAD_ROWS:
            tensors[name] = tensor[modality_ids].contiguous()
        elif _adapter_group(name) in {a.group for a in adapters}:
            tensors[name] = tensor.contiguous()
    names = {t.name for t in tasks}
    return TaskPack(
        base_fingerprint=compatibility_fingerprint(state),
        source={"name": manifest.name, "version": manifest.version, "weights_sha256": manifest.weights_sha256},
        tasks=[replace(t) for t in tasks],
        modalities=[PackModality(m, manifest.preprocessing["intensity"][m.name], modality_block_sha256(state, m.id))
                    for m in modality_entries],
        lineage=[r for r in manifest.lineage if names & set(r.tasks)],
        tensors=tensors, adapters=adapters)


def write_pack(path: str | os.PathLike, pack: TaskPack) -> None:
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(pack.tensors, str(tmp), metadata={PACK_KEY: json.dumps(pack.metadata())})


def export_tasks(model_path: str | os.PathLike, names: list[str], output: str | os.PathLike) -> TaskPack:
    """`hermesseg export-task`: write the pack of the groups ``names`` select (nothing is written on error)."""
    check_output_file(output, model_path)
    manifest, state = read_model_state(model_path)
    pack = build_pack(manifest, state, select_groups(manifest, names))
    write_pack(output, pack)
    return pack


# ---------------------------------------------------------------------------------------------------------- reading
def _field(d: dict, key: str, kind: type, where: str):
    if key not in d:
        raise TaskPackError(f"{where} is missing {key!r}")
    if not isinstance(d[key], kind) or (kind is int and isinstance(d[key], bool)):
        raise TaskPackError(f"{where}: {key!r} must be a {kind.__name__}, not {type(d[key]).__name__}")
    return d[key]


def _entry(cls, raw, where: str, check):
    """Build a manifest dataclass from untrusted JSON: a dict, the right field types, nothing unknown."""
    if not isinstance(raw, dict):
        raise TaskPackError(f"{where} is not a JSON object")
    for key, kind in check.items():
        _field(raw, key, kind, where)
    try:
        return cls(**raw)
    except TypeError as e:
        raise TaskPackError(f"{where} is malformed: {e}") from None


def _strings(values: list, where: str) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise TaskPackError(f"{where} must be a list of strings")
    return values


def _task(raw, i: int) -> TaskEntry:
    task = _entry(TaskEntry, raw, f"pack task {i}", {"id": int, "name": str, "group": str, "modalities": list})
    _strings(task.modalities, f"pack task {i}: 'modalities'")
    if not isinstance(task.color, (list, tuple)):
        raise TaskPackError(f"pack task {i}: 'color' must be a list of 3 integers")
    return replace(task, color=tuple(task.color))


def _lineage(raw, i: int) -> LineageRecord:
    where = f"pack lineage record {i}"
    record = _entry(LineageRecord, raw, where, {"operation": str, "datasets": list, "tasks": list})
    _strings(record.datasets, f"{where}: 'datasets'")
    _strings(record.tasks, f"{where}: 'tasks'")
    return record


def _modality(raw, i: int) -> PackModality:
    where = f"pack modality {i}"
    if not isinstance(raw, dict):
        raise TaskPackError(f"{where} is not a JSON object")
    entry = _entry(ModalityEntry, _field(raw, "entry", dict, where), where, {"id": int, "name": str})
    intensity = _field(raw, "intensity", dict, where)
    try:
        IntensityNorm.from_dict(intensity)
    except (TypeError, ValueError) as e:
        raise TaskPackError(f"{where} has an invalid intensity normalisation: {e}") from None
    return PackModality(entry, intensity, _field(raw, "block_sha256", str, where))


def _adapter(raw, i: int, tasks: list[TaskEntry]) -> AdapterConfig:
    """An adapter entry of a pack: a valid configuration whose positions are tasks of its own group."""
    try:
        adapter = AdapterConfig.from_dict(raw)
    except ValueError as e:
        raise TaskPackError(f"pack adapter {i}: {e}") from None
    bad = [k for k in adapter.task_ids if k >= len(tasks) or tasks[k].group != adapter.group]
    if bad:
        raise TaskPackError(f"pack adapter {i} ({adapter.group}): task position {bad[0]} is not a task of its group")
    return adapter


def _parse_metadata(meta: dict, path: Path) -> dict:
    if PACK_KEY not in meta:
        what = "a model file" if "hermes_manifest" in meta else "a safetensors file"
        raise TaskPackError(f"{path} is {what}, not a task pack (no {PACK_KEY!r} metadata)")
    try:
        d = json.loads(meta[PACK_KEY])
    except json.JSONDecodeError as e:
        raise TaskPackError(f"{path}: the pack metadata is not valid JSON ({e})") from None
    if not isinstance(d, dict) or d.get("format") != PACK_FORMAT:
        raise TaskPackError(f"{path}: the pack metadata is not a {PACK_FORMAT!r} object")
    if d.get("format_version") != PACK_VERSION:
        raise TaskPackError(f"{path}: unsupported task pack version {d.get('format_version')!r}; "
                            f"this hermesseg reads version {PACK_VERSION}")
    return d


def read_pack(path: str | os.PathLike) -> TaskPack:
    """Read and validate a pack: metadata types, tensor names and shapes against its own tables, the tensors'
    sha256, finite values, every name and text (``hermesseg.names``), each modality block against its sha256.
    Every problem is one TaskPackError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise TaskPackError(f"task pack not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            d = _parse_metadata(f.metadata() or {}, path)
            tasks = [_task(t, i) for i, t in enumerate(_field(d, "tasks", list, "pack metadata"))]
            modalities = [_modality(m, i) for i, m in enumerate(_field(d, "modalities", list, "pack metadata"))]
            lineage = [_lineage(r, i) for i, r in enumerate(_field(d, "lineage", list, "pack metadata"))]
            adapters = [_adapter(a, i, tasks) for i, a in enumerate(_field({"adapters": [], **d}, "adapters", list,
                                                                            "pack metadata"))]
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            _check_pack_layout(shapes, len(tasks), len(modalities), {a.group for a in adapters}, path)
            tensors = {k: f.get_tensor(k) for k in shapes}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise TaskPackError(f"{path} is not a readable task pack (safetensors: {e}); is it truncated?") from None
    if weights_fingerprint(tensors) != _field(d, "tensors_sha256", str, "pack metadata"):
        raise TaskPackError(f"{path}: the tensors do not match the pack's sha256 (corrupted file)")
    for name, t in tensors.items():
        if t.dtype != torch.float32 or not bool(torch.isfinite(t).all()):
            raise TaskPackError(f"{path}: tensor {name!r} is not finite float32")
    pack = TaskPack(_field(d, "base_fingerprint", str, "pack metadata"), _field(d, "source", dict, "pack metadata"),
                    tasks, modalities, lineage, tensors, adapters)
    _check_strings(pack, path)
    _check_modalities(tasks, modalities, tensors, path)
    return pack


def _check_strings(pack: TaskPack, path: Path) -> None:
    """Digests are sha256 hex; every name and text follows the one rule (``hermesseg.names``, as the manifest
    applies it), before any of them reaches a message, a manifest or a file name."""
    digests = {"base_fingerprint": pack.base_fingerprint, "source weights_sha256": pack.source.get("weights_sha256"),
               **{f"modality {i} block_sha256": m.block_sha256 for i, m in enumerate(pack.modalities)}}
    for field, value in digests.items():
        if not (isinstance(value, str) and _SHA256_HEX.fullmatch(value)):
            raise TaskPackError(f"{path}: {field} {shown(value)} is not a sha256 hex digest")
    entries = Manifest(name=pack.source.get("name"), version=pack.source.get("version"), architecture={},
                       tasks=pack.tasks, modalities=[m.entry for m in pack.modalities], preprocessing={},
                       lineage=pack.lineage)
    try:
        entries._validate_strings()
    except ModelFileError as e:
        raise TaskPackError(f"{path}: {e}") from None


def _check_modalities(tasks: list[TaskEntry], modalities: list[PackModality], tensors: dict, path: Path) -> None:
    """The pack holds a task, one block per modality its tasks name, each matching its recorded sha256."""
    if not tasks:
        raise TaskPackError(f"{path}: the pack holds no task")
    names = [m.entry.name for m in modalities]
    if len({n.lower() for n in names}) != len(names):
        raise TaskPackError(f"{path}: the pack names a modality twice ({', '.join(names)})")
    for task in tasks:
        missing = [m for m in task.modalities if m not in names]
        if missing or not task.modalities:
            raise TaskPackError(f"{path}: task {task.name!r} names modalities {missing or '(none)'} whose prior "
                                f"tokens are not in the pack")
    for i, m in enumerate(modalities):
        if modality_block_sha256(tensors, i) != m.block_sha256:
            raise TaskPackError(f"{path}: the prior tokens of modality {m.entry.name!r} do not match their sha256")


def _check_pack_layout(shapes: dict[str, tuple], num_tasks: int, num_modalities: int, adapter_groups: set[str],
                       path: Path) -> None:
    """Pack tensors are model tensor names whose first dimension counts the pack's tasks or modalities, or tensors
    of an adapter the metadata declares (their shapes are checked against the base on import)."""
    for name, shape in shapes.items():
        if _adapter_group(name) in adapter_groups:
            continue
        if not _is_pack_tensor(name):
            raise TaskPackError(f"{path}: unexpected tensor {shown(name)} in the pack")
        rows = num_tasks if name.endswith(TASK_TABLE_SUFFIX) else num_modalities
        if not shape or shape[0] != rows:
            raise TaskPackError(f"{path}: tensor {name!r} has shape {shape}, expected {rows} rows")


# ---------------------------------------------------------------------------------------------------------- import
def _check_fits(pack: TaskPack, base: HermesRConfig, merged: HermesRConfig, path: Path) -> None:
    """Every tensor of the base's tables must be in the pack with the base's row shape, and every tensor of the
    pack's adapters with the exact shape the merged model (``merged``) gives it."""
    expected, grown = expected_shapes(base), expected_shapes(merged)
    groups = {a.group for a in pack.adapters}
    wanted = {k for k in expected if _is_pack_tensor(k)} | {k for k in grown if _adapter_group(k) in groups}
    missing = sorted(wanted - set(pack.tensors))
    if missing:
        raise TaskPackError(f"{path}: tensor {missing[0]!r} is missing from the pack")
    for name, tensor in pack.tensors.items():
        if _adapter_group(name) is not None:
            fits, want = tuple(tensor.shape) == grown.get(name), grown.get(name, "(no such tensor)")
        else:
            want = expected.get(name, "(no such tensor)")
            fits = name in expected and tuple(tensor.shape[1:]) == expected[name][1:]
        if not fits:
            raise TaskPackError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, which does not fit the "
                                f"base model's {want}")


def _check_names(pack: TaskPack, base: Manifest, path: Path) -> None:
    task_names = {t.name.lower() for t in base.tasks}
    groups = {g.lower() for g in base.groups}
    for task in pack.tasks:
        if task.name.lower() in task_names:
            raise TaskPackError(f"{path}: task {task.name!r} already exists in the base model")
    for group in dict.fromkeys(t.group for t in pack.tasks):
        if group.lower() in groups:
            raise TaskPackError(f"{path}: group {group!r} already exists in the base model; its tasks would be "
                                f"queried together with the pack's (spec 1.7)")


def _modality_plan(pack: TaskPack, base: Manifest, state: dict, path: Path) -> tuple[dict[str, str], list[int]]:
    """Map the pack's modality names to the base's; returns that map and the pack blocks to append.

    A modality the base knows must have the very same prior tokens and normalisation, or the tasks' logits differ.
    """
    names: dict[str, str] = {}
    append: list[int] = []
    for i, pm in enumerate(pack.modalities):
        try:
            known = base.modality(pm.entry.name)
        except KeyError:
            names[pm.entry.name] = pm.entry.name
            append.append(i)
            continue
        if modality_block_sha256(state, known.id) != pm.block_sha256:
            raise TaskPackError(f"{path}: the base model's modality {known.name!r} has other prior tokens than the "
                                f"one the pack's tasks were learned with; import it into a model without "
                                f"{known.name!r} or with the same block")
        if IntensityNorm.from_dict(base.preprocessing["intensity"][known.name]) != IntensityNorm.from_dict(
                pm.intensity):
            raise TaskPackError(f"{path}: the base model normalises {known.name!r} differently from the pack")
        names[pm.entry.name] = known.name
    return names, append


def merge_pack(base: Manifest, state: dict[str, torch.Tensor], pack: TaskPack, pack_name: str,
               path: Path) -> tuple[Manifest, dict[str, torch.Tensor]]:
    """The base with the pack's groups appended: new manifest and tensors (the base's own are unchanged)."""
    if pack.base_fingerprint != (have := compatibility_fingerprint(state)):
        raise TaskPackError(f"{path} was made for the base model with compatibility fingerprint "
                            f"{pack.base_fingerprint}, but this base model has {have}")
    _check_names(pack, base, path)
    modality_names, append = _modality_plan(pack, base, state, path)
    first_row, first_modality = base.config.num_task_rows, base.config.num_modalities
    adapters = [replace(a, task_ids=tuple(first_row + k for k in a.task_ids)) for a in pack.adapters]
    try:
        config = base.config.with_changes(num_task_rows=first_row + len(pack.tasks),
                                          num_modalities=first_modality + len(append),
                                          adapters=[*base.config.adapters, *adapters])
    except ValueError as e:
        raise TaskPackError(f"{path}: the pack's adapters do not fit the base model: {e}") from None
    _check_fits(pack, base.config, config, path)
    rows = torch.arange(len(pack.tasks))
    blocks = torch.tensor(append, dtype=torch.long)
    merged = dict(state)
    for name, tensor in pack.tensors.items():
        if _adapter_group(name) is not None:
            merged[name] = tensor
            continue
        new = tensor[rows] if name.endswith(TASK_TABLE_SUFFIX) else tensor[blocks]
        merged[name] = torch.cat([state[name], new.to(state[name].dtype)], dim=0)
    new_modalities = [replace(pack.modalities[i].entry, id=first_modality + j) for j, i in enumerate(append)]
    tasks = [replace(t, id=first_row + k, modalities=[modality_names.get(m, m) for m in t.modalities])
             for k, t in enumerate(pack.tasks)]
    intensity = {**base.preprocessing["intensity"], **{m.name: pack.modalities[i].intensity
                                                         for m, i in zip(new_modalities, append)}}
    record = LineageRecord(operation="import-task", parent=base.weights_sha256, tasks=[t.name for t in tasks],
                           datasets=sorted({d for r in pack.lineage for d in r.datasets}),
                           notes=f"from task pack {pack_name} (exported from {pack.source.get('name')!r}, weights "
                                 f"{str(pack.source.get('weights_sha256'))[:12]})")
    manifest = replace(base, architecture=architecture_dict(config), tasks=base.tasks + tasks,
                       modalities=base.modalities + new_modalities,
                       preprocessing={**base.preprocessing, "intensity": intensity},
                       lineage=base.lineage + pack.lineage + [record], weights_sha256=None)
    try:
        manifest.validate()
    except ModelFileError as e:
        raise TaskPackError(f"{path}: {e}") from None
    return manifest, merged


def import_pack(base_path: str | os.PathLike, pack_path: str | os.PathLike,
                output: str | os.PathLike) -> Manifest:
    """`hermesseg import-task`: write BASE + the pack's groups to ``output`` (nothing is written on error)."""
    check_output_file(output, base_path, pack_path)
    pack = read_pack(pack_path)
    base, state = read_model_state(base_path)
    manifest, merged = merge_pack(base, state, pack, Path(pack_path).name, Path(pack_path))
    network = HermesR(manifest.config)
    network.load_state_dict(merged, strict=True)
    return save_model(output, network, manifest)
