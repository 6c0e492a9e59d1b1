"""The optimisation loop every way of training shares, with one named hook: which parameters train.

``trainable(network)`` returns the parameters to optimise; every other parameter is frozen (``requires_grad``
False), is not given to the optimiser and is not averaged by the EMA, so its bytes never change. ``train`` trains
all parameters; ``add-task --mode priors`` trains only the new prior rows (``HermesR.new_prior_parameters``);
``finetune`` trains everything in named groups whose learning rates are scaled (``scaled_groups``: the backbone at
about 0.1x, spec 4 "Transfer"). A hook returns parameters, or optimiser parameter groups ``{"name", "params",
"lr_scale"}``; the schedule's learning rate times ``lr_scale`` is each group's.
What happens after each step (logging, validation, checkpoints, progress, stopping) is the caller's ``on_step``;
``add-task --mode adapter`` also passes a ``FeatureReplay``, whose adapter-only updates follow every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import HermesError
from ..network import HermesR
from .distributed import DistContext
from .feature_replay import FeatureReplay
from .loss import hermes_loss
from .optim import EMA, build_optimizer, lr_at, set_lr
from .sampling import PatchSampler, batch_loader, make_targets

Trainable = Callable[[HermesR], list]  # parameters, or parameter groups {"name", "params", "lr_scale"}


def all_parameters(network: HermesR) -> list[nn.Parameter]:
    return list(network.parameters())


def new_prior_rows(network: HermesR) -> list[nn.Parameter]:
    return network.new_prior_parameters()


def scaled_groups(backbone_scale: float, new_rows_scale: float) -> Trainable:
    """Every parameter, in three groups: the new prior rows (``new_rows_scale`` x the learning rate), the backbone
    (stem and encoder stages, ``backbone_scale`` x) and the rest (decoder, fusion, heads: 1 x)."""

    def groups(network: HermesR) -> list[dict]:
        new = network.new_prior_parameters()
        backbone = [p for module in (network.stem, network.encoder) for p in module.parameters()]
        taken = {id(p) for p in new + backbone}
        return [{"name": "new rows", "params": new, "lr_scale": float(new_rows_scale)},
                {"name": "backbone", "params": backbone, "lr_scale": float(backbone_scale)},
                {"name": "decoder, fusion, heads", "params": [p for p in network.parameters() if id(p) not in taken],
                 "lr_scale": 1.0}]

    return groups


def parameter_groups(chosen: list) -> list[dict]:
    """A hook's answer as named groups (a plain parameter list is one group, "trained", at 1 x); empty groups are
    dropped."""
    if chosen and not isinstance(chosen[0], dict):
        chosen = [{"name": "trained", "params": list(chosen), "lr_scale": 1.0}]
    return [g for g in chosen if g["params"]]


def new_rows_and_adapter(network: HermesR) -> list[nn.Parameter]:
    """add-task --mode adapter: the new prior rows and the new group's adapter (the only adapter at that point)."""
    return network.new_prior_parameters() + list(network.adapters.parameters())


@dataclass
class Optimisation:
    optimizer: torch.optim.Optimizer
    ema: EMA


def prepare_optimisation(network: HermesR, cfg: dict, trainable: Trainable) -> Optimisation:
    """Freeze what ``trainable`` does not return; an optimiser and an EMA for the rest."""
    groups = parameter_groups(trainable(network))
    chosen = {id(p) for g in groups for p in g["params"]}
    if not chosen:
        raise HermesError("nothing to train: the trainable-parameter hook returned no parameter")
    for p in network.parameters():
        p.requires_grad_(id(p) in chosen)
    return Optimisation(build_optimizer(groups, cfg), EMA(network, cfg["ema_decay"]))


@dataclass
class Step:
    """One finished iteration (1-based ``iteration``), as ``on_step`` sees it."""

    iteration: int
    lr: float
    parts: dict  # loss, bce, dice, modality_ce (means over the ranks)
    grad_norm: float
    stop: bool  # some rank was asked to stop
    batch: dict


def run_iterations(model: nn.Module, network: HermesR, opt: Optimisation, sampler: PatchSampler, cfg: dict,
                   ctx: DistContext, start: int, total: int, stop_requested: Callable[[], bool],
                   on_step: Callable[[Step], bool],
                   horizon: Callable[[], int | None] = lambda: None, replay: FeatureReplay | None = None) -> int:
    """Iterations ``start..total-1``; ``model`` is ``network`` or its DDP wrapper. ``on_step`` returns True to end
    the loop early; ``horizon()``, where the learning-rate decay ends if before ``total`` (``optim.lr_at``).
    With ``replay`` (entered), each iteration adds ``replay.plan.updates_per_step`` adapter-only updates at its learning
    rate. Returns the number of iterations done (counting from 0)."""
    device = ctx.device
    use_bf16 = device.type == "cuda" and bool(cfg["amp"])
    trained = [p for p in network.parameters() if p.requires_grad]
    limit = float(cfg["grad_clip"]) if cfg["grad_clip"] > 0 else float("inf")

    def update(loss: torch.Tensor, i: int) -> float:
        """One optimiser step on ``loss`` (clipped gradient, then the EMA); returns the gradient norm."""
        opt.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trained, limit))
        opt.optimizer.step()
        opt.ema.update(network, i)
        return grad_norm

    iteration = start
    loader = batch_loader(sampler, start, total, int(cfg["num_workers"]))
    for i, batch in zip(range(start, total), loader):
        lr = lr_at(i, cfg, horizon())
        set_lr(opt.optimizer, lr)
        image = batch["image"].to(device, non_blocking=True)
        task_ids = batch["task_ids"].to(device)
        modality = batch["modality"].to(device)
        targets = make_targets(batch["label"].to(device), task_ids)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            seg, mod = model(image, task_ids, modality)
        loss, parts = hermes_loss(seg, targets, task_ids, mod, modality, float(cfg["modality_loss_weight"]))
        stats = torch.tensor([parts["loss"], parts["bce"], parts["dice"], parts["modality_ce"],
                              0.0 if torch.isfinite(loss) else 1.0, 1.0 if stop_requested() else 0.0])
        stats = ctx.all_reduce_mean(stats)
        if stats[4] > 0:
            raise HermesError(f"the loss became non-finite at iteration {i + 1}; lower the learning rate "
                              f"(lr {cfg['lr']}) or check the data")
        grad_norm = update(loss, i)
        if replay is not None:  # adapter-only updates on pooled features (feature_replay)
            replay.record(targets, task_ids)
            for _ in range(replay.plan.updates_per_step):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    replayed, replay_targets, replay_ids = replay.batch()
                update(hermes_loss(replayed, replay_targets, replay_ids)[0], i)
        iteration = i + 1
        parts = {"loss": float(stats[0]), "bce": float(stats[1]), "dice": float(stats[2]),
                 "modality_ce": float(stats[3])}
        if on_step(Step(iteration, lr, parts, grad_norm, bool(stats[5] > 0), batch)):
            break
    return iteration
