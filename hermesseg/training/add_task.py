"""`hermesseg add-task BASE --data DIR... -o NEW`: teach a model new structures from a few annotated cases, with
nothing forgotten (spec 4, incremental learning).

A composition of the shared training parts:

1. check every input before any work (``check_request``): the base model, the output path, the datasets and every
   case (grids, label values, a label file per image), the labels asked for (present, not empty in every case), the
   new task and group names (no collision with the base model), ``--init-from``;
2. preprocess the cases into the training cache (the base model's grid and normalisation; a new modality gets the
   default normalisation of its kind);
3. model plan: a copy of the base network with one new row per new task in every fusion layer (and a new modality
   block), as separate parameters; each new row starts from ``--init-from`` or from the base task that overlaps
   the new label best on the training cases;
4. with 3 or more case groups (patients: ``split_group_pattern``), train on a seeded split, report Dice per new task
   on the held-out cases, then (unless ``--no-refit``) train again from the same start on all cases;
   the loop's trainable-parameter hook hands the optimiser the new rows only (``loop.new_prior_rows``);
5. fold the new rows into the saved tables (appended rows of ``*.task_prior``, appended blocks of
   ``*.modality_prior``), verify that every base task gives bit-identical logits, write the model file atomically.

``--steps`` and ``--time-limit`` bound the work, whichever ends first; the time limit covers the whole command.
SIGINT/SIGTERM raise ``Cancelled`` (exit 130): nothing is written.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import DatasetError, HermesError, OutputError, QueryError
from ..manifest import LineageRecord, Manifest, TaskEntry, architecture_dict
from ..modalities import default_intensity, modality_entry
from ..model import HermesModel
from ..model_file import save_model
from ..names import check_name
from ..network import NULL_TASK, HermesR
from ..nnunet import Dataset, TaskPlan, check_case, dataset_modality_string, load_datasets, plan_tasks, read_dataset
from ..preprocessing import IntensityNorm, Preprocessing
from .cache import CachedCase, build_cache, default_cache_dir
from .config import resolve_config
from .distributed import DistContext, pick_device
from .forgetting import ForgettingCheckError, compare_parent_tasks
from ..add_task_options import DEFAULT_SPLIT_GROUP_PATTERN, DEFAULT_STEPS, DEFAULT_TIME_LIMIT_S, MODES  # noqa: F401
from .init_choice import InitChoice, best_overlap
from .loop import Step, new_prior_rows, prepare_optimisation, run_iterations
from .model_card import data_licences
from .model_plan import task_entry
from .run_setup import check_output, load_parent
from .sampling import PatchSampler, Source
from .splits import make_splits
from .validation import dice_per_task, predict_volume

MIN_GROUPS_FOR_HELD_OUT = 3
HELD_OUT_FRACTION = 0.2
MAX_INIT_CASES = 2  # training cases the init-from overlap is scored on
CHECK_WINDOW = 32  # the forgetting check's window edge (voxels): bit-identity does not depend on the window size
CHECK_STEPS = 12  # the check and the write take about as long as this many training steps (8 groups, 2 models)
# The optimiser of the new rows (measured on ACDC from the default model; see README "Teaching a new structure").
SETTINGS = {"lr": 1e-2, "weight_decay": 0.0, "warmup_iterations": 10, "batch_size": 2, "ema_decay": 0.98,
            "modality_loss_weight": 0.0, "num_workers": 0, "validate_every": 0}


@dataclass
class AddTaskRequest:
    base: str
    data: list[str]
    output: str
    labels: list[str] | None = None
    group: str | None = None
    modality: str | None = None
    mode: str = "priors"
    init_from: str | None = None
    steps: int = DEFAULT_STEPS
    time_limit: float | None = DEFAULT_TIME_LIMIT_S  # seconds, the whole command; None: no limit
    seed: int = 0
    refit: bool = True
    device: str = "auto"
    cache_dir: str | None = None
    split_group_pattern: str = DEFAULT_SPLIT_GROUP_PATTERN


@dataclass
class AddTaskResult:
    output: Path
    manifest: Manifest
    new_tasks: list[str]
    held_out_dice: dict[str, float | None] | None  # None: fewer than 3 case groups, no held-out figure
    steps: int
    wall_s: float
    init: dict[str, dict] = field(default_factory=dict)


@dataclass
class _Checked:
    base: HermesModel
    datasets: list[Dataset]
    plan: TaskPlan
    modality: str  # the model modality the new tasks are learned for
    new_modality: bool
    group: str


# ---------------------------------------------------------------------------------------------------- checks

def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_request(request: AddTaskRequest) -> _Checked:
    """Every refusal happens here, before any preprocessing or training."""
    if request.mode not in MODES:
        raise HermesError(f"--mode {request.mode!r} is not available; valid: {', '.join(MODES)}")
    if request.device not in ("auto", "cpu", "cuda"):
        raise HermesError(f"--device {request.device!r} is unknown; valid: auto, cpu, cuda")
    if request.steps < 1:
        raise HermesError(f"--steps must be at least 1, got {request.steps}")
    if request.time_limit is not None and not (request.time_limit > 0 and math.isfinite(request.time_limit)):
        raise HermesError(f"--time-limit must be a positive number of seconds, got {request.time_limit}")
    base_path, output = Path(request.base), Path(request.output)
    if _same_file(base_path, output):
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
    present = _labels_present(datasets)

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
    if request.init_from is not None and request.init_from not in taken:
        raise QueryError(f"--init-from {request.init_from!r}: the base model has no such task "
                         f"(see `hermesseg info BASE`)")
    return _Checked(base, datasets, plan, modality, new_modality, group)


def _labels_present(datasets: list[Dataset]) -> set[str]:
    """Check every case (grids, values); the names of the labels with at least one voxel in some case."""
    present: set[str] = set()
    for ds in datasets:
        names = {v: k for k, v in ds.labels.items()}
        for case in ds.cases:
            present.update(names[int(v)] for v in check_case(ds, case) if int(v) != 0)
    return present


# ---------------------------------------------------------------------------------------------------- work

class _Clock:
    """The command's deadline and a global step counter for progress events."""

    def __init__(self, time_limit: float | None, planned_steps: int, progress):
        self.t0 = time.monotonic()
        self.deadline = None if time_limit is None else self.t0 + float(time_limit)
        self.planned, self.done, self.progress = planned_steps, 0, progress
        self.step_s: float | None = None

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def event(self, stage: str, message: str, **fields) -> None:
        if self.progress is None:
            return
        eta = None
        if self.step_s is not None:
            eta = round(min(self.step_s * max(self.planned - self.done, 0), max(self.left(), 0.0)), 1)
        self.progress.update(stage, self.done / max(self.planned, 1), message, step=self.done, total=self.planned,
                             eta_s=eta, elapsed_s=round(time.monotonic() - self.t0, 1), **fields)


