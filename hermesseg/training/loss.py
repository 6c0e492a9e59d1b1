"""The training loss (spec 2.4, with the quirks of 7.8 fixed).

Per (sample, task) pair of the batch's query: BCE-with-logits averaged over the patch's voxels, and a soft Dice loss
``1 - (2 sum(p g) + eps) / (sum(p) + sum(g) + eps)`` on the sigmoid probabilities. Padded slots (task id -1) have
weight 0 in both terms.

Empty ground truth. In the reference a pair whose ground truth is empty in the patch contributes a constant 1 with no
gradient, which only dilutes the average (and, with a fixed pair count, makes the Dice term depend on how many
structures happen to be in the patch). Here the Dice term is averaged over the real pairs whose ground truth is
*non-empty* in the patch; a pair with empty ground truth contributes only through BCE, which penalises every false
positive voxel. When no pair of the batch has foreground the Dice term is 0. ``eps`` (1e-5) only guards the division;
it is too small to act as a smoothing prior. The reference's adaptive-Tversky weighting (an undetached alpha) is not
reproduced: plain soft Dice.

Total = BCE + Dice + ``modality_weight`` (0.01) x cross-entropy of the auxiliary modality head against the sample's
modality id.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NULL_TASK = -1
DICE_EPS = 1e-5


def pair_losses(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair (B, T): BCE (voxel mean), soft-Dice loss, and whether the ground truth is non-empty."""
    logits = logits.float().flatten(2)
    g = targets.flatten(2).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, g, reduction="none").mean(-1)
    p = torch.sigmoid(logits)
    inter = (p * g).sum(-1)
    g_sum = g.sum(-1)
    dice = 1.0 - (2.0 * inter + DICE_EPS) / (p.sum(-1) + g_sum + DICE_EPS)
    return bce, dice, g_sum > 0


def hermes_loss(seg_logits: torch.Tensor, targets: torch.Tensor, task_ids: torch.Tensor,
                modality_logits: torch.Tensor | None = None, modality_ids: torch.Tensor | None = None,
                modality_weight: float = 0.01) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (as floats, for logging)."""
    bce, dice, nonempty = pair_losses(seg_logits, targets)
    real = (task_ids != NULL_TASK).to(bce.dtype)
    n_real = real.sum().clamp_min(1.0)
    bce_term = (bce * real).sum() / n_real
    dice_w = real * nonempty.to(bce.dtype)
    dice_term = (dice * dice_w).sum() / dice_w.sum().clamp_min(1.0)
    total = bce_term + dice_term
    parts = {"bce": float(bce_term.detach()), "dice": float(dice_term.detach()),
             "dice_pairs": int(dice_w.sum().item()), "pairs": int(real.sum().item())}
    if modality_logits is not None and modality_ids is not None and modality_weight > 0:
        ce = F.cross_entropy(modality_logits.float(), modality_ids.long())
        total = total + modality_weight * ce
        parts["modality_ce"] = float(ce.detach())
    else:
        parts["modality_ce"] = 0.0
    parts["loss"] = float(total.detach())
    return total, parts
