"""`hermesseg add-task BASE --data DIR... -o NEW`: teach a model new structures from a few annotated cases, with
nothing forgotten (spec 4, incremental learning).

A composition of the shared parts (``finetune`` is the other one):

1. check every input before any work (``new_task_request``), then ``--mode`` and ``--init-from``;
2. preprocess the cases into the training cache and split them (``new_task_cases``);
3. new rows (``new_rows``): one per new task in every fusion layer (and a new modality block), as separate
   parameters, starting from ``--init-from`` or from the base task that overlaps the new label best;
4. with 3 or more case groups, train on a seeded split, report Dice per new task on the held-out cases, then
   (unless ``--no-refit``) go on training on all cases (``phase``, ``held_out_training``); the loop's
   trainable-parameter hook hands the optimiser the new rows only (``loop.new_prior_rows``, ``--mode priors``) or
   the new rows and a group adapter that only the new group's queries run through (``loop.new_rows_and_adapter``,
   ``--mode adapter``, ``hermesseg.network.group_adapter``); the held-out cases also choose which new tasks keep
   only their largest piece (``postprocessing``);
5. fold the new rows into the saved tables, verify that every base task gives bit-identical logits
   (``forgetting``), write the model file atomically (``child_manifest``, ``save_model``).

``--steps`` (per phase; without it the phases share ``DEFAULT_TOTAL_STEPS``) and ``--time-limit`` bound the work,
whichever ends first; the time limit covers the whole command (``run_clock``). SIGINT/SIGTERM raise ``Cancelled``
(exit 130): nothing is written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..add_task_options import DEFAULT_MODE, MODES
from ..errors import HermesError, QueryError
from ..model_file import save_model
from ..network.config import AdapterConfig
from .child_manifest import child_manifest, run_details
from .distributed import DistContext, pick_device
from .feature_replay import ReplayPlan
from .forgetting import ForgettingCheckError, compare_parent_tasks
from .held_out_training import phase_steps, train_held_out_then_refit
from .loop import new_prior_rows, new_rows_and_adapter
from .new_rows import continued_network, folded_network, network_with_new_rows, plan_new_rows
from .new_task_cases import held_out_note, held_out_split, holds_out, prepare_cases
from .new_task_request import NewTaskData, NewTaskRequest, NewTaskResult, check_new_task_data, check_run_limits
from .phase import phase_config, train_phase
from .run_clock import RunClock
from .sampling import Source

CHECK_WINDOW = 32  # the forgetting check's window edge (voxels): bit-identity does not depend on the window size
CHECK_STEPS = 12  # the check and the write take about as long as this many training steps (8 groups, 2 models)
# --mode adapter's group adapter (hermesseg.network.group_adapter; chosen on ACDC, benchmarks/add_task_results.md):
# a 3-level residual U-Net from 1/2 resolution down over the last decoder features, the stem features and the image,
# 16 channels at 1/2, read out at full resolution by a 1x1x1 convolution.
ADAPTER = {"design": "image-pointwise", "width": 16, "levels": 3, "blocks": 1}
# --mode adapter: 8 adapter-only updates after every step, each on a random 32^3 window of the features of one of
# the last 16 steps (feature_replay; chosen on ACDC against 3 updates on whole windows and none,
# benchmarks/add_task_results.md).
REPLAY = ReplayPlan(updates_per_step=8, pool_steps=16, crop=32)
# Stronger patch augmentation than base training's (affine 0.5, each intensity transform 0.15): a few patients are
# all the new structures see, so most patches get a rotation and scale and more get intensity changes (ACDC, 5
# patients, two splits: +0.022 and +0.017 mean held-out Dice; benchmarks/add_task_results.md).
AUGMENTATION = {"affine_probability": 0.8, "intensity_probability": 0.3}
# The optimiser of the new rows (measured on ACDC from the default model; benchmarks/add_task_results.md).
SETTINGS = {"lr": 1e-2, "weight_decay": 0.0, "warmup_iterations": 10, "batch_size": 2, "ema_decay": 0.98,
            "modality_loss_weight": 0.0, "num_workers": 0, "validate_every": 0, "augmentation": AUGMENTATION}


@dataclass
class AddTaskRequest(NewTaskRequest):
    mode: str = DEFAULT_MODE
    init_from: str | None = None


@dataclass
class AddTaskResult(NewTaskResult):
    init: dict[str, dict] = field(default_factory=dict)


def check_request(request: AddTaskRequest) -> NewTaskData:
    """Every refusal happens here, before any preprocessing or training."""
    if request.mode not in MODES:
        raise HermesError(f"--mode {request.mode!r} is not available; valid: {', '.join(MODES)}")
    check_run_limits(request)
    checked = check_new_task_data(request)
    if request.init_from is not None and request.init_from not in {t.name for t in checked.base.manifest.tasks}:
        raise QueryError(f"--init-from {request.init_from!r}: the base model has no such task "
                         f"(see `hermesseg info BASE`)")
    if request.mode == "adapter" and "." in checked.group:
        raise QueryError(f"--mode adapter: group {checked.group!r} names the adapter's tensors "
                         f"(adapters.<group>.*), which cannot hold '.'; choose another name with --group")
    return checked


def add_task(request: AddTaskRequest, progress=None) -> AddTaskResult:
    """See the module docstring. ``progress`` (``hermesseg.progress.Progress``) gets step events and ``done``."""
    checked = check_request(request)
    base, manifest = checked.base, checked.base.manifest
    ctx = DistContext(device=pick_device(request.device))  # one process: add-task is minutes, not hours
    splits = held_out_split(checked, request)
    steps, planned = phase_steps(request.steps, holds_out(splits), request.refit)
    clock = RunClock(request.time_limit, planned, progress)
    clock.event("prepare", "preprocessing the cases")
    cases = prepare_cases(checked, request, splits)
    patch = cases.preprocessing.patch_size
    rows = plan_new_rows(checked, request.init_from, cases.first_phase, patch, ctx.device, clock)
    cfg = phase_config(SETTINGS, request.seed, steps, patch)
    adapter = AdapterConfig(checked.group, tuple(rows.query), **ADAPTER) if request.mode == "adapter" else None
    replay = REPLAY if adapter is not None else None

    def phase(phase_cases, stage: str, share: float, start):
        source = Source("new", 1.0, rows.query, rows.modality_id, phase_cases)
        if start is not None:  # the refit goes on from the held-out phase's weights (held_out_training)
            network = continued_network(start, ctx.device)
        else:
            network = network_with_new_rows(base.network, rows, ctx.device)
            if adapter is not None:
                network.add_adapter(adapter, request.seed)
        # --mode adapter: the new rows and the new group's adapter train together
        trainable = new_rows_and_adapter if adapter is not None else new_prior_rows
        return train_phase(network, trainable, [source], cfg, clock, stage, clock.budget(share, CHECK_STEPS), ctx,
                           replay)

    trained = train_held_out_then_refit(phase, cases, rows, request.refit, ctx.device, clock)
    total_steps, held = trained.steps, trained.dice

    # ---- fold, verify, write
    clock.event("check", "verifying that every base task gives bit-identical logits")
    out_net = folded_network(trained.result.network)
    report = compare_parent_tasks(base.network.cpu(), out_net, manifest, np.asarray(cases.every[0].image),
                                  [min(CHECK_WINDOW, p) for p in patch])
    if not report.identical:
        raise ForgettingCheckError(f"the new model changes base tasks' logits (max |difference| "
                                   f"{report.max_abs_difference:.3g}); not written")
    wall = clock.elapsed()
    check = {"queries": report.queries, "tasks": report.tasks, "max_abs_logit_difference": report.max_abs_difference,
             "image": f"{cases.every[0].dataset}/{cases.every[0].case} (centre {CHECK_WINDOW}^3 window)"}
    note = held_out_note(held, trained.keep_largest, trained.thresholds)
    details = {"mode": request.mode, **run_details(checked, request, cfg, total_steps, wall, str(ctx.device)),
               "feature_replay": asdict(replay) if replay else None,
               "init": rows.init, "held_out": trained.record, "forgetting_check": check}
    card_entry = {"tasks": rows.names, "group": checked.group, "mode": request.mode, "init": rows.init,
                  "held_out_dice": held, "steps": total_steps, "wall_s": round(wall, 1),
                  "note": f"Dice on the model grid; {note}. Base tasks verified bit-identical ({check['tasks']} "
                          f"tasks in {check['queries']} group queries)."}
    new_manifest = child_manifest(checked, out_net, cases, rows.query, "add-task",
                                  f"--mode {request.mode}, {total_steps} steps, {note}", details, "added_tasks",
                                  card_entry)
    new_manifest.tasks = trained.applied(new_manifest.tasks, rows.names, request.refit)
    clock.event("write", f"writing {request.output}")
    new_manifest = save_model(request.output, out_net, new_manifest)
    return AddTaskResult(Path(request.output), new_manifest, rows.names, held, total_steps, wall, rows.init)
