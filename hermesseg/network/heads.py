"""Output heads: per-task mask kernels from the posterior task tokens (spec 1.4) and the auxiliary modality
classifier (spec 1.5)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _xavier_zero_bias(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class TaskKernelHead(nn.Module):
    """Turns each task's concatenated posterior tokens into a kernel; logit = kernel . full-resolution feature.

    A dynamic 1x1x1 convolution per task, without bias: one sigmoid channel per task (multi-label).
    """

    def __init__(self, token_width: int, feature_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(token_width, eps=1e-5)
        self.project = MLP(token_width, token_width, feature_channels)
        self.refine = MLP(feature_channels, feature_channels, feature_channels)
        _xavier_zero_bias(self)

    def kernels(self, task_tokens: torch.Tensor) -> torch.Tensor:
        return self.refine(self.project(self.norm(task_tokens)))

    def forward(self, task_tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """task_tokens (B, T, D), features (B, F, *S) -> logits (B, T, *S)."""
        w = self.kernels(task_tokens).to(features.dtype)
        b, f, *spatial = features.shape
        logits = torch.bmm(w, features.reshape(b, f, -1))
        return logits.view(b, w.shape[1], *spatial)


class ModalityHead(nn.Module):
    """Classifies the modality from the posterior modality tokens (auxiliary loss only; inference ignores it)."""

    def __init__(self, token_width: int, num_modalities: int):
        super().__init__()
        self.norm = nn.LayerNorm(token_width, eps=1e-5)
        self.classifier = MLP(token_width, token_width, num_modalities)
        _xavier_zero_bias(self)

    def forward(self, modality_tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(modality_tokens).mean(dim=1))

    @torch.no_grad()
    def append_classes(self, copy_of: list[int]) -> None:
        """One more output per entry of ``copy_of``, a copy of that class's weights (a new modality, spec 4)."""
        old = self.classifier.fc2
        index = torch.as_tensor(copy_of, dtype=torch.long)
        new = nn.Linear(old.in_features, old.out_features + len(copy_of)).to(old.weight)
        new.weight.copy_(torch.cat([old.weight, old.weight[index]]))
        new.bias.copy_(torch.cat([old.bias, old.bias[index]]))
        new.requires_grad_(old.weight.requires_grad)
        self.classifier.fc2 = new
