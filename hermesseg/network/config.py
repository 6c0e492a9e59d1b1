"""Architecture configuration of Hermes-R, stored verbatim in every model file's manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# Width multipliers of the five resolution levels (1, 1/2, 1/4, 1/8, 1/16), capped at 10x base like nnU-Net.
WIDTH_MULTIPLIERS = (1, 2, 4, 8, 10)


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
