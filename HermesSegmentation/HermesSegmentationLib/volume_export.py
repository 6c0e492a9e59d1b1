"""Writing the input volume to a temporary file for the engine.

A file on disk keeps the exact IJK-to-RAS geometry (no orientation conversions between libraries), and NRRD
without compression is the fastest format Slicer writes. The node's parent transform is *not* applied: the engine
segments the voxels as stored, and the result is placed under the same transform (see ``segmentation_import``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import slicer


class VolumeExportError(RuntimeError):
    pass


def createTemporaryFolder(prefix: str = "HermesSegmentation-") -> Path:
    """A new private folder; inside Slicer under its temporary path, else the system's."""
    base = None
    app = getattr(slicer, "app", None)
    if app is not None:
        try:
            base = app.temporaryPath
        except AttributeError:
            base = None
    if base:
        os.makedirs(base, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base or None))


def removeFolder(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def exportVolume(volumeNode, folder: Path, fileName: str = "input.nrrd") -> Path:
    """Write ``volumeNode`` to ``folder/fileName`` (uncompressed NRRD) and return the path."""
    if volumeNode is None:
        raise VolumeExportError("no input volume")
    imageData = volumeNode.GetImageData()
    if imageData is None:
        raise VolumeExportError(f"volume '{volumeNode.GetName()}' has no image data")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise VolumeExportError(f"volume '{volumeNode.GetName()}' has {imageData.GetNumberOfScalarComponents()} "
                                "components per voxel; Hermes segments single-component (grey-level) volumes")
    dims = imageData.GetDimensions()
    if min(dims) < 1 or dims[0] * dims[1] * dims[2] == 0:
        raise VolumeExportError(f"volume '{volumeNode.GetName()}' is empty")
    path = Path(folder) / fileName
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(str(path))
    storageNode.UseCompressionOff()
    if not storageNode.WriteData(volumeNode) or not path.is_file():
        raise VolumeExportError(f"could not write volume '{volumeNode.GetName()}' to {path}")
    return path