def _training_config(request: AddTaskRequest, patch_size, steps: int) -> dict:
    return resolve_config({**SETTINGS, "seed": int(request.seed), "iterations": int(steps),
                           "patch_size": list(patch_size)})


def _train_rows(base_net: HermesR, init_ids: list[int], modality_init: list[int], cases: list[CachedCase],
                query: list[int], modality_id: int, request: AddTaskRequest, patch_size, steps: int, clock: _Clock,
                stage: str, budget_s: float, ctx) -> tuple[HermesR, int, dict]:
    """One training phase from the same start: returns the EMA network (new rows still separate), the steps done
    and the last loss parts. Stops early when ``budget_s`` is used up."""
    cfg = _training_config(request, patch_size, steps)
    network = copy.deepcopy(base_net).to(ctx.device).train()
    network.add_new_rows(init_ids, modality_init)
    opt = prepare_optimisation(network, cfg, new_prior_rows)
    sampler = PatchSampler([Source("new", 1.0, query, modality_id, cases)], cfg["patch_size"], cfg["batch_size"],
                           cfg["foreground_probability"], cfg["augmentation"], int(cfg["seed"]))
    start, last = time.monotonic(), {}

    def on_step(step: Step) -> bool:
        nonlocal last
        last = step.parts
        clock.done += 1
        elapsed = time.monotonic() - start
        clock.step_s = elapsed / step.iteration
        clock.event(stage, f"{stage}: step {step.iteration}/{steps}, loss {step.parts['loss']:.4f}",
                    loss=round(step.parts["loss"], 5))
        return elapsed + clock.step_s > budget_s

    done = run_iterations(network, network, opt, sampler, cfg, ctx, 0, steps, lambda: False, on_step)
    clock.planned -= steps - done
    return opt.ema.module, done, last


def _held_out_dice(network: HermesR, cases: list[CachedCase], query: list[int], modality_id: int, names: list[str],
                   patch_size, device) -> dict[str, float | None]:
    per_task: dict[str, list[float]] = {n: [] for n in names}
    for case in cases:
        probs = predict_volume(network, np.asarray(case.image), query, modality_id, patch_size, device)
        for name, score in zip(names, dice_per_task(probs[:-1], np.asarray(case.label))):
            if score is not None:
                per_task[name].append(score)
    return {n: (round(float(np.mean(v)), 4) if v else None) for n, v in per_task.items()}


