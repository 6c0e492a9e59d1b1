"""The preprocessing a model expects, as stored in its manifest (spec 5): spacing, orientation, intensity
normalisation per modality, patch size. Plain dataclasses, no numpy/SimpleITK/torch, so that a model file's manifest
is validated where torch is not installed (Slicer's own process); the computing side is ``hermesseg.preprocessing``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

CT_CLIP_ZSCORE = "ct_clip_zscore"
PERCENTILE_CLIP_ZSCORE = "percentile_clip_zscore"
SCHEMES = (CT_CLIP_ZSCORE, PERCENTILE_CLIP_ZSCORE)
STATS_REGIONS = ("body", "all")
ORIENTATIONS = ("LPS",)


@dataclass(frozen=True)
class IntensityNorm:
    """How one modality's intensities are normalised, as the model saw them in training.

    ``ct_clip_zscore`` clips to the fixed ``clip`` HU window, ``percentile_clip_zscore`` to the image's own
    ``percentiles``; both then z-score with mean and std computed in ``stats_region`` ("body": inside ``body_mask``,
    which makes full-FOV scans look like the body-cropped training volumes; "all": every voxel).
    """

    scheme: str
    clip: tuple[float, float] = (-991.0, 500.0)
    percentiles: tuple[float, float] = (2.0, 98.0)
    stats_region: str = "body"

    def __post_init__(self):
        object.__setattr__(self, "clip", _float_pair(self.clip, "clip"))
        object.__setattr__(self, "percentiles", _float_pair(self.percentiles, "percentiles"))
        if self.scheme not in SCHEMES:
            raise ValueError(f"intensity scheme {self.scheme!r} is unknown; valid: {', '.join(SCHEMES)}")
        if self.stats_region not in STATS_REGIONS:
            raise ValueError(f"stats_region {self.stats_region!r} is unknown; valid: {', '.join(STATS_REGIONS)}")
        if not 0.0 <= self.percentiles[0] < self.percentiles[1] <= 100.0:
            raise ValueError(f"percentiles {self.percentiles} must satisfy 0 <= lo < hi <= 100")

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "clip": list(self.clip), "percentiles": list(self.percentiles),
                "stats_region": self.stats_region}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "IntensityNorm":
        _reject_unknown_keys(cls, d, "intensity normalisation")
        if "scheme" not in d:
            raise ValueError("intensity normalisation is missing 'scheme'")
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """The input space a model expects, stored in its manifest: orientation, spacing (x, y, z) in mm, intensity
    normalisation per modality name, and the patch size (z, y, x) in voxels of the sliding window."""

    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    orientation: str = "LPS"
    intensity: dict[str, IntensityNorm] = field(default_factory=dict)
    patch_size: tuple[int, int, int] = (128, 128, 128)

    def __post_init__(self):
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "intensity", dict(self.intensity))
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing {self.spacing} must be three positive numbers (x, y, z) in mm")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size {self.patch_size} must be three positive voxel counts (z, y, x)")
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation {self.orientation!r} is not supported; valid: {', '.join(ORIENTATIONS)}")
        if not self.intensity:
            raise ValueError("intensity must give a normalisation for at least one modality")
        for name, norm in self.intensity.items():
            if not isinstance(norm, IntensityNorm):
                raise ValueError(f"intensity[{name!r}] must be an IntensityNorm, not {type(norm).__name__}")

    def norm_for(self, modality_name: str) -> IntensityNorm:
        if modality_name not in self.intensity:
            raise KeyError(f"no intensity normalisation for modality {modality_name!r}; "
                           f"valid: {', '.join(self.intensity)}")
        return self.intensity[modality_name]

    def to_dict(self) -> dict[str, Any]:
        return {"spacing": list(self.spacing), "orientation": self.orientation,
                "intensity": {name: norm.to_dict() for name, norm in self.intensity.items()},
                "patch_size": list(self.patch_size)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessing":
        _reject_unknown_keys(cls, d, "preprocessing")
        if "intensity" not in d:
            raise ValueError("preprocessing is missing 'intensity'")
        intensity = {}
        for name, norm in d["intensity"].items():
            try:
                intensity[name] = IntensityNorm.from_dict(norm)
            except (TypeError, ValueError) as err:
                raise ValueError(f"intensity[{name!r}]: {err}") from err
        return cls(**{**d, "intensity": intensity})


def _float_pair(value: Sequence[float], name: str) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not pair[0] < pair[1]:
        raise ValueError(f"{name} {tuple(value)} must be two numbers (lo, hi) with lo < hi")
    return pair


def _reject_unknown_keys(cls: type, d: Mapping[str, Any], what: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for key in d:
        if key not in known:
            raise ValueError(f"unknown {what} key {key!r}; valid: {', '.join(sorted(known))}")
