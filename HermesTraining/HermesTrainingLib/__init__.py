"""GUI-free helpers of the HermesTraining module; what both modules use is in the shared package ``HermesLib``.

- ``cases``: a (volume, segmentation) training pair, checked as it is added
- ``dataset_export``: the pairs as an nnU-Net v2 dataset in a private temporary folder
- ``chart``: the live loss / held-out Dice chart (a plot chart node)
- ``logic``: ``HermesTrainingLogic`` (export, the engine command, registration, segmenting with the new model)
- ``packs``: where an imported task pack's model goes

``HermesLib`` is installed beside the modules (``qt-scripted-modules``, on Slicer's ``sys.path``); in a source
checkout it is at the repository root, which is put on ``sys.path`` here (before HermesLib is importable, so this
is the one line both Lib packages write out).
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("HermesLib") is None:  # source checkout: <repo>/HermesLib beside <repo>/HermesTraining
    sys.path.append(str(Path(__file__).resolve().parents[2]))
