"""One self-describing model file: safetensors weights plus the JSON manifest in the safetensors metadata.

Writing is atomic; reading validates the manifest, its digest (when the file has one), every tensor's name and
shape, and the weights' fingerprint. See ``hermesseg.manifest`` for what the digest and the fingerprint identify.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_path
from .errors import ModelFileError
from .manifest import Manifest, manifest_digest
from .model_header import (  # noqa: F401 - torch-free, re-exported for the engine's callers
    MANIFEST_DIGEST_KEY, MANIFEST_KEY, manifest_summary, model_identity, read_manifest)
from .network import HermesR, HermesRConfig


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
    """The weights of a file whose header :func:`read_manifest` has checked."""
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path} is not a readable Hermes model file (safetensors: {e}); "
                             f"is it truncated, or an official .pth that needs `hermesseg import-official`?") from None


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
