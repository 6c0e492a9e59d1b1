"""Mask post-processing on the input grid."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of a binary mask (z, y, x)."""
    if not mask.any():
        return mask
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True),
                                   sortByObjectSize=True)
    return sitk.GetArrayFromImage(labels) == 1
