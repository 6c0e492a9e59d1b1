"""The manifest of a model grown from a parent by add-task or finetune: the parent's tables plus the new tasks (and a
new modality), its lineage plus one record, its card plus one entry under the method's key.

The card's licences are the parent's and the new data's (``shippable`` only if both are); ``card["parent"]`` names
the parent's fingerprint. ``run_details`` is the part of the lineage record both methods write: the training
settings (``phase.recorded_settings``), the data (case ids and a hash of the training files), the run's length,
seed, wall time and device.
"""

from __future__ import annotations

import copy

from .. import __version__
from ..manifest import LineageRecord, Manifest, TaskEntry, architecture_dict
from ..modalities import modality_entry
from ..network import HermesR
from ..preprocessing import Preprocessing
from .data_hash import training_files_sha256
from .model_card import data_licences
from .model_plan import task_entry
from .new_task_cases import NewTaskCases
from .new_task_request import NewTaskData, NewTaskRequest
from .phase import recorded_settings


def run_details(checked: NewTaskData, request: NewTaskRequest, cfg: dict, steps: int, wall: float,
                device: str) -> dict:
    """``cfg``: the run's ``phase_config``."""
    return {"training": recorded_settings(cfg), "group": checked.group, "modality": checked.modality,
            "new_modality": checked.new_modality,
            "cases": {d.name: [c.name for c in d.cases] for d in checked.datasets},
            "data_sha256": training_files_sha256(checked.datasets), "steps": steps, "steps_requested": request.steps,
            "time_limit_s": request.time_limit, "seed": request.seed, "refit": request.refit, "wall_s": round(wall, 1),
            "device": device, "hermesseg_version": __version__}


def child_manifest(checked: NewTaskData, network: HermesR, cases: NewTaskCases, rows: list[int], operation: str,
                   notes: str, details: dict, card_key: str, card_entry: dict) -> Manifest:
    """``network``: the folded child network; ``rows``: the new tasks' ids, in ``checked.plan.tasks`` order."""
    parent, pre = checked.base.manifest, cases.preprocessing
    modalities = list(parent.modalities)
    intensity = dict(pre.intensity)
    if checked.new_modality:
        modalities.append(modality_entry(len(modalities), checked.modality))
        intensity[checked.modality] = cases.norm
    preprocessing = Preprocessing(spacing=pre.spacing, orientation=pre.orientation, intensity=intensity,
                                  patch_size=pre.patch_size)
    new_entries: list[TaskEntry] = [task_entry(spec, row) for spec, row in zip(checked.plan.tasks, rows)]
    lineage = list(copy.deepcopy(parent.lineage)) + [LineageRecord(
        operation=operation, parent=parent.weights_sha256, datasets=[d.name for d in checked.datasets],
        tasks=[t.name for t in new_entries], notes=notes, details=details)]
    card = copy.deepcopy(parent.card)
    licences = data_licences(checked.datasets)
    card["shippable"] = bool(card.get("shippable", False)) and licences["shippable"]
    card["licences"] = sorted(set(card.get("licences", [])) | set(licences["licences"]))
    if not licences["shippable"]:
        card["shippable_note"] = "; ".join(filter(None, [parent.card.get("shippable_note"),
                                                          licences.get("shippable_note")]))
    card["parent"] = {"name": parent.name, "weights_sha256": parent.weights_sha256}
    card.setdefault(card_key, []).append(card_entry)
    return Manifest(name=parent.name, architecture=architecture_dict(network.config),
                    tasks=list(parent.tasks) + new_entries, modalities=modalities,
                    preprocessing=preprocessing.to_dict(), lineage=lineage, version=parent.version, card=card)
