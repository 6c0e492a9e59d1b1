"""Architecture configuration of Hermes-R, stored verbatim in every model file's manifest."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

# Width multipliers of the five resolution levels (1, 1/2, 1/4, 1/8, 1/16), capped at 10x base like nnU-Net.
WIDTH_MULTIPLIERS = (1, 2, 4, 8, 10)
# Four 2x max-pooling stages: the coarsest level is 1/16 of the input.
TOTAL_STRIDE = 16


def patch_size_problem(patch_size) -> str | None:
    """Why a (z, y, x) patch cannot go through Hermes-R, or None. Each max-pool halves a size (rounding down), so
    the coarsest level has ``n // 16`` voxels per axis: it must be at least 1, and the whole level more than one
    voxel, which instance normalisation needs in training."""
    coarsest = [int(n) // TOTAL_STRIDE for n in patch_size]
    if min(coarsest) < 1 or coarsest[0] * coarsest[1] * coarsest[2] < 2:
        return (f"patch size {list(patch_size)} is too small for Hermes-R: its four 2x poolings leave "
                f"{'x'.join(map(str, coarsest))} voxels at the coarsest level (1/{TOTAL_STRIDE}), which needs at least "
                f"1 per axis and 2 in all; use at least {TOTAL_STRIDE} voxels per axis and {2 * TOTAL_STRIDE} along "
                f"one (multiples of {TOTAL_STRIDE} are best)")
    return None


# An adapter's key is its group's name, which becomes a tensor-name component (``adapters.<group>.*``): the name rule
# of ``hermesseg.names`` without '.', which torch module names cannot hold.
_ADAPTER_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# residual-unet: every level's blocks from full resolution down (the first design, kept so its files load);
# half-resolution-unet: one strided convolution to 1/2 resolution, the levels there, and one convolution back at full
# resolution (its forward and backward 3.3x cheaper at the same width on 2 CPU cores; benchmarks/add_task_results.md);
# half-resolution-pointwise: the same with a 1x1x1 convolution at full resolution (cheaper again);
# image-pointwise: half-resolution-pointwise that also reads the network's input image.
ADAPTER_DESIGNS = ("residual-unet", "half-resolution-unet", "half-resolution-pointwise", "image-pointwise")
MAX_ADAPTER_LEVELS = 4  # at most Hermes-R's own coarsest level (1/16 for half-resolution-unet), so any patch it takes


@dataclass(frozen=True)
class AdapterConfig:
    """A group adapter (spec 4, ``add-task --mode adapter``; ``hermesseg.network.group_adapter``): weights of one
    task group that run only when a query holds that group's task rows.

    ``task_ids``: the group's rows, in the order of the adapter's output channels. ``design``: one of
    ``ADAPTER_DESIGNS``. ``width``: channels at the finest level the blocks run at (doubled per level; full
    resolution for residual-unet, 1/2 for the half-resolution designs), ``levels``: resolution levels, ``blocks``:
    residual blocks per level.
    """

    group: str
    task_ids: tuple[int, ...]
    design: str = "residual-unet"
    width: int = 8
    levels: int = 3
    blocks: int = 1

    def __post_init__(self):
        if not isinstance(self.group, str) or not _ADAPTER_GROUP.fullmatch(self.group):
            raise ValueError(f"adapter group {self.group!r} is not a name of 1-64 ASCII letters, digits, '_' or '-'")
        ids = self.task_ids
        if not isinstance(ids, (list, tuple)) or not ids or not all(type(i) is int and i >= 0 for i in ids):
            raise ValueError(f"adapter {self.group}: task_ids must be a non-empty list of row ids, got {ids!r}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"adapter {self.group}: task_ids name a row twice")
        object.__setattr__(self, "task_ids", tuple(ids))
        if self.design not in ADAPTER_DESIGNS:
            raise ValueError(f"adapter {self.group}: unknown design {self.design!r}; known: {ADAPTER_DESIGNS}")
        for name, low, high in (("width", 1, 256), ("levels", 1, MAX_ADAPTER_LEVELS), ("blocks", 1, 8)):
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"adapter {self.group}: {name} must be an integer in {low}..{high}, got {value!r}")

    @classmethod
    def from_dict(cls, d) -> "AdapterConfig":
        if not isinstance(d, dict):
            raise ValueError(f"an adapter entry must be an object, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown adapter keys: {sorted(unknown)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"malformed adapter entry: {e}") from None


@dataclass(frozen=True)
class HermesRConfig:
    """Hyper-parameters of the residual U-Net with prior fusion (spec 1.1).

    ``num_task_rows`` is the size of each fusion layer's task-prior table; rows without a task entry in the manifest
    are unused (the official checkpoint has one, row 71). The null token is a separate parameter.
    ``mask_padding``: padded task slots (id -1) are hidden as attention keys and one null token is always present as
    a sink, so a task's output does not depend on the padding (spec 1.7). Off for imported official models, which
    must reproduce the reference exactly.
    """

    in_channels: int = 1
    base_channels: int = 32
    stem_blocks: int = 1
    encoder_blocks: tuple[int, ...] = (2, 2, 2, 2)
    decoder_blocks: tuple[int, ...] = (2, 2, 2, 2)
    fusion_depths: tuple[int, ...] = (2, 2, 4, 2, 2)  # enc 1/4, enc 1/8, enc 1/16, dec 1/8, dec 1/4
    num_task_rows: int = 72
    num_modalities: int = 6
    tokens_per_modality: int = 10
    head_dim: int = 32
    mlp_ratio: int = 4
    norm_eps: float = 1e-4
    mask_padding: bool = True
    adapters: tuple[AdapterConfig, ...] = field(default=())

    def __post_init__(self):
        for name in ("encoder_blocks", "decoder_blocks", "fusion_depths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.encoder_blocks) != 4 or len(self.decoder_blocks) != 4 or len(self.fusion_depths) != 5:
            raise ValueError("Hermes-R has 4 encoder stages, 4 decoder stages and 5 fusion layers")
        if self.base_channels < 1 or self.num_task_rows < 1 or self.num_modalities < 1:
            raise ValueError("base_channels, num_task_rows and num_modalities must be positive")
        if not isinstance(self.adapters, (list, tuple)):
            raise ValueError("adapters must be a list of adapter entries")
        adapters = tuple(a if isinstance(a, AdapterConfig) else AdapterConfig.from_dict(a) for a in self.adapters)
        object.__setattr__(self, "adapters", adapters)
        check_adapters(adapters, self.num_task_rows)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in WIDTH_MULTIPLIERS)

    @property
    def fusion_widths(self) -> tuple[int, ...]:
        w = self.widths
        return (w[2], w[3], w[4], w[3], w[2])

    @property
    def token_width(self) -> int:
        """Width of one task's concatenated posterior tokens (1088 at base 32)."""
        return sum(self.fusion_widths)

    def to_dict(self) -> dict:
        """JSON-ready; ``adapters`` is left out when there is none, so models without adapters keep the manifest
        text (and identity) they had before adapters existed."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["adapters"] = [{**a, "task_ids": list(a["task_ids"])} for a in d["adapters"]]
        if not d["adapters"]:
            del d["adapters"]
        return d

    def with_changes(self, **changes) -> "HermesRConfig":
        return HermesRConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, d: dict) -> "HermesRConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture keys: {sorted(unknown)}")
        return cls(**d)


def check_adapters(adapters: tuple[AdapterConfig, ...], num_task_rows: int) -> None:
    """One adapter per group, each row served by at most one adapter, every row inside the task table."""
    groups = [a.group for a in adapters]
    if len(set(groups)) != len(groups):
        raise ValueError(f"two adapters for one group ({', '.join(groups)})")
    rows = [i for a in adapters for i in a.task_ids]
    if len(set(rows)) != len(rows):
        raise ValueError("a task row is served by two adapters")
    outside = [i for i in rows if i >= num_task_rows]
    if outside:
        raise ValueError(f"adapter task row {outside[0]} is outside the task table (0..{num_task_rows - 1})")
