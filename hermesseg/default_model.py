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
# Where the Slicer model manager imports official checkpoints (HermesLib.models.userModelsFolder).
USER_MODELS = Path(os.environ.get("HERMESSEG_MODELS_DIR") or Path.home() / ".hermesseg" / "models")


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
        raise ModelFileError(f"no model given and no embedded default model is installed (looked for "
                             f"{DEFAULT_MODEL_FILE} in $HERMESSEG_MODEL, {PACKAGE_RESOURCES} and {EXTENSION_MODELS}); "
                             f"pass a model file, for example one in {USER_MODELS} made with "
                             f"`hermesseg import-official`")
    if not found.is_file():
        raise ModelFileError(f"the default model {found} ($HERMESSEG_MODEL) does not exist")
    return found
