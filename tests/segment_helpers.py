"""Shared fixtures for the segmentation tests: an imported official-layout model and real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hermesseg.official.importer import import_official
from paths import CONFORMANCE, DATA, require

CT_ABDOMEN = DATA / "ct_abdomen_ts" / "imagesTr" / "example_ct_sm_0000.nii.gz"  # flipped axes (RAS-like)
CT_OBLIQUE = DATA / "ct_body_tsdataset" / "imagesTr" / "s0002_0000.nii.gz"  # slightly oblique direction
MR_BRAIN = DATA / "mr_brain_tumour_t1c" / "imagesTr" / "brain1_0000.nii.gz"  # y flipped, 0.78 x 0.78 x 6.5 mm


def import_base8(folder: Path) -> Path:
    out = folder / "base8.safetensors"
    import_official(require(CONFORMANCE / "hermes_r_base8_checkpoint.pth"), out)
    return out


def read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(require(path)))


def assert_same_grid(a: sitk.Image, b: sitk.Image, atol: float = 1e-4) -> None:
    """Same voxel grid: identical size, and spacing/origin/direction equal within ``atol`` (mm, cosines)."""
    assert a.GetSize() == b.GetSize()
    for name in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(a, name)(), getattr(b, name)(), atol=atol), name


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else 2.0 * np.logical_and(a, b).sum() / denom
