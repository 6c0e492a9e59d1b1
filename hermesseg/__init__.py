"""hermesseg: the Hermes universal segmentation engine (model, model file, inference, training, evaluation)."""

__version__ = "0.1.0"
