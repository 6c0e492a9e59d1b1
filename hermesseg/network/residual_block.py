"""Pre-activation residual convolution blocks and the resolution stages built from them (stem, pool + blocks,
upsample + concatenate + blocks) of the Hermes-R backbone (spec 1.1) and its group adapters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PreActConv(nn.Module):
    """InstanceNorm (no affine, no running stats) -> ReLU -> bias-free 3x3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int, eps: float = 1e-4):
        super().__init__()
        self.norm = nn.InstanceNorm3d(in_channels, eps=eps, affine=False, track_running_stats=False)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.norm(x)))


class ResidualBlock(nn.Module):
    """Two pre-activated convolutions plus a shortcut; the shortcut is a full pre-activated 3x3x3 conv when the width
    changes (not 1x1, as in the reference), identity otherwise. Nothing is applied after the addition."""

    def __init__(self, in_channels: int, out_channels: int, eps: float = 1e-4):
        super().__init__()
        self.conv1 = PreActConv(in_channels, out_channels, eps)
        self.conv2 = PreActConv(out_channels, out_channels, eps)
        self.shortcut = PreActConv(in_channels, out_channels, eps) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + self.shortcut(x)


def residual_stage(in_channels: int, out_channels: int, num_blocks: int, eps: float = 1e-4) -> nn.Sequential:
    """``num_blocks`` residual blocks, the first one changing the width."""
    blocks = [ResidualBlock(in_channels if i == 0 else out_channels, out_channels, eps) for i in range(num_blocks)]
    return nn.Sequential(*blocks)


class Stem(nn.Module):
    """Plain 3x3x3 convolution (no norm, no bias) followed by residual blocks at full resolution."""

    def __init__(self, in_channels: int, width: int, num_blocks: int, eps: float):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, width, kernel_size=3, padding=1, bias=False)
        self.blocks = residual_stage(width, width, num_blocks, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv(x))


class DownStage(nn.Module):
    """Max-pool by 2, then residual blocks."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, eps: float):
        super().__init__()
        self.pool = nn.MaxPool3d(2)
        self.blocks = residual_stage(in_channels, out_channels, num_blocks, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pool(x))


class UpStage(nn.Module):
    """Trilinear upsampling to the skip's exact size (align_corners), concatenation [skip, up], residual blocks."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, num_blocks: int, eps: float):
        super().__init__()
        self.blocks = residual_stage(in_channels + skip_channels, out_channels, num_blocks, eps)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=True)
        return self.blocks(torch.cat([skip, up], dim=1))
