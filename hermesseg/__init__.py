"""hermesseg: the Hermes universal segmentation engine (model, model file, inference, training, evaluation)."""

__version__ = "0.1.0"

from .model import HermesModel, load_model  # noqa: E402

__all__ = ["HermesModel", "load_model", "__version__"]
