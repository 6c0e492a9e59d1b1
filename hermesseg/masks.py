"""Binary-mask helpers shared by preprocessing (body mask), inference (per-task boxes) and the outputs."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

Box = tuple[slice, slice, slice]


def bounding_box(mask, margin: int = 0) -> Box | None:
    """The smallest box (one slice per axis) holding every True voxel of a numpy or torch mask, grown by ``margin``
    voxels and clipped to the array; None when the mask is empty. A torch mask stays on its device; only the three
    per-axis projections are copied to the host."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        projection = mask.any(axis=others) if isinstance(mask, np.ndarray) else mask.amax(dim=others).cpu().numpy()
        hits = np.flatnonzero(projection)
        if not hits.size:
            return None
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def largest_component(mask: np.ndarray, fully_connected: bool = True) -> np.ndarray:
    """The largest connected component of a binary mask (26-connected, or 6-connected when not
    ``fully_connected``), as a bool array; an empty mask is returned as it is."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    labels = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), fully_connected)
    return sitk.GetArrayFromImage(sitk.RelabelComponent(labels, sortByObjectSize=True)) == 1


def largest_piece_only(probability: torch.Tensor, threshold: float) -> torch.Tensor:
    """``probability`` (torch, z y x, any device) with every voxel that reaches ``threshold`` outside its largest
    connected piece set to 0: thresholding it gives the largest component of the thresholded map, and the found
    rule's evidence describes that piece. Only the box around the thresholded voxels visits the host."""
    box = bounding_box(probability >= threshold)
    if box is None:
        return probability
    region = probability[box]
    keep = torch.from_numpy(largest_component((region >= threshold).cpu().numpy())).to(region.device)
    out = probability.clone()
    out[box] = torch.where(keep | (region < threshold), region, torch.zeros_like(region))
    return out
