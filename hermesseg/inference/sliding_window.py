"""Gaussian-blended sliding-window inference with several windows per forward pass (MONAI's inferer), bfloat16
autocast on CUDA, and an out-of-memory fallback: smaller batches first, then stitching in host memory."""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
from monai.inferers import SlidingWindowInferer

log = logging.getLogger(__name__)


def count_windows(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Number of windows MONAI visits for an image of ``shape`` (after it pads to at least ``roi``)."""
    total = 1
    for size, r in zip(shape, roi):
        size = max(size, r)
        step = max(int(r * (1 - overlap)), 1)
        total *= 1 if size <= r else math.ceil((size - r) / step) + 1
    return total


def sliding_window_probabilities(network: torch.nn.Module, image: torch.Tensor, task_ids: list[int],
                                 modality_id: int, roi: tuple[int, int, int], overlap: float = 0.5,
                                 batch_size: int = 2, device: torch.device = torch.device("cpu"),
                                 on_window: Callable[[int], None] | None = None) -> torch.Tensor:
    """Sigmoid probabilities (T, z, y, x) float32 on the host for ``image`` (z, y, x), one channel per task id.

    ``on_window(n)`` is called after each forward pass with the number of windows it processed (progress, and the
    place where a pending cancellation signal is raised).
    """
    x = image[None, None].float()
    tasks = torch.tensor(task_ids, dtype=torch.long, device=device)
    modality = torch.tensor([modality_id], dtype=torch.long, device=device)
    use_bf16 = device.type == "cuda"

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        b = windows.shape[0]
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits, _ = network(windows, tasks.expand(b, -1), modality.expand(b))
        probs = torch.sigmoid(logits.float())
        if on_window is not None:
            on_window(b)
        return probs

    stitch_on_device = device.type != "cpu"
    while True:
        inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=batch_size, overlap=overlap, mode="gaussian",
                                       padding_mode="constant", cval=0.0, sw_device=device,
                                       device=device if stitch_on_device else torch.device("cpu"))
        try:
            with torch.no_grad():
                out = inferer(x, predictor)
            return out[0].to("cpu", torch.float32)
        except torch.OutOfMemoryError:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if batch_size > 1:
                batch_size //= 2
                log.warning("out of memory; retrying with %d windows per forward pass", batch_size)
            elif stitch_on_device:
                stitch_on_device = False
                log.warning("out of memory; stitching the probabilities in host memory")
            else:
                raise
