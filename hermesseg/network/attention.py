"""Two-way attention between prior tokens and voxel features (spec 1.3), in the style of segment-anything's
TwoWayAttentionBlock, with an optional key-padding mask (spec 1.7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """Multi-head cross-attention with ``heads = width // head_dim`` heads of ``head_dim`` channels (head-major)."""

    def __init__(self, width: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, width // head_dim)
        self.head_dim = head_dim
        inner = self.heads * head_dim
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_kv = nn.Linear(width, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, context: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``key_mask``: (B, Nk) bool, True where a context token may be attended to."""
        q = self._split(self.to_q(query))
        k, v = self.to_kv(context).chunk(2, dim=-1)
        k, v = self._split(k), self._split(v)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, h, n, d = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, h * d))


class FeedForward(nn.Module):
    """Pre-norm MLP: LayerNorm -> Linear(C, 4C) -> GELU -> Linear(4C, C)."""

    def __init__(self, width: int, ratio: int = 4, eps: float = 1e-4):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        self.fc1 = nn.Linear(width, ratio * width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ratio * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class NormedCrossAttention(nn.Module):
    """Cross-attention whose query and context each get their own LayerNorm first."""

    def __init__(self, width: int, head_dim: int = 32, eps: float = 1e-5):
        super().__init__()
        self.norm_query = nn.LayerNorm(width, eps=eps)
        self.norm_context = nn.LayerNorm(width, eps=eps)
        self.attn = CrossAttention(width, head_dim)

    def forward(self, query, context, key_mask=None):
        return self.attn(self.norm_query(query), self.norm_context(context), key_mask)


class TwoWayPriorBlock(nn.Module):
    """Priors read from the voxels, then the voxels read from the updated priors; each step is followed by an MLP.

    There is no self-attention among the priors: they interact only through the feature map.
    """

    def __init__(self, width: int, head_dim: int = 32, mlp_ratio: int = 4, mlp_eps: float = 1e-4):
        super().__init__()
        self.prior_attn = NormedCrossAttention(width, head_dim)
        self.prior_mlp = FeedForward(width, mlp_ratio, mlp_eps)
        self.voxel_attn = NormedCrossAttention(width, head_dim)
        self.voxel_mlp = FeedForward(width, mlp_ratio, mlp_eps)

    def forward(self, priors: torch.Tensor, voxels: torch.Tensor,
                prior_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        priors = priors + self.prior_attn(priors, voxels)
        priors = priors + self.prior_mlp(priors)
        voxels = voxels + self.voxel_attn(voxels, priors, prior_mask)
        voxels = voxels + self.voxel_mlp(voxels)
        return priors, voxels
