"""Where a new task's rows start (spec 4): a copy of the rows of the existing task whose prediction overlaps the new
label best on the training cases (soft Dice of the task's probabilities, queried in its own group with its own
modality), or of ``--init-from TASK``. The overlap figure is kept so the output and the model card can say why.

Each case is scored on one window centred on its new labels (one forward per base group and case, not a sliding
window over the volume: on a CPU the choice must take seconds, not minutes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..manifest import Manifest
from ..network import HermesR
from .cache import CachedCase
from .forgetting import group_queries
from .sampling import PAD_VALUE, crop, patch_start


@dataclass
class InitChoice:
    task: str  # the existing task whose rows are copied
    reason: str  # "--init-from" or "best overlap"
    soft_dice: float | None  # mean soft Dice of that task's prediction with the new label (None with --init-from)


def soft_dice(probability: np.ndarray, mask: np.ndarray) -> float:
    denom = float(probability.sum()) + float(mask.sum())
    return 0.0 if denom == 0 else 2.0 * float((probability * mask).sum()) / denom


@torch.no_grad()
def best_overlap(network: HermesR, manifest: Manifest, cases: Sequence[CachedCase], new_slots: Sequence[int],
                 patch_size, device: torch.device) -> list[InitChoice]:
    """For each new label slot, the parent task with the highest mean soft Dice over ``cases``."""
    scores = np.zeros((len(new_slots), len(manifest.tasks)))
    counts = np.zeros(len(manifest.tasks))
    column = {t.id: i for i, t in enumerate(manifest.tasks)}
    was_training = network.training
    network.eval()
    try:
        for case in cases:
            image, label = label_window(case, patch_size)
            masks = [(label == s).astype(np.float32) for s in new_slots]
            x = torch.from_numpy(image)[None, None].to(device)
            for _, ids, modality in group_queries(manifest):
                logits = network(x, torch.tensor([ids], device=device), torch.tensor([modality], device=device))[0]
                probs = torch.sigmoid(logits.float())[0].cpu().numpy()
                for k, task_id in enumerate(ids[:-1]):
                    counts[column[task_id]] += 1
                    for j, mask in enumerate(masks):
                        scores[j, column[task_id]] += soft_dice(probs[k], mask)
    finally:
        network.train(was_training)
    mean = scores / np.maximum(counts, 1)
    out = []
    for j in range(len(new_slots)):
        best = int(np.argmax(mean[j]))
        out.append(InitChoice(manifest.tasks[best].name, "best overlap", round(float(mean[j, best]), 4)))
    return out


def label_window(case: CachedCase, patch_size) -> tuple[np.ndarray, np.ndarray]:
    """Image and label of the patch-sized window centred on the case's labelled voxels."""
    label = np.asarray(case.label)
    points = np.argwhere(label > 0)
    centre = ((points.min(0) + points.max(0)) // 2).tolist() if len(points) else [s // 2 for s in label.shape]
    start = patch_start(label.shape, patch_size, np.random.default_rng(0), centre)
    return (crop(np.asarray(case.image, dtype=np.float32), start, patch_size, PAD_VALUE),
            crop(label, start, patch_size, 0))
