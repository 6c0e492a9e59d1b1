"""The Hermes-R network (spec section 1) in small named modules.

Lazy (PEP 562): ``hermesseg.network.config`` (what the manifest needs) imports without torch, so model files can be
described where torch is not installed (the Slicer modules' own process).
"""

from __future__ import annotations

__all__ = ["HermesR", "SharedFeatures", "HermesRConfig", "NULL_TASK"]


def __getattr__(name: str):
    if name == "HermesRConfig":
        from .config import HermesRConfig

        return HermesRConfig
    if name in ("HermesR", "SharedFeatures"):
        from . import hermes_r

        return getattr(hermes_r, name)
    if name == "NULL_TASK":
        from .prior_fusion import NULL_TASK

        return NULL_TASK
    raise AttributeError(f"module 'hermesseg.network' has no attribute {name!r}")
