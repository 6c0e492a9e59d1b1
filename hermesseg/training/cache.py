"""Preprocessing cache: each case resampled to the model grid and normalised once, then memory-mapped by training.

Per case, ``<cache>/<dataset>/<spacing>/<case>-<key>/`` holds

- ``image.npy``: float32 (z, y, x), reoriented to LPS, resampled to the model spacing, intensity-normalised;
- ``label.npy``: uint8 (z, y, x) slot indices (0 background, k = the dataset's k-th task), nearest-neighbour;
- ``foreground.npy``: int32 (N, 3) voxel coordinates per slot (at most ``MAX_FOREGROUND_POINTS`` per slot, a seeded
  subsample), for foreground-aware patch sampling; ``meta.json`` gives each slot's [start, end) rows;
- ``meta.json``: shape, geometry, image minimum, per-slot voxel counts, sources. It is written
  last, so an entry without it is incomplete and is rebuilt.

The key hashes everything the arrays depend on: the cache format, the spacing, the intensity normalisation, the label
value -> slot table, and each source file's resolved path, size and modification time (not its content hash: hashing
hundreds of GB of images on every start would cost minutes; a file replaced in place with the same size and mtime is
the one case this misses). Every file is written atomically, so a killed build leaves no half-written array that a
later run could mistake for a complete one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from ..cache_paths import cache_root
from ..atomic import atomic_path
from ..errors import DatasetError, InputImageError
from ..imageio import read_image
from ..preprocessing import IntensityNorm, normalize_intensity, resample_label_to_grid, to_model_grid
from ..nnunet import Case, Dataset, DatasetTasks

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
MAX_FOREGROUND_POINTS = 20000


def default_cache_dir() -> Path:
    """``$HERMESSEG_CACHE/training``, else ``$XDG_CACHE_HOME/hermesseg/training``, else ``~/.cache/hermesseg/training``."""
    return cache_root("training")


def _file_identity(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(case: Case, spacing: Sequence[float], norm: IntensityNorm, lut: np.ndarray) -> str:
    payload = {"format": CACHE_FORMAT, "spacing": [float(s) for s in spacing], "norm": norm.to_dict(),
               "lut": lut.tolist(), "image": _file_identity(case.image), "label": _file_identity(case.label)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _spacing_tag(spacing: Sequence[float]) -> str:
    return "x".join(f"{float(s):g}" for s in spacing) + "mm"


@dataclass
class CachedCase:
    """A cache entry, opened lazily (memory-mapped) in whichever process samples from it."""

    dataset: str
    case: str
    directory: Path
    meta: dict
    _arrays: dict = field(default_factory=dict, repr=False)

    def _load(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.directory / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    @property
    def image(self) -> np.ndarray:
        return self._load("image")

    @property
    def label(self) -> np.ndarray:
        return self._load("label")

    @property
    def foreground(self) -> np.ndarray:
        return self._load("foreground")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["shape"])

    def slots_present(self) -> list[int]:
        """Slots (1-based) with at least one voxel in this case."""
        return [i + 1 for i, n in enumerate(self.meta["slot_voxels"]) if n > 0]

    def foreground_points(self, slot: int) -> np.ndarray:
        start, end = self.meta["foreground_rows"][slot - 1]
        return self.foreground[start:end]

    def __getstate__(self):  # DataLoader workers re-open the memory maps themselves
        return {**self.__dict__, "_arrays": {}}


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def _foreground(label: np.ndarray, num_slots: int, key: str) -> tuple[np.ndarray, list[list[int]], list[int]]:
    flat = np.flatnonzero(label)
    slots = label.reshape(-1)[flat]
    order = np.argsort(slots, kind="stable")
    flat, slots = flat[order], slots[order]
    bounds = np.searchsorted(slots, np.arange(1, num_slots + 2))
    rng = np.random.default_rng(int(key[:12], 16))
    chosen, rows, counts, start = [], [], [], 0
    for s in range(num_slots):
        idx = flat[bounds[s]:bounds[s + 1]]
        counts.append(int(idx.size))
        if idx.size > MAX_FOREGROUND_POINTS:
            idx = np.sort(rng.choice(idx, MAX_FOREGROUND_POINTS, replace=False))
        chosen.append(idx)
        rows.append([start, start + int(idx.size)])
        start += int(idx.size)
    flat_all = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    coords = np.stack(np.unravel_index(flat_all, label.shape), axis=1).astype(np.int32) if flat_all.size \
        else np.zeros((0, 3), dtype=np.int32)
    return coords, rows, counts


def preprocess_case(dataset: Dataset, case: Case, spacing: Sequence[float], norm: IntensityNorm,
                    lut: np.ndarray) -> tuple[np.ndarray, np.ndarray, sitk.Image]:
    """Model-grid image (normalised float32) and slot-index label (uint8) of one case."""
    try:
        image = read_image(case.image)
    except InputImageError as e:
        raise DatasetError(f"dataset {dataset.name}, case {case.name}: {e}") from None
    grid = to_model_grid(image, spacing)
    try:
        raw = sitk.ReadImage(str(case.label))
    except RuntimeError as e:
        raise DatasetError(f"dataset {dataset.name}, case {case.name}: cannot read the label ({e})") from None
    values = sitk.GetArrayFromImage(raw)
    if values.ndim == 4:
        values = values[0]
    values = values.astype(np.int64)
    if values.min() < 0 or values.max() >= lut.size:
        raise DatasetError(f"dataset {dataset.name}, case {case.name}: label values outside dataset.json 'labels'")
    slots = sitk.GetImageFromArray(lut[values])
    slots.CopyInformation(image)
    label = sitk.GetArrayFromImage(resample_label_to_grid(slots, grid)).astype(np.uint8)
    array = normalize_intensity(sitk.GetArrayFromImage(grid), norm).astype(np.float32, copy=False)
    return np.ascontiguousarray(array), np.ascontiguousarray(label), grid


def build_case(dataset: Dataset, case: Case, tasks: DatasetTasks, spacing: Sequence[float], norm: IntensityNorm,
               root: Path) -> CachedCase:
    """Return the case's cache entry, building it if missing or incomplete."""
    lut = tasks.lut()
    key = cache_key(case, spacing, norm, lut)
    directory = Path(root) / dataset.name / _spacing_tag(spacing) / f"{case.name}-{key}"
    meta_path = directory / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") == key and all((directory / f"{n}.npy").is_file()
                                               for n in ("image", "label", "foreground")):
                return CachedCase(dataset.name, case.name, directory, meta)
        except (OSError, json.JSONDecodeError):
            pass
    image, label, grid = preprocess_case(dataset, case, spacing, norm, lut)
    num_slots = len(tasks.task_names)
    coords, rows, counts = _foreground(label, num_slots, key)
    directory.mkdir(parents=True, exist_ok=True)
    _save_npy(directory / "image.npy", image)
    _save_npy(directory / "label.npy", label)
    _save_npy(directory / "foreground.npy", coords)
    meta = {"format": CACHE_FORMAT, "key": key, "dataset": dataset.name, "case": case.name,
            "shape": list(image.shape), "spacing": list(grid.GetSpacing()), "origin": list(grid.GetOrigin()),
            "direction": list(grid.GetDirection()), "image_min": float(image.min()) if image.size else 0.0,
            "tasks": list(tasks.task_names), "slot_voxels": counts, "foreground_rows": rows,
            "norm": norm.to_dict(), "sources": {"image": _file_identity(case.image),
                                                "label": _file_identity(case.label)}}
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    log.info("cached %s/%s: %s voxels at %s mm", dataset.name, case.name, "x".join(map(str, image.shape)),
             _spacing_tag(spacing))
    return CachedCase(dataset.name, case.name, directory, meta)


def build_cache(datasets: Sequence[Dataset], per_dataset: Mapping[str, DatasetTasks], spacing: Sequence[float],
                norms: Mapping[str, IntensityNorm], root: Path,
                cases: Mapping[str, Sequence[str]] | None = None) -> dict[tuple[str, str], CachedCase]:
    """Cache entries of every (or only the listed) case of every dataset, keyed by (dataset, case)."""
    out: dict[tuple[str, str], CachedCase] = {}
    for ds in datasets:
        wanted = None if cases is None else set(cases.get(ds.name, ()))
        for case in ds.cases:
            if wanted is not None and case.name not in wanted:
                continue
            out[(ds.name, case.name)] = build_case(ds, case, per_dataset[ds.name], spacing,
                                                   norms[ds.model_modality], root)
    return out
