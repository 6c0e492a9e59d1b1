"""Is a task's structure in this image? The model's own evidence, and the rule that turns it into "not found".

A task whose probability reaches the threshold somewhere is not necessarily there: a model trained on few subjects
answers every query with some mask, often with full confidence (the default model draws a liver on a head-neck CT).
Before a mask is drawn, its evidence on the model grid (``Evidence``: peak and mean probability, volume, connected
components, share inside the body mask that preprocessing computed) goes through ``FoundRule``; a task it rejects is
reported "not found in this image" with the reason, instead of a false mask.

Thresholds, measured with ``benchmarks/not_found_rule.py`` (default model hermes-mini 1.1.0, every task of the
modality on 10 real image/modality runs of ``../shared/data``: 5 CT, 5 MR; 65 absent structures, 114 present ones, 45
of them drawn with Dice >= 0.5; "absent" only where the image's dataset labels the structure):

- mean probability inside the mask >= 0.73;
- largest connected piece >= 45% of the mask: a false mask is often a scatter of pieces.

Together: absent structures drawn 63 -> 33, Dice >= 0.5 masks kept 45 of 45, present structures drawn elsewhere
(Dice < 0.1) 21 -> 4. Chosen on the same images (the thresholds that keep every good mask and draw the fewest absent
structures); chosen again with each image left out, the rule keeps 44 of 45 good masks and draws 33 of 65 absent
structures on the left-out images, so expect about that on new images. The rule is fitted to the model: hermes-mini
1.0.0 (half the training) was less confident, and its rule (0.70, 25%) took its false masks from 65 to 29; on 1.1.0
the same rule leaves 52 of 63. Not used, because alone they cost more good masks than they remove false ones: the
share inside the body mask (at 0.99: 6 false masks fewer, 5 good ones lost) and the number of pieces (at most 10: 34
false masks fewer, 10 good ones lost; the largest piece's share does better). An absent structure the model draws
confidently and in one piece (the brain task on an abdomen CT: mean probability 0.82, 63% in one piece) is beyond
this evidence. ``segment --keep-unconfident`` draws every mask that reaches the threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
import torch

from ..masks import bounding_box


@dataclass(frozen=True)
class Evidence:
    """What the probability map of one task says on the model grid (threshold ``threshold``)."""

    peak: float  # highest probability anywhere
    voxels: int  # model voxels at or above the threshold
    volume_ml: float
    mean_probability: float  # mean probability inside the thresholded mask (0 when empty)
    components: int  # 26-connected pieces of the thresholded mask
    largest_fraction: float  # share of the mask's voxels in its largest piece
    inside_body: float  # share of the mask's voxels inside the body mask (1.0 when there is no body mask)

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def task_evidence(channel: torch.Tensor, threshold: float, spacing_mm, body: np.ndarray | None = None) -> Evidence:
    """``channel``: one task's probabilities (z, y, x) on the model grid, on any device; ``body``: the body mask on
    the same grid. Only the box around the thresholded mask is copied to the host."""
    peak = float(channel.max())
    box = bounding_box(channel >= threshold)
    if box is None:
        return Evidence(peak, 0, 0.0, 0.0, 0, 0.0, 0.0)
    probability = channel[box].cpu().numpy()
    mask = probability >= threshold
    voxels = int(mask.sum())
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))
    sizes = np.bincount(labels.ravel())[1:]
    inside = float(body[box][mask].mean()) if body is not None else 1.0
    return Evidence(peak, voxels, voxels * float(np.prod(spacing_mm)) / 1000.0, float(probability[mask].mean()),
                    int(sizes.size), float(sizes.max() / voxels), inside)


@dataclass(frozen=True)
class FoundRule:
    """A mask is drawn only when its evidence passes every test; ``reason`` says which one failed. ``FoundRule()``
    only asks that the threshold is reached somewhere; ``DEFAULT_RULE`` has the measured thresholds (module
    docstring)."""

    min_mean_probability: float = 0.0
    min_largest_fraction: float = 0.0
    min_inside_body: float = 0.0
    max_components: int | None = None

    def reason(self, e: Evidence, threshold: float = 0.5) -> str | None:
        """None when the structure counts as found, else why it is not found in this image."""
        if e.voxels == 0:
            return f"the probability never reaches {threshold:g} (peak {e.peak:.2f})"
        if e.mean_probability < self.min_mean_probability:
            return f"not confident: mean probability {e.mean_probability:.2f} inside the mask " \
                   f"(needs {self.min_mean_probability:g})"
        if e.largest_fraction < self.min_largest_fraction:
            return f"scattered: the largest of {e.components} pieces holds {e.largest_fraction:.0%} of the mask " \
                   f"(needs {self.min_largest_fraction:.0%})"
        if self.max_components is not None and e.components > self.max_components:
            return f"scattered: {e.components} separate pieces (at most {self.max_components})"
        if e.inside_body < self.min_inside_body:
            return f"outside the body: {e.inside_body:.0%} of the mask lies inside it " \
                   f"(needs {self.min_inside_body:.0%})"
        return None


# The probability at which the rule's evidence is measured, whatever threshold a task is drawn at: its thresholds
# were measured on masks at 0.5, and a mask at a lower threshold (training/postprocessing.py) holds less confident
# voxels (ACDC, 5 patients, seed-3 split: judged at 0.3, the right ventricle lost 0.04 mean Dice to "not confident").
EVIDENCE_THRESHOLD = 0.5
DEFAULT_RULE = FoundRule(min_mean_probability=0.73, min_largest_fraction=0.45)
NO_RULE = FoundRule()  # drawn wherever the threshold is reached (segment --keep-unconfident)
