"""From a clinical image to per-task probabilities on the model grid (``predict``); ``input_grid`` takes them back.

Stages and their share of one input's progress: preprocessing 0-8 %, sliding-window inference 8-80 %, then going
back to the input grid (``input_grid.INPUT_GRID_SHARE``) and writing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from ..manifest import TaskEntry
from ..masks import bounding_box
from ..model import HermesModel
from ..preprocessing import Preprocessing, body_mask, normalize_intensity, to_model_grid
from .execution import ExecutionPlan, choose_execution
from .found_rule import DEFAULT_RULE, FoundRule
from .query_plan import plan_queries
from .sliding_window import count_windows, sliding_window_queries

# --fast: at least this working spacing (mm) on every axis, and at most this window overlap.
FAST_SPACING_MM = 3.0
FAST_OVERLAP = 0.25
PREP_END, INFER_END = 0.08, 0.80
BODY_MARGIN = 8  # model voxels of air kept around the body box

ProgressFn = Callable[[str, float, str], None]


@dataclass
class InferenceOptions:
    fast: bool = False
    overlap: float = 0.5
    batch_size: int | None = None  # windows per forward pass; None = calibrated per device (execution.py)
    threads: int | None = None  # CPU threads; None = calibrated
    largest_component: bool = False
    crop_to_body: bool = True  # skip the air around the patient (the reference trained on body-cropped volumes)
    share_encoder: bool = True  # one encoder pass per window for all task groups (sliding_window.window_predictor)
    crop_resample: bool = True  # go back to the input grid only inside each task's box (input_grid.py)
    found_rule: FoundRule = DEFAULT_RULE  # when a mask reaching the threshold still counts as not found (found_rule.py)

    @classmethod
    def baseline(cls, **changes) -> "InferenceOptions":
        """The pipeline as it was before the speed work, for benchmarks: one window per forward pass and torch's
        default threads, a full network pass per task group, whole-volume resampling back. Same windows and blending
        as the default."""
        old = cls(batch_size=1, threads=torch.get_num_threads(), share_encoder=False, crop_resample=False)
        return replace(old, **changes)

    def effective_overlap(self) -> float:
        return min(self.overlap, FAST_OVERLAP) if self.fast else self.overlap


@dataclass
class ModelSpacePrediction:
    """Probabilities (T, z, y, x) float32 on the whole model grid, one channel per selected task in selection
    order, on the device that blended them (GPU-resident on a GPU)."""

    tasks: list[TaskEntry]
    probabilities_tensor: torch.Tensor
    model_grid: sitk.Image
    input_image: sitk.Image
    options: InferenceOptions = field(default_factory=InferenceOptions)
    execution: ExecutionPlan | None = None
    body_mask: np.ndarray | None = None  # bool (z, y, x) on the model grid, where preprocessing found the patient

    @property
    def probabilities(self) -> np.ndarray:
        return self.probabilities_tensor.cpu().numpy()


def working_spacing(pre: Preprocessing, fast: bool) -> tuple[float, float, float]:
    return tuple(max(s, FAST_SPACING_MM) for s in pre.spacing) if fast else pre.spacing


@contextlib.contextmanager
def _threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def predict(model: HermesModel, image: sitk.Image, tasks: list[TaskEntry], modality: str,
            options: InferenceOptions | None = None, progress: ProgressFn | None = None) -> ModelSpacePrediction:
    """Preprocess ``image`` as the model's manifest says, run each task inside its training group, and return the
    selected tasks' probabilities on the model grid."""
    options = options or InferenceOptions()
    report = progress or (lambda stage, fraction, message: None)
    pre = Preprocessing.from_dict(model.manifest.preprocessing)
    modality_entry = model.modality(modality)
    norm = pre.norm_for(modality_entry.name)
    report("preprocess", 0.0, "resampling and normalising")
    grid = to_model_grid(image, working_spacing(pre, options.fast), channels=len(tasks))
    raw = sitk.GetArrayFromImage(grid)
    body = body_mask(raw, norm) if options.crop_to_body or norm.stats_region == "body" else None
    full = tuple(slice(0, n) for n in raw.shape)
    box = (bounding_box(body, BODY_MARGIN) or full) if options.crop_to_body else full
    tensor = torch.from_numpy(normalize_intensity(raw, norm, body)[box].copy())
    del raw
    report("preprocess", PREP_END, "preprocessed")

    roi = pre.patch_size
    queries = plan_queries(model.manifest, tasks, modality_entry.name)
    overlap = options.effective_overlap()
    windows = count_windows(tuple(tensor.shape), roi, overlap)
    passes = len(queries) if not options.share_encoder else 1
    total = max(windows * passes, 1)
    done = 0

    def on_window(n: int) -> None:
        nonlocal done
        done += n
        report("inference", PREP_END + (INFER_END - PREP_END) * done / total, f"window {min(done, total)}/{total}")

    device = model.device
    report("inference", PREP_END, f"{total} window passes on {device}")
    plan = choose_execution(model.network, roi, device, options.batch_size, options.threads)
    with _threads(plan.threads):
        if options.share_encoder:
            probs = sliding_window_queries(model.network, tensor, queries, modality_entry.id, roi, overlap,
                                           plan.batch_size, device, on_window)
        else:  # the old way: a full sliding-window pass per group
            probs = torch.cat([sliding_window_queries(model.network, tensor, [q], modality_entry.id, roi, overlap,
                                                      plan.batch_size, device, on_window, share_encoder=False)
                               for q in queries])
    out = torch.zeros((len(tasks), *raw_shape(grid)), dtype=torch.float32, device=probs.device)
    position = {t.id: i for i, t in enumerate(tasks)}
    order = [position[q.task_ids[slot]] for q in queries for slot in q.selected]
    out[(order, *box)] = probs
    del probs
    report("inference", INFER_END, "inference finished")
    return ModelSpacePrediction(tasks, out, grid, image, options, plan, body)


def raw_shape(grid: sitk.Image) -> tuple[int, int, int]:
    return tuple(reversed(grid.GetSize()))
