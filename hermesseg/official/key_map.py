"""Renames official Hermes-R state-dict keys (spec 9) to this package's module names.

Official tables hold 73 task rows: 0..70 real tasks, 71 dead (never selected), 72 the null token reached through -1.
Here the null token is its own tensor and rows 0..71 stay in the task table (row 71 unused), which keeps the
parameter count and every other shape identical to the official model.
"""

from __future__ import annotations

import re

import torch

_FUSION = {"prior_init_fuse_2": 0, "prior_init_fuse_3": 1, "prior_init_fuse_4": 2, "prior_fuse_5": 3, "prior_fuse_6": 4}
_BLOCK_PARTS = {"prior_aggregate_block": "prior_attn", "prior_ffn": "prior_mlp",
                "feat_aggregate_block": "voxel_attn", "feat_ffn": "voxel_mlp"}
_ATTN_PARTS = {"norm1": "norm_query", "norm2": "norm_context", "fn.to_q": "attn.to_q", "fn.to_kv": "attn.to_kv",
               "fn.to_out": "attn.to_out"}
_MLP_PARTS = {"norm": "norm", "fn.fc1": "fc1", "fn.fc2": "fc2"}

_RULES: list[tuple[re.Pattern, object]] = [
    (re.compile(r"^inc\.conv1\.weight$"), "stem.conv.weight"),
    (re.compile(r"^inc\.conv2\.(.+)$"), lambda m: f"stem.blocks.0.{m[1]}"),
    (re.compile(r"^down(\d)\.conv\.(\d+)\.(.+)$"), lambda m: f"encoder.{int(m[1]) - 1}.blocks.{int(m[2]) - 1}.{m[3]}"),
    (re.compile(r"^up(\d)\.conv\.(\d+)\.(.+)$"), lambda m: f"decoder.{int(m[1]) - 1}.blocks.{m[2]}.{m[3]}"),
    (re.compile(r"^(prior_\w+_\d)\.(task_prior|modality_prior)$"), lambda m: f"fusion.{_FUSION[m[1]]}.{m[2]}"),
    (re.compile(r"^(prior_\w+_\d)\.attn_layers\.(\d+)\.(\w+)\.(norm1|norm2|norm|fn\.\w+)\.(weight|bias)$"),
     lambda m: f"fusion.{_FUSION[m[1]]}.blocks.{m[2]}.{_BLOCK_PARTS[m[3]]}."
               f"{(_ATTN_PARTS if 'aggregate' in m[3] else _MLP_PARTS)[m[4]]}.{m[5]}"),
    (re.compile(r"^out\.norm\.(.+)$"), lambda m: f"task_head.norm.{m[1]}"),
    (re.compile(r"^out\.classifier_pred\.0\.(.+)$"), lambda m: f"task_head.project.{m[1]}"),
    (re.compile(r"^out\.classifier_pred\.1\.(.+)$"), lambda m: f"task_head.refine.{m[1]}"),
    (re.compile(r"^mod_out\.norm\.(.+)$"), lambda m: f"modality_head.norm.{m[1]}"),
    (re.compile(r"^mod_out\.classifier\.(.+)$"), lambda m: f"modality_head.classifier.{m[1]}"),
]

_FUSION_NAMES = {v: k for k, v in _FUSION.items()}
_BLOCK_NAMES = {v: k for k, v in _BLOCK_PARTS.items()}
_ATTN_NAMES = {v: k for k, v in _ATTN_PARTS.items()}
_MLP_NAMES = {v: k for k, v in _MLP_PARTS.items()}
_INVERSE: list[tuple[re.Pattern, object]] = [
    (re.compile(r"^stem\.conv\.weight$"), "inc.conv1.weight"),
    (re.compile(r"^stem\.blocks\.0\.(.+)$"), lambda m: f"inc.conv2.{m[1]}"),
    (re.compile(r"^encoder\.(\d)\.blocks\.(\d+)\.(.+)$"), lambda m: f"down{int(m[1]) + 1}.conv.{int(m[2]) + 1}.{m[3]}"),
    (re.compile(r"^decoder\.(\d)\.blocks\.(\d+)\.(.+)$"), lambda m: f"up{int(m[1]) + 1}.conv.{m[2]}.{m[3]}"),
    (re.compile(r"^fusion\.(\d)\.(task_prior|modality_prior)$"), lambda m: f"{_FUSION_NAMES[int(m[1])]}.{m[2]}"),
    (re.compile(r"^fusion\.(\d)\.null_token$"), lambda m: f"{_FUSION_NAMES[int(m[1])]}.task_prior"),
    (re.compile(r"^fusion\.(\d)\.blocks\.(\d+)\.(\w+)\.((?:attn\.)?\w+)\.(weight|bias)$"),
     lambda m: f"{_FUSION_NAMES[int(m[1])]}.attn_layers.{m[2]}.{_BLOCK_NAMES[m[3]]}."
               f"{(_ATTN_NAMES if m[3].endswith('attn') else _MLP_NAMES)[m[4]]}.{m[5]}"),
    (re.compile(r"^task_head\.norm\.(.+)$"), lambda m: f"out.norm.{m[1]}"),
    (re.compile(r"^task_head\.project\.(.+)$"), lambda m: f"out.classifier_pred.0.{m[1]}"),
    (re.compile(r"^task_head\.refine\.(.+)$"), lambda m: f"out.classifier_pred.1.{m[1]}"),
    (re.compile(r"^modality_head\.norm\.(.+)$"), lambda m: f"mod_out.norm.{m[1]}"),
    (re.compile(r"^modality_head\.classifier\.(.+)$"), lambda m: f"mod_out.classifier.{m[1]}"),
]

OFFICIAL_TASK_ROWS = 73
OFFICIAL_NULL_ROW = 72


def official_to_local_name(key: str) -> str | None:
    """The local name of an official tensor, or None if the key is not part of Hermes-R."""
    for pattern, target in _RULES:
        m = pattern.match(key)
        if m:
            try:
                return target if isinstance(target, str) else target(m)
            except KeyError:
                return None
    return None


def local_to_official_name(name: str) -> str:
    """The official key a local tensor comes from (for error messages); the name itself if none matches."""
    for pattern, target in _INVERSE:
        m = pattern.match(name)
        if m:
            try:
                return target if isinstance(target, str) else target(m)
            except KeyError:
                break
    return name


def strip_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def convert_state_dict(official: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Return (local state dict, official keys that map to nothing). The null token is split off the task tables."""
    local: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in official.items():
        name = official_to_local_name(strip_prefixes(key))
        if name is None:
            unknown.append(key)
            continue
        if name.endswith(".task_prior") and tensor.dim() == 2 and tensor.shape[0] == OFFICIAL_TASK_ROWS:
            local[name] = tensor[:OFFICIAL_NULL_ROW].clone()
            local[name.replace(".task_prior", ".null_token")] = tensor[OFFICIAL_NULL_ROW:].clone()
        else:
            local[name] = tensor
    return local, unknown
