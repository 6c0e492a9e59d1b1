"""Group adapters (spec 4, ``add-task --mode adapter``): weights that belong to one task group and run only when a
query holds that group's task rows, so no other group's logits can change (zero forgetting by construction).

Why a convolutional adapter, not only low-rank updates of the fusion and head projections: a task's logit is a
1x1x1 kernel over the last decoder features (``TaskKernelHead``), and at the default model's base width 8 that is a
linear read-out of 8 channels per voxel. Whatever the priors or the projections learn, a new structure's mask is
bounded by what those 8 channels separate. The adapter adds spatial capacity where the priors cannot reach: a small
residual U-Net (``levels`` resolutions, ``width`` channels at full resolution) over the query's last decoder
features ``d0`` and the stem features ``f0`` (both ``base_channels`` wide at full resolution), whose output is one
logit correction per task of the group, added to the head's logits. Its last convolution starts at zero, so a new
adapter changes nothing until it is trained.

It sits after the whole backbone: when only adapters train, the frozen network runs without building an autograd
graph, and a training step costs one forward of the base plus the adapter's forward and backward.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import AdapterConfig
from .residual_block import DownStage, Stem, UpStage


class GroupAdapter(nn.Module):
    """``forward(d0, f0) -> (B, R, *S)``: one logit correction per task row of ``config.task_ids``.

    d0, f0: (B, F, *S) full-resolution features (F = the network's base width); S must allow ``levels - 1`` 2x
    poolings with at least 2 voxels left (any patch Hermes-R accepts does).
    """

    def __init__(self, config: AdapterConfig, feature_channels: int, eps: float = 1e-4):
        super().__init__()
        w, n = config.width, config.blocks
        widths = [w * 2 ** level for level in range(config.levels)]
        self.stem = Stem(2 * feature_channels, w, n, eps)
        self.down = nn.ModuleList(DownStage(widths[i], widths[i + 1], n, eps) for i in range(len(widths) - 1))
        self.up = nn.ModuleList(UpStage(widths[i + 1], widths[i], widths[i], n, eps)
                                for i in reversed(range(len(widths) - 1)))
        self.out = nn.Sequential(nn.InstanceNorm3d(w, eps=eps), nn.ReLU(),
                                 nn.Conv3d(w, len(config.task_ids), kernel_size=1))
        nn.init.zeros_(self.out[2].weight)  # a new adapter changes nothing until it is trained
        nn.init.zeros_(self.out[2].bias)

    def forward(self, d0: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        x = self.stem(torch.cat([d0, f0], dim=1))
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)
        for up in self.up:
            x = up(x, skips.pop())
        return self.out(x)


class GroupAdapters(nn.ModuleDict):
    """A network's adapters keyed by group (tensor names ``adapters.<group>.*``), and the rule that applies them
    (``correct``): an adapter runs only on the batch items whose query holds one of its rows and changes only those
    rows' channels; every other channel keeps its exact bytes.

    Entries go straight into ``_modules``: a group may be called like a torch attribute ("train", "cuda"), which
    ``ModuleDict.__setitem__`` would refuse; lookups and ``state_dict`` read ``_modules`` only.
    """

    def __init__(self, configs: tuple[AdapterConfig, ...] = (), feature_channels: int = 1, eps: float = 1e-4):
        super().__init__()
        self.configs: dict[str, AdapterConfig] = {}
        for config in configs:
            self.add(config, feature_channels, eps)

    def add(self, config: AdapterConfig, feature_channels: int, eps: float = 1e-4) -> GroupAdapter:
        if config.group in self._modules:
            raise ValueError(f"group {config.group!r} already has an adapter")
        self.configs[config.group] = config
        self._modules[config.group] = GroupAdapter(config, feature_channels, eps)
        return self._modules[config.group]

    def correct(self, logits: torch.Tensor, task_ids: torch.Tensor, d0: torch.Tensor,
                f0: torch.Tensor) -> torch.Tensor:
        """logits (B, T, *S) of the query ``task_ids`` (B, T) -> the same with each adapter's rows corrected."""
        for group, adapter in self._modules.items():
            rows = torch.as_tensor(self.configs[group].task_ids, dtype=task_ids.dtype, device=task_ids.device)
            match = task_ids[..., None] == rows  # (B, T, R)
            hit = match.any(dim=-1)  # (B, T)
            items = hit.any(dim=1).nonzero().flatten()
            if items.numel() == 0:
                continue
            delta = adapter(d0[items], f0[items])  # (n, R, *S)
            slot = match[items].to(torch.long).argmax(dim=-1)  # (n, T): the output that serves each channel
            spatial = (1,) * (delta.dim() - 2)
            picked = delta.gather(1, slot.view(*slot.shape, *spatial).expand(-1, -1, *delta.shape[2:]))
            keep = hit[items].view(*slot.shape, *spatial)
            corrected = torch.where(keep, logits[items] + picked.to(logits.dtype), logits[items])
            logits = logits.index_put((items,), corrected)
        return logits
