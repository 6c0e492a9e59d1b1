"""Into the model's space and back: reorientation, resampling, body mask and intensity normalisation (spec 5).

Model-grid convention. The model grid has identity direction (voxel axes along the LPS physical axes) and the
target spacing. It covers the axis-aligned box around the input's voxel *corners*: per axis the new size is
``max(1, round(extent / spacing))`` and the grid is centred on that box, so its extent differs from the input's by at
most half a model voxel, split evenly between the two ends. Centring makes the grid independent of how the input
stores its axes: flipped or permuted copies of one physical image give the same model-grid array exactly.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .errors import InputImageError
from .preprocessing_config import (  # noqa: F401 - the manifest side, re-exported
    CT_CLIP_ZSCORE, ORIENTATIONS, PERCENTILE_CLIP_ZSCORE, SCHEMES, STATS_REGIONS, IntensityNorm, Preprocessing)
from .masks import Box, largest_component

# Identity direction within this (max abs entry difference) counts as axis aligned: <0.01 mm drift over 500 mm.
_AXIS_ALIGNED_TOL = 1e-5
_SPACING_RTOL = 1e-3
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# Air is about -1000 HU, fat about -100 HU: -500 separates the patient from the air around it.
_CT_BODY_HU = -500.0
# An MR/PET body voxel is brighter than 10% of the way from the dark background (p1) to bright tissue (p99).
_MR_BODY_LEVEL = 0.10
# A body mask smaller than this fraction of the volume is not trusted (e.g. a crop inside the lung): use all voxels.
_MIN_BODY_FRACTION = 0.02
# Below this standard deviation the region is constant: centre it without dividing.
_MIN_STD = 1e-6
# Model-grid memory limit (GiB), overridable with HERMESSEG_MAX_GRID_GB. Inference holds float32 copies of the grid
# (resampled, normalised, the network's input) plus one float32 probability channel per task; 12 GiB is half of a
# 24 GB workstation, leaving room for the input image, torch and the input-grid outputs.
MAX_GRID_GB_ENV = "HERMESSEG_MAX_GRID_GB"
DEFAULT_MAX_GRID_GB = 12.0
_GRID_WORKING_COPIES = 4


def check_grid_memory(size: Sequence[int], spacing: Sequence[float], channels: int = 1) -> None:
    """Refuse, before anything is allocated, a model grid whose float32 arrays (``channels`` per-task maps plus the
    working copies) would exceed ``HERMESSEG_MAX_GRID_GB`` (default ``DEFAULT_MAX_GRID_GB``) GiB."""
    raw = os.environ.get(MAX_GRID_GB_ENV, "")
    try:
        limit = float(raw) if raw.strip() else DEFAULT_MAX_GRID_GB
    except ValueError:
        raise InputImageError(f"{MAX_GRID_GB_ENV}={raw!r} is not a number of GiB") from None
    needed = float(np.prod([float(n) for n in size])) * 4 * (channels + _GRID_WORKING_COPIES) / 2**30
    if needed > limit:
        raise InputImageError(
            f"the image would need {needed:.1f} GiB on the model grid ({' x '.join(str(int(n)) for n in size)} voxels "
            f"at {' x '.join(f'{s:g}' for s in spacing)} mm, {channels} task(s)); the limit is {limit:g} GiB. Use "
            f"--fast, fewer --tasks, a cropped image, or raise {MAX_GRID_GB_ENV}")


def to_model_grid(image: sitk.Image, spacing: Sequence[float], channels: int = 1) -> sitk.Image:
    """Reorient to LPS and resample to ``spacing`` (linear, outside filled with the image minimum), as float32.

    ``DICOMOrient`` first permutes and flips axes exactly (no interpolation); only an oblique image, or a spacing
    that differs by more than 0.1%, is then interpolated, in a single resampling onto the grid of the module docstring.
    ``channels`` (the tasks the caller will compute) sizes the memory check made before anything is allocated.
    """
    check_grid_memory(_grid_size(*_corner_box(image), spacing), spacing, channels)
    oriented = sitk.DICOMOrient(_float32(image), "LPS")
    if _is_axis_aligned(oriented) and np.allclose(oriented.GetSpacing(), spacing, rtol=_SPACING_RTOL, atol=0):
        return oriented
    fill = float(np.min(sitk.GetArrayViewFromImage(oriented)))
    return _resample(oriented, _model_grid_for(oriented, spacing), sitk.sitkLinear, fill, sitk.sitkFloat32)


def resample_label_to_grid(label: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Nearest-neighbour label map on ``reference``'s grid (a ``to_model_grid`` result), 0 outside, same pixel type;
    nearest so training labels never get interpolated values (the reference's B-spline bug, spec 5.1)."""
    return _resample(label, reference, sitk.sitkNearestNeighbor, 0.0, label.GetPixelID())


