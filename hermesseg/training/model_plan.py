"""The model plan of a run: which network it starts from, its task and modality tables, its preprocessing.

``task_entry`` is the one place a planned task (``TaskSpec``) becomes a manifest ``TaskEntry``; a fresh model, a model
grown with ``train --init`` and ``add-task`` all build their new entries with it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

from ..colors import color_for
from ..manifest import Manifest, ModalityEntry, TaskEntry
from ..modalities import default_intensity, modality_entry
from ..model import HermesModel
from ..network import HermesR, HermesRConfig
from ..nnunet import TaskPlan, TaskSpec
from ..preprocessing import IntensityNorm, Preprocessing
from ..terminology import terminology_for
from .config import TrainingConfigError

log = logging.getLogger(__name__)


@dataclass
class ModelPlan:
    network: HermesR
    modalities: list[ModalityEntry]
    preprocessing: Preprocessing
    task_ids: dict[str, int]  # task name -> model row
    tasks: list[TaskEntry]  # the manifest's task table (inherited + new)
    new_tasks: list[str]
    parent: Manifest | None


def task_entry(spec: TaskSpec, row: int) -> TaskEntry:
    """The manifest entry of a planned task: colour and terminology from the dataset's ``label_info`` when given,
    else derived from the structure name."""
    shown = spec.display_name or spec.structure.replace("_", " ")
    return TaskEntry(id=row, name=spec.name, group=spec.group, modalities=list(spec.modalities),
                     color=tuple(spec.color) if spec.color else color_for(spec.structure),
                     terminology=spec.terminology if spec.terminology else terminology_for(spec.structure),
                     description=f"{shown} as annotated in {', '.join(spec.datasets)}")


def plan_new_model(cfg: dict, plan: TaskPlan) -> ModelPlan:
    """A freshly initialised network (seeded) with one task row per planned task."""
    names = list(cfg["modalities"])
    arch = HermesRConfig.from_dict({**cfg["architecture"], "num_task_rows": len(plan.tasks),
                                    "num_modalities": len(names)})
    torch.manual_seed(int(cfg["seed"]))
    network = HermesR(arch)
    intensity = {m: IntensityNorm.from_dict(cfg["intensity"].get(m) or default_intensity(m)) for m in names}
    try:
        pre = Preprocessing(spacing=cfg["spacing"], intensity=intensity, patch_size=cfg["patch_size"])
    except ValueError as e:
        raise TrainingConfigError(f"preprocessing: {e}") from None
    tasks = [task_entry(spec, i) for i, spec in enumerate(plan.tasks)]
    return ModelPlan(network, [modality_entry(i, n) for i, n in enumerate(names)], pre,
                     {t.name: t.id for t in tasks}, tasks, [t.name for t in tasks], None)


def plan_from_parent(cfg: dict, user_cfg: dict, plan: TaskPlan, parent: HermesModel) -> ModelPlan:
    """``train --init``: the parent's network and tables; tasks it lacks get appended rows (the mean of the existing
    rows, or a copy of ``task_init[name]``'s rows); every weight trains afterwards."""
    manifest = parent.manifest
    network = parent.network.cpu().train()
    if not network.config.mask_padding:
        log.warning("the parent model has mask_padding off (an imported official model): padded query slots are "
                    "visible to attention, so outputs depend on the batch composition (spec 1.7)")
    for key in ("architecture", "spacing", "intensity", "modalities", "patch_size"):
        if key in user_cfg:
            log.warning("config %r is ignored with --init: the parent model's value is kept", key)
    pre = Preprocessing.from_dict(manifest.preprocessing)
    tasks = [copy.deepcopy(t) for t in manifest.tasks]
    by_name = {t.name: t for t in tasks}
    ids = {t.name: t.id for t in tasks}
    new = [spec for spec in plan.tasks if spec.name not in by_name]
    task_init = cfg["task_init"]
    for name, source in task_init.items():
        if name not in {s.name for s in new}:
            raise TrainingConfigError(f"task_init[{name!r}]: not a new task of this run")
        if source not in ids:
            raise TrainingConfigError(f"task_init[{name!r}]: the parent model has no task {source!r}")
    mean_init = [s for s in new if s.name not in task_init]
    copied = [s for s in new if s.name in task_init]
    new_ids: list[int] = []
    if mean_init:
        new_ids += network.append_task_rows(len(mean_init))
    if copied:
        new_ids += network.append_task_rows(len(copied), init_from=[ids[task_init[s.name]] for s in copied])
    for spec, row in zip(mean_init + copied, new_ids):
        ids[spec.name] = row
        entry = task_entry(spec, row)
        tasks.append(entry)
        by_name[spec.name] = entry
    for spec in plan.tasks:
        entry = by_name[spec.name]
        for m in spec.modalities:
            if m not in entry.modalities:
                entry.modalities.append(m)
    return ModelPlan(network, list(manifest.modalities), pre, ids, tasks, [s.name for s in new], manifest)
