"""HermesSegmentationLogic: segment a volume with the Hermes engine in a background process (GUI-free).

Usable from the module widget, from scripts and from tests, inside Slicer or with the ``slicer-core`` wheel::

    logic = HermesSegmentationLogic()                      # scene defaults to slicer.mrmlScene
    job = logic.segment(volumeNode, "CT", ["amos_liver", "amos_spleen"], fast=True, waitForCompletion=True)
    segmentationNode = job.segmentationNode

Steps: the volume is written to a temporary NRRD, ``hermesseg segment --progress json`` runs with Slicer's Python
(``PythonSlicer``) in a child process, its JSON progress lines are parsed, and on success the ``.seg.nrrd`` is loaded
into a new ``vtkMRMLSegmentationNode`` (names, colours, terminology, reference geometry, subject hierarchy). On
failure or cancel nothing is added to the scene; temporary files are always removed.

Non-blocking mode (``waitForCompletion=False``, the default): inside Slicer a Qt timer polls the process, so the GUI
stays responsive; callbacks arrive on the main thread. Without a Qt event loop call ``job.poll()`` or ``job.wait()``.
Errors go to ``onFinished(job)`` (``job.state``, ``job.errorMessage``); in blocking mode they are raised as
:class:`HermesSegmentationError` (:class:`SegmentationCancelledError` for a cancelled run).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

import slicer

from HermesLib import engine
from HermesLib.engine_job import EngineJob
from HermesLib.engine_job import JobState as BaseJobState
from HermesLib.engine_run import EngineRun, startEngineCommand, startFileCommand
from HermesLib.models import ModelCatalog, importedModelPath
from HermesLib.progress import ProgressEvent

from .segmentation_import import SegmentationImportError, importSegmentation, removeSegmentationNode
from .volume_export import VolumeExportError, createTemporaryFolder, exportVolume, removeFolder

try:  # real Slicer: the standard base class (parameter node helpers)
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _Base
except ImportError:  # slicer-core wheel: no scripted-module layer
    _Base = object

DEVICES = ("auto", "gpu", "cuda", "mps", "cpu")
ENGINE_SHARE = 0.95  # share of the progress bar for the engine run; the rest is the import

ProgressCallback = Callable[[float, str, str], None]  # (fraction 0..1, message, stage)


class HermesSegmentationError(RuntimeError):
    """A segmentation run failed; the message is meant for the user."""


class SegmentationCancelledError(HermesSegmentationError):
    """The run was cancelled; nothing was imported."""


class JobState(BaseJobState):
    SEGMENTING = "segmenting"
    IMPORTING = "importing"


def resolveDevice(device: str) -> str:
    """GUI names to engine names: 'gpu' is CUDA, or Apple MPS on macOS."""
    device = (device or "auto").lower()
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "gpu":
        return "mps" if sys.platform == "darwin" else "cuda"
    return device


class SegmentationJob(EngineJob):
    """One run: its state, progress, log, result node, and cancel/wait/poll (:class:`~HermesLib.engine_job.EngineJob`)."""

    what = "Segmentation"
    cancelledNote = "nothing was imported"

    def __init__(self, logic: "HermesSegmentationLogic", volumeNode, modality: str | None,
                 taskNames: list[str] | None, modelPath: str | None, onProgress: ProgressCallback | None,
                 onFinished: Callable[["SegmentationJob"], None] | None, onLog: Callable[[str], None] | None):
        super().__init__(logic, onFinished, onLog)
        self.volumeNode = volumeNode
        self.modality = modality
        self.taskNames = list(taskNames) if taskNames else None
        self.modelPath = modelPath
        self.onProgress = onProgress
        self.fraction = 0.0
        self.stage = "start"
        self.message = ""
        self.segmentationNode = None
        self.tempFolder: Path | None = None
        self.outputFolder: Path | None = None

    # ------------------------------------------------------------------ internals
    def _report(self, fraction: float, message: str, stage: str) -> None:
        self.fraction, self.message, self.stage = fraction, message, stage
        if self.onProgress is not None:
            self.onProgress(fraction, message, stage)

    def _onProgress(self, event: ProgressEvent) -> None:
        self._report(event.fraction * ENGINE_SHARE, event.message or event.stage, event.stage)

    def _cancelling(self) -> None:
        self._report(self.fraction, "Cancelling", "cancel")

    def _segmentationFile(self) -> Path:
        for output in self.run.outputs:
            if output.get("segmentation"):
                return Path(output["segmentation"])
        return self.outputFolder / "input.seg.nrrd"

    def _succeeded(self, run: EngineRun) -> None:
        """Import the engine's ``.seg.nrrd`` onto the input volume."""
        self.state = JobState.IMPORTING
        self._report(ENGINE_SHARE, "Loading the segmentation", "import")
        if self.volumeNode.GetScene() is None:
            self._finish(JobState.FAILED, error="the input volume was removed from the scene during segmentation")
            return
        reasons = {n: r for o in run.outputs for n, r in o.get("not_found_reasons", {}).items()}
        if reasons and not any(o.get("found") for o in run.outputs):  # nothing to import: say why, not "no segment"
            self._finish(JobState.FAILED, error="not found in this image: "
                         + "; ".join(f"{n} ({r})" for n, r in reasons.items()))
            return
        try:
            self.segmentationNode = importSegmentation(
                self.logic.scene, self._segmentationFile(), self.volumeNode,
                name=self.logic.segmentationNodeName(self.volumeNode),
                modelInfo=self.logic.cachedModelInfo(self.modelPath), expectedSegments=self.taskNames)
        except (SegmentationImportError, OSError) as e:
            self._finish(JobState.FAILED, error=str(e))
            return
        except Exception as e:  # noqa: BLE001 - report, never leave a half-imported node
            logging.exception("Segmentation import failed")
            self._finish(JobState.FAILED, error=f"could not load the result: {e}")
            return
        self._finish(JobState.SUCCEEDED)

    def _cleanUp(self) -> None:
        if self.state == JobState.FAILED and self.segmentationNode is not None:
            removeSegmentationNode(self.logic.scene, self.segmentationNode)
            self.segmentationNode = None
        if not self.logic.keepTemporaryFiles:
            removeFolder(self.tempFolder)

    def _resultText(self) -> str:
        return ", ".join(self.segmentNames())

    def _ended(self, state: str) -> None:
        if state == JobState.SUCCEEDED:
            self._report(1.0, "Done", "done")
        elif state == JobState.CANCELLED:
            self._report(self.fraction, "Cancelled", "cancelled")
        else:
            self._report(self.fraction, f"Failed: {self.errorMessage}", "error")

    def segmentNames(self) -> list[str]:
        if self.segmentationNode is None:
            return []
        segmentation = self.segmentationNode.GetSegmentation()
        return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