def _data_hash(datasets: list[Dataset]) -> str:
    """sha256 over every training file's name and bytes, in case order."""
    h = hashlib.sha256()
    for ds in datasets:
        for case in ds.cases:
            for path in (case.image, case.label):
                h.update(f"{ds.name}/{path.name}\n".encode())
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
    return h.hexdigest()


def add_task(request: AddTaskRequest, progress=None) -> AddTaskResult:
    """See the module docstring. ``progress`` (``hermesseg.progress.Progress``) gets step events and ``done``."""
    checked = check_request(request)
    base, manifest = checked.base, checked.base.manifest
    ctx = DistContext(device=pick_device(request.device))  # one process: add-task is minutes, not hours
    held_phase = None
    pre = Preprocessing.from_dict(manifest.preprocessing)
    norm = (IntensityNorm.from_dict(default_intensity(checked.modality)) if checked.new_modality
            else pre.norm_for(checked.modality))
    ds_names = [d.name for d in checked.datasets]
    cache_dir = Path(request.cache_dir).expanduser() if request.cache_dir else default_cache_dir()
    splits = make_splits(checked.datasets, int(request.seed),
                         {"validation_fraction": HELD_OUT_FRACTION, "test_fraction": 0.0,
                          "min_cases_to_hold_out": MIN_GROUPS_FOR_HELD_OUT},
                         {n: {"split_group_pattern": request.split_group_pattern} for n in ds_names})
    held_out = all(splits["datasets"][n]["held_out"] for n in ds_names)
    phases = (2 if request.refit else 1) if held_out else 1
    clock = _Clock(request.time_limit, phases * int(request.steps), progress)
    clock.event("prepare", "preprocessing the cases")
    cache = build_cache(checked.datasets, checked.plan.per_dataset, list(pre.spacing),
                        {checked.modality: norm}, cache_dir)
    split_train = [cache[(n, c)] for n in ds_names for c in splits["datasets"][n]["train"]]
    split_held = [cache[(n, c)] for n in ds_names for c in splits["datasets"][n]["validation"]]
    every_case = [cache[(d.name, c.name)] for d in checked.datasets for c in d.cases]

    # ---- model plan: new rows and their starting point
    net = base.network.to(ctx.device)
    new_names = [t.name for t in checked.plan.tasks]
    by_name = {t.name: t for t in manifest.tasks}
    if request.init_from:
        choices = [InitChoice(request.init_from, "--init-from", None) for _ in new_names]
    else:
        clock.event("init", "scoring the base tasks' overlap with the new labels")
        choices = best_overlap(net, manifest, (split_train if held_out else every_case)[:MAX_INIT_CASES],
                               list(range(1, len(new_names) + 1)), pre.patch_size, ctx.device)
    init_ids = [by_name[c.task].id for c in choices]
    modality_init = [manifest.modality(by_name[choices[0].task].modalities[0]).id] if checked.new_modality else []
    first_new = net.num_task_rows
    query = list(range(first_new, first_new + len(new_names)))
    modality_id = len(manifest.modalities) if checked.new_modality else manifest.modality(checked.modality).id
    init = {n: {"from": c.task, "reason": c.reason, "soft_dice": c.soft_dice} for n, c in zip(new_names, choices)}

    def budget(share: float) -> float:
        """Seconds for a training phase: ``share`` of what is left, less the verification and writing at the end
        (about as long as 8 training steps) so that the time limit bounds the whole command."""
        left = clock.left()
        return max(left * share - CHECK_STEPS * (clock.step_s or 0.0), 0.0)

    total_steps, held = 0, None
    if held_out:
        phase_net, steps, _ = _train_rows(net, init_ids, modality_init, split_train, query, modality_id, request,
                                          pre.patch_size, request.steps, clock, "held-out training",
                                          budget(0.45 if request.refit else 0.9), ctx)
        total_steps += steps
        clock.event("held-out", f"Dice on {len(split_held)} held-out case(s)")
        held = _held_out_dice(phase_net, split_held, query + [NULL_TASK], modality_id, new_names, pre.patch_size,
                              ctx.device)
        clock.event("held-out", "held-out Dice " + ", ".join(f"{k} {v}" for k, v in held.items()),
                    held_out_dice=held)
        held_phase = {"train_cases": [c.case for c in split_train], "held_out_cases": [c.case for c in split_held],
                      "steps": steps, "dice": held}
        final = phase_net
    if not held_out or request.refit:
        final, steps, last = _train_rows(net, init_ids, modality_init, every_case, query, modality_id, request,
                                         pre.patch_size, request.steps, clock, "training" if not held_out else
                                         "refit", budget(0.95), ctx)
        total_steps += steps

    # ---- fold, verify, write
    clock.event("check", "verifying that every base task gives bit-identical logits")
    final = final.cpu()
    final.fold_new_rows()
    out_net = HermesR(final.config)
    out_net.load_state_dict({k: v.detach().clone() for k, v in final.state_dict().items()})
    report = compare_parent_tasks(base.network.cpu(), out_net, manifest, np.asarray(every_case[0].image),
                                  [min(CHECK_WINDOW, p) for p in pre.patch_size])
    if not report.identical:
        raise ForgettingCheckError(f"the new model changes base tasks' logits (max |difference| "
                                   f"{report.max_abs_difference:.3g}); not written")
    wall = time.monotonic() - clock.t0
    figures = {"held_out": held_phase, "forgetting_check": {
        "queries": report.queries, "tasks": report.tasks, "max_abs_logit_difference": report.max_abs_difference,
        "image": f"{every_case[0].dataset}/{every_case[0].case} (centre {CHECK_WINDOW}^3 window)"}}
    new_manifest = _child_manifest(checked, request, out_net, pre, norm, query, init, figures, total_steps, wall,
                                   str(ctx.device))
    clock.event("write", f"writing {request.output}")
    new_manifest = save_model(request.output, out_net, new_manifest)
    return AddTaskResult(Path(request.output), new_manifest, new_names, held, total_steps, wall, init)


