"""Datasets whose labels are tasks the parent model already has: finetune's replay data (``--replay DIR``) and the
cases its forgetting is measured on (spec 4, "Transfer": replay samples from the old datasets).

A label ``L`` of dataset ``D`` is the parent's task ``D_L`` (the name every ``train`` run gives it); the dataset's
query is those tasks in label order, as the parent's own training queried that dataset (for one of the parent's
datasets: its whole group, as at inference). Labels without such a task count as background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import DatasetError
from ..manifest import Manifest
from ..nnunet import Dataset, TaskPlan, dataset_modality_string, load_datasets, plan_tasks, read_dataset
from .new_task_request import labels_present


@dataclass
class ParentTaskData:
    datasets: list[Dataset]
    plan: TaskPlan  # per dataset: label value -> slot of its parent task
    queries: dict[str, list[int]]  # dataset -> the parent's task ids, in slot order
    modality_ids: dict[str, int]  # dataset -> the parent's modality id

    @property
    def task_names(self) -> dict[str, list[str]]:
        return {d.name: self.plan.per_dataset[d.name].task_names for d in self.datasets}


def parent_tasks_of(datasets: Sequence[Dataset], manifest: Manifest) -> ParentTaskData:
    """The datasets (of those given) with at least one label that is a parent task, and their queries."""
    ids = {t.name: t.id for t in manifest.tasks}
    known = {m.name for m in manifest.modalities}
    chosen, settings = [], {}
    for ds in datasets:
        tasks = {label: (f"{ds.name}_{label}" if f"{ds.name}_{label}" in ids else None)
                 for label, value in ds.labels.items() if value != 0}
        if ds.model_modality in known and any(tasks.values()):
            chosen.append(ds)
            settings[ds.name] = {"tasks": tasks}
    plan = plan_tasks(chosen, settings) if chosen else TaskPlan([], {})
    return ParentTaskData(chosen, plan,
                          {d.name: [ids[n] for n in plan.per_dataset[d.name].task_names] for d in chosen},
                          {d.name: manifest.modality(d.model_modality).id for d in chosen})


def check_replay(paths: Sequence[str], manifest: Manifest, new_datasets: Sequence[Dataset]) -> ParentTaskData:
    """Every ``--replay`` folder: an nnU-Net dataset in a modality the parent knows, not one of ``--data``, whose
    labels include parent tasks that are not empty in every case. Refusals name the folder and the reason."""
    if not paths:
        return ParentTaskData([], TaskPlan([], {}), {}, {})
    known = [m.name for m in manifest.modalities]
    for path in paths:
        raw = dataset_modality_string(read_dataset(path)[0])
        if raw.lower() not in {m.lower() for m in known}:
            raise DatasetError(f"--replay {path}: modality {raw!r} is not one the base model knows "
                               f"({', '.join(known)}); replay data must be of the parent's own tasks")
    datasets = load_datasets(paths, known, {}, check_cases=False)
    for ds in datasets:
        if ds.name in {d.name for d in new_datasets}:
            raise DatasetError(f"--replay {ds.root}: dataset {ds.name} is also given with --data")
    present = labels_present(datasets)  # checks every case: grids, values, a label file per image
    found = parent_tasks_of(datasets, manifest)
    for ds in datasets:
        if ds.name not in found.queries:
            example = next(label for label, v in ds.labels.items() if v)
            raise DatasetError(f"--replay {ds.root}: none of the labels of dataset {ds.name} is a task of the base "
                               f"model (a label L of dataset D is its task D_L; {ds.name}_{example} is not one)")
    tasks = {t.name for t in manifest.tasks}
    if not present & {label for d in datasets for label in d.labels if f"{d.name}_{label}" in tasks}:
        raise DatasetError("--replay: the labels that are base-model tasks are empty in every case")
    return found
