"""One training phase of add-task or finetune: the shared loop on a prepared network, bounded by steps and seconds.

The caller prepares the network (``new_rows.network_with_new_rows``), says what trains (the loop's ``trainable``
hook), where the batches come from (sampler ``Source``s: the new tasks' cases, and for finetune the replay cases)
and, for an adapter, how many adapter-only updates on pooled features follow each step (``feature_replay``). A
phase reports every step to the ``RunClock`` and stops early when its seconds are used up (its learning rate then
decays to where the seconds are expected to run out, ``optim.lr_at``); it returns the EMA network (the weights a
model file gets), the steps done and the last loss parts.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
import math
import time
from typing import Sequence

from ..network import HermesR
from .config import resolve_config
from .distributed import DistContext
from .feature_replay import FeatureReplay, ReplayPlan
from .loop import Step, Trainable, prepare_optimisation, run_iterations
from .run_clock import RunClock
from .sampling import PatchSampler, Source


@dataclass
class PhaseResult:
    network: HermesR  # the EMA weights
    steps: int
    last: dict  # the last step's loss parts
    groups: list[dict]  # the optimiser's parameter groups: name, parameters (elements), lr_scale, peak_lr
    samples: dict[str, int]  # patches drawn per sampler source


# what the lineage record keeps of a phase's resolved configuration (child_manifest.run_details adds seed, steps, data)
RECORDED_SETTINGS = ("lr", "weight_decay", "warmup_iterations", "batch_size", "ema_decay", "patch_size",
                     "foreground_probability", "augmentation")


def phase_config(settings: dict, seed: int, steps: int, patch_size) -> dict:
    """The resolved training configuration of a phase: the method's ``settings`` with the run's seed and length."""
    return resolve_config({**settings, "seed": int(seed), "iterations": int(steps), "patch_size": list(patch_size)})


def recorded_settings(cfg: dict) -> dict:
    """The settings of ``cfg`` (a ``phase_config``) that the lineage records, so a run can be repeated and compared."""
    return {key: cfg[key] for key in RECORDED_SETTINGS}


def train_phase(network: HermesR, trainable: Trainable, sources: Sequence[Source], cfg: dict, clock: RunClock,
                stage: str, budget_s: float, ctx: DistContext, replay: ReplayPlan | None = None) -> PhaseResult:
    """``replay``: adapter-only updates on pooled features after every step (``feature_replay``)."""
    steps = int(cfg["iterations"])
    opt = prepare_optimisation(network, cfg, trainable)
    sampler = PatchSampler(sources, cfg["patch_size"], cfg["batch_size"], cfg["foreground_probability"],
                           cfg["augmentation"], int(cfg["seed"]))
    start, last = time.monotonic(), {}
    peak = [0.0] * len(opt.optimizer.param_groups)
    samples = {s.name: 0 for s in sources}

    def on_step(step: Step) -> bool:
        nonlocal last
        last = step.parts
        for k, group in enumerate(opt.optimizer.param_groups):
            peak[k] = max(peak[k], float(group["lr"]))
        for where in step.batch["where"]:
            samples[where[0]] += 1
        clock.done += 1
        elapsed = time.monotonic() - start
        clock.step_s = elapsed / step.iteration
        clock.event(stage, f"{stage}: step {step.iteration}/{steps}, loss {step.parts['loss']:.4f}",
                    loss=round(step.parts["loss"], 5))
        return elapsed + clock.step_s > budget_s

    def horizon() -> int | None:  # the steps the phase's seconds allow at the measured step time
        if clock.step_s is None or not math.isfinite(budget_s):
            return None
        return int(budget_s / clock.step_s)

    with FeatureReplay(network, replay, int(cfg["seed"])) if replay else nullcontext() as pooled:
        done = run_iterations(network, network, opt, sampler, cfg, ctx, 0, steps, lambda: False, on_step, horizon,
                              pooled)
    clock.planned -= steps - done
    groups = [{"name": g["name"], "parameters": sum(p.numel() for p in g["params"]), "lr_scale": g["lr_scale"],
               "peak_lr": peak[k]} for k, g in enumerate(opt.optimizer.param_groups)]
    return PhaseResult(opt.ema.module, done, last, groups, samples)
