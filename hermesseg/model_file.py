"""One self-describing model file: safetensors weights plus the JSON manifest in the safetensors metadata.

Writing is atomic; reading validates the manifest, its digest (when the file has one), every tensor's name and
shape, and the weights' fingerprint. See ``hermesseg.manifest`` for what the digest and the fingerprint identify.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_path
from .catalogue import catalogue
from .errors import ModelFileError
from .manifest import Manifest, manifest_digest
from .network import HermesR, HermesRConfig
from .selection import MIN_HELDOUT_CASES, MIN_HELDOUT_DICE, default_selection, quality_text

MANIFEST_KEY = "hermes_manifest"
MANIFEST_DIGEST_KEY = "hermes_manifest_sha256"  # absent in files written before it existed (hermes-mini)


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes in name order: identifies the weights, not the file."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def expected_shapes(config: HermesRConfig) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a network with this configuration (built on the meta device: no memory)."""
    with torch.device("meta"):
        net = HermesR(config)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def check_tensor_layout(shapes: dict[str, tuple[int, ...]], config: HermesRConfig, what: str = "model file",
                        name_of=lambda name: name, error: type[Exception] = ModelFileError) -> None:
    """Raise ``error`` naming the first missing, unexpected or mis-shaped tensor (named by ``name_of``)."""
    expected = expected_shapes(config)
    for name in expected:
        if name not in shapes:
            raise error(f"{what}: tensor {name_of(name)!r} is missing")
    for name in shapes:
        if name not in expected:
            raise error(f"{what}: unexpected tensor {name_of(name)!r}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise error(f"{what}: tensor {name_of(name)!r} has shape {tuple(shapes[name])}, expected {shape}")


def save_model(path: str | os.PathLike, network: HermesR, manifest: Manifest) -> Manifest:
    """Validate and write ``network`` + ``manifest`` atomically; returns the manifest with its fingerprint set."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in network.state_dict().items()}
    manifest.architecture = {"name": "hermes-r", **network.config.to_dict()}
    manifest.validate()
    check_tensor_layout({k: tuple(v.shape) for k, v in state.items()}, network.config)
    manifest.weights_sha256 = weights_fingerprint(state)
    text = manifest.to_json()
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={MANIFEST_KEY: text, MANIFEST_DIGEST_KEY: manifest_digest(text)})
    return manifest


def _open(path: Path):
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path} is not a readable Hermes model file (safetensors: {e}); "
                             f"is it truncated, or an official .pth that needs `hermesseg import-official`?") from None


def _manifest_text(path: Path) -> str:
    """The manifest JSON text, checked against its stored digest when the file has one."""
    with _open(path) as f:
        meta = f.metadata() or {}
    if MANIFEST_KEY not in meta:
        raise ModelFileError(f"{path} is a safetensors file without a Hermes manifest")
    text = meta[MANIFEST_KEY]
    stored = meta.get(MANIFEST_DIGEST_KEY)
    if stored is not None and stored != manifest_digest(text):
        raise ModelFileError(f"{path}: the manifest does not match its stored digest (the file was edited or is "
                             f"corrupted)")
    return text


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate only the manifest (fast: the header, not the weights)."""
    return Manifest.from_json(_manifest_text(Path(path)))


def model_identity(path: str | os.PathLike) -> str:
    """The model's identity (``hermesseg.manifest.manifest_digest`` of its manifest): covers names and weights."""
    return manifest_digest(_manifest_text(Path(path)))


def read_model_state(path: str | os.PathLike, verify: bool = True) -> tuple[Manifest, dict[str, torch.Tensor]]:
    """Manifest and validated tensors; ``verify`` also checks the weights' fingerprint (detects corrupted bytes)."""
    path = Path(path)
    manifest = read_manifest(path)
    try:
        with _open(path) as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, RuntimeError) as e:
        raise ModelFileError(f"{path}: cannot read the weights ({e})") from None
    check_tensor_layout({k: tuple(v.shape) for k, v in state.items()}, manifest.config, what=str(path))
    if verify and manifest.weights_sha256 is None:
        raise ModelFileError(f"{path}: the manifest has no weights fingerprint (weights_sha256)")
    if verify and weights_fingerprint(state) != manifest.weights_sha256:
        raise ModelFileError(f"{path}: the weights do not match the manifest's fingerprint (corrupted file)")
    return manifest, state


def manifest_summary(manifest: Manifest, num_parameters: int, identity: str | None = None) -> dict:
    """What `hermesseg info --json` prints; ``identity`` is :func:`model_identity`; a task's ``default``: it runs
    without --tasks (hermesseg.selection)."""
    default_ids = {t.id for m in manifest.modalities for t in default_selection(manifest.tasks, m.name).chosen}
    return {
        "name": manifest.name,
        "version": manifest.version,
        "format_version": manifest.format_version,
        "architecture": manifest.architecture,
        "num_parameters": num_parameters,
        "num_task_rows": manifest.config.num_task_rows,
        "tasks": [{"id": t.id, "name": t.name, "display_name": catalogue().display_name(t), "group": t.group,
                   "modalities": t.modalities, "color": list(t.color), "terminology": catalogue().terminology(t),
                   "note": catalogue().note(t), "quality": t.quality, "quality_text": quality_text(t),
                   "default": t.id in default_ids} for t in manifest.tasks],
        "default_rule": {"min_heldout_dice": MIN_HELDOUT_DICE, "min_heldout_cases": MIN_HELDOUT_CASES},
        "groups": manifest.groups,
        "modalities": [{"id": m.id, "name": m.name, "description": m.description, "dicom": m.dicom}
                       for m in manifest.modalities],
        "preprocessing": manifest.preprocessing,
        "lineage": [json.loads(json.dumps(r.__dict__)) for r in manifest.lineage],
        "weights_sha256": manifest.weights_sha256,
        "manifest_sha256": identity,
        "card": manifest.card,
    }
