"""Feature replay (``add-task --mode adapter``): more adapter updates per second from features a step already paid for.

Why: a group adapter reads only the last decoder features ``d0``, the stem features ``f0`` and the input image, and
adds its correction to the task head's logits (``hermesseg.network.group_adapter``). A joint step of the new rows and
the adapter pays for the frozen network's forward and the backward through it (for the rows); the new structures are
step-bound on a CPU. So after each joint step ``updates_per_step`` more updates of the adapter alone run on batches
drawn from the last ``pool_steps`` steps' features, each on a random ``crop``-voxel window of the pooled step: an
update costs the adapter's forward and backward on that window (32^3: 0.15 s on 2 CPU cores, 0.56 s on the whole 48^3
window), and every update sees another window. The rows move on joint steps only; a pooled batch's features were
computed with rows at most ``pool_steps`` steps old.

Measured (``benchmarks/bench_add_task.py``, ACDC, 5 patients, the defaults of the time, 600 s on 2 CPU cores of an
AVX2 machine): 8 updates on 32^3 windows from a pool of 16 steps, mean held-out Dice 0.609 in 182 steps, against
0.538 in 161 steps with 3 updates on whole windows (benchmarks/add_task_results.md).

A replayed update is the tail of the network's own forward on a window of stored inputs: ``GroupAdapters.correct(
head logits, task_ids, d0, f0, image)`` and the same loss, so it trains what a step trains, minus the rows.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from ..network import HermesR
from .sampling import patch_start


@dataclass(frozen=True)
class ReplayPlan:
    updates_per_step: int  # adapter-only updates after every joint step
    pool_steps: int  # the steps whose features are kept
    crop: int | None = None  # an update trains on a random crop of this edge (voxels) of a pooled step; None: all


def random_crop(shape, edge: int | None, rng: np.random.Generator) -> tuple[slice, ...]:
    """Slices of a random window of ``edge`` voxels per axis (the whole axis where it is shorter) of ``shape``."""
    if edge is None:
        return tuple(slice(None) for _ in shape)
    size = [min(edge, n) for n in shape]
    return tuple(slice(a, a + n) for a, n in zip(patch_start(shape, size, rng), size))


class FeatureReplay:
    """Captures, on ``network``'s training forward, what the adapter reads (``d0``: the last decoder stage's output,
    ``f0``: the stem's, ``image``: the stem's input, the task head's logits); ``record`` pools them with the step's
    targets and ``batch`` draws one pooled step (seeded). Use as a context manager: the capture hooks exist only
    inside it, so no copy of the network (the EMA, a later phase) inherits them."""

    def __init__(self, network: HermesR, plan: ReplayPlan, seed: int):
        if not len(network.adapters):
            raise ValueError("feature replay trains a group adapter; this network has none")
        self.network, self.plan = network, plan
        self.rng = np.random.default_rng([int(seed), 0x5EED])
        self.pool: deque = deque(maxlen=plan.pool_steps)
        self._seen: dict[str, torch.Tensor] = {}
        self._hooks = []

    def __enter__(self) -> "FeatureReplay":
        def keep(name):
            def hook(module, inputs, output):
                self._seen[name] = output.detach()
            return hook
        def keep_input(module, inputs):
            self._seen["image"] = inputs[0].detach()
        net = self.network
        self._hooks = [net.stem.register_forward_pre_hook(keep_input), net.stem.register_forward_hook(keep("f0")),
                       net.decoder[-1].register_forward_hook(keep("d0")),
                       net.task_head.register_forward_hook(keep("logits"))]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._seen = [], {}
        self.pool.clear()

    def record(self, targets: torch.Tensor, task_ids: torch.Tensor) -> None:
        """Pool the features of the forward just run with its ``targets`` (B, T, *S) and ``task_ids`` (B, T)."""
        seen = self._seen
        self.pool.append((seen["logits"], task_ids.detach(), seen["d0"], seen["f0"], seen["image"], targets.detach()))
        self._seen = {}

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(corrected logits (B, T, *C) with the adapter's graph, targets, task_ids) of a pooled step, on a random
        window C of its grid (``plan.crop``; the whole grid without)."""
        logits, task_ids, d0, f0, image, targets = self.pool[int(self.rng.integers(len(self.pool)))]
        window = (slice(None), slice(None)) + random_crop(logits.shape[2:], self.plan.crop, self.rng)
        logits, d0, f0, image, targets = (t[window] for t in (logits, d0, f0, image, targets))
        return self.network.adapters.correct(logits, task_ids, d0, f0, image), targets, task_ids
