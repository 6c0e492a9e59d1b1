"""What every way of teaching a model new tasks checks before any work (add-task, finetune; spec 4).

The base model, the output path, the run's limits, the datasets and every case (grids, label values, a label file
per image), the labels asked for (present in dataset.json, not empty in every case), the new task and group names
(no collision with the base model) and the modality (known, or new). Each refusal is one ``HermesError`` line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..add_task_options import DEFAULT_SPLIT_GROUP_PATTERN, DEFAULT_TIME_LIMIT_S
from ..errors import DatasetError, HermesError, OutputError, QueryError
from ..manifest import DEFAULT_THRESHOLD, Manifest
from ..model import HermesModel
from ..names import check_name
from ..nnunet import Dataset, TaskPlan, check_case, dataset_modality_string, load_datasets, plan_tasks, read_dataset
from .run_setup import check_output, load_parent


@dataclass
class NewTaskRequest:
    """The request fields add-task and finetune share (their own requests add the method's options)."""

    base: str
    data: list[str]
    output: str
    labels: list[str] | None = None
    group: str | None = None
    modality: str | None = None
    steps: int | None = None  # per phase; None: the phases share DEFAULT_TOTAL_STEPS (add_task_options)
    time_limit: float | None = DEFAULT_TIME_LIMIT_S  # seconds, the whole command; None: no limit
    seed: int = 0
    refit: bool = True
    device: str = "auto"
    cache_dir: str | None = None
    split_group_pattern: str = DEFAULT_SPLIT_GROUP_PATTERN


@dataclass
class NewTaskData:
    """A checked request: the base model, the datasets and the planned new tasks."""

    base: HermesModel
    datasets: list[Dataset]
    plan: TaskPlan
    modality: str  # the model modality the new tasks are learned for
    new_modality: bool
    group: str


@dataclass
class NewTaskResult:
    """What add-task and finetune both return (their results add the method's figures)."""

    output: Path
    manifest: Manifest
    new_tasks: list[str]
    held_out_dice: dict[str, float | None] | None  # None: fewer than 3 case groups, no held-out figure
    steps: int
    wall_s: float

    @property
    def largest_piece_only(self) -> list[str]:
        """The new tasks that keep only their largest piece (chosen on the held-out cases)."""
        new = set(self.new_tasks)
        return [t.name for t in self.manifest.tasks if t.name in new and t.keep_largest_component]

    @property
    def thresholds(self) -> dict[str, float]:
        """The new tasks drawn at another threshold than 0.5 (chosen on the held-out cases), and that threshold."""
        new = set(self.new_tasks)
        return {t.name: t.threshold for t in self.manifest.tasks if t.name in new and t.threshold != DEFAULT_THRESHOLD}


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_run_limits(request: NewTaskRequest) -> None:
    if request.device not in ("auto", "cpu", "cuda"):
        raise HermesError(f"--device {request.device!r} is unknown; valid: auto, cpu, cuda")
    if request.steps is not None and request.steps < 1:
        raise HermesError(f"--steps must be at least 1, got {request.steps}")
    if request.time_limit is not None and not (request.time_limit > 0 and math.isfinite(request.time_limit)):
        raise HermesError(f"--time-limit must be a positive number of seconds, got {request.time_limit}")


def check_new_task_data(request: NewTaskRequest) -> NewTaskData:
    """Every refusal about the base model, the output and the new tasks' data, before any preprocessing."""
    base_path, output = Path(request.base), Path(request.output)
    if same_file(base_path, output):
        raise OutputError(f"-o {output} is the base model; the parent file is never modified, write a new file")
    check_output(output)
    base = load_parent(request.base, "BASE")
    manifest = base.manifest
    if not request.data:
        raise DatasetError("no dataset given (use --data DIR, one or more nnU-Net v2 dataset folders)")

    known = [m.name for m in manifest.modalities]
    raw_modalities = [request.modality or dataset_modality_string(read_dataset(p)[0]) for p in request.data]
    modality = raw_modalities[0]
    if any(m.lower() != modality.lower() for m in raw_modalities):
        raise DatasetError(f"the datasets have different modalities ({', '.join(sorted(set(raw_modalities)))}); "
                           f"add them one modality at a time, or name one with --modality")
    check_name(modality, "--modality" if request.modality else "the datasets' modality", DatasetError)
    existing = {m.lower(): m for m in known}
    new_modality = modality.lower() not in existing
    modality = existing.get(modality.lower(), modality)
    datasets = load_datasets(request.data, known + ([modality] if new_modality else []),
                             {raw: modality for raw in raw_modalities}, check_cases=False)
    present = labels_present(datasets)

    group = check_name(request.group or datasets[0].name, "--group", QueryError)
    if group in manifest.groups:
        raise QueryError(f"group {group!r} already exists in the base model (its tasks would be queried together "
                         f"with the new ones and change); choose another name with --group")
    all_labels = {label for d in datasets for label, v in d.labels.items() if v != 0}
    wanted = list(dict.fromkeys(request.labels)) if request.labels else sorted(all_labels, key=str)
    unknown = [label for label in wanted if label not in all_labels]
    if unknown:
        raise DatasetError(f"--labels {', '.join(unknown)}: not in dataset.json 'labels' "
                           f"(non-background labels: {', '.join(sorted(all_labels))})")
    empty = [label for label in wanted if label not in present]
    if empty:
        raise DatasetError(f"label {', '.join(empty)} is empty in every case of "
                           f"{', '.join(d.name for d in datasets)}: nothing to learn from")
    settings = {d.name: {"group": group, "tasks": {label: (f"{group}_{label}" if label in wanted else None)
                                                   for label, v in d.labels.items() if v != 0}}
                for d in datasets}
    plan = plan_tasks(datasets, settings)
    for spec in plan.tasks:  # colours and terminology follow the label, not the "<group>_" prefix
        spec.structure = spec.name[len(group) + 1:]
    taken = {t.name for t in manifest.tasks}
    clash = [t.name for t in plan.tasks if t.name in taken]
    if clash:
        raise QueryError(f"new task {clash[0]!r} collides with a task of the base model; choose another --group")
    return NewTaskData(base, datasets, plan, modality, new_modality, group)


def labels_present(datasets: list[Dataset]) -> set[str]:
    """Check every case (grids, values); the names of the labels with at least one voxel in some case."""
    present: set[str] = set()
    for ds in datasets:
        names = {v: k for k, v in ds.labels.items()}
        for case in ds.cases:
            present.update(names[int(v)] for v in check_case(ds, case) if int(v) != 0)
    return present
