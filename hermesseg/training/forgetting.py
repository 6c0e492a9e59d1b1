"""Zero forgetting, verified: every task of the parent, queried in its own group, must give bit-identical logits in
the child model (add-task trains only new rows and appends them; spec 4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import HermesError
from ..manifest import Manifest
from ..network import NULL_TASK, HermesR
from .sampling import PAD_VALUE, crop, patch_start


class ForgettingCheckError(HermesError):
    """The child model changed a parent task's output; it is not written."""


@dataclass
class ForgettingReport:
    queries: int  # (group, modality) queries compared
    tasks: int
    max_abs_difference: float  # 0.0 when bit-identical
    identical: bool


def group_queries(manifest: Manifest) -> list[tuple[str, list[int], int]]:
    """(group, task ids + null, modality id) for every group and every modality its tasks were learned for."""
    out = []
    for group in manifest.groups:
        members = [t for t in manifest.tasks if t.group == group]
        for modality in dict.fromkeys(m for t in members for m in t.modalities):
            ids = [t.id for t in members if modality in t.modalities] + [NULL_TASK]
            out.append((group, ids, manifest.modality(modality).id))
    return out


@torch.no_grad()
def compare_parent_tasks(parent: HermesR, child: HermesR, manifest: Manifest, image: np.ndarray,
                         patch_size) -> ForgettingReport:
    """Logits of every parent group on the centre patch of ``image`` (a model-grid volume), parent vs child."""
    start = patch_start(image.shape, patch_size, np.random.default_rng(0), [s // 2 for s in image.shape])
    patch = torch.from_numpy(crop(np.asarray(image, dtype=np.float32), start, patch_size, PAD_VALUE))[None, None]
    worst, identical, tasks = 0.0, True, 0
    parent_mode, child_mode = parent.training, child.training
    parent.eval(), child.eval()
    try:
        queries = group_queries(manifest)
        for _, ids, modality in queries:
            q, m = torch.tensor([ids]), torch.tensor([modality])
            a, b = parent(patch, q, m)[0], child(patch, q, m)[0]
            tasks += len(ids) - 1
            if not torch.equal(a, b):
                identical = False
                worst = max(worst, float((a - b).abs().max()))
    finally:
        parent.train(parent_mode), child.train(child_mode)
    return ForgettingReport(len(queries), tasks, worst, identical)
