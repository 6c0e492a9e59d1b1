"""Where the embedded default model lives: ``$HERMESSEG_MODEL``, else the file shipped inside the package."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelFileError

DEFAULT_MODEL_FILE = "hermes-mini.safetensors"
PACKAGE_RESOURCES = Path(__file__).resolve().parent / "resources"


def default_model_path() -> Path | None:
    env = os.environ.get("HERMESSEG_MODEL")
    if env:
        return Path(env)
    candidate = PACKAGE_RESOURCES / DEFAULT_MODEL_FILE
    return candidate if candidate.is_file() else None


def require_model_path(path: str | os.PathLike | None) -> Path:
    if path:
        return Path(path)
    found = default_model_path()
    if found is None:
        raise ModelFileError("no --model given and no embedded default model is installed; pass --model MODEL "
                             "(for example one made with `hermesseg import-official`)")
    return found
