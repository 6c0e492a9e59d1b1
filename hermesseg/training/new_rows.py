"""The new tasks' rows (spec 4): where they start, the network that trains them, and the folded result.

Each new task gets one row in every task table, a copy of ``--init-from``'s rows or of the base task that overlaps
its label best (``init_choice``); a new modality gets one block in every modality table, a copy of the block of a
base modality of the same kind (``modality_to_copy``: MR-cine starts from an MR block, never from CT). The rows
are separate parameters while training (``HermesR.add_new_rows``), so the loop can train them alone (add-task) or
with everything else (finetune); ``folded_network`` appends them to the tables, the saved layout.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..modalities import modality_entry
from ..network import NULL_TASK, HermesR
from .cache import CachedCase
from .init_choice import InitChoice, best_overlap
from .new_task_request import NewTaskData
from .run_clock import RunClock

MAX_INIT_CASES = 2  # training cases the init-from overlap is scored on


@dataclass
class NewRows:
    names: list[str]  # the new task names, in row order
    init_ids: list[int]  # the base task rows each new row starts from
    modality_init: list[int]  # the base modality block a new modality starts from ([] for a known modality)
    query: list[int]  # the new rows' ids in the grown network
    modality_id: int  # the new tasks' modality id in the grown network
    init: dict[str, dict]  # per new task: {"from", "reason", "soft_dice"} for the output and the model card

    @property
    def query_with_null(self) -> list[int]:
        return self.query + [NULL_TASK]


def plan_new_rows(checked: NewTaskData, init_from: str | None, cases: list[CachedCase], patch_size,
                  device: torch.device, clock: RunClock) -> NewRows:
    manifest, net = checked.base.manifest, checked.base.network.to(device)
    names = [t.name for t in checked.plan.tasks]
    by_name = {t.name: t for t in manifest.tasks}
    if init_from:
        choices = [InitChoice(init_from, "--init-from", None) for _ in names]
    else:
        clock.event("init", "scoring the base tasks' overlap with the new labels")
        choices = best_overlap(net, manifest, cases[:MAX_INIT_CASES], list(range(1, len(names) + 1)), patch_size,
                               device)
    modality_init = ([modality_to_copy(manifest, checked.modality, by_name[choices[0].task].modalities[0]).id]
                     if checked.new_modality else [])
    first = net.num_task_rows
    modality_id = len(manifest.modalities) if checked.new_modality else manifest.modality(checked.modality).id
    init = {n: {"from": c.task, "reason": c.reason, "soft_dice": c.soft_dice} for n, c in zip(names, choices)}
    return NewRows(names, [by_name[c.task].id for c in choices], modality_init,
                   list(range(first, first + len(names))), modality_id, init)


def modality_to_copy(manifest, new_modality: str, init_modality: str):
    """The base modality whose block a new modality's block starts from (spec 4, "New modality"): the first new
    row's own modality when it is of the new modality's imaging kind (the DICOM Modality its name suggests:
    MR-cine -> MR), else the base modality named like that kind ("MR"), else the first of that kind; the row's own
    when the base has none of that kind."""
    kind = {k.upper() for k in modality_entry(0, new_modality).dicom}
    same = [m for m in manifest.modalities if kind & {k.upper() for k in m.dicom}]
    own = manifest.modality(init_modality)
    if own in same or not same:
        return own
    return next((m for m in same if m.name.upper() in kind), same[0])


def network_with_new_rows(base: HermesR, rows: NewRows, device: torch.device) -> HermesR:
    """A training copy of ``base`` on ``device`` with the new rows as separate parameters."""
    network = copy.deepcopy(base).to(device).train()
    network.add_new_rows(rows.init_ids, rows.modality_init)
    return network


def continued_network(trained: HermesR, device: torch.device) -> HermesR:
    """A training copy of an earlier phase's ``trained`` network (new rows still separate), to go on training."""
    return copy.deepcopy(trained).to(device).train()


def folded_network(trained: HermesR) -> HermesR:
    """A fresh CPU network holding ``trained``'s weights with the new rows appended to the tables."""
    trained = trained.cpu()
    trained.fold_new_rows()
    out = HermesR(trained.config)
    out.load_state_dict({k: v.detach().clone() for k, v in trained.state_dict().items()})
    return out