def body_mask(array_zyx: np.ndarray, norm: IntensityNorm) -> np.ndarray:
    """Where the patient is, so statistics of a full field of view match those of body-cropped training volumes.

    Threshold (CT: > -500 HU; MR/PET: > p1 + 10% of (p99 - p1)), keep the largest 3D connected component, fill
    holes slice by slice along axis 0 (the axial slices on the model grid: lungs and bowel gas are body even where
    they reach the volume's edge in 3D). Falls back to every voxel when that leaves under 2% of the volume.
    """
    mask = array_zyx > _body_threshold(array_zyx, norm)
    mask = _fill_holes_per_slice(largest_component(mask, fully_connected=False))
    if mask.mean() < _MIN_BODY_FRACTION:
        return np.ones(array_zyx.shape, dtype=bool)
    return mask


def normalize_intensity(array_zyx: np.ndarray, norm: IntensityNorm, body: np.ndarray | None = None) -> np.ndarray:
    """Clip (fixed HU window or the region's percentiles), then z-score with the region's mean and std.

    ``body``: the image's ``body_mask`` when the caller already has it (computed here otherwise, when the
    normalisation needs it). A constant region (std < 1e-6) is only centred, so the output is 0 there instead of a
    division by zero.
    """
    if norm.stats_region != "body":
        region = np.ones(array_zyx.shape, dtype=bool)
    else:
        region = body_mask(array_zyx, norm) if body is None else body
    if norm.scheme == CT_CLIP_ZSCORE:
        lo, hi = norm.clip
    else:
        lo, hi = (float(p) for p in np.percentile(array_zyx[region], norm.percentiles))
    clipped = np.clip(array_zyx.astype(np.float32), np.float32(lo), np.float32(hi))
    values = clipped[region]
    mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
    clipped -= np.float32(mean)
    if std >= _MIN_STD:
        clipped /= np.float32(std)
    return clipped


def resample_to_input(probabilities: np.ndarray, model_grid: sitk.Image, input_image: sitk.Image) -> np.ndarray:
    """Bring per-task maps (T, z, y, x) from the model grid back onto the input's exact grid (whole volumes, with
    ``InputGridSampler``'s rule: linear, edge extended by one model voxel, 0 outside)."""
    expected = tuple(reversed(model_grid.GetSize()))
    if probabilities.ndim != 4 or probabilities.shape[1:] != expected:
        raise ValueError(f"probabilities have shape {probabilities.shape}; expected (T, "
                         f"{', '.join(map(str, expected))}) on the model grid")
    sampler = InputGridSampler(model_grid, input_image)
    out = np.empty((probabilities.shape[0], *sampler.input_shape), dtype=np.float32)
    for t, channel in enumerate(probabilities):
        out[t] = sampler.sample(torch.from_numpy(np.asarray(channel, dtype=np.float32))).numpy()
    return out


