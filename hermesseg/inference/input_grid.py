"""Going back from the model grid to the input's own grid: the one place that does it, and its progress share.

Each task's probability is resampled back (linear) and thresholded on the input grid at the task's own threshold
(``TaskEntry.threshold``: 0.5 unless add-task or finetune chose another on held-out cases). With ``crop_resample``
only the box where the probability reaches the threshold on the model grid, plus one model voxel (linear
interpolation reads the 8 surrounding voxels, so no input voxel outside can reach the threshold), is resampled: the
cost follows the size of the structure, not of the input, and a task that never reaches the threshold is "not found"
without any resampling. A task that keeps only its largest piece (``TaskEntry.keep_largest_component``, chosen on
held-out cases by add-task, or ``options.largest_component`` for every task) has its other pieces removed first, on
the model grid, so its evidence, mask and probability map describe that piece. A mask that reaches the threshold is
drawn only when its evidence (measured at ``EVIDENCE_THRESHOLD``, 0.5, where the rule was calibrated) passes
``options.found_rule`` (``found_rule.py``); otherwise the task is not found, with the rule's reason. Everything runs
in torch on the device that holds the probabilities; only the boxed masks (and, when asked for, whole probability
maps) come back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from ..manifest import TaskEntry
from ..masks import Box, bounding_box, largest_piece_only
from ..preprocessing import InputGridSampler
from .found_rule import EVIDENCE_THRESHOLD, Evidence, task_evidence
from .pipeline import INFER_END, ModelSpacePrediction

INPUT_GRID_SHARE = (INFER_END, 0.97)  # progress of one input spent here; writing the files takes the rest
_INTERPOLATION_MARGIN = 1  # model voxels


@dataclass
class TaskOnInputGrid:
    """One task on the input grid: its mask inside ``box`` (z, y, x), or not found (``box`` None, empty mask, and
    ``reason`` says why)."""

    task: TaskEntry
    box: Box | None
    mask: np.ndarray  # uint8, box-shaped
    probability: np.ndarray | None = None  # float32 on the whole input grid, when asked for
    evidence: Evidence | None = None  # on the model grid
    reason: str | None = None  # why it is not found

    @property
    def found(self) -> bool:
        return self.box is not None

    def full_mask(self, shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=np.uint8)
        if self.box is not None:
            out[self.box] = self.mask
        return out


def on_input_grid(prediction: ModelSpacePrediction, probabilities: bool = False,
                  report: Callable[[str, float, str], None] | None = None) -> Iterator[TaskOnInputGrid]:
    """Yield each task on the input grid, one at a time to bound memory, reporting progress in INPUT_GRID_SHARE."""
    options = prediction.options
    sampler = InputGridSampler(prediction.model_grid, prediction.input_image)
    lo, hi = INPUT_GRID_SHARE
    n = len(prediction.tasks)
    spacing = prediction.model_grid.GetSpacing()
    for t, task in enumerate(prediction.tasks):
        channel, threshold = prediction.probabilities_tensor[t], task.threshold
        if options.largest_component or task.keep_largest_component:
            channel = largest_piece_only(channel, threshold)
        evidence = task_evidence(channel, EVIDENCE_THRESHOLD, spacing, prediction.body_mask)
        reason = options.found_rule.reason(evidence, EVIDENCE_THRESHOLD)
        whole = sampler.sample(channel) if probabilities or not options.crop_resample else None
        if reason is not None:
            mask, box = np.zeros((0, 0, 0), dtype=bool), None
        elif options.crop_resample:
            mask, box = _boxed_mask(sampler, channel, threshold)
        else:
            mask, box = (whole >= threshold).cpu().numpy(), tuple(slice(0, s) for s in sampler.input_shape)
        tight = bounding_box(mask) if mask.any() else None
        if tight is None:
            reason = reason or f"the probability reaches {threshold:g} on no voxel of the input grid"
            result = TaskOnInputGrid(task, None, np.zeros((0, 0, 0), np.uint8), reason=reason)
        else:
            mask = mask[tight]
            result = TaskOnInputGrid(task, tuple(slice(b.start + s.start, b.start + s.stop)
                                                 for b, s in zip(box, tight)), mask.astype(np.uint8))
        result.evidence = evidence
        if whole is not None and probabilities:
            result.probability = whole.cpu().numpy()
        if report is not None:
            state = "on the input grid" if result.found else "not found in this image"
            report("resample", lo + (hi - lo) * (t + 1) / n, f"{task.name} {state}")
        yield result


def _boxed_mask(sampler: InputGridSampler, channel: torch.Tensor, threshold: float) -> tuple[np.ndarray, Box]:
    """The thresholded input-grid mask inside the box that can hold it, and that box; an empty mask when the
    probability never reaches ``threshold``."""
    empty = (np.zeros((0, 0, 0), dtype=bool), (slice(0, 0),) * 3)
    model_box = bounding_box(channel >= threshold, _INTERPOLATION_MARGIN)
    if model_box is None:
        return empty
    input_box = sampler.input_box(model_box)
    if input_box is None:
        return empty
    return (sampler.sample(channel, model_box, input_box) >= threshold).cpu().numpy(), input_box
