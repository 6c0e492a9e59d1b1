"""The compatibility fingerprint: which models a task pack's rows give the same logits in.

A task's logits come from the tensors every task shares (backbone, fusion blocks, null tokens, task head) plus its own
rows of the five ``*.task_prior`` tables and its modality's block of the five ``*.modality_prior`` tables. Rows a query
does not select never reach the voxel stream or the head (spec 1.3), so the rows and modality blocks of *other* tasks
and modalities cannot change a task's logits. The fingerprint is therefore a sha256 (``weights_fingerprint``) over
every tensor except the per-task and per-modality tables:

- ``fusion.*.task_prior``: one row per task; add-task and import-task append rows here;
- ``fusion.*.modality_prior`` and ``modality_head.classifier.fc2.*``: one block / output row per modality; a new
  modality appends to both (spec 4, "New modality"); the modality head is auxiliary and never feeds the logits;
- ``adapters.*``: weights that belong to one task group alone and run only when that group is queried.

So a model that only gained tasks or modalities through add-task or import-task keeps its base's fingerprint, and a
pack exported from it imports into that base, while anything that changes shared weights (finetune, train) changes
it. Modality blocks are not covered here: a pack checks each block it depends on by name and content
(:func:`modality_block_sha256`), so a base whose block for that modality differs is refused too.
"""

from __future__ import annotations

import hashlib
from typing import Mapping

import torch

from .model_file import weights_fingerprint

TASK_TABLE_SUFFIX = ".task_prior"
MODALITY_TABLE_SUFFIX = ".modality_prior"
MODALITY_HEAD_ROWS = ("modality_head.classifier.fc2.weight", "modality_head.classifier.fc2.bias")
ADAPTER_PREFIX = "adapters."


def is_per_task_or_modality(name: str) -> bool:
    """True for the tensors that grow by one row or block per task, modality or adapter group."""
    return (name.endswith((TASK_TABLE_SUFFIX, MODALITY_TABLE_SUFFIX)) or name in MODALITY_HEAD_ROWS
            or name.startswith(ADAPTER_PREFIX))


def compatibility_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the shared tensors (names, dtypes, shapes, bytes): equal for a base and every model that only
    gained tasks from it."""
    return weights_fingerprint({k: v for k, v in state.items() if not is_per_task_or_modality(k)})


def modality_block_sha256(state: Mapping[str, torch.Tensor], modality_id: int) -> str:
    """sha256 over one modality's prior tokens in every fusion layer (layer order): what a task of that modality
    reads besides its own rows."""
    h = hashlib.sha256()
    for name in sorted(k for k in state if k.endswith(MODALITY_TABLE_SUFFIX)):
        block = state[name][modality_id].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}|{tuple(block.shape)}\n".encode())
        h.update(block.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
