"""`hermesseg finetune BASE --data DIR... -o NEW [--replay DIR...]`: transfer learning (spec 4, "Transfer"): new
tasks as in add-task, then every weight trains, the backbone at a lower learning rate; cases of the parent's own
datasets can be replayed, and forgetting is measured, not assumed.

A composition of the parts add-task is made of:

1. check every input before any work (``new_task_request``, as add-task), then ``--replay`` (``parent_task_data``),
   ``--lr`` and ``--backbone-lr-scale``;
2. preprocess the new tasks' cases and split them (``new_task_cases``), and the replay cases;
3. forgetting, before (``forgetting_dice``): the parent's Dice of its own tasks on the replay cases, or without
   ``--replay`` on the given cases that label parent tasks (``<dataset>_<label>``);
4. new rows (``new_rows``), each from the base task that overlaps its label best;
5. the held-out protocol (``held_out_training``) with every weight trainable in three groups (``loop
   .scaled_groups``: new rows 10x, backbone ``--backbone-lr-scale`` x, the rest 1x ``--lr``) and batches that mix the
   replay cases, each queried with its parent tasks, into the new tasks' cases (``REPLAY_WEIGHT``);
6. fold the rows, forgetting after (the new model on the same cases), write the model file atomically with the
   record in its card (``card["fine_tuned"]``) and lineage (``child_manifest``).

``--steps`` (per phase; without it the phases share ``DEFAULT_TOTAL_STEPS``) and ``--time-limit`` bound the work;
the time limit covers the whole command. SIGINT/SIGTERM raise ``Cancelled`` (exit 130): nothing is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HermesError
from ..finetune_options import DEFAULT_BACKBONE_LR_SCALE, DEFAULT_LR, NEW_ROWS_LR_SCALE
from ..model_file import save_model
from .child_manifest import child_manifest, run_details
from .distributed import DistContext, pick_device
from .forgetting_dice import ForgettingMeasure, cache_parent_task_cases, forgetting_note
from .held_out_training import phase_steps, train_held_out_then_refit
from .loop import scaled_groups
from .new_rows import continued_network, folded_network, network_with_new_rows, plan_new_rows
from .new_task_cases import cache_dir_of, held_out_note, held_out_split, holds_out, prepare_cases
from .new_task_request import NewTaskData, NewTaskRequest, NewTaskResult, check_new_task_data, check_run_limits
from .parent_task_data import ParentTaskData, check_replay, parent_tasks_of
from .phase import phase_config, train_phase
from .run_clock import RunClock
from .sampling import Source

WRITE_STEPS = 4  # writing the file takes about as long as this many training steps
REPLAY_WEIGHT = 0.5  # the replay datasets together, against the new tasks' 1.0: a third of the samples
SETTINGS = {"weight_decay": 0.0, "warmup_iterations": 10, "batch_size": 2, "ema_decay": 0.98,
            "modality_loss_weight": 0.0, "num_workers": 0, "validate_every": 0}
NOT_MEASURED = ("no --replay data and no given case labels a task of the base model (a label L of dataset D is its "
                "task D_L)")


@dataclass
class FinetuneRequest(NewTaskRequest):
    replay: list[str] = field(default_factory=list)
    lr: float = DEFAULT_LR
    backbone_lr_scale: float = DEFAULT_BACKBONE_LR_SCALE


@dataclass
class FinetuneResult(NewTaskResult):
    forgetting: dict = field(default_factory=dict)  # {"measured_on", "tasks": {name: {"before", "after"}}} or
    # {"not_measured": reason}
    init: dict[str, dict] = field(default_factory=dict)


def check_request(request: FinetuneRequest) -> tuple[NewTaskData, ParentTaskData]:
    """Every refusal happens here, before any preprocessing or training."""
    check_run_limits(request)
    if not (request.lr > 0 and math.isfinite(request.lr)):
        raise HermesError(f"--lr must be a positive number, got {request.lr}")
    if not (0 < request.backbone_lr_scale <= 1):
        raise HermesError(f"--backbone-lr-scale must be in (0, 1], got {request.backbone_lr_scale}")
    checked = check_new_task_data(request)
    return checked, check_replay(request.replay, checked.base.manifest, checked.datasets)


def finetune(request: FinetuneRequest, progress=None) -> FinetuneResult:
    """See the module docstring. ``progress`` (``hermesseg.progress.Progress``) gets step events."""
    checked, replay = check_request(request)
    base, manifest = checked.base, checked.base.manifest
    ctx = DistContext(device=pick_device(request.device))
    splits = held_out_split(checked, request)
    steps, planned = phase_steps(request.steps, holds_out(splits), request.refit)
    clock = RunClock(request.time_limit, planned, progress)
    clock.event("prepare", "preprocessing the cases")
    cases = prepare_cases(checked, request, splits)
    pre, patch = cases.preprocessing, cases.preprocessing.patch_size
    replay_cases = cache_parent_task_cases(replay, pre, cache_dir_of(request))
    measured = replay if replay.datasets else parent_tasks_of(checked.datasets, manifest)
    forgetting = ForgettingMeasure(measured, replay_cases if replay.datasets else
                                   cache_parent_task_cases(measured, pre, cache_dir_of(request)), patch, ctx.device,
                                   NOT_MEASURED)
    forgetting.before(base.network, clock)

    rows = plan_new_rows(checked, None, cases.first_phase, patch, ctx.device, clock)
    cfg = phase_config({**SETTINGS, "lr": float(request.lr)}, request.seed, steps, patch)
    trainable = scaled_groups(request.backbone_lr_scale, NEW_ROWS_LR_SCALE)
    replay_sources = [Source(d.name, REPLAY_WEIGHT / len(replay.datasets), replay.queries[d.name],
                             replay.modality_ids[d.name], [c for c in replay_cases if c.dataset == d.name])
                      for d in replay.datasets]

    def phase(phase_cases, stage: str, share: float, start):
        sources = [Source("new", 1.0, rows.query, rows.modality_id, phase_cases)] + replay_sources
        network = network_with_new_rows(base.network, rows, ctx.device) if start is None else \
            continued_network(start, ctx.device)
        return train_phase(network, trainable, sources, cfg, clock, stage,
                           clock.budget(share, WRITE_STEPS, forgetting.seconds), ctx)

    trained = train_held_out_then_refit(phase, cases, rows, request.refit, ctx.device, clock)
    out_net = folded_network(trained.result.network)
    record = forgetting.after(out_net, clock)

    wall = clock.elapsed()
    note = f"{held_out_note(trained.dice, trained.keep_largest, trained.thresholds)}; {forgetting_note(record)}"
    details = {"method": "finetune", **run_details(checked, request, cfg, trained.steps, wall, str(ctx.device)),
               "backbone_lr_scale": float(request.backbone_lr_scale),
               "parameter_groups": trained.result.groups, "samples": trained.result.samples,
               "replay": {d.name: [c.name for c in d.cases] for d in replay.datasets},
               "init": rows.init, "held_out": trained.record, "forgetting": record}
    card_entry = {"tasks": rows.names, "group": checked.group, "held_out_dice": trained.dice,
                  "forgetting": record, "steps": trained.steps, "wall_s": round(wall, 1),
                  "note": f"every weight fine-tuned (backbone at {request.backbone_lr_scale:g}x the learning rate); "
                          f"Dice on the model grid; {note}."}
    new_manifest = child_manifest(checked, out_net, cases, rows.query, "finetune",
                                  f"{trained.steps} steps, {note}", details, "fine_tuned", card_entry)
    new_manifest.tasks = trained.applied(new_manifest.tasks, rows.names, request.refit)
    clock.event("write", f"writing {request.output}")
    new_manifest = save_model(request.output, out_net, new_manifest)
    return FinetuneResult(Path(request.output), new_manifest, rows.names, trained.dice, trained.steps, wall,
                          record, rows.init)
