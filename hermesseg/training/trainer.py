"""`hermesseg train`: from nnU-Net v2 dataset folders to a Hermes model file, resumable and data-parallel.

A composition of the shared parts (run set-up, model plan, loop, model card). Order of work (nothing is written
before every input has been checked):

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

import hashlib
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from .. import __version__
from ..atomic import atomic_path
from ..errors import HermesError
from ..manifest import Manifest
from ..model_file import save_model, weights_fingerprint
from ..network import HermesR
from ..nnunet import load_datasets, plan_tasks
from ..signals import stop_signal_handler
from .cache import build_cache
from .checkpoint import ResumeError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .distributed import DistContext, init_distributed
from .loop import Step, all_parameters, prepare_optimisation, run_iterations
from .model_card import training_manifest
from .model_plan import plan_from_parent, plan_new_model
from .optim import lr_at
from .run_files import MetricsLog, truncate_metrics, write_curves
from .run_setup import RUN_CONFIG_FORMAT, TrainRequest, check_output, load_parent, resolve_run
from .sampling import PatchSampler, Source
from .splits import make_splits, read_splits, write_splits
from .task_quality import quality_from_scores, scores_by_task, with_quality
from .validation import evaluate_cases

log = logging.getLogger(__name__)

__all__ = ["TrainRequest", "TrainResult", "TrainingInterrupted", "train"]


class TrainingInterrupted(HermesError):
    """Training stopped on a signal after writing a checkpoint; the run can be resumed."""

    exit_code = 130


@dataclass
class TrainResult:
    output: Path
    run_dir: Path
    iterations: int
    selected: str
    validation_dice: float | None
    manifest: Manifest


def _stop_on_signals(flag: dict):
    """The first signal asks for a stop after the current iteration's checkpoint; a second one stops now."""

    def handler(signum, frame):
        if flag.get("stop"):
            raise KeyboardInterrupt
        flag["stop"] = signal.Signals(signum).name

    return stop_signal_handler(handler)


def train(request: TrainRequest, after_iteration: Callable[[int], None] | None = None,
          progress=None) -> TrainResult:
    """Run (or resume) a training job; see the module docstring. ``after_iteration(n)`` is called on every rank
    after iteration ``n`` (1-based) has been logged and checkpointed (tests use it to simulate crashes).
    ``progress`` (a ``hermesseg.progress.Progress``) gets one event per logged iteration on rank 0."""
    ctx = init_distributed(request.device)
    try:
        return _train(request, ctx, after_iteration, progress)
    finally:
        ctx.close()


def _cache_on_every_rank(ctx: DistContext, build: Callable[[], dict]) -> dict:
    """Rank 0 builds the cache first (the others would race it), then the others open it."""
    failed = torch.zeros(1)
    error: BaseException | None = None
    cache = None
    if ctx.is_main:
        try:
            cache = build()
        except HermesError as e:
            failed[0], error = 1.0, e
    if ctx.enabled:
        failed = ctx.all_reduce_max(failed)
    if error is not None:
        raise error
    if failed.item():
        raise HermesError("rank 0 could not build the preprocessing cache (see its error)")
    return cache if cache is not None else build()


