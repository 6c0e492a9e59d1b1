"""Suggest the modality of an image when the user gives none: DICOM's Modality tag first, then intensities."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import QueryError
from ..manifest import Manifest

# CT is in Hounsfield units: air near -1000. A sizeable share of voxels below -500 means CT.
_AIR_HU = -500.0
_MIN_AIR_FRACTION = 0.05


def looks_like_ct(image: sitk.Image) -> bool:
    a = sitk.GetArrayViewFromImage(image)
    sample = a[:: max(1, a.shape[0] // 16)]
    return float(np.mean(sample < _AIR_HU)) > _MIN_AIR_FRACTION


def guess_modality(manifest: Manifest, image: sitk.Image, dicom_modality: str | None = None) -> str:
    """The model modality to use, or a QueryError listing the valid choices when it is ambiguous."""
    names = [m.name for m in manifest.modalities]
    if len(names) == 1:
        return names[0]
    if dicom_modality:
        matches = [m.name for m in manifest.modalities if dicom_modality in m.dicom]
        if len(matches) == 1:
            return matches[0]
    elif looks_like_ct(image) and any(m.name == "CT" for m in manifest.modalities):
        return "CT"
    raise QueryError("cannot tell the modality of this image; pass --modality, one of: " + ", ".join(names))