class InputGridSampler:
    """Linear interpolation from the model grid onto (a box of) the input's own grid, on any torch device.

    The rule is ITK's linear resampling of the model grid padded by one edge-replicated voxel: the input's outermost
    voxel centres can lie just outside the model grid (``round(extent / spacing)``), and they must still get the
    model's answer, not 0; beyond half a voxel past that pad the value is 0. Everything runs in torch, so on a GPU the
    probabilities never leave the device; only the (small) results are copied back by the caller.
    """

    _CHUNK_POINTS = 1 << 22  # input voxels per grid_sample call: bounds the coordinate buffer to ~50 MB

    def __init__(self, model_grid: sitk.Image, input_image: sitk.Image):
        if not _is_axis_aligned(model_grid):
            raise ValueError("the model grid must have identity direction")
        self.model_shape = tuple(reversed(model_grid.GetSize()))  # (z, y, x)
        self.input_shape = tuple(reversed(input_image.GetSize()))
        direction = np.array(input_image.GetDirection()).reshape(3, 3)
        # Model continuous index (x, y, z) = A @ input index (i, j, k) + b, in float64.
        self._a = np.diag(1.0 / np.array(model_grid.GetSpacing())) @ direction @ np.diag(input_image.GetSpacing())
        self._b = (np.array(input_image.GetOrigin()) - np.array(model_grid.GetOrigin())) / np.array(
            model_grid.GetSpacing())
        self._axis_of = _axis_permutation(self._a)

    @property
    def separable(self) -> bool:
        """True when each input axis runs along one model axis: sampling is then three 1-D interpolations."""
        return self._axis_of is not None

    def input_box(self, model_box: Box) -> Box | None:
        """The box of input voxels (z, y, x slices) around the hull of ``model_box``'s voxel centres (up to the edge
        extension where the box reaches the grid's edge), with 1e-6 voxel of slack, clipped to the input; None when
        no input voxel is there. For an oblique input it is the axis-aligned box of that hull in input index space, so
        its corners may reach beyond the crop."""
        full = np.array(self.model_shape[::-1])
        lo = np.array([s.start for s in reversed(model_box)], dtype=float)  # (x, y, z)
        hi = np.array([s.stop - 1 for s in reversed(model_box)], dtype=float)
        lo[lo == 0] = -1.5  # at the grid's edge the box reaches as far as the edge extension does
        hi[hi == full - 1] = full[hi == full - 1] + 0.5
        corners = np.array([np.where(bits, hi, lo) for bits in np.ndindex(2, 2, 2)])
        index = np.linalg.solve(self._a, (corners - self._b).T).T  # input continuous (i, j, k)
        first = np.maximum(np.ceil(index.min(axis=0) - 1e-6), 0).astype(int)
        last = np.minimum(np.floor(index.max(axis=0) + 1e-6), np.array(self.input_shape[::-1]) - 1).astype(int)
        if np.any(last < first):
            return None
        return tuple(slice(int(f), int(l) + 1) for f, l in zip(first[::-1], last[::-1]))

    def sample(self, channel: torch.Tensor, model_box: Box | None = None,
               input_box: Box | None = None) -> torch.Tensor:
        """Values of ``channel`` (z, y, x on the whole model grid) at the voxels of ``input_box`` (default: the whole
        input), as float32 on ``channel``'s device.

        With ``model_box``, only that crop of the channel is read: exact for every input voxel whose interpolation
        stencil lies inside the crop, and the crop's edge value beyond it (use it for masks whose crop has a margin of
        sub-threshold voxels, not for whole probability maps).
        """
        model_box = model_box or tuple(slice(0, n) for n in self.model_shape)
        input_box = input_box or tuple(slice(0, n) for n in self.input_shape)
        crop = channel[model_box].float()
        offset = np.array([s.start for s in reversed(model_box)], dtype=float)  # crop origin (x, y, z)
        size = np.array(crop.shape[::-1], dtype=float)
        full = np.array(self.model_shape[::-1], dtype=float)
        device = channel.device
        a = torch.tensor(self._a, dtype=torch.float32, device=device)
        b = torch.tensor(self._b - offset, dtype=torch.float32, device=device)
        scale = torch.tensor(2.0 / np.maximum(size - 1, 1), dtype=torch.float32, device=device)
        lo = torch.tensor(-1.5 - offset, dtype=torch.float32, device=device)  # the padded grid's buffer, in crop index
        hi = torch.tensor(full + 0.5 - offset, dtype=torch.float32, device=device)
        if self._axis_of is not None:
            return self._sample_separable(crop, offset, full, input_box)
        ks, js, is_ = (torch.arange(s.start, s.stop, device=device, dtype=torch.float32) for s in input_box)
        ny, nx = js.numel(), is_.numel()
        out = torch.empty((ks.numel(), ny, nx), dtype=torch.float32, device=device)
        plane = is_[None, :, None] * a[:, 0] + js[:, None, None] * a[:, 1] + b  # (ny, nx, 3) at k = 0
        step = max(1, self._CHUNK_POINTS // max(ny * nx, 1))
        volume = crop[None, None]
        for z0 in range(0, ks.numel(), step):
            xyz = plane + ks[z0:z0 + step, None, None, None] * a[:, 2]  # crop continuous index (x, y, z)
            inside = ((xyz >= lo) & (xyz < hi)).all(dim=-1)
            values = F.grid_sample(volume, (xyz * scale - 1.0)[None], mode="bilinear", padding_mode="border",
                                   align_corners=True)
            out[z0:z0 + step] = values[0, 0] * inside
        return out


    def _sample_separable(self, crop: torch.Tensor, offset: np.ndarray, full: np.ndarray,
                          input_box: Box) -> torch.Tensor:
        """The same values for an input whose axes each run along one model axis (no obliquity): trilinear
        interpolation is then three 1-D linear interpolations, one per axis, each a small matrix product (two
        non-zero weights per row), which the CPU's BLAS runs several times faster than ``grid_sample``."""
        out = crop
        for m in range(3):  # model axis x, y, z = crop dim 2, 1, 0
            n = self._axis_of[m]  # the input axis (i, j, k = 0, 1, 2) that runs along model axis m
            steps = input_box[2 - n]
            t = torch.arange(steps.start, steps.stop, device=crop.device, dtype=torch.float64)
            c = t * float(self._a[m, n]) + float(self._b[m] - offset[m])  # crop continuous index on axis m
            size = crop.shape[2 - m]
            inside = ((c >= -1.5 - offset[m]) & (c < full[m] + 0.5 - offset[m])).to(crop.dtype)
            c = c.clamp(0, size - 1)
            i0 = c.floor().long().clamp(max=max(size - 2, 0))
            i1 = (i0 + 1).clamp(max=size - 1)
            w = (c - i0).to(crop.dtype)
            weights = torch.zeros((t.numel(), size), dtype=crop.dtype, device=crop.device)
            rows = torch.arange(t.numel(), device=crop.device)
            weights.index_put_((rows, i0), (1 - w) * inside, accumulate=True)
            weights.index_put_((rows, i1), w * inside, accumulate=True)
            dim = 2 - m
            out = torch.movedim(torch.movedim(out, dim, -1) @ weights.T, -1, dim)
        # dims are now (model z, model y, model x) holding input axes axis_of[2], axis_of[1], axis_of[0]
        order = [2 - self._axis_of[2 - d] for d in range(3)]  # where each model dim goes in (k, j, i)
        return out.permute(*np.argsort(order).tolist()).contiguous()


def _axis_permutation(a: np.ndarray) -> list[int] | None:
    """For a model-index-from-input-index matrix with one non-zero entry per row and column (axis-aligned input,
    possibly permuted or flipped): the input axis of each model axis; None for an oblique input."""
    big = np.abs(a) > 1e-9 * np.abs(a).max()
    if not (big.sum(axis=0) == 1).all() or not (big.sum(axis=1) == 1).all():
        return None
    return [int(np.flatnonzero(row)[0]) for row in big]


def _corner_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned physical box (lo, hi) around the image's voxel corners."""
    size = np.array(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(np.where(bits, size - 0.5, -0.5).tolist())
                        for bits in np.ndindex(2, 2, 2)])
    return corners.min(axis=0), corners.max(axis=0)


