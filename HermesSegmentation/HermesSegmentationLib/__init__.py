"""GUI-free helpers of the HermesSegmentation module, shared with HermesTraining.

- ``engine``: where the ``hermesseg`` engine is, the interpreter and environment of its child processes
- ``process``: ``BackgroundProcess`` (reader thread + queue, Qt-timer polling in Slicer, process-tree cancel)
- ``progress``: the JSON-lines progress protocol of ``hermesseg ... --progress json``
- ``models``: the model catalogue (default model, user models folder) and ``readModelInfo`` (a model's description
  from its header, in this process, by the engine's torch-free ``hermesseg.model_header``)
- ``task_selection``: what a tick in the structure tree selects (shown tasks only)
- ``volume_export`` / ``segmentation_import``: volume -> temporary NRRD, ``.seg.nrrd`` -> segmentation node
- ``modality``: modality suggestion from DICOM attributes or intensities
- ``dependencies``: torch via PyTorchUtils and the other packages on first use, with confirmation
- ``logic``: ``HermesSegmentationLogic``

None of these imports ``qt``, ``ctk`` or torch, and of the engine only its torch-free header reader (through
``engine.importEngineModule``); they work in the Slicer application and with the ``slicer-core`` wheel.
HermesTraining imports them as ``from HermesSegmentationLib.process import BackgroundProcess`` (both modules install
into the same ``qt-scripted-modules`` folder).
"""
