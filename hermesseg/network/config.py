"""Architecture configuration of Hermes-R, stored verbatim in every model file's manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

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

    def __post_init__(self):
        for name in ("encoder_blocks", "decoder_blocks", "fusion_depths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.encoder_blocks) != 4 or len(self.decoder_blocks) != 4 or len(self.fusion_depths) != 5:
            raise ValueError("Hermes-R has 4 encoder stages, 4 decoder stages and 5 fusion layers")
        if self.base_channels < 1 or self.num_task_rows < 1 or self.num_modalities < 1:
            raise ValueError("base_channels, num_task_rows and num_modalities must be positive")

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
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HermesRConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture keys: {sorted(unknown)}")
        return cls(**d)
