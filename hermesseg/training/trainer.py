"""`hermesseg train`: from nnU-Net v2 dataset folders to a Hermes model file, resumable and data-parallel.

Order of work (nothing is written before every input has been checked):

1. resolve the configuration (``--resume``: the run directory's ``config.json``) and the parent model (``--init``);
2. read and validate every dataset and case (DatasetError names dataset and case), plan the tasks;
3. build (or reuse) the preprocessing cache, outside the run directory;
4. create the run directory: ``config.json``, ``splits.json``; then train, appending ``metrics.jsonl`` and writing
   ``checkpoint.pt`` every ``checkpoint_every`` iterations (atomically), ``best.pt`` when validation improves,
   ``curves.png``;
5. write the model file (``-o``) with ``save_model``: the best EMA weights by validation Dice, or the final EMA
   weights when the run has no validation cases.

Only rank 0 writes files (except the optional debug fingerprints). A SIGINT/SIGTERM stops training at the end of the
current iteration, after a checkpoint, with exit status 130; ``--resume RUN_DIR`` continues from the last checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from .. import __version__
from ..atomic import atomic_path
from ..colors import color_for
from ..errors import HermesError, ModelFileError, OutputError
from ..manifest import LineageRecord, Manifest, ModalityEntry, TaskEntry, architecture_dict
from ..model import load_model
from ..model_file import save_model, weights_fingerprint
from ..network import HermesR, HermesRConfig
from ..official.task_table import OFFICIAL_MODALITIES
from ..preprocessing import IntensityNorm, Preprocessing
from ..signals import stop_signal_handler
from ..terminology import terminology_for
from .cache import build_cache, default_cache_dir
from .checkpoint import ResumeError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainingConfigError, default_intensity, load_config_file, resolve_config
from .datasets import Dataset, TaskPlan, load_datasets, plan_tasks
from .distributed import DistContext, init_distributed
from .loss import hermes_loss
from .optim import EMA, build_optimizer, lr_at, set_lr
from .run_files import MetricsLog, truncate_metrics, write_curves
from .sampling import PatchSampler, Source, batch_loader, make_targets
from .splits import make_splits, read_splits, write_splits
from .validation import evaluate_cases

log = logging.getLogger(__name__)

RUN_CONFIG_FORMAT = "hermes-train-run"


class TrainingInterrupted(HermesError):
    """Training stopped on a signal after writing a checkpoint; the run can be resumed."""

    exit_code = 130


@dataclass
class TrainRequest:
    data: list[str] = field(default_factory=list)
    output: str | None = None
    config: str | dict | None = None  # JSON file path or an already-parsed dict
    init: str | None = None
    resume: str | None = None
    run_dir: str | None = None
    iterations: int | None = None
    device: str = "auto"
    cache_dir: str | None = None
    num_workers: int | None = None


@dataclass
class TrainResult:
    output: Path
    run_dir: Path
    iterations: int
    selected: str
    validation_dice: float | None
    manifest: Manifest


# ---------------------------------------------------------------------------------------------------- set-up

@dataclass
class _Setup:
    cfg: dict
    user_cfg: dict
    run_dir: Path
    output: Path
    data: list[str]
    init: str | None
    cache_dir: Path
    resumed: bool
    init_sha256: str | None = None  # the parent's weights fingerprint recorded by the run being resumed


def _default_run_dir(output: Path) -> Path:
    name = output.name
    for suffix in (".safetensors", ".hermes"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return output.with_name(name + ".run")


def _check_output(output: Path) -> None:
    if output.is_dir():
        raise OutputError(f"-o {output} is a folder; give the model file to write (e.g. model.safetensors)")
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot create {output}: {parent} is not a folder")


def _resolve(request: TrainRequest) -> _Setup:
    if request.resume:
        run_dir = Path(request.resume)
        cfg_path = run_dir / "config.json"
        if not cfg_path.is_file():
            raise ResumeError(f"{run_dir} is not a training run directory (no config.json)")
        if request.config is not None:
            raise TrainingConfigError("--config cannot be combined with --resume: a resumed run keeps its "
                                      f"configuration ({cfg_path})")
        try:
            saved = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ResumeError(f"{cfg_path} is not readable ({e})") from None
        if saved.get("format") != RUN_CONFIG_FORMAT:
            raise ResumeError(f"{cfg_path} is not a Hermes training run configuration")
        cfg = resolve_config(saved["config"])
        run = saved["run"]
        data = [str(Path(p).resolve()) for p in request.data] if request.data else list(run["data"])
        if sorted(data) != sorted(run["data"]):
            raise ResumeError(f"--data differs from the run being resumed ({', '.join(run['data'])})")
        if request.init and str(Path(request.init).resolve()) != run.get("init"):
            raise ResumeError(f"--init differs from the run being resumed ({run.get('init')})")
        if request.iterations is not None and request.iterations != cfg["iterations"]:
            log.warning("iterations changed from %d to %d: the learning-rate schedule is recomputed for the new "
                        "length", cfg["iterations"], request.iterations)
            cfg["iterations"] = int(request.iterations)
        if request.num_workers is not None:
            cfg["num_workers"] = int(request.num_workers)
        output = Path(request.output) if request.output else Path(run["output"])
        cache_dir = Path(request.cache_dir or run["cache_dir"])
        return _Setup(cfg, saved.get("user_config", {}), run_dir, output, data, run.get("init"), cache_dir, True,
                      run.get("init_weights_sha256"))

    if not request.output:
        raise TrainingConfigError("-o MODEL is required (the model file to write)")
    if isinstance(request.config, dict):
        user = copy.deepcopy(request.config)
    else:
        user = load_config_file(request.config)
    if request.iterations is not None:
        user["iterations"] = int(request.iterations)
    if request.num_workers is not None:
        user["num_workers"] = int(request.num_workers)
    if request.cache_dir is not None:
        user["cache_dir"] = str(request.cache_dir)
    cfg = resolve_config(user)
    output = Path(request.output)
    run_dir = Path(request.run_dir) if request.run_dir else _default_run_dir(output)
    if (run_dir / "config.json").exists() or (run_dir / "checkpoint.pt").exists():
        raise OutputError(f"{run_dir} already holds a training run; continue it with --resume {run_dir} or choose "
                          f"another --run-dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"--run-dir {run_dir} is a file")
    cache_dir = Path(cfg["cache_dir"]).expanduser() if cfg["cache_dir"] else default_cache_dir()
    data = [str(Path(p).resolve()) for p in request.data]
    init = str(Path(request.init).resolve()) if request.init else None
    return _Setup(cfg, user, run_dir, output, data, init, cache_dir, False)


@dataclass
class _ModelPlan:
    network: HermesR
    modalities: list[ModalityEntry]
    preprocessing: Preprocessing
    task_ids: dict[str, int]  # task name -> model row
    tasks: list[TaskEntry]  # the manifest's task table (inherited + new)
    new_tasks: list[str]
    parent: Manifest | None


def _modality_entries(names: list[str]) -> list[ModalityEntry]:
    official = {m.name.lower(): m for m in OFFICIAL_MODALITIES}
    out = []
    for i, name in enumerate(names):
        known = official.get(name.lower())
        if known is not None:
            out.append(ModalityEntry(i, name, known.description, list(known.dicom)))
        else:
            dicom = ["CT"] if name.upper().startswith("CT") else ["PT"] if name.upper().startswith("PET") else \
                ["MR"] if name.upper().startswith("MR") else []
            out.append(ModalityEntry(i, name, "", dicom))
    return out


def _plan_model(setup: _Setup, plan: TaskPlan, parent_model) -> _ModelPlan:
    cfg = setup.cfg
    if parent_model is None:
        names = list(cfg["modalities"])
        arch = HermesRConfig.from_dict({**cfg["architecture"], "num_task_rows": len(plan.tasks),
                                        "num_modalities": len(names)})
        torch.manual_seed(int(cfg["seed"]))
        network = HermesR(arch)
        intensity = {}
        for m in names:
            intensity[m] = IntensityNorm.from_dict(cfg["intensity"].get(m) or default_intensity(m))
        try:
            pre = Preprocessing(spacing=cfg["spacing"], intensity=intensity, patch_size=cfg["patch_size"])
        except ValueError as e:
            raise TrainingConfigError(f"preprocessing: {e}") from None
        tasks, ids = [], {}
        for i, spec in enumerate(plan.tasks):
            ids[spec.name] = i
            tasks.append(TaskEntry(id=i, name=spec.name, group=spec.group, modalities=list(spec.modalities),
                                   color=color_for(spec.structure), terminology=terminology_for(spec.structure),
                                   description=f"{spec.structure.replace('_', ' ')} as annotated in "
                                               f"{', '.join(spec.datasets)}"))
        return _ModelPlan(network, _modality_entries(names), pre, ids, tasks, [t.name for t in tasks], None)

    manifest = parent_model.manifest
    network = parent_model.network.cpu().train()
    if not network.config.mask_padding:
        log.warning("the parent model has mask_padding off (an imported official model): padded query slots are "
                    "visible to attention, so outputs depend on the batch composition (spec 1.7)")
    for key in ("architecture", "spacing", "intensity", "modalities", "patch_size"):
        if key in setup.user_cfg:
            log.warning("config %r is ignored with --init: the parent model's value is kept", key)
    pre = Preprocessing.from_dict(manifest.preprocessing)
    tasks = [copy.deepcopy(t) for t in manifest.tasks]
    by_name = {t.name: t for t in tasks}
    ids = {t.name: t.id for t in tasks}
    new = [spec for spec in plan.tasks if spec.name not in by_name]
    task_init = setup.cfg["task_init"]
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
        entry = TaskEntry(id=row, name=spec.name, group=spec.group, modalities=list(spec.modalities),
                          color=color_for(spec.structure), terminology=terminology_for(spec.structure),
                          description=f"{spec.structure.replace('_', ' ')} as annotated in {', '.join(spec.datasets)}")
        tasks.append(entry)
        by_name[spec.name] = entry
    for spec in plan.tasks:
        entry = by_name[spec.name]
        for m in spec.modalities:
            if m not in entry.modalities:
                entry.modalities.append(m)
    return _ModelPlan(network, list(manifest.modalities), pre, ids, tasks, [s.name for s in new], manifest)


# ---------------------------------------------------------------------------------------------------- training

def _unwrap(net: torch.nn.Module) -> HermesR:
    return net.module if isinstance(net, DistributedDataParallel) else net


def _stop_on_signals(flag: dict):
    """The first signal asks for a stop after the current iteration's checkpoint; a second one stops now."""

    def handler(signum, frame):
        if flag.get("stop"):
            raise KeyboardInterrupt
        flag["stop"] = signal.Signals(signum).name

    return stop_signal_handler(handler)