def _child_manifest(checked: _Checked, request: AddTaskRequest, network: HermesR, pre: Preprocessing,
                    norm: IntensityNorm, rows: list[int], init: dict, figures: dict, steps: int, wall: float,
                    device: str) -> Manifest:
    parent = checked.base.manifest
    modalities = list(parent.modalities)
    intensity = dict(pre.intensity)
    if checked.new_modality:
        modalities.append(modality_entry(len(modalities), checked.modality))
        intensity[checked.modality] = norm
    preprocessing = Preprocessing(spacing=pre.spacing, orientation=pre.orientation, intensity=intensity,
                                  patch_size=pre.patch_size)
    held = (figures["held_out"] or {}).get("dice")
    new_entries: list[TaskEntry] = [task_entry(spec, row) for spec, row in zip(checked.plan.tasks, rows)]
    data = {d.name: [c.name for c in d.cases] for d in checked.datasets}
    details = {"mode": request.mode, "group": checked.group, "modality": checked.modality,
               "new_modality": checked.new_modality, "cases": data, "data_sha256": _data_hash(checked.datasets),
               "steps": steps, "steps_requested": request.steps, "time_limit_s": request.time_limit,
               "seed": request.seed, "refit": request.refit, "wall_s": round(wall, 1), "device": device,
               "init": init, **figures, "hermesseg_version": __version__}
    held_note = ("held-out Dice " + ", ".join(f"{k}={v}" for k, v in held.items()) if held
                 else "no held-out figure (fewer than 3 case groups)")
    lineage = list(copy.deepcopy(parent.lineage)) + [LineageRecord(
        operation="add-task", parent=parent.weights_sha256, datasets=list(data), tasks=[t.name for t in new_entries],
        notes=f"--mode {request.mode}, {steps} steps, {held_note}", details=details)]
    card = copy.deepcopy(parent.card)
    licences = data_licences(checked.datasets)
    card["shippable"] = bool(card.get("shippable", False)) and licences["shippable"]
    card["licences"] = sorted(set(card.get("licences", [])) | set(licences["licences"]))
    if not licences["shippable"]:
        card["shippable_note"] = "; ".join(filter(None, [parent.card.get("shippable_note"),
                                                          licences.get("shippable_note")]))
    card["parent"] = {"name": parent.name, "weights_sha256": parent.weights_sha256}
    card.setdefault("added_tasks", []).append({
        "tasks": [t.name for t in new_entries], "group": checked.group, "mode": request.mode,
        "init": init, "held_out_dice": held, "steps": steps, "wall_s": round(wall, 1),
        "note": "Dice on the model grid; " + held_note + ". Base tasks verified bit-identical "
                f"({figures['forgetting_check']['tasks']} tasks in {figures['forgetting_check']['queries']} "
                "group queries)."})
    return Manifest(name=parent.name, architecture=architecture_dict(network.config),
                    tasks=list(parent.tasks) + new_entries, modalities=modalities,
                    preprocessing=preprocessing.to_dict(), lineage=lineage, version=parent.version, card=card)
