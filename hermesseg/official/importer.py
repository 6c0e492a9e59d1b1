"""`hermesseg import-official`: an official Hermes-R ``.pth`` (spec 9) -> a Hermes model file.

The checkpoint is read with ``weights_only=True``: a pickle that needs code to load is refused, never executed.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..manifest import LineageRecord, Manifest, architecture_dict
from ..model_file import check_tensor_layout, save_model, weights_fingerprint
from ..names import check_name
from ..network import HermesR, HermesRConfig
from .key_map import OFFICIAL_NULL_ROW, convert_state_dict, local_to_official_name, strip_prefixes
from .task_table import OFFICIAL_MODALITIES, official_preprocessing, official_tasks

# Names that only the MedFormer backbone (Hermes-M, spec 1.8) has: semantic maps, patch merging, B-MHA blocks.
_HERMES_M_MARKERS = re.compile(r"(map|patch_merg|merging|trans_blocks|bidirection|semantic)", re.IGNORECASE)


def load_official_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the checkpoint safely and return its state dict (EMA weights preferred), prefixes stripped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is truncated or damaged: its zip directory is missing")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise CheckpointError(f"{path} contains Python objects that need code to load; refusing to unpickle "
                                  f"it (only plain tensor checkpoints are accepted)") from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({str(e).splitlines()[0]})") from None
    except Exception as e:  # torch raises many types for foreign bytes (IndexError, RuntimeError, EOFError...)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        what = "is truncated or damaged" if is_zip else "is not a PyTorch checkpoint"
        raise CheckpointError(f"{path} {what} ({first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    for key in ("ema_model_state_dict", "model_state_dict", "state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {strip_prefixes(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    return state


def infer_config(state: dict[str, torch.Tensor]) -> HermesRConfig:
    """Architecture of an official Hermes-R state dict, read from its tensor shapes and block counts."""
    if "inc.conv1.weight" not in state:
        raise CheckpointError("tensor 'inc.conv1.weight' is missing: not a Hermes-R checkpoint")
    base = state["inc.conv1.weight"].shape[0]
    in_channels = state["inc.conv1.weight"].shape[1]

    def count(pattern: str) -> int:
        rx = re.compile(pattern)
        return len({m[1] for k in state if (m := rx.match(k))})

    enc = tuple(count(rf"^down{i}\.conv\.(\d+)\.conv1\.conv\.weight$") for i in range(1, 5))
    dec = tuple(count(rf"^up{i}\.conv\.(\d+)\.conv1\.conv\.weight$") for i in range(1, 5))
    fusion_names = ("prior_init_fuse_2", "prior_init_fuse_3", "prior_init_fuse_4", "prior_fuse_5", "prior_fuse_6")
    depths = tuple(count(rf"^{n}\.attn_layers\.(\d+)\.") for n in fusion_names)
    modality = state.get("prior_init_fuse_2.modality_prior")
    task = state.get("prior_init_fuse_2.task_prior")
    if modality is None or task is None or modality.dim() != 3:
        raise CheckpointError("tensor 'prior_init_fuse_2.task_prior' or '.modality_prior' is missing or mis-shaped")
    if task.shape[0] != OFFICIAL_NULL_ROW + 1:
        raise CheckpointError(f"tensor 'prior_init_fuse_2.task_prior' has {task.shape[0]} rows; the official "
                              f"Hermes-R table has {OFFICIAL_NULL_ROW + 1}")
    try:
        return HermesRConfig(in_channels=in_channels, base_channels=base, encoder_blocks=enc, decoder_blocks=dec,
                             fusion_depths=depths, num_task_rows=OFFICIAL_NULL_ROW, num_modalities=modality.shape[0],
                             tokens_per_modality=modality.shape[1], mask_padding=False)
    except ValueError as e:
        raise CheckpointError(f"checkpoint layout is not Hermes-R: {e}") from None


def _refuse_hermes_m(state: dict[str, torch.Tensor]) -> None:
    has_priors = any(k.endswith(".task_prior") for k in state)
    if has_priors and any(_HERMES_M_MARKERS.search(k) for k in state if not k.startswith("prior_")):
        raise CheckpointError("this is a Hermes-M (MedFormer backbone) checkpoint; only Hermes-R (ResUNet) "
                              "checkpoints are supported so far")


def convert_official(state: dict[str, torch.Tensor]) -> HermesR:
    """Build a network with the official weights, naming the first unknown, missing or mis-shaped tensor."""
    _refuse_hermes_m(state)
    config = infer_config(state)
    local, unknown = convert_state_dict(state)
    if unknown:
        raise CheckpointError(f"unexpected tensor {unknown[0]!r} in the checkpoint ({len(unknown)} unknown)")
    check_tensor_layout({k: tuple(v.shape) for k, v in local.items()}, config, what="checkpoint",
                        name_of=local_to_official_name, error=CheckpointError)
    network = HermesR(config)
    network.load_state_dict(local, strict=True)
    return network.eval()


def import_official(checkpoint: str | os.PathLike, output: str | os.PathLike, name: str | None = None) -> Manifest:
    """Convert ``checkpoint`` and write the model file ``output`` atomically (nothing is written on error)."""
    if name is not None:
        check_name(name, "the model name (--name)", CheckpointError)
    state = load_official_checkpoint(checkpoint)
    network = convert_official(state)
    parent = weights_fingerprint(state)
    modalities = OFFICIAL_MODALITIES[: network.config.num_modalities]
    manifest = Manifest(
        name=name or f"hermes-r-official-base{network.config.base_channels}",
        architecture=architecture_dict(network.config),
        tasks=official_tasks(),
        modalities=list(modalities),
        preprocessing=official_preprocessing(),
        lineage=[LineageRecord(operation="import-official", parent=parent,
                               datasets=["lits", "kits", "amos", "bcv", "structseg", "chaos", "mnms",
                                         "brain_structure", "autopet"],
                               notes=f"converted from {Path(checkpoint).name}; task row 71 is unused (dead in the "
                                     f"reference), the null token is stored apart")],
        card={"source": "official Hermes-R release (Gao et al., CVPR 2024)",
              "intended_use": "research; weights trained on public challenge datasets, see their licences"},
    )
    return save_model(output, network, manifest)