def train(request: TrainRequest, after_iteration: Callable[[int], None] | None = None) -> TrainResult:
    """Run (or resume) a training job; see the module docstring. ``after_iteration(n)`` is called on every rank
    after iteration ``n`` (1-based) has been logged and checkpointed (tests use it to simulate crashes)."""
    ctx = init_distributed(request.device)
    try:
        return _train(request, ctx, after_iteration)
    finally:
        ctx.close()


def _train(request: TrainRequest, ctx: DistContext, after_iteration) -> TrainResult:
    setup = _resolve(request)
    cfg = setup.cfg
    if cfg["num_threads"]:
        torch.set_num_threads(int(cfg["num_threads"]))
    _check_output(setup.output)
    parent_model = None
    if setup.init:
        try:
            parent_model = load_model(setup.init)
        except ModelFileError as e:
            raise ModelFileError(f"--init: {e}") from None
        if setup.resumed and parent_model.manifest.weights_sha256 != setup.init_sha256:
            raise ResumeError(f"the parent model {setup.init} has changed since the run started (weights "
                              f"{str(parent_model.manifest.weights_sha256)[:12]}, run recorded "
                              f"{str(setup.init_sha256)[:12]})")

    model_modalities = ([m.name for m in parent_model.manifest.modalities] if parent_model
                        else list(cfg["modalities"]))
    datasets = load_datasets(setup.data, model_modalities, cfg["modality_map"],
                             inherited_modalities=parent_model is not None)
    plan = plan_tasks(datasets, cfg["datasets"])
    mp = _plan_model(setup, plan, parent_model)
    modality_ids = {m.name: m.id for m in mp.modalities}

    splits_path = setup.run_dir / "splits.json"
    if setup.resumed and splits_path.is_file():
        splits = read_splits(splits_path, datasets)
    else:
        splits = make_splits(datasets, int(cfg["seed"]), cfg["split"], cfg["datasets"])
    needed = {name: entry["train"] + entry["validation"] for name, entry in splits["datasets"].items()}

    norms = {m: mp.preprocessing.norm_for(m) for m in {d.model_modality for d in datasets}}
    spacing = list(mp.preprocessing.spacing)
    failed = torch.zeros(1)
    error: BaseException | None = None
    if ctx.is_main:
        try:
            cache = build_cache(datasets, plan.per_dataset, spacing, norms, setup.cache_dir, needed)
        except HermesError as e:
            failed[0], error = 1.0, e
    if ctx.enabled:
        failed = ctx.all_reduce_max(failed)
    if error is not None:
        raise error
    if failed.item():
        raise HermesError("rank 0 could not build the preprocessing cache (see its error)")
    if not ctx.is_main:
        cache = build_cache(datasets, plan.per_dataset, spacing, norms, setup.cache_dir, needed)

    # ---- run directory (rank 0), only now that every input is known to be usable
    run_dir = setup.run_dir
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        run_record = {"format": RUN_CONFIG_FORMAT, "config": cfg, "user_config": setup.user_cfg,
                      "run": {"data": setup.data, "output": str(setup.output), "init": setup.init,
                              "init_weights_sha256": mp.parent.weights_sha256 if mp.parent else None,
                              "cache_dir": str(setup.cache_dir), "device": request.device,
                              "world_size": ctx.world_size, "hermesseg_version": __version__}}
        with atomic_path(run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(run_record, indent=1) + "\n")
        if not splits_path.is_file():
            write_splits(splits_path, splits)
    ctx.barrier()

    device = ctx.device
    network = mp.network.to(device).train()
    ema = EMA(network, cfg["ema_decay"])
    optimizer = build_optimizer(network.parameters(), cfg)
    start, best = 0, None
    ckpt_path, best_path = run_dir / "checkpoint.pt", run_dir / "best.pt"
    query = {d.name: [mp.task_ids[n] for n in plan.per_dataset[d.name].task_names] for d in datasets}
    if setup.resumed and ckpt_path.is_file():
        payload = load_checkpoint(ckpt_path)
        if payload.get("queries") != query:
            raise ResumeError(f"{ckpt_path} was trained with other tasks than this run's datasets give")
        network.load_state_dict(payload["model"])
        ema.load_state_dict(payload["ema"])
        optimizer.load_state_dict(payload["optimizer"])
        set_rng_state(payload["rng"])
        start, best = int(payload["iteration"]), payload.get("best")
        if int(payload["sampler"]["world_size"]) != ctx.world_size:
            log.warning("resuming with %d processes instead of %d: the data stream differs from the original run",
                        ctx.world_size, payload["sampler"]["world_size"])
        if ctx.is_main:
            print(f"resuming {run_dir} at iteration {start}", flush=True)
    elif setup.resumed:
        log.warning("%s has no checkpoint yet: starting the run from iteration 0", run_dir)
    if start >= cfg["iterations"] and ctx.is_main:
        log.warning("the run already has %d iterations (of %d)", start, cfg["iterations"])
    if ctx.is_main:
        truncate_metrics(run_dir / "metrics.jsonl", start)

    model: torch.nn.Module = network
    if ctx.enabled:
        # Without mask_padding (an imported official parent) a batch with no padded slot leaves the null token unused.
        model = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=not network.config.mask_padding)

    sources = [Source(d.name, float(cfg["datasets"].get(d.name, {}).get("weight", 1.0)), query[d.name],
                      modality_ids[d.model_modality],
                      [cache[(d.name, c)] for c in splits["datasets"][d.name]["train"]]) for d in datasets]
    sampler = PatchSampler(sources, cfg["patch_size"], cfg["batch_size"], cfg["foreground_probability"],
                           cfg["augmentation"], int(cfg["seed"]), ctx.rank)
    val_cases = [cache[(d.name, c)] for d in datasets for c in splits["datasets"][d.name]["validation"]]
    metrics = MetricsLog(run_dir / "metrics.jsonl") if ctx.is_main else None
    use_bf16 = device.type == "cuda" and bool(cfg["amp"])
    total = int(cfg["iterations"])
    stream = hashlib.sha256()
    flag: dict = {}
    last_parts: dict = {}
    t_start = time.time()

    def checkpoint(iteration: int) -> None:
        if not ctx.is_main:
            return
        save_checkpoint(ckpt_path, {
            "iteration": iteration, "model": network.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": {"iteration": iteration, "lr": lr_at(iteration, cfg)},
            "rng": rng_state(), "sampler": {"seed": int(cfg["seed"]), "iteration": iteration,
                                            "world_size": ctx.world_size},
            "best": best, "queries": query})
        write_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")

    iteration = start
    with _stop_on_signals(flag):
        loader = batch_loader(sampler, start, total, int(cfg["num_workers"]))
        t_last, logged = time.time(), start  # "time" = mean seconds per iteration since the previous record
        for i, batch in zip(range(start, total), loader):
            stream.update(repr(batch["where"]).encode())
            lr = lr_at(i, cfg)
            set_lr(optimizer, lr)
            image = batch["image"].to(device, non_blocking=True)
            task_ids = batch["task_ids"].to(device)
            modality = batch["modality"].to(device)
            targets = make_targets(batch["label"].to(device), task_ids)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                seg, mod = model(image, task_ids, modality)
            loss, parts = hermes_loss(seg, targets, task_ids, mod, modality, float(cfg["modality_loss_weight"]))
            stats = torch.tensor([parts["loss"], parts["bce"], parts["dice"], parts["modality_ce"],
                                  0.0 if torch.isfinite(loss) else 1.0, 1.0 if flag.get("stop") else 0.0])
            stats = ctx.all_reduce_mean(stats)
            if stats[4] > 0:
                raise HermesError(f"the loss became non-finite at iteration {i + 1}; lower the learning rate "
                                  f"(lr {cfg['lr']}) or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"] > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(network.parameters(), float(cfg["grad_clip"])))
            else:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(network.parameters(), float("inf")))
            optimizer.step()
            ema.update(network, i)
            iteration = i + 1
            now = time.time()
            last_parts = {"loss": float(stats[0]), "bce": float(stats[1]), "dice": float(stats[2]),
                          "modality_ce": float(stats[3])}
            if metrics and (iteration % cfg["log_every"] == 0 or iteration == total or iteration == start + 1):
                metrics.write({"iteration": iteration, **last_parts, "lr": lr, "grad_norm": grad_norm,
                               "time": round((now - t_last) / (iteration - logged), 4),
                               "elapsed": round(now - t_start, 2)})
                t_last, logged = now, iteration
            if cfg["validate_every"] and val_cases and (iteration % cfg["validate_every"] == 0 or iteration == total):
                if ctx.is_main:
                    result = evaluate_cases(ema.module, val_cases, lambda name: query[name],
                                            lambda name: modality_ids[next(d.model_modality for d in datasets
                                                                           if d.name == name)],
                                            cfg["patch_size"], device)
                    dice = result["mean_dice"]
                    metrics.write({"iteration": iteration, "validation_dice": dice, "validation": result["cases"]})
                    if dice is not None and (best is None or dice > best["dice"]):
                        best = {"iteration": iteration, "dice": dice}
                        save_checkpoint(best_path, {"iteration": iteration, "ema": ema.state_dict(), "best": best})
                ctx.barrier()
            stop = bool(stats[5] > 0)
            if iteration % cfg["checkpoint_every"] == 0 or iteration == total or stop:
                checkpoint(iteration)
            if after_iteration is not None:
                after_iteration(iteration)
            if stop:
                ctx.barrier()
                raise TrainingInterrupted(f"stopped by {flag.get('stop', 'a signal')} after iteration {iteration}; "
                                          f"checkpoint written. Continue with: hermesseg train --resume {run_dir}")

    if cfg["debug_rank_fingerprints"]:
        record = {"rank": ctx.rank, "world_size": ctx.world_size, "iteration": iteration,
                  "model": weights_fingerprint(network.state_dict()), "ema": weights_fingerprint(ema.state_dict()),
                  "stream": stream.hexdigest()}
        with atomic_path(run_dir / f"rank{ctx.rank}.json") as tmp:
            tmp.write_text(json.dumps(record) + "\n")

    # ---- the model file
    selected, val_dice = "final", None
    final_state = ema.state_dict()
    if cfg["select"] == "best" and best is not None and best_path.is_file():
        best_payload = load_checkpoint(best_path)
        record = best_payload["best"]  # best.pt may be newer than the checkpoint a resumed run started from
        final_state, selected, val_dice = best_payload["ema"], f"best@{record['iteration']}", record["dice"]
    out_net = HermesR(network.config)
    out_net.load_state_dict({k: v.detach().cpu() for k, v in final_state.items()})
    manifest = _manifest(setup, mp, datasets, splits, plan, iteration, ctx, selected, val_dice, last_parts)
    if ctx.is_main:
        manifest = save_model(setup.output, out_net, manifest)
        write_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
        print(f"wrote {setup.output}: {len(manifest.tasks)} tasks, {iteration} iterations, model = {selected} EMA "
              f"weights{'' if val_dice is None else f' (validation Dice {val_dice:.3f})'}; run: {run_dir}",
              flush=True)
    ctx.barrier()
    return TrainResult(setup.output, run_dir, iteration, selected, val_dice, manifest)