def _train(request: TrainRequest, ctx: DistContext, after_iteration, progress) -> TrainResult:
    setup = resolve_run(request)
    cfg = setup.cfg
    if cfg["num_threads"]:
        torch.set_num_threads(int(cfg["num_threads"]))
    check_output(setup.output)
    parent_model = load_parent(setup.init, "--init") if setup.init else None
    if parent_model and setup.resumed and parent_model.manifest.weights_sha256 != setup.init_sha256:
        raise ResumeError(f"the parent model {setup.init} has changed since the run started (weights "
                          f"{str(parent_model.manifest.weights_sha256)[:12]}, run recorded "
                          f"{str(setup.init_sha256)[:12]})")

    model_modalities = ([m.name for m in parent_model.manifest.modalities] if parent_model
                        else list(cfg["modalities"]))
    datasets = load_datasets(setup.data, model_modalities, cfg["modality_map"],
                             inherited_modalities=parent_model is not None)
    plan = plan_tasks(datasets, cfg["datasets"])
    mp = plan_from_parent(cfg, setup.user_cfg, plan, parent_model) if parent_model else plan_new_model(cfg, plan)
    modality_ids = {m.name: m.id for m in mp.modalities}

    splits_path = setup.run_dir / "splits.json"
    if setup.resumed and splits_path.is_file():
        splits = read_splits(splits_path, datasets)
    else:
        splits = make_splits(datasets, int(cfg["seed"]), cfg["split"], cfg["datasets"])
    needed = {name: entry["train"] + entry["validation"] for name, entry in splits["datasets"].items()}
    norms = {m: mp.preprocessing.norm_for(m) for m in {d.model_modality for d in datasets}}
    cache = _cache_on_every_rank(ctx, lambda: build_cache(datasets, plan.per_dataset, list(mp.preprocessing.spacing),
                                                          norms, setup.cache_dir, needed))

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
    opt = prepare_optimisation(network, cfg, all_parameters)
    start, best = 0, None
    ckpt_path, best_path = run_dir / "checkpoint.pt", run_dir / "best.pt"
    query = {d.name: [mp.task_ids[n] for n in plan.per_dataset[d.name].task_names] for d in datasets}
    if setup.resumed and ckpt_path.is_file():
        payload = load_checkpoint(ckpt_path)
        if payload.get("queries") != query:
            raise ResumeError(f"{ckpt_path} was trained with other tasks than this run's datasets give")
        network.load_state_dict(payload["model"])
        opt.ema.load_state_dict(payload["ema"])
        opt.optimizer.load_state_dict(payload["optimizer"])
        set_rng_state(payload["rng"])
        start, best = int(payload["iteration"]), payload.get("best")
        if int(payload["sampler"]["world_size"]) != ctx.world_size:
            log.warning("resuming with %d processes instead of %d: the data stream differs from the original run",
                        ctx.world_size, payload["sampler"]["world_size"])
        if ctx.is_main:
            print(f"resuming {run_dir} at iteration {start}", file=sys.stderr, flush=True)
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
    modality_of = {d.name: modality_ids[d.model_modality] for d in datasets}
    metrics = MetricsLog(run_dir / "metrics.jsonl") if ctx.is_main else None
    total = int(cfg["iterations"])
    stream = hashlib.sha256()
    flag: dict = {}
    state = {"best": best, "last": {}, "t_last": time.time(), "logged": start}
    t_start = time.time()

    def checkpoint(iteration: int) -> None:
        if not ctx.is_main:
            return
        save_checkpoint(ckpt_path, {
            "iteration": iteration, "model": network.state_dict(), "ema": opt.ema.state_dict(),
            "optimizer": opt.optimizer.state_dict(),
            "scheduler": {"iteration": iteration, "lr": lr_at(iteration, cfg)},
            "rng": rng_state(), "sampler": {"seed": int(cfg["seed"]), "iteration": iteration,
                                            "world_size": ctx.world_size},
            "best": state["best"], "queries": query})
        write_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")

    def validate(iteration: int) -> None:
        if ctx.is_main:
            result = evaluate_cases(opt.ema.module, val_cases, lambda name: query[name], modality_of.__getitem__,
                                    cfg["patch_size"], device)
            dice = result["mean_dice"]
            metrics.write({"iteration": iteration, "validation_dice": dice, "validation": result["cases"]})
            if dice is not None and (state["best"] is None or dice > state["best"]["dice"]):
                state["best"] = {"iteration": iteration, "dice": dice}
                save_checkpoint(best_path, {"iteration": iteration, "ema": opt.ema.state_dict(),
                                            "best": state["best"]})
        ctx.barrier()

    def on_step(step: Step) -> bool:
        stream.update(repr(step.batch["where"]).encode())
        iteration, now = step.iteration, time.time()
        state["last"] = step.parts
        if metrics and (iteration % cfg["log_every"] == 0 or iteration == total or iteration == start + 1):
            metrics.write({"iteration": iteration, **step.parts, "lr": step.lr, "grad_norm": step.grad_norm,
                           "time": round((now - state["t_last"]) / (iteration - state["logged"]), 4),
                           "elapsed": round(now - t_start, 2)})
            state["t_last"], state["logged"] = now, iteration
            if progress is not None:
                rate = (now - t_start) / max(iteration - start, 1)
                progress.update("train", iteration / total, f"iteration {iteration}/{total}, loss "
                                f"{step.parts['loss']:.4f}", step=iteration, total=total,
                                loss=round(step.parts["loss"], 5), eta_s=round(rate * (total - iteration), 1))
        if cfg["validate_every"] and val_cases and (iteration % cfg["validate_every"] == 0 or iteration == total):
            validate(iteration)
        if iteration % cfg["checkpoint_every"] == 0 or iteration == total or step.stop:
            checkpoint(iteration)
        if after_iteration is not None:
            after_iteration(iteration)
        if step.stop:
            ctx.barrier()
            raise TrainingInterrupted(f"stopped by {flag.get('stop', 'a signal')} after iteration {iteration}; "
                                      f"checkpoint written. Continue with: hermesseg train --resume {run_dir}")
        return False

    with _stop_on_signals(flag):
        iteration = run_iterations(model, network, opt, sampler, cfg, ctx, start, total,
                                   lambda: bool(flag.get("stop")), on_step)

    if cfg["debug_rank_fingerprints"]:
        record = {"rank": ctx.rank, "world_size": ctx.world_size, "iteration": iteration,
                  "model": weights_fingerprint(network.state_dict()), "ema": weights_fingerprint(opt.ema.state_dict()),
                  "stream": stream.hexdigest()}
        with atomic_path(run_dir / f"rank{ctx.rank}.json") as tmp:
            tmp.write_text(json.dumps(record) + "\n")

    # ---- the model file
    selected, val_dice = "final", None
    final_state = opt.ema.state_dict()
    if cfg["select"] == "best" and state["best"] is not None and best_path.is_file():
        best_payload = load_checkpoint(best_path)
        record = best_payload["best"]  # best.pt may be newer than the checkpoint a resumed run started from
        final_state, selected, val_dice = best_payload["ema"], f"best@{record['iteration']}", record["dice"]
    out_net = HermesR(network.config)
    out_net.load_state_dict({k: v.detach().cpu() for k, v in final_state.items()})
    if ctx.is_main:  # each task's held-out Dice with the saved weights (None: seen in training only)
        quality = {}
        if val_cases:
            scored = evaluate_cases(out_net.to(device), val_cases, lambda name: query[name], modality_of.__getitem__,
                                    cfg["patch_size"], device)["cases"]
            out_net.cpu()
            names = {d.name: plan.per_dataset[d.name].task_names for d in datasets}
            quality = quality_from_scores(scores_by_task(scored, names.__getitem__),
                                          "validation split of its training run (the saved weights)")
        mp.tasks = with_quality(mp.tasks, quality, {t.name for t in plan.tasks})
    manifest = training_manifest(setup, mp, datasets, splits, plan, iteration, ctx.world_size, str(ctx.device),
                                 selected, val_dice, state["last"])
    if ctx.is_main:
        manifest = save_model(setup.output, out_net, manifest)
        write_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
        print(f"wrote {setup.output}: {len(manifest.tasks)} tasks, {iteration} iterations, model = {selected} EMA "
              f"weights{'' if val_dice is None else f' (validation Dice {val_dice:.3f})'}; run: {run_dir}",
              file=sys.stderr, flush=True)
    ctx.barrier()
    return TrainResult(setup.output, run_dir, iteration, selected, val_dice, manifest)
