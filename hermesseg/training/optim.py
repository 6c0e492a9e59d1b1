"""Optimiser, per-iteration learning-rate schedule and the EMA of the weights (spec 2.5, per iteration not per epoch).

Schedule: ``warmup_iterations`` of warm-up, linear (``lr (i+1)/W``) or exponential (the reference's
``lr exp(10 (i/W - 1))``), then polynomial decay ``min_lr + (lr - min_lr) (1 - (i-W)/(N-W))^poly_power``. The
learning rate is a pure function of the iteration, so the "scheduler state" is just the iteration number. A run
that seconds may stop first (add-task, finetune) passes a ``horizon``, the iterations it is expected to reach in its
time: when that is fewer than ``N`` the decay ends there, so a run the clock stops still ends at its smallest
learning rate instead of being cut off mid-schedule. A run that its steps end keeps the pure schedule (and its
determinism).

EMA: ``ema = d ema + (1 - d) w`` after every optimiser step with ``d = min(1 - 1/(step + 1), ema_decay)``, so the
first steps average uniformly and later ones decay at ``ema_decay`` (0.99). Buffers are copied.

LAMB (optional, ``"optimizer": "lamb"``): Adam moments with decoupled weight decay, each parameter's update scaled by
the trust ratio ||w|| / ||update|| (1 where either norm is 0), as in You et al. 2019; native torch, no apex.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch
from torch import nn


def lr_at(iteration: int, cfg: Mapping, horizon: int | None = None) -> float:
    base, total = float(cfg["lr"]), int(cfg["iterations"])
    if horizon is not None:
        total = max(min(total, int(horizon)), 1)
    warm = min(int(cfg["warmup_iterations"]), max(total - 1, 0))
    min_lr = float(cfg.get("min_lr", 0.0))
    if iteration < warm:
        if cfg.get("warmup", "linear") == "exponential":
            return base * math.exp(10.0 * (iteration / warm - 1.0))
        return base * (iteration + 1) / warm
    span = max(total - warm, 1)
    progress = min(max(iteration - warm, 0) / span, 1.0)
    return min_lr + (base - min_lr) * (1.0 - progress) ** float(cfg["poly_power"])


class Lamb(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                step = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** step)
                v_hat = v / (1 - beta2 ** step)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update = update.add(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_(update * trust, alpha=-group["lr"])
        return loss


def build_optimizer(params: Iterable, cfg: Mapping) -> torch.optim.Optimizer:
    """AdamW or LAMB over the trainable ``params`` (parameters, or parameter groups with an ``lr_scale``)."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
    else:
        params = [p for p in params if p.requires_grad]
    kw = dict(lr=float(cfg["lr"]), betas=tuple(float(b) for b in cfg["betas"]), eps=float(cfg["eps"]),
              weight_decay=float(cfg["weight_decay"]))
    if cfg["optimizer"] == "lamb":
        return Lamb(params, **kw)
    return torch.optim.AdamW(params, foreach=False, **kw)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's ``lr`` times each group's ``lr_scale`` (1 when the group has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class EMA:
    """Exponential moving average of a module's parameters (kept on the module's device, no gradients).

    The parameters that train are fixed for an EMA's life (the loop freezes the rest before building it), so the
    pairs to average are found once and averaged in two fused ``torch._foreach`` calls, with the same bytes as a
    per-tensor loop. Why: add-task updates the EMA after each of its 9 updates per step; for its 28 trained tensors
    (550,118 elements) the loop, which walked both modules every time, took 9.1 ms an update and the fused form 0.4
    ms (2 AVX2 cores), about 3 % of a 2.9 s step there (benchmarks/add_task_results.md)."""

    def __init__(self, module: nn.Module, max_decay: float = 0.99):
        import copy
        self.module = copy.deepcopy(module).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.max_decay = float(max_decay)
        self._source: nn.Module | None = None  # the module whose parameters _pairs and _buffers hold
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def decay(self, step: int) -> float:
        return min(1.0 - 1.0 / (step + 1), self.max_decay)

    def _track(self, module: nn.Module) -> None:
        """Find the (average, live) pairs of ``module``'s trained parameters and its buffers, once per module."""
        if self._source is not module:
            pairs = [(e, p) for e, p in zip(self.module.parameters(), module.parameters()) if p.requires_grad]
            self._pairs = ([e for e, _ in pairs], [p for _, p in pairs])
            self._buffers = list(zip(self.module.buffers(), module.buffers()))
            self._source = module

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """Average the trainable parameters; frozen ones are left alone (``d*w + (1-d)*w`` is not always ``w`` in
        floating point, and frozen weights must keep their exact bytes)."""
        d = self.decay(step)
        self._track(module)
        averaged, current = self._pairs
        if averaged:
            torch._foreach_mul_(averaged, d)
            torch._foreach_add_(averaged, current, alpha=1.0 - d)
        for e, b in self._buffers:
            e.copy_(b)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        self.module.load_state_dict(state)
