"""Patch augmentation with MONAI transforms; every random draw comes from the caller's numpy Generator, so a batch is
a pure function of (seed, iteration, rank) and a resumed run sees exactly the same patches.

Spatial: with ``affine_probability`` a rotation about each axis (uniform in +-``rotate_degrees``) and an
independent positive scale per axis, resampled from a larger crop (image trilinear, label nearest) so the corners of
the patch are real voxels. There are **never any flips or negative scales**: left and right structures are separate
tasks and must stay on their side (spec 2.3). Intensity (each with ``intensity_probability``): multiplicative scale,
additive shift, gamma (statistics retained), Gaussian blur, Gaussian noise.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
from monai.transforms import AdjustContrast, Affine, GaussianSmooth, ScaleIntensity, ShiftIntensity


def affine_crop_size(patch_size, margin: float) -> list[int]:
    """A crop larger than the patch by ``margin`` per axis, with an even difference so both centres coincide."""
    out = []
    for p in patch_size:
        extra = int(math.ceil(p * margin))
        extra += extra % 2
        out.append(p + extra)
    return out


def draw_affine(rng: np.random.Generator, cfg: Mapping) -> dict | None:
    """Rotation (radians) and scale parameters, or None when this patch gets no spatial transform."""
    if not cfg.get("enabled", True) or rng.random() >= float(cfg["affine_probability"]):
        return None
    rot = [float(rng.uniform(-a, a)) * math.pi / 180.0 for a in cfg["rotate_degrees"]]
    lo, hi = (float(v) for v in cfg["scale"])
    scale = [float(rng.uniform(lo, hi)) for _ in range(3)]
    return {"rotate": rot, "scale": scale}


def apply_affine(image: np.ndarray, label: np.ndarray, params: dict, patch_size) -> tuple[np.ndarray, np.ndarray]:
    """Resample the crop's centre ``patch_size`` region under the affine (image trilinear, label nearest)."""
    common = dict(rotate_params=params["rotate"], scale_params=params["scale"], spatial_size=list(patch_size),
                  padding_mode="zeros", image_only=True)
    img = Affine(mode="bilinear", **common)(torch.from_numpy(np.ascontiguousarray(image))[None])
    lab = Affine(mode="nearest", **common)(torch.from_numpy(label.astype(np.float32))[None])
    img = np.asarray(torch.as_tensor(img)[0], dtype=np.float32)
    lab = np.rint(np.asarray(torch.as_tensor(lab)[0])).astype(np.uint8)
    return img, lab


def augment_intensity(image: np.ndarray, rng: np.random.Generator, cfg: Mapping) -> np.ndarray:
    if not cfg.get("enabled", True):
        return image
    p = float(cfg["intensity_probability"])
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    if rng.random() < p:
        lo, hi = cfg["intensity_scale"]
        t = ScaleIntensity(minv=None, maxv=None, factor=float(rng.uniform(lo, hi)) - 1.0)(t)
    if rng.random() < p:
        t = ShiftIntensity(offset=float(rng.normal(0.0, float(cfg["intensity_shift_std"]))))(t)
    if rng.random() < p:
        lo, hi = cfg["gamma"]
        t = AdjustContrast(gamma=float(rng.uniform(lo, hi)), retain_stats=True)(t)
    if rng.random() < p:
        lo, hi = cfg["blur_sigma"]
        t = GaussianSmooth(sigma=float(rng.uniform(lo, hi)))(t)
    if rng.random() < p:
        lo, hi = cfg["noise_std"]
        std = float(rng.uniform(lo, hi))
        noise = rng.standard_normal(t.shape[1:], dtype=np.float32) * np.float32(std)
        t = torch.as_tensor(t) + torch.from_numpy(noise)[None]
    return np.asarray(torch.as_tensor(t)[0], dtype=np.float32)
