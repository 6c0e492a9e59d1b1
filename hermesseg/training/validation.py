"""Validation during training: whole cached volumes predicted in patch-sized tiles, Dice per task.

Windows overlap by 25% (the product's default is 50%: validation only ranks checkpoints of one run against each
other, so it trades a little accuracy for half the windows), threshold 0.5. Dice per (case, task): 2|P n G| / (|P| + |G|); a task absent from a case's ground truth
counts 0 when the model predicts it anyway (a false positive the reference silently ignored, spec 7.6) and is skipped
when both are empty.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..inference.sliding_window import sliding_window_probabilities

VALIDATION_OVERLAP = 0.25


@torch.no_grad()
def predict_volume(network: torch.nn.Module, image: np.ndarray, task_ids: Sequence[int], modality_id: int,
                   patch_size: Sequence[int], device: torch.device, overlap: float = VALIDATION_OVERLAP) -> np.ndarray:
    """Sigmoid probabilities (T, z, y, x) of ``task_ids`` over a whole model-grid volume, with the product's
    Gaussian-blended sliding window (zero padding, as in training)."""
    was_training = network.training
    network.eval()
    try:
        probs = sliding_window_probabilities(network, torch.tensor(np.asarray(image, dtype=np.float32)),
                                             list(task_ids), int(modality_id), tuple(int(p) for p in patch_size),
                                             overlap=overlap, batch_size=1, device=device)
    finally:
        network.train(was_training)
    return probs.numpy()


def dice_per_task(probabilities: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> list[float | None]:
    """Dice of each channel against ``label == slot`` (slot = channel + 1); None when both are empty."""
    scores: list[float | None] = []
    for k in range(probabilities.shape[0]):
        pred = probabilities[k] > threshold
        gt = label == k + 1
        denom = int(pred.sum()) + int(gt.sum())
        scores.append(None if denom == 0 else 2.0 * float(np.logical_and(pred, gt).sum()) / denom)
    return scores


def evaluate_cases(network: torch.nn.Module, cases, task_ids_of, modality_of, patch_size, device) -> dict:
    """Mean Dice over (case, task) pairs; ``cases`` are CachedCase, ``task_ids_of(dataset)`` their query."""
    per_case = {}
    values = []
    for case in cases:
        ids = task_ids_of(case.dataset)
        probs = predict_volume(network, np.asarray(case.image), ids, modality_of(case.dataset), patch_size, device)
        scores = dice_per_task(probs, np.asarray(case.label))
        per_case[f"{case.dataset}/{case.case}"] = scores
        values.extend(s for s in scores if s is not None)
    return {"mean_dice": float(np.mean(values)) if values else None, "cases": per_case}


def mean_dice_per_task(network: torch.nn.Module, cases, query: Sequence[int], modality_id: int,
                       names: Sequence[str], patch_size, device) -> dict[str, float | None]:
    """Mean Dice of each queried task over ``cases`` (CachedCase whose label slots follow ``query``'s order; the
    query may end with the null token), rounded to 4 decimals; None for a task empty and unpredicted everywhere."""
    per_task: dict[str, list[float]] = {n: [] for n in names}
    for case in cases:
        probs = predict_volume(network, np.asarray(case.image), query, modality_id, patch_size, device)
        for name, score in zip(names, dice_per_task(probs[:len(names)], np.asarray(case.label))):
            if score is not None:
                per_task[name].append(score)
    return {n: (round(float(np.mean(v)), 4) if v else None) for n, v in per_task.items()}
