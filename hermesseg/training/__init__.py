"""Training Hermes-R models from nnU-Net v2 dataset folders (issue 4): validation of the data, preprocessing cache,
foreground-aware mixed-dataset sampling, loss, optimiser/EMA, resumable checkpoints, DDP through torchrun."""

from .config import DEFAULTS, TrainingConfigError, resolve_config
from .trainer import TrainingInterrupted, TrainRequest, TrainResult, train

__all__ = ["DEFAULTS", "TrainRequest", "TrainResult", "TrainingConfigError", "TrainingInterrupted", "resolve_config",
           "train"]