def _grid_size(lo: np.ndarray, hi: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Voxels per axis (x, y, z) of the model grid over the box (lo, hi) at ``spacing`` (arithmetic only)."""
    return np.maximum(1, np.round((hi - lo) / np.asarray(spacing, dtype=float))).astype(np.int64)


def _model_grid_for(image: sitk.Image, spacing: Sequence[float]) -> sitk.Image:
    """An empty identity-direction image at ``spacing`` centred on the axis-aligned box around the voxel corners."""
    lo, hi = _corner_box(image)
    spacing = np.asarray(spacing, dtype=float)
    new_size = _grid_size(lo, hi, spacing)
    origin = (lo + hi) / 2 - (new_size - 1) * spacing / 2
    grid = sitk.Image([int(s) for s in new_size], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin(origin.tolist())
    grid.SetDirection(_IDENTITY)
    return grid


def _resample(image: sitk.Image, reference: sitk.Image, interpolator: int, fill: float, pixel_id: int) -> sitk.Image:
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetInterpolator(interpolator)
    resampler.SetDefaultPixelValue(fill)
    resampler.SetOutputPixelType(pixel_id)
    return resampler.Execute(image)


def _float32(image: sitk.Image) -> sitk.Image:
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)


def _is_axis_aligned(image: sitk.Image) -> bool:
    return bool(np.max(np.abs(np.subtract(image.GetDirection(), _IDENTITY))) <= _AXIS_ALIGNED_TOL)


def _body_threshold(array_zyx: np.ndarray, norm: IntensityNorm) -> float:
    if norm.scheme == CT_CLIP_ZSCORE:
        return _CT_BODY_HU
    p1, p99 = np.percentile(array_zyx, [1, 99])
    return float(p1 + _MR_BODY_LEVEL * (p99 - p1))


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    filled = mask.copy()
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        slice_filled = sitk.BinaryFillhole(sitk.GetImageFromArray(mask[z].astype(np.uint8)))
        filled[z] = sitk.GetArrayViewFromImage(slice_filled) > 0
    return filled
