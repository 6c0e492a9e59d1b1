"""A prior-fusion layer: its own task and modality prior tables plus a stack of two-way blocks (spec 1.2-1.3)."""

from __future__ import annotations

import torch
from torch import nn

from .attention import TwoWayPriorBlock

NULL_TASK = -1


class PriorFusionLayer(nn.Module):
    """Fuses the selected task priors and one modality's prior tokens with a feature map.

    Tables: ``task_prior`` (rows x C), ``null_token`` (1 x C, kept apart so appending task rows never moves it) and
    ``modality_prior`` (modalities x tokens x C). Task id -1 selects the null token.
    Incremental learning (spec 4) gives the layer *new* rows as separate parameters (``new_task_prior``,
    ``new_modality_prior``), read after the existing ones, so an optimiser can be handed only them: the existing rows
    are not merely left untouched by a masked gradient, they are never in the optimiser at all (weight decay and
    Adam state cannot reach them). ``fold_new_rows`` appends them to the tables for saving.
    With ``mask_padding``, null slots are hidden as keys and one extra null token is always present as an attention
    sink, so the voxel stream sees the same keys however much padding a query has.
    """

    def __init__(self, width: int, depth: int, num_task_rows: int, num_modalities: int, tokens_per_modality: int,
                 head_dim: int = 32, mlp_ratio: int = 4, mlp_eps: float = 1e-4, mask_padding: bool = True):
        super().__init__()
        self.mask_padding = mask_padding
        self.task_prior = nn.Parameter(torch.empty(num_task_rows, width))
        self.null_token = nn.Parameter(torch.empty(1, width))
        self.modality_prior = nn.Parameter(torch.empty(num_modalities, tokens_per_modality, width))
        self.blocks = nn.ModuleList(TwoWayPriorBlock(width, head_dim, mlp_ratio, mlp_eps) for _ in range(depth))
        self.register_parameter("new_task_prior", None)
        self.register_parameter("new_modality_prior", None)
        for p in (self.task_prior, self.null_token, self.modality_prior):
            nn.init.xavier_uniform_(p.view(-1, width))

    def task_rows(self) -> list[torch.Tensor]:
        """The task table in row order: the existing rows, then the new (separately trained) ones, if any."""
        return [self.task_prior] + ([self.new_task_prior] if self.new_task_prior is not None else [])

    def modality_blocks(self) -> torch.Tensor:
        """The modality table (modalities x tokens x C), new blocks last."""
        if self.new_modality_prior is None:
            return self.modality_prior
        return torch.cat([self.modality_prior, self.new_modality_prior], dim=0)

    @property
    def num_task_rows(self) -> int:
        return sum(r.shape[0] for r in self.task_rows())

    def gather_priors(self, task_ids: torch.Tensor, modality_ids: torch.Tensor):
        """Return the prior tokens (B, P, C), the key mask (B, P) or None, and how many leading tokens are tasks."""
        b, t = task_ids.shape
        table = torch.cat(self.task_rows() + [self.null_token], dim=0)
        rows = torch.where(task_ids == NULL_TASK, torch.full_like(task_ids, table.shape[0] - 1), task_ids)
        tasks = table[rows]
        modality = self.modality_blocks()[modality_ids]
        if not self.mask_padding:
            return torch.cat([tasks, modality], dim=1), None
        sink = self.null_token.expand(b, 1, -1)
        priors = torch.cat([tasks, sink, modality], dim=1)
        mask = torch.ones(priors.shape[:2], dtype=torch.bool, device=priors.device)
        mask[:, :t] = task_ids != NULL_TASK
        return priors, mask

    def forward(self, features: torch.Tensor, task_ids: torch.Tensor, modality_ids: torch.Tensor):
        """Return the fused feature map and the posterior task (B, T, C) and modality (B, L, C) tokens."""
        b, c, *spatial = features.shape
        t = task_ids.shape[1]
        priors, mask = self.gather_priors(task_ids, modality_ids)
        priors = priors.to(features.dtype)
        voxels = features.flatten(2).transpose(1, 2)
        for block in self.blocks:
            priors, voxels = block(priors, voxels, mask)
        features = voxels.transpose(1, 2).reshape(b, c, *spatial)
        num_modality_tokens = self.modality_prior.shape[1]
        return features, priors[:, :t], priors[:, -num_modality_tokens:]

    @torch.no_grad()
    def append_task_rows(self, rows: torch.Tensor) -> None:
        """Grow the task table by ``rows`` (n x C) without touching existing rows or the null token."""
        self.task_prior = nn.Parameter(torch.cat([self.task_prior.data, rows.to(self.task_prior)], dim=0))

    @torch.no_grad()
    def add_new_rows(self, task_rows: torch.Tensor, modality_blocks: torch.Tensor | None = None) -> None:
        """Start separately trainable new task rows (n x C) and, optionally, new modality blocks (k x tokens x C)."""
        if self.new_task_prior is not None or self.new_modality_prior is not None:
            raise RuntimeError("this layer already has new rows; fold them first")
        self.new_task_prior = nn.Parameter(task_rows.to(self.task_prior).clone())
        if modality_blocks is not None and modality_blocks.shape[0]:
            self.new_modality_prior = nn.Parameter(modality_blocks.to(self.modality_prior).clone())

    @torch.no_grad()
    def fold_new_rows(self) -> None:
        """Append the new rows to ``task_prior`` / ``modality_prior`` (the saved layout); existing rows keep their
        bytes and positions."""
        if self.new_task_prior is not None:
            self.task_prior = nn.Parameter(torch.cat([self.task_prior.data, self.new_task_prior.data], dim=0))
            self.new_task_prior = None
        if self.new_modality_prior is not None:
            self.modality_prior = nn.Parameter(torch.cat([self.modality_prior.data, self.new_modality_prior.data]))
            self.new_modality_prior = None