def _manifest(setup: _Setup, mp: _ModelPlan, datasets: list[Dataset], splits: dict, plan: TaskPlan,
              iteration: int, ctx: DistContext, selected: str, val_dice: float | None, last: dict) -> Manifest:
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
    training = {"iterations": iteration, "batch_size": cfg["batch_size"], "world_size": ctx.world_size,
                "global_batch": cfg["batch_size"] * ctx.world_size, "patch_size": cfg["patch_size"],
                "spacing": list(mp.preprocessing.spacing), "optimizer": cfg["optimizer"], "lr": cfg["lr"],
                "seed": cfg["seed"], "selected": f"{selected} EMA weights", "validation_dice": val_dice,
                "final_loss": last or None, "hermesseg_version": __version__, "device": str(ctx.device)}
    card = {"description": cfg["description"] or f"Hermes-R trained on {', '.join(names)}",
            "training": training, "datasets": ds_info,
            "shippable": all(d.shippable is True for d in datasets),
            "licences": sorted({d.license for d in datasets if d.license})}
    if not card["shippable"]:
        card["shippable_note"] = ("trained on data that is not marked shippable: "
                                  + ", ".join(d.name for d in datasets if d.shippable is not True))
    note = (f"{iteration} iterations, batch {cfg['batch_size']}x{ctx.world_size}, patch "
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
