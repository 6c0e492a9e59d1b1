"""Overlap and surface metrics on the original image grid, in millimetres.

Absent structures are scored, not skipped (the reference skips them, spec 7.6): predicting a structure that is not
there is a false positive (Dice 0); predicting nothing where nothing is is correct (Dice 1, HD95 0).
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / total


def _surface_to_surface(a: sitk.Image, b: sitk.Image) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b``."""
    surface = sitk.GetArrayViewFromImage(sitk.LabelContour(a, fullyConnected=False)) > 0
    distance = sitk.SignedMaurerDistanceMap(b, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.abs(sitk.GetArrayViewFromImage(distance)[surface])


def hd95(pred: np.ndarray, truth: np.ndarray, reference: sitk.Image) -> float:
    """95th-percentile symmetric Hausdorff distance (max of both directed 95th percentiles, as MONAI computes it).
    0 when both masks are empty, NaN when only one is (undefined: the Dice already records the miss)."""
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 0.0
    if has_pred != has_truth:
        return math.nan
    images = []
    for mask in (pred, truth):
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(reference)
        images.append(image)
    forward = _surface_to_surface(images[0], images[1])
    backward = _surface_to_surface(images[1], images[0])
    return float(max(np.percentile(forward, 95), np.percentile(backward, 95)))
