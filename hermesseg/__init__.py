"""hermesseg: the Hermes universal segmentation engine (model, model file, inference, training, evaluation)."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["HermesModel", "load_model", "default_model_path", "__version__"]


def __getattr__(name: str):
    # Lazy: `hermesseg sample` and `hermesseg info` should not pay for importing torch until they need it.
    if name in ("HermesModel", "load_model"):
        from . import model

        return getattr(model, name)
    if name == "default_model_path":
        from .default_model import default_model_path

        return default_model_path
    raise AttributeError(f"module 'hermesseg' has no attribute {name!r}")
