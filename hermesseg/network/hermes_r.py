"""Hermes-R: a residual 3D U-Net whose encoder and decoder are fused with learned task and modality priors."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .config import AdapterConfig, HermesRConfig
from .group_adapter import GroupAdapters
from .heads import ModalityHead, TaskKernelHead
from .prior_fusion import NULL_TASK, PriorFusionLayer
from .residual_block import DownStage, Stem, UpStage


class SharedFeatures(NamedTuple):
    """The query-independent features of a batch of windows: stem output f0 (B, w0, *S), encoder 1/2 output f1 and
    encoder 1/4 output e2 before its prior fusion (both skips of the decoder, and the first fusion's input), and the
    input image (B, 1, *S) itself, which an ``image-pointwise`` group adapter reads."""

    f0: torch.Tensor
    f1: torch.Tensor
    e2: torch.Tensor
    image: torch.Tensor

    def repeat(self, times: int) -> "SharedFeatures":
        """The same features ``times`` times along the batch (query-major), for several queries per window."""
        return SharedFeatures(*(t.repeat(times, *([1] * (t.dim() - 1))) for t in self))


class HermesR(nn.Module):
    """``forward(image, task_ids, modality_ids) -> (seg_logits (B, T, *S), modality_logits (B, M))``.

    ``task_ids`` (B, T) long: rows of the task table, -1 = null/padding. ``modality_ids`` (B,) or (B, 1) long;
    a negative id counts from the end of the modality table, as the reference does.
    """

    def __init__(self, config: HermesRConfig):
        super().__init__()
        self.config = c = config
        w, eps = c.widths, c.norm_eps
        self.stem = Stem(c.in_channels, w[0], c.stem_blocks, eps)
        self.encoder = nn.ModuleList(DownStage(w[i], w[i + 1], c.encoder_blocks[i], eps) for i in range(4))
        self.decoder = nn.ModuleList(UpStage(w[4 - i], w[3 - i], w[3 - i], c.decoder_blocks[i], eps) for i in range(4))
        self.fusion = nn.ModuleList(
            PriorFusionLayer(width, depth, c.num_task_rows, c.num_modalities, c.tokens_per_modality, c.head_dim,
                             c.mlp_ratio, c.norm_eps, c.mask_padding)
            for width, depth in zip(c.fusion_widths, c.fusion_depths))
        self.task_head = TaskKernelHead(c.token_width, w[0])
        self.modality_head = ModalityHead(c.token_width, c.num_modalities)
        self.adapters = GroupAdapters(c.adapters, w[0], eps)  # empty unless add-task --mode adapter made some

    @property
    def num_task_rows(self) -> int:
        return self.fusion[0].num_task_rows

    def _check_ids(self, task_ids: torch.Tensor, modality_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if task_ids.dim() != 2:
            raise ValueError(f"task_ids must be (B, T), got shape {tuple(task_ids.shape)}")
        modality_ids = modality_ids.reshape(-1)
        if modality_ids.shape[0] != task_ids.shape[0]:
            raise ValueError("task_ids and modality_ids disagree on the batch size")
        bad = (task_ids < NULL_TASK) | (task_ids >= self.num_task_rows)
        if bool(bad.any()):
            raise ValueError(f"task id out of range 0..{self.num_task_rows - 1} (or -1): {task_ids[bad][0].item()}")
        m = self.config.num_modalities
        if bool(((modality_ids < -m) | (modality_ids >= m)).any()):
            raise ValueError(f"modality id out of range -{m}..{m - 1}")
        return task_ids.long(), torch.remainder(modality_ids.long(), m)

    def forward(self, image: torch.Tensor, task_ids: torch.Tensor, modality_ids: torch.Tensor):
        task_ids, modality_ids = self._check_ids(task_ids, modality_ids)
        return self._decode(self.encode_shared(image), task_ids, modality_ids)

    def encode_shared(self, image: torch.Tensor) -> SharedFeatures:
        """The query-independent part (spec 6: stem, encoder 1/2 and 1/4 before the first prior fusion, about 22 % of
        the FLOPs): compute it once per window and decode every query of a request from it."""
        f0 = self.stem(image)
        f1 = self.encoder[0](f0)
        return SharedFeatures(f0, f1, self.encoder[1](f1), image)

    def decode(self, shared: SharedFeatures, task_ids: torch.Tensor, modality_ids: torch.Tensor):
        """``forward`` from ``encode_shared``'s features: ``decode(encode_shared(x), t, m) == forward(x, t, m)``.
        The features' batch must equal the query's (repeat them to run several queries of one window at once)."""
        task_ids, modality_ids = self._check_ids(task_ids, modality_ids)
        if shared.f0.shape[0] != task_ids.shape[0]:
            raise ValueError(f"features of batch {shared.f0.shape[0]} for a query of batch {task_ids.shape[0]}")
        return self._decode(shared, task_ids, modality_ids)

    def _decode(self, shared: SharedFeatures, task_ids: torch.Tensor, modality_ids: torch.Tensor):
        f0, f1 = shared.f0, shared.f1
        f2, t2, m2 = self.fusion[0](shared.e2, task_ids, modality_ids)
        f3, t3, m3 = self.fusion[1](self.encoder[2](f2), task_ids, modality_ids)
        f4, t4, m4 = self.fusion[2](self.encoder[3](f3), task_ids, modality_ids)
        d3, t5, m5 = self.fusion[3](self.decoder[0](f4, f3), task_ids, modality_ids)
        d2, t6, m6 = self.fusion[4](self.decoder[1](d3, f2), task_ids, modality_ids)
        d1 = self.decoder[2](d2, f1)
        d0 = self.decoder[3](d1, f0)
        task_tokens = torch.cat([t2, t3, t4, t5, t6], dim=-1)
        modality_tokens = torch.cat([m2, m3, m4, m5, m6], dim=-1)
        logits = self.task_head(task_tokens, d0)
        if len(self.adapters):  # only queries that hold an adapter's rows run through it
            logits = self.adapters.correct(logits, task_ids, d0, f0, shared.image)
        return logits, self.modality_head(modality_tokens)

    @torch.no_grad()
    def append_task_rows(self, count: int, init_from: list[int] | None = None) -> list[int]:
        """Add ``count`` task rows to every fusion layer; each starts as a copy of ``init_from[i]``'s rows or, by
        default, the mean of the existing rows. Returns the new ids. Existing rows and the null token are untouched."""
        first = self.num_task_rows
        for layer in self.fusion:
            table = layer.task_prior.data
            if init_from is None:
                rows = table.mean(dim=0, keepdim=True).expand(count, -1).clone()
            else:
                rows = table[torch.as_tensor(init_from, dtype=torch.long)].clone()
            layer.append_task_rows(rows)
        self.config = HermesRConfig.from_dict({**self.config.to_dict(), "num_task_rows": first + count})
        return list(range(first, first + count))

    @torch.no_grad()
    def add_new_rows(self, init_from: list[int], modality_init_from: list[int] | None = None) -> list[int]:
        """Incremental learning (spec 4): one new task row per entry of ``init_from`` (a copy of that task's rows)
        and one new modality block per entry of ``modality_init_from`` (a copy of that modality's block), in every
        fusion layer, as separate parameters (``new_prior_parameters``); the modality head gets a matching output
        (a copy of the source modality's, frozen: the auxiliary head is ignored at inference). ``fold_new_rows``
        then gives the ordinary layout. Returns the new task ids."""
        first, mods = self.num_task_rows, list(modality_init_from or [])
        rows = torch.as_tensor(init_from, dtype=torch.long)
        for layer in self.fusion:
            blocks = layer.modality_prior.data[torch.as_tensor(mods, dtype=torch.long)] if mods else None
            layer.add_new_rows(layer.task_prior.data[rows], blocks)
        if mods:
            self.modality_head.append_classes(mods)
        self.config = HermesRConfig.from_dict({**self.config.to_dict(), "num_task_rows": first + len(init_from),
                                               "num_modalities": self.config.num_modalities + len(mods)})
        return list(range(first, first + len(init_from)))

    def new_prior_parameters(self) -> list[nn.Parameter]:
        """The parameters ``add_new_rows`` created: all that add-task --mode priors trains."""
        return [p for layer in self.fusion for p in (layer.new_task_prior, layer.new_modality_prior) if p is not None]

    def add_adapter(self, config: AdapterConfig, seed: int = 0) -> nn.Module:
        """A new group adapter (``hermesseg.network.group_adapter``) for ``config.task_ids``, on the network's
        device; it starts as the identity (zero last convolution), its other weights drawn from ``seed`` alone (the
        global random state is left as it was), so a training run is a function of its seed. Returns it (its
        parameters are what add-task --mode adapter trains)."""
        new = self.config.with_changes(adapters=[*self.config.adapters, config])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            adapter = self.adapters.add(config, self.config.widths[0], self.config.norm_eps)
        adapter.to(self.task_head.norm.weight.device)
        self.config = new
        return adapter

    @torch.no_grad()
    def fold_new_rows(self) -> None:
        for layer in self.fusion:
            layer.fold_new_rows()
