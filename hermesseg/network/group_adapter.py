"""Group adapters (spec 4, ``add-task --mode adapter``): weights that belong to one task group and run only when a
query holds that group's task rows, so no other group's logits can change (zero forgetting by construction).

Why a convolutional adapter, not only low-rank updates of the fusion and head projections: a task's logit is a
1x1x1 kernel over the last decoder features (``TaskKernelHead``), and at the default model's base width 8 that is a
linear read-out of 8 channels per voxel. Whatever the priors or the projections learn, a new structure's mask is
bounded by what those 8 channels separate. The adapter adds spatial capacity where the priors cannot reach: a small
residual U-Net over the query's last decoder features ``d0`` and the stem features ``f0`` (both ``base_channels``
wide at full resolution), whose output is one logit correction per task of the group, added to the head's logits.
Its last convolution starts at zero, so a new adapter changes nothing until it is trained.

Four designs (``AdapterConfig.design``): ``image-pointwise``, what add-task builds, is ``half-resolution-pointwise``
that also reads the network's input image; ``half-resolution-pointwise`` runs its levels from 1/2 resolution down and
gives the full-resolution correction by a 1x1x1 convolution; ``half-resolution-unet`` is the same with a 3x3x3
convolution there; ``residual-unet``, the first design, runs its first level at full resolution. Older designs are
kept so that their files load, and read exactly what they read before. On a CPU the full-resolution work is most of a
training step: each half-resolution design in turn fitted more steps into add-task's 600 s and scored higher on ACDC
(5 patients); reading the image raised held-out Dice again, for 1 more input channel
(benchmarks/add_task_results.md).

It sits after the whole backbone and reads only ``d0``, ``f0`` and (``image-pointwise``) the image: when only
adapters train, the frozen network runs without building an autograd graph, and an update on stored features costs
the adapter's forward and backward alone, which add-task uses for its adapter-only updates between joint steps
(``hermesseg.training.feature_replay``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdapterConfig
from .residual_block import DownStage, Stem, UpStage


class _Levels(nn.Module):
    """The residual U-Net levels both designs share, from the resolution of their input down: ``levels``
    resolutions, ``width`` channels at the first (doubled per level), ``blocks`` residual blocks per level. Tensor
    names ``stem.*``, ``down.*``, ``up.*`` (as the first design's files hold them)."""

    def _build_levels(self, in_channels: int, width: int, levels: int, blocks: int, eps: float) -> None:
        widths = [width * 2 ** level for level in range(levels)]
        self.stem = Stem(in_channels, width, blocks, eps)
        self.down = nn.ModuleList(DownStage(widths[i], widths[i + 1], blocks, eps) for i in range(levels - 1))
        self.up = nn.ModuleList(UpStage(widths[i + 1], widths[i], widths[i], blocks, eps)
                                for i in reversed(range(levels - 1)))

    def _levels(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)
        for up in self.up:
            x = up(x, skips.pop())
        return x


def zero_output(conv: nn.Conv3d) -> nn.Conv3d:
    """A new adapter changes nothing until it is trained: its last convolution starts at zero."""
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class FullResolutionAdapter(_Levels):
    """Design ``residual-unet``: ``forward(d0, f0, image) -> (B, R, *S)``, one logit correction per task row of
    ``config.task_ids``, from residual U-Net levels whose first runs at full resolution.

    d0, f0: (B, F, *S) full-resolution features (F = the network's base width); image: (B, 1, *S) the network's
    input, which this design does not read. S must allow ``levels - 1`` 2x poolings with at least 2 voxels left (any
    patch Hermes-R accepts does).
    """

    def __init__(self, config: AdapterConfig, feature_channels: int, eps: float = 1e-4):
        super().__init__()
        w = config.width
        self._build_levels(2 * feature_channels, w, config.levels, config.blocks, eps)
        self.out = nn.Sequential(nn.InstanceNorm3d(w, eps=eps), nn.ReLU(),
                                 zero_output(nn.Conv3d(w, len(config.task_ids), kernel_size=1)))

    def forward(self, d0: torch.Tensor, f0: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.out(self._levels(torch.cat([d0, f0], dim=1)))


class HalfResolutionAdapter(_Levels):
    """Design ``half-resolution-unet``: ``forward(d0, f0, image) -> (B, R, *S)`` like ``FullResolutionAdapter``, with
    the levels at 1/2 resolution and below. A strided 3x3x3 convolution takes the inputs [d0, f0] to 1/2; the levels'
    output comes back by trilinear upsampling and meets the inputs again in one 3x3x3 convolution at full resolution,
    which gives the correction its voxel-level edges. Full-resolution work is what a CPU step pays for: at 48^3, batch
    2, 2 cores, its forward and backward cost 0.13 s against 0.42 s for residual-unet at the same width
    (benchmarks/add_task_results.md).

    S must allow ``levels`` 2x reductions with at least 2 voxels left (any patch Hermes-R accepts does).
    """

    head_kernel = 3  # the edge of the full-resolution convolution that gives the correction
    reads_image = False  # whether the image is one of the inputs, next to [d0, f0]

    def __init__(self, config: AdapterConfig, feature_channels: int, eps: float = 1e-4):
        super().__init__()
        w, features, k = config.width, 2 * feature_channels + self.reads_image, self.head_kernel
        self.reduce = nn.Conv3d(features, w, kernel_size=3, stride=2, padding=1, bias=False)
        self._build_levels(w, w, config.levels, config.blocks, eps)
        self.out = nn.Sequential(nn.InstanceNorm3d(features + w, eps=eps), nn.ReLU(),
                                 zero_output(nn.Conv3d(features + w, len(config.task_ids), kernel_size=k,
                                                       padding=k // 2)))

    def forward(self, d0: torch.Tensor, f0: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        features = torch.cat([d0, f0, image] if self.reads_image else [d0, f0], dim=1)
        coarse = self._levels(self.reduce(features))
        up = F.interpolate(coarse, size=features.shape[2:], mode="trilinear", align_corners=True)
        return self.out(torch.cat([features, up], dim=1))


class PointwiseHeadAdapter(HalfResolutionAdapter):
    """Design ``half-resolution-pointwise``: ``HalfResolutionAdapter`` whose full-resolution convolution is 1x1x1,
    so the correction at a voxel is a read-out of that voxel's [d0, f0] and of the upsampled levels; the levels'
    3x3x3 convolutions at 1/2 resolution and the base network's own full-resolution convolutions (behind d0, f0)
    give it its spatial context. Why: on 2 CPU cores a 3x3x3 convolution from 32 channels to a few outputs is the
    costliest part of the adapter's backward (at 48^3, batch 2: 0.26 s of half-resolution-unet's 0.67-0.89 s for
    its whole forward and backward, 0.03 s as 1x1x1), and add-task is step-bound
    (benchmarks/add_task_results.md)."""

    head_kernel = 1


class ImageReadingAdapter(PointwiseHeadAdapter):
    """Design ``image-pointwise``: ``PointwiseHeadAdapter`` whose inputs are [d0, f0, image], the image being the
    network's normalised input (one more channel). Why: ``d0`` and ``f0`` are what a base model trained for other
    structures kept of the image; the new structure's own edges (the right ventricle's blood pool against its wall in
    cine MR) may be among what it dropped. Measured on ACDC (5 patients, add-task's 600 s on 2 CPU cores): a higher
    mean held-out Dice than ``half-resolution-pointwise`` on each of three patient splits, by 0.012-0.017 (each
    split's runs averaged), about the spread of one run (benchmarks/add_task_results.md)."""

    reads_image = True


# the module of each AdapterConfig design (network.config.ADAPTER_DESIGNS names them without torch)
DESIGNS = {"residual-unet": FullResolutionAdapter, "half-resolution-unet": HalfResolutionAdapter,
           "half-resolution-pointwise": PointwiseHeadAdapter, "image-pointwise": ImageReadingAdapter}


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

    def add(self, config: AdapterConfig, feature_channels: int, eps: float = 1e-4) -> nn.Module:
        if config.group in self._modules:
            raise ValueError(f"group {config.group!r} already has an adapter")
        self.configs[config.group] = config
        self._modules[config.group] = DESIGNS[config.design](config, feature_channels, eps)
        return self._modules[config.group]

    def correct(self, logits: torch.Tensor, task_ids: torch.Tensor, d0: torch.Tensor, f0: torch.Tensor,
                image: torch.Tensor) -> torch.Tensor:
        """logits (B, T, *S) of the query ``task_ids`` (B, T) -> the same with each adapter's rows corrected, from
        the network's d0, f0 (B, F, *S) and input image (B, 1, *S)."""
        for group, adapter in self._modules.items():
            rows = torch.as_tensor(self.configs[group].task_ids, dtype=task_ids.dtype, device=task_ids.device)
            match = task_ids[..., None] == rows  # (B, T, R)
            hit = match.any(dim=-1)  # (B, T)
            items = hit.any(dim=1).nonzero().flatten()
            if items.numel() == 0:
                continue
            delta = adapter(d0[items], f0[items], image[items])  # (n, R, *S)
            slot = match[items].to(torch.long).argmax(dim=-1)  # (n, T): the output that serves each channel
            spatial = (1,) * (delta.dim() - 2)
            picked = delta.gather(1, slot.view(*slot.shape, *spatial).expand(-1, -1, *delta.shape[2:]))
            keep = hit[items].view(*slot.shape, *spatial)
            corrected = torch.where(keep, logits[items] + picked.to(logits.dtype), logits[items])
            logits = logits.index_put((items,), corrected)
        return logits
