"""The Hermes-R network (spec section 1) in small named modules."""

from .config import HermesRConfig
from .hermes_r import HermesR, SharedFeatures
from .prior_fusion import NULL_TASK

__all__ = ["HermesR", "SharedFeatures", "HermesRConfig", "NULL_TASK"]