class HermesSegmentationLogic(_Base):
    """Segmentation with Hermes, in a background process. ``scene``: the MRML scene (default ``slicer.mrmlScene``)."""

    def __init__(self, scene=None):
        if _Base is not object:
            _Base.__init__(self)
        self._scene = scene
        self.catalog = ModelCatalog()
        self.pythonExecutable: str | None = None  # None: engine.pythonExecutable() (PythonSlicer in Slicer)
        self.keepTemporaryFiles = False
        self.job: SegmentationJob | None = None

    # ------------------------------------------------------------------ scene and engine
    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    def python(self) -> str:
        return self.pythonExecutable or engine.pythonExecutable()

    @staticmethod
    def segmentationNodeName(volumeNode) -> str:
        return f"{volumeNode.GetName()} Hermes segmentation"

    def cachedModelInfo(self, modelPath: str | None) -> dict | None:
        return self.catalog.cachedInfo(modelPath) if modelPath else None

    def modelInfo(self, modelPath: str | Path) -> dict:
        """What the model holds (the keys of ``hermesseg info --json``), read from its header without torch (cached);
        raises ModelInfoError."""
        return self.catalog.info(modelPath)

    # ------------------------------------------------------------------ segmentation
    @property
    def isRunning(self) -> bool:
        return self.job is not None and self.job.isRunning

    @staticmethod
    def segmentArguments(inputPath: str | Path, outputFolder: str | Path, modality: str | None,
                         taskNames: list[str] | None, modelPath: str | Path | None = None, device: str = "auto",
                         fast: bool = False, overlap: float | None = None,
                         extraArgs: list[str] | None = None) -> list[str]:
        """The arguments of ``hermesseg segment`` for one run (JSON progress on stdout)."""
        args = [str(inputPath), "-o", str(outputFolder), "--progress", "json", "--device", resolveDevice(device)]
        if modelPath:
            args += ["--model", str(modelPath)]
        if taskNames:
            args += ["--tasks", ",".join(taskNames)]
        if modality:
            args += ["--modality", modality]
        if fast:
            args.append("--fast")
        if overlap is not None:
            args += ["--overlap", f"{float(overlap):g}"]
        return args + list(extraArgs or [])

    def segment(self, volumeNode, modality: str | None, taskNames: list[str] | None, modelPath=None,
                device: str = "auto", fast: bool = False, waitForCompletion: bool = False,
                onProgress: ProgressCallback | None = None,
                onFinished: Callable[[SegmentationJob], None] | None = None,
                onLog: Callable[[str], None] | None = None, overlap: float | None = None,
                extraArgs: list[str] | None = None, timeout: float | None = None) -> SegmentationJob:
        """Segment ``taskNames`` (task or dataset-group names; None = every task of the modality) in
        ``volumeNode``. Returns the job; see the module docstring for blocking and non-blocking use."""
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError("segment() needs a volume node with image data")
        if self.isRunning:
            raise HermesSegmentationError("a segmentation is already running; cancel it or wait for it to finish")
        resolveDevice(device)  # fail early on a typo
        if isinstance(taskNames, str):
            taskNames = [t for t in taskNames.split(",") if t.strip()]
        modelPath = str(modelPath) if modelPath else None

        job = SegmentationJob(self, volumeNode, modality, taskNames, modelPath, onProgress, onFinished, onLog)
        self.job = job
        try:
            engine.requireEngine()
            job._report(0.0, "Writing the input volume", "export")
            job.tempFolder = createTemporaryFolder()
            job.outputFolder = job.tempFolder / "output"
            inputPath = exportVolume(volumeNode, job.tempFolder)
            job.state = JobState.SEGMENTING
            job.run = startEngineCommand(
                "segment", self.segmentArguments(inputPath, job.outputFolder, modality, taskNames, modelPath, device,
                                                 fast, overlap, extraArgs),
                onProgress=job._onProgress, onLog=job.logSink, onFinished=job._onRunFinished,
                python=self.python(), pollWithQtTimer=False if waitForCompletion else None)
            job._emitLog("Running: " + " ".join(job.command))  # first: no callback runs before the start returns
        except (engine.EngineNotFoundError, VolumeExportError, OSError) as e:
            job._finish(JobState.FAILED, error=str(e))
        if waitForCompletion:
            job.outcome(timeout, HermesSegmentationError, SegmentationCancelledError)
        return job

    def cancel(self) -> None:
        """Cancel the running segmentation, if any (kills the engine's process tree, imports nothing)."""
        if self.job is not None:
            self.job.cancel()

    # ------------------------------------------------------------------ model manager
    def importOfficialCheckpoint(self, checkpoint: str | Path, output: str | Path | None = None,
                                 onLog: Callable[[str], None] | None = None,
                                 onFinished: Callable[[Path | None, str | None], None] | None = None,
                                 waitForCompletion: bool = False) -> EngineRun:
        """Convert an official Hermes-R ``.pth`` into a model file (default: the user's models folder).

        ``onFinished(modelPath, None)`` on success, ``(None, error)`` otherwise; blocking mode raises on error.
        """
        output = Path(output) if output else importedModelPath(checkpoint)
        return startFileCommand("import-official", [str(checkpoint), "-o", str(output)], output, onFinished, onLog,
                                python=self.python(), waitForCompletion=waitForCompletion,
                                error=HermesSegmentationError)
