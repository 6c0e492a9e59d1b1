"""Gaussian-blended sliding-window inference (MONAI's inferer) answering several task-group queries per window:
the query-independent encoder runs once per window, bfloat16 autocast on CUDA, and an out-of-memory fallback
(smaller batches first, then stitching in host memory)."""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import torch
from monai.inferers import SlidingWindowInferer

from ..network import NULL_TASK, HermesR
from .query_plan import GroupQuery

log = logging.getLogger(__name__)


def count_windows(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Number of windows MONAI visits for an image of ``shape`` (after it pads to at least ``roi``)."""
    total = 1
    for size, r in zip(shape, roi):
        size = max(size, r)
        step = max(int(r * (1 - overlap)), 1)
        total *= 1 if size <= r else math.ceil((size - r) / step) + 1
    return total


# Decoding several queries as one batch multiplies the decoder's activations by their number. Measured on the CPU
# with full-size Hermes-R (32 channels, 128^3 windows, 2 per pass): the three CT groups in one batch peaked at
# 12.4 GB of host memory against 5.2 GB for the old one-group, one-window passes, for a 1.13x gain; the default model
# (8 channels, 48^3) decodes every group of a window together (1.7 M elements per window and query). Full-resolution
# activation elements (queries x windows x voxels x base channels) allowed in one decode:
DECODE_ELEMENTS = 1 << 26


def queries_per_decode(network: HermesR, windows: torch.Tensor, count: int) -> int:
    """How many queries to decode in one batch for these windows (at least 1, at most ``count``)."""
    per_query = windows.shape[0] * windows[0].numel() * network.config.base_channels
    return max(1, min(count, DECODE_ELEMENTS // max(per_query, 1)))


def window_predictor(network: HermesR, queries: Sequence[GroupQuery], modality_id: int, device: torch.device,
                     share_encoder: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from windows (b, 1, *roi) to the sigmoid probabilities (b, C, *roi) of every query's selected
    channels, concatenated in query order.

    ``share_encoder``: the encoder before the first prior fusion runs once per window for all queries; with key-padding
    masks (``config.mask_padding``) the queries are then decoded together as one batch, each padded with null ids
    (hidden keys, so the padding changes nothing but rounding); without masks (imported official models) each query is
    decoded on its own, exactly as a full forward. Off: one full forward per query (the old behaviour).
    """
    modality = torch.tensor([modality_id], dtype=torch.long, device=device)
    ids = [torch.tensor(q.task_ids, dtype=torch.long, device=device) for q in queries]
    together = share_encoder and network.config.mask_padding and len(queries) > 1
    if together:
        width = max(len(q.task_ids) for q in queries)
        padded = torch.full((len(queries), width), NULL_TASK, dtype=torch.long, device=device)
        for g, q in enumerate(queries):
            padded[g, : len(q.task_ids)] = ids[g]
    use_bf16 = device.type == "cuda"

    def logits_per_query(windows: torch.Tensor) -> list[torch.Tensor]:
        b = windows.shape[0]
        if not share_encoder:
            return [network(windows, t.expand(b, -1), modality.expand(b))[0] for t in ids]
        shared = network.encode_shared(windows)
        if not together:
            return [network.decode(shared, t.expand(b, -1), modality.expand(b))[0] for t in ids]
        per_query: list[torch.Tensor] = []
        step = queries_per_decode(network, windows, len(queries))
        for first in range(0, len(queries), step):
            chunk = padded[first:first + step]
            g = chunk.shape[0]
            task_ids = chunk.repeat_interleave(b, dim=0)  # query-major, matching SharedFeatures.repeat
            logits = network.decode(shared.repeat(g), task_ids, modality.expand(g * b))[0]
            per_query.extend(logits.split(b, dim=0))
        return per_query

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            per_query = logits_per_query(windows)
        chosen = [logits[:, list(q.selected)] for logits, q in zip(per_query, queries)]
        return torch.sigmoid(torch.cat(chosen, dim=1).float())

    return predictor


def sliding_window_queries(network: HermesR, image: torch.Tensor, queries: Sequence[GroupQuery], modality_id: int,
                           roi: tuple[int, int, int], overlap: float = 0.5, batch_size: int = 2,
                           device: torch.device = torch.device("cpu"), on_window: Callable[[int], None] | None = None,
                           share_encoder: bool = True) -> torch.Tensor:
    """Sigmoid probabilities (C, z, y, x) float32 for ``image`` (z, y, x): the selected channels of each query, in
    query order. They stay on ``device`` (GPU-resident blending) unless it runs out of memory, then on the host.

    ``on_window(n)`` is called after each forward pass with the number of windows it processed (progress, and the
    place where a pending cancellation signal is raised).
    """
    x = image[None, None].float()
    predict = window_predictor(network, queries, modality_id, device, share_encoder)

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        probs = predict(windows)
        if on_window is not None:
            on_window(windows.shape[0])
        return probs

    stitch_on_device = device.type != "cpu"
    while True:
        inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=batch_size, overlap=overlap, mode="gaussian",
                                       padding_mode="constant", cval=0.0, sw_device=device,
                                       device=device if stitch_on_device else torch.device("cpu"))
        try:
            with torch.no_grad():
                return inferer(x, predictor)[0].float()
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


def sliding_window_probabilities(network: HermesR, image: torch.Tensor, task_ids: list[int], modality_id: int,
                                 roi: tuple[int, int, int], overlap: float = 0.5, batch_size: int = 2,
                                 device: torch.device = torch.device("cpu"),
                                 on_window: Callable[[int], None] | None = None) -> torch.Tensor:
    """Sigmoid probabilities (T, z, y, x) float32 on the host for one query (one channel per task id)."""
    query = GroupQuery("", tuple(task_ids), tuple(range(len(task_ids))))
    return sliding_window_queries(network, image, [query], modality_id, roi, overlap, batch_size, device,
                                  on_window).to("cpu")
