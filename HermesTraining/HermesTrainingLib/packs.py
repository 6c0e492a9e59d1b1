"""Task packs from Slicer: where an imported pack's model goes, and the error a pack command raises.

A pack holds the prior rows (and adapter weights) of learned structures plus their manifest entries, never an
image, so a site can share what it taught a model. ``HermesTrainingLogic.exportTaskPack`` / ``importTaskPack`` run
``hermesseg export-task`` / ``import-task`` (``HermesLib.engine_run.startFileCommand``); importing into a base model
other than the one the pack was made for is refused by the engine, which names both fingerprints.
"""

from __future__ import annotations

from pathlib import Path

from HermesLib import models


class PackError(RuntimeError):
    """A task pack could not be exported or imported; the message is the engine's."""


def importedPackModelPath(base: str | Path, pack: str | Path) -> Path:
    """A new file in the user's models folder: ``<base>+<pack>.safetensors`` (numbered if it exists)."""
    return models.newModelPath(f"{Path(base).stem}+{Path(pack).stem}")
