"""A real ACDC cine-MR window on the 3 mm model grid, normalised with the tests' MR-cine intensity block: what the
group-adapter and feature-replay tests feed the network."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from hermesseg.preprocessing import Preprocessing, normalize_intensity, resample_label_to_grid, to_model_grid

from paths import ACDC, require

CINE = {"scheme": "percentile_clip_zscore", "percentiles": [1.0, 99.0], "stats_region": "all"}


def cine_window(case: str = "patient001_frame01", size=(16, 48, 48)) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre ``size`` window of ``case``: image (1, 1, *size) float32 and label (1, *size) int64."""
    pre = Preprocessing.from_dict({"spacing": [3.0, 3.0, 3.0], "intensity": {"MR-cine": CINE}})
    image = to_model_grid(sitk.ReadImage(str(require(ACDC) / "imagesTr" / f"{case}_0000.nii.gz")), pre.spacing)
    label = sitk.GetArrayFromImage(resample_label_to_grid(sitk.ReadImage(str(ACDC / "labelsTr" / f"{case}.nii.gz")),
                                                          image))
    array = normalize_intensity(sitk.GetArrayFromImage(image), pre.norm_for("MR-cine"))
    crop = tuple(slice(max(0, (s - p) // 2), max(0, (s - p) // 2) + p) for s, p in zip(array.shape, size))
    patch = torch.from_numpy(np.ascontiguousarray(array[crop], dtype=np.float32))
    return patch[None, None], torch.from_numpy(np.ascontiguousarray(label[crop]).astype(np.int64))[None]
