"""Where the embedded default model lives.

Search order: ``$HERMESSEG_MODEL``; a copy inside the package (``hermesseg/resources/``); the extension's
``Resources/Models/`` beside the package: the repository root in a source checkout or editable install, and
``qt-scripted-modules/`` in an installed Slicer extension (CMakeLists.txt installs it there).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelFileError

DEFAULT_MODEL_FILE = "hermes-mini.safetensors"
PACKAGE_RESOURCES = Path(__file__).resolve().parent / "resources"
EXTENSION_MODELS = Path(__file__).resolve().parent.parent / "Resources" / "Models"


def default_model_path() -> Path | None:
    env = os.environ.get("HERMESSEG_MODEL")
    if env:
        return Path(env)
    for folder in (PACKAGE_RESOURCES, EXTENSION_MODELS):
        candidate = folder / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


def require_model_path(path: str | os.PathLike | None) -> Path:
    if path:
        return Path(path)
    found = default_model_path()
    if found is None:
        raise ModelFileError("no --model given and no embedded default model is installed; pass --model MODEL "
                             "(for example one made with `hermesseg import-official`)")
    return found
