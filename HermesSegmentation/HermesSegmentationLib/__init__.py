"""GUI-free helpers of the HermesSegmentation module; what both modules use is in the shared package ``HermesLib``.

- ``logic``: ``HermesSegmentationLogic`` (a segmentation run: volume export, ``hermesseg segment``, import)
- ``volume_export`` / ``segmentation_import``: volume -> temporary NRRD, ``.seg.nrrd`` -> segmentation node
- ``modality``: modality suggestion from DICOM attributes or intensities
- ``task_selection``: what a tick in the structure tree selects (shown tasks only)

None of these imports ``qt``, ``ctk`` or torch; they work in the Slicer application and with the ``slicer-core``
wheel. ``HermesLib`` is installed beside the modules (``qt-scripted-modules``, on Slicer's ``sys.path``); in a
source checkout it is at the repository root, which is put on ``sys.path`` here.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("HermesLib") is None:  # source checkout: <repo>/HermesLib beside <repo>/HermesSegmentation
    sys.path.append(str(Path(__file__).resolve().parents[2]))
