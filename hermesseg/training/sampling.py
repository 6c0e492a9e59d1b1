"""Batches: datasets mixed by weight, foreground-aware patches, each sample queried with its own dataset's tasks.

Every batch is a pure function of (seed, iteration, rank): the generator for iteration ``i`` on rank ``r`` is
``numpy.random.default_rng([seed, i, r])``. Ranks therefore draw different streams, DataLoader workers can prepare
batches in any order, and a run resumed at iteration ``i`` continues with exactly the batches it would have seen.

Per sample: a dataset with probability proportional to its weight (the config's ``datasets.<name>.weight``, default
1; unlike the reference, the number of cases does not multiply the weight), a training case uniformly, then the
patch position. With ``foreground_probability`` the patch is centred on a random voxel of a random task present in
the case (small structures get seen); otherwise it is placed uniformly inside the volume. A volume smaller than the
patch is placed at a random offset and padded with 0 (the mean in z-score space: what the reference trained with and
what the sliding-window inference pads with) and background.

A batch's query (``task_ids``, B x T) holds each sample's own dataset's task rows, padded with -1 to the batch's
longest list; the model hides the padding from attention (``mask_padding``, spec 1.7) and the loss gives those
slots weight 0. Targets are binary channels ``label == k + 1`` for slot k, so padded slots are all zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from .augment import affine_crop_size, apply_affine, augment_intensity, draw_affine
from .cache import CachedCase

NULL_TASK = -1
PAD_VALUE = 0.0


@dataclass
class Source:
    """One dataset as the sampler sees it."""

    name: str
    weight: float
    task_ids: list[int]  # model task rows in slot order
    modality_id: int
    cases: list[CachedCase]


def crop(volume: np.ndarray, start: Sequence[int], size: Sequence[int], pad_value: float) -> np.ndarray:
    """``volume[start:start+size]`` with everything outside the volume set to ``pad_value``."""
    out = np.full(tuple(size), pad_value, dtype=volume.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, volume.shape):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def patch_start(shape, patch, rng: np.random.Generator, center=None) -> list[int]:
    """Where a patch starts: around ``center`` (kept inside the volume where the volume allows) or uniformly."""
    start = []
    for axis, (s, p) in enumerate(zip(shape, patch)):
        lo, hi = (0, s - p) if s >= p else (s - p, 0)
        if center is None:
            start.append(int(rng.integers(lo, hi + 1)))
        else:
            start.append(int(min(max(int(center[axis]) - p // 2, lo), hi)))
    return start


class PatchSampler:
    def __init__(self, sources: Sequence[Source], patch_size: Sequence[int], batch_size: int,
                 foreground_probability: float, augmentation: Mapping, seed: int, rank: int = 0):
        if not sources:
            raise ValueError("no dataset to sample from")
        for s in sources:
            if not s.cases:
                raise ValueError(f"dataset {s.name} has no training case")
        self.sources = list(sources)
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self.patch_size = [int(p) for p in patch_size]
        self.batch_size = int(batch_size)
        self.foreground_probability = float(foreground_probability)
        self.augmentation = dict(augmentation)
        self.seed = int(seed)
        self.rank = int(rank)

    def rng(self, iteration: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(iteration), self.rank])

    def sample_one(self, rng: np.random.Generator) -> dict:
        k = int(rng.choice(len(self.sources), p=self.probabilities))
        source = self.sources[k]
        case = source.cases[int(rng.integers(len(source.cases)))]
        center = None
        present = case.slots_present()
        if present and rng.random() < self.foreground_probability:
            slot = present[int(rng.integers(len(present)))]
            points = case.foreground_points(slot)
            center = points[int(rng.integers(len(points)))]
        start = patch_start(case.shape, self.patch_size, rng, center)
        affine = draw_affine(rng, self.augmentation)
        if affine is None:
            image = crop(case.image, start, self.patch_size, PAD_VALUE)
            label = crop(case.label, start, self.patch_size, 0)
        else:
            size = affine_crop_size(self.patch_size, float(self.augmentation["crop_margin"]))
            big_start = [s - (c - p) // 2 for s, c, p in zip(start, size, self.patch_size)]
            image = crop(case.image, big_start, size, PAD_VALUE)
            label = crop(case.label, big_start, size, 0)
            image, label = apply_affine(image, label, affine, self.patch_size)
        image = augment_intensity(image, rng, self.augmentation)
        return {"image": image, "label": label, "task_ids": source.task_ids, "modality": source.modality_id,
                "where": (source.name, case.case, start, center is not None)}

    def sample(self, iteration: int) -> dict:
        """The batch of ``iteration`` on this rank: tensors image (B,1,*P), label (B,*P) uint8 slot indices,
        task_ids (B,T) long (-1 padded), modality (B,) long, and ``where`` (dataset, case, start, foreground?)."""
        rng = self.rng(iteration)
        items = [self.sample_one(rng) for _ in range(self.batch_size)]
        width = max(len(it["task_ids"]) for it in items)
        task_ids = torch.full((len(items), width), NULL_TASK, dtype=torch.long)
        for b, it in enumerate(items):
            task_ids[b, :len(it["task_ids"])] = torch.as_tensor(it["task_ids"], dtype=torch.long)
        return {
            "image": torch.from_numpy(np.stack([it["image"] for it in items])[:, None]),
            "label": torch.from_numpy(np.stack([it["label"] for it in items])),
            "task_ids": task_ids,
            "modality": torch.as_tensor([it["modality"] for it in items], dtype=torch.long),
            "where": [it["where"] for it in items],
        }


def make_targets(label: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
    """Binary targets (B, T, *P): channel k is ``label == k + 1`` (all zero in padded slots)."""
    t = task_ids.shape[1]
    slots = torch.arange(1, t + 1, device=label.device, dtype=torch.int16).view(1, t, *([1] * (label.dim() - 1)))
    return (label.to(torch.int16).unsqueeze(1) == slots) & (task_ids != NULL_TASK).view(*task_ids.shape,
                                                                                       *([1] * (label.dim() - 1)))


class IterationBatches(torch.utils.data.Dataset):
    """Item ``k`` is the batch of iteration ``start + k`` (for a DataLoader with ``batch_size=None``)."""

    def __init__(self, sampler: PatchSampler, start: int, stop: int):
        self.sampler, self.start, self.stop = sampler, int(start), int(stop)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, k: int) -> dict:
        return self.sampler.sample(self.start + k)


def _worker_init(_):
    torch.set_num_threads(1)


def _identity(batch):
    return batch


def batch_loader(sampler: PatchSampler, start: int, stop: int, num_workers: int):
    batches = IterationBatches(sampler, start, stop)
    if num_workers <= 0:
        return (batches[k] for k in range(len(batches)))
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=num_workers,
                                       worker_init_fn=_worker_init, prefetch_factor=2,
                                       collate_fn=_identity)
