"""From a clinical image to per-task probabilities and masks on the input's own grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import SimpleITK as sitk
import torch

from ..manifest import TaskEntry
from ..model import HermesModel
from ..preprocessing import Preprocessing, body_mask, normalize_intensity, resample_to_input, to_model_grid
from .postprocess import largest_component
from .query_plan import plan_queries
from .sliding_window import count_windows, sliding_window_probabilities

FAST_SPACING_MM = 3.0
# Share of one input's progress spent in each stage.
_PREP, _INFER, _RESAMPLE = 0.08, 0.80, 0.12

ProgressFn = Callable[[str, float, str], None]


@dataclass
class InferenceOptions:
    fast: bool = False
    overlap: float = 0.5
    batch_size: int | None = None  # windows per forward pass; None = 4 on a GPU, 1 on the CPU
    threshold: float = 0.5
    largest_component: bool = False
    crop_to_body: bool = True  # skip the air around the patient (the reference trained on body-cropped volumes)


@dataclass
class ModelSpacePrediction:
    """Probabilities (T, z, y, x) on the model grid, one channel per selected task, in selection order."""

    tasks: list[TaskEntry]
    probabilities: np.ndarray
    model_grid: sitk.Image
    input_image: sitk.Image
    options: InferenceOptions = field(default_factory=InferenceOptions)

    def on_input_grid(self) -> Iterator[tuple[TaskEntry, np.ndarray, np.ndarray]]:
        """Yield (task, probability, mask) on the input grid one task at a time, to bound memory.

        Probabilities are resampled back (linear) and thresholded there, so masks align voxel for voxel with the
        input image in its own geometry.
        """
        for t, task in enumerate(self.tasks):
            prob = resample_to_input(self.probabilities[t:t + 1], self.model_grid, self.input_image)[0]
            mask = prob >= self.options.threshold
            if self.options.largest_component:
                mask = largest_component(mask)
            yield task, prob, mask.astype(np.uint8)


def body_box(array_zyx: np.ndarray, norm, margin: int) -> tuple[slice, slice, slice]:
    """Bounding box of the body mask plus ``margin`` voxels: the only region worth running the network on."""
    mask = body_mask(array_zyx, norm)
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        lo, hi = (hits[0], hits[-1] + 1) if hits.size else (0, array_zyx.shape[axis])
        box.append(slice(max(lo - margin, 0), min(hi + margin, array_zyx.shape[axis])))
    return tuple(box)


def working_spacing(model: HermesModel, fast: bool) -> tuple[float, float, float]:
    spacing = tuple(model.manifest.preprocessing["spacing"])
    return tuple(max(s, FAST_SPACING_MM) for s in spacing) if fast else spacing


def predict(model: HermesModel, image: sitk.Image, tasks: list[TaskEntry], modality: str,
            options: InferenceOptions | None = None, progress: ProgressFn | None = None) -> ModelSpacePrediction:
    """Preprocess ``image`` as the model's manifest says, run each task inside its training group, and return the
    selected tasks' probabilities on the model grid."""
    options = options or InferenceOptions()
    report = progress or (lambda stage, fraction, message: None)
    pre = Preprocessing.from_dict(model.manifest.preprocessing)
    modality_entry = model.modality(modality)
    report("preprocess", 0.0, "resampling and normalising")
    grid = to_model_grid(image, working_spacing(model, options.fast), channels=len(tasks))
    raw = sitk.GetArrayFromImage(grid)
    norm = pre.norm_for(modality_entry.name)
    box = body_box(raw, norm, margin=8) if options.crop_to_body else tuple(slice(0, n) for n in raw.shape)
    tensor = torch.from_numpy(normalize_intensity(raw, norm)[box].copy())
    del raw
    report("preprocess", _PREP, "preprocessed")

    roi = pre.patch_size
    queries = plan_queries(model.manifest, tasks, modality_entry.name)
    per_query = count_windows(tuple(tensor.shape), roi, options.overlap)
    total = max(per_query * len(queries), 1)
    done = 0

    def on_window(n: int) -> None:
        nonlocal done
        done += n
        report("inference", _PREP + _INFER * done / total, f"window {min(done, total)}/{total}")

    device = model.device
    batch = options.batch_size or (4 if device.type == "cuda" else 1)
    out = np.zeros((len(tasks), *reversed(grid.GetSize())), dtype=np.float32)
    position = {t.id: i for i, t in enumerate(tasks)}
    for query in queries:
        probs = sliding_window_probabilities(model.network, tensor, list(query.task_ids), modality_entry.id, roi,
                                             options.overlap, batch, device, on_window)
        for slot in query.selected:
            out[(position[query.task_ids[slot]], *box)] = probs[slot].numpy()
        del probs
    report("inference", _PREP + _INFER, "inference finished")
    return ModelSpacePrediction(tasks, out, grid, image, options)
