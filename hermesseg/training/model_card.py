"""The model card and lineage a training run writes into the model file's manifest."""

from __future__ import annotations

import copy
from typing import Sequence

from .. import __version__
from ..manifest import LineageRecord, Manifest, architecture_dict
from ..nnunet import Dataset, TaskPlan
from .model_plan import ModelPlan
from .run_setup import RunSetup


def data_licences(datasets: Sequence[Dataset]) -> dict:
    """``shippable`` (every dataset marked shippable), ``licences``, and a note naming the datasets that are not."""
    card = {"shippable": all(d.shippable is True for d in datasets),
            "licences": sorted({d.license for d in datasets if d.license})}
    if not card["shippable"]:
        card["shippable_note"] = ("trained on data that is not marked shippable: "
                                  + ", ".join(d.name for d in datasets if d.shippable is not True))
    return card


def training_manifest(setup: RunSetup, mp: ModelPlan, datasets: list[Dataset], splits: dict, plan: TaskPlan,
                      iteration: int, world_size: int, device: str, selected: str, val_dice: float | None,
                      last: dict) -> Manifest:
    """The manifest of a ``train`` run: card (training facts, datasets, licences) and lineage ("train", or
    "fine-tune" below the parent's lineage with ``--init``)."""
    cfg = setup.cfg
    names = [d.name for d in datasets]
    trained = [t.name for t in plan.tasks]
    ds_info = []
    for d in datasets:
        s = splits["datasets"][d.name]
        ds_info.append({"name": d.name, "modality": d.modality, "trained_as": d.model_modality,
                        "license": d.license, "shippable": d.shippable, "held_out": s["held_out"],
                        "cases": {k: len(s[k]) for k in ("train", "validation", "test")},
                        "tasks": plan.per_dataset[d.name].task_names})
    training = {"iterations": iteration, "batch_size": cfg["batch_size"], "world_size": world_size,
                "global_batch": cfg["batch_size"] * world_size, "patch_size": cfg["patch_size"],
                "spacing": list(mp.preprocessing.spacing), "optimizer": cfg["optimizer"], "lr": cfg["lr"],
                "seed": cfg["seed"], "selected": f"{selected} EMA weights", "validation_dice": val_dice,
                "final_loss": last or None, "hermesseg_version": __version__, "device": device}
    card = {"description": cfg["description"] or f"Hermes-R trained on {', '.join(names)}",
            "training": training, "datasets": ds_info, **data_licences(datasets)}
    note = (f"{iteration} iterations, batch {cfg['batch_size']}x{world_size}, patch "
            f"{'x'.join(map(str, cfg['patch_size']))} at {'x'.join(f'{s:g}' for s in mp.preprocessing.spacing)} mm; "
            f"{selected} EMA weights")
    if mp.parent is not None:
        lineage = list(copy.deepcopy(mp.parent.lineage))
        lineage.append(LineageRecord(operation="fine-tune", parent=mp.parent.weights_sha256, datasets=names,
                                     tasks=trained, notes=f"{note}; {len(mp.new_tasks)} task rows appended"))
        card["parent"] = {"name": mp.parent.name, "weights_sha256": mp.parent.weights_sha256}
        name = cfg["name"] if "name" in setup.user_cfg else mp.parent.name
        version = cfg["version"] if "version" in setup.user_cfg else mp.parent.version
    else:
        lineage = [LineageRecord(operation="train", parent=None, datasets=names, tasks=trained, notes=note)]
        name, version = cfg["name"], cfg["version"]
    return Manifest(name=name, architecture=architecture_dict(mp.network.config), tasks=mp.tasks,
                    modalities=mp.modalities, preprocessing=mp.preprocessing.to_dict(), lineage=lineage,
                    version=version, card=card)
