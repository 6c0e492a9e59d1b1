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
import time
from pathlib import Path
from typing import Callable

import slicer

from . import engine
from .models import ModelCatalog, errorFromOutput, importOfficialCommand, importedModelPath
from .process import BackgroundProcess, ProcessState
from .progress import ProgressParser
from .segmentation_import import SegmentationImportError, importSegmentation
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


class JobState:
    STARTING = "starting"
    SEGMENTING = "segmenting"
    IMPORTING = "importing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINAL = (SUCCEEDED, FAILED, CANCELLED)


def resolveDevice(device: str) -> str:
    """GUI names to engine names: 'gpu' is CUDA, or Apple MPS on macOS."""
    device = (device or "auto").lower()
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "gpu":
        return "mps" if sys.platform == "darwin" else "cuda"
    return device


class SegmentationJob:
    """One run: its state, progress, log, result node, and cancel/wait/poll."""

    def __init__(self, logic: "HermesSegmentationLogic", volumeNode, modality: str | None,
                 taskNames: list[str] | None, modelPath: str | None, onProgress: ProgressCallback | None,
                 onFinished: Callable[["SegmentationJob"], None] | None, onLog: Callable[[str], None] | None):
        self.logic = logic
        self.volumeNode = volumeNode
        self.modality = modality
        self.taskNames = list(taskNames) if taskNames else None
        self.modelPath = modelPath
        self.onProgress = onProgress
        self.onFinished = onFinished
        self.onLog = onLog
        self.state = JobState.STARTING
        self.fraction = 0.0
        self.stage = "start"
        self.message = ""
        self.errorMessage: str | None = None
        self.segmentationNode = None
        self.outputs: list[dict] = []
        self.log: list[str] = []
        self.command: list[str] = []
        self.process: BackgroundProcess | None = None
        self.tempFolder: Path | None = None
        self.outputFolder: Path | None = None
        self.parser = ProgressParser()
        self.startTime = time.monotonic()
        self.endTime: float | None = None

    # ------------------------------------------------------------------ public
    @property
    def isRunning(self) -> bool:
        return self.state not in JobState.FINAL

    @property
    def elapsedSeconds(self) -> float:
        return (self.endTime or time.monotonic()) - self.startTime

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def poll(self) -> bool:
        """Deliver pending progress (scripts without a Qt event loop). True while running."""
        if self.process is not None and not self.process.finished:
            self.process.poll()
        return self.isRunning

    def wait(self, timeout: float | None = None) -> "SegmentationJob":
        if self.process is not None and not self.process.finished:
            self.process.wait(timeout)
        return self

    def cancel(self) -> None:
        """Kill the engine's process tree; nothing is imported; ``onFinished`` is called before this returns."""
        if not self.isRunning:
            return
        self._report(self.fraction, "Cancelling", "cancel")
        if self.process is not None and not self.process.finished:
            self.process.cancel()  # -> _onProcessFinished with CANCELLED
        else:
            self._finish(JobState.CANCELLED, message="Cancelled")

    # ------------------------------------------------------------------ internals
    def _emitLog(self, text: str) -> None:
        self.log.append(text)
        if self.onLog is not None:
            try:
                self.onLog(text)
            except Exception:  # noqa: BLE001 - a log callback must not break the run
                logging.exception("log callback failed")

    def _report(self, fraction: float, message: str, stage: str) -> None:
        self.fraction, self.message, self.stage = fraction, message, stage
        if self.onProgress is not None:
            self.onProgress(fraction, message, stage)

    def _onLine(self, line: str) -> None:
        event = self.parser.feed(line)
        if event is None:
            if line.strip():
                self._emitLog(line)
            return
        if event.isError:
            self._emitLog(f"Error: {event.message}")
            return
        if event.message:
            self._emitLog(f"[{event.stage}] {event.message}")
        if event.isDone:
            self.outputs = event.outputs
        self._report(event.fraction * ENGINE_SHARE, event.message or event.stage, event.stage)

    def _onProcessFinished(self, process: BackgroundProcess) -> None:
        if process.state == ProcessState.CANCELLED:
            self._finish(JobState.CANCELLED, message="Cancelled; nothing was imported")
            return
        if process.callbackError is not None:
            self._finish(JobState.FAILED, error=f"progress handling failed: {process.callbackError}")
            return
        if process.returnCode != 0 or self.parser.doneEvent is None:
            code = process.returnCode
            message = self.parser.failureMessage(code)
            if code == 130:
                message = f"the engine was interrupted: {message}"
            elif code == 0:
                message = "the engine finished without reporting its outputs"
            self._finish(JobState.FAILED, error=message)
            return
        self._import()

    def _segmentationFile(self) -> Path:
        for output in self.outputs:
            if output.get("segmentation"):
                return Path(output["segmentation"])
        return self.outputFolder / "input.seg.nrrd"

    def _import(self) -> None:
        self.state = JobState.IMPORTING
        self._report(ENGINE_SHARE, "Loading the segmentation", "import")
        if self.volumeNode.GetScene() is None:
            self._finish(JobState.FAILED, error="the input volume was removed from the scene during segmentation")
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
        self._finish(JobState.SUCCEEDED, message="Done")

    def _finish(self, state: str, message: str = "", error: str | None = None) -> None:
        if state == JobState.FAILED and self.segmentationNode is not None:
            from .segmentation_import import removeSegmentationNode
            removeSegmentationNode(self.logic.scene, self.segmentationNode)
            self.segmentationNode = None
        self.state = state
        self.endTime = time.monotonic()
        self.errorMessage = error
        if not self.logic.keepTemporaryFiles:
            removeFolder(self.tempFolder)
        if state == JobState.SUCCEEDED:
            names = ", ".join(self.segmentNames())
            self._emitLog(f"Segmentation finished in {self.elapsedSeconds:.1f} s: {names}")
            self._report(1.0, message or "Done", "done")
        elif state == JobState.CANCELLED:
            self._emitLog(f"Cancelled after {self.elapsedSeconds:.1f} s; nothing was imported")
            self._report(self.fraction, message or "Cancelled", "cancelled")
        else:
            self._emitLog(f"Segmentation failed: {error}")
            self._report(self.fraction, f"Failed: {error}", "error")
        if self.logic.job is self:
            self.logic.job = None
        if self.onFinished is not None:
            self.onFinished(self)

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

    def buildSegmentCommand(self, inputPath: str | Path, outputFolder: str | Path, modality: str | None,
                            taskNames: list[str] | None, modelPath: str | Path | None = None, device: str = "auto",
                            fast: bool = False, overlap: float | None = None,
                            extraArgs: list[str] | None = None) -> list[str]:
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
        args += list(extraArgs or [])
        return engine.engineCommand("segment", *args, python=self.python())

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
            job.command = self.buildSegmentCommand(inputPath, job.outputFolder, modality, taskNames, modelPath,
                                                   device, fast, overlap, extraArgs)
            job._emitLog("Running: " + " ".join(job.command))
            job.process = BackgroundProcess(job.command, env=engine.engineEnvironment(), onOutputLine=job._onLine,
                                            onFinished=job._onProcessFinished)
            job.state = JobState.SEGMENTING
            job.process.start(useTimer=False if waitForCompletion else None)
        except (engine.EngineNotFoundError, VolumeExportError, OSError) as e:
            job._finish(JobState.FAILED, error=str(e))
        if waitForCompletion:
            if job.isRunning:
                try:
                    job.wait(timeout)
                except TimeoutError:
                    job.cancel()
                    raise HermesSegmentationError(f"segmentation did not finish within {timeout} s; "
                                                  "it was cancelled") from None
            if job.state == JobState.CANCELLED:
                raise SegmentationCancelledError("segmentation was cancelled; nothing was imported")
            if job.state == JobState.FAILED:
                raise HermesSegmentationError(job.errorMessage or "segmentation failed")
        return job

    def cancel(self) -> None:
        """Cancel the running segmentation, if any (kills the engine's process tree, imports nothing)."""
        if self.job is not None:
            self.job.cancel()

    # ------------------------------------------------------------------ model manager
    def importOfficialCheckpoint(self, checkpoint: str | Path, output: str | Path | None = None,
                                 onLog: Callable[[str], None] | None = None,
                                 onFinished: Callable[[Path | None, str | None], None] | None = None,
                                 waitForCompletion: bool = False) -> BackgroundProcess:
        """Convert an official Hermes-R ``.pth`` into a model file (default: the user's models folder).

        ``onFinished(modelPath, None)`` on success, ``(None, error)`` otherwise; blocking mode raises on error.
        """
        output = Path(output) if output else importedModelPath(checkpoint)
        output.parent.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        result: dict = {}

        def onLine(line: str) -> None:
            lines.append(line)
            if onLog is not None:
                onLog(line)

        def finished(process: BackgroundProcess) -> None:
            if process.state == ProcessState.CANCELLED:
                result["error"] = "import cancelled"
            elif process.returnCode != 0 or not output.is_file():
                result["error"] = errorFromOutput("\n".join(lines), process.returnCode)
            if onFinished is not None:
                onFinished(None if "error" in result else output, result.get("error"))

        engine.requireEngine()
        process = BackgroundProcess(importOfficialCommand(checkpoint, output, python=self.python()),
                                    env=engine.engineEnvironment(), onOutputLine=onLine, onFinished=finished)
        process.start(useTimer=False if waitForCompletion else None)
        if waitForCompletion:
            process.wait()
            if "error" in result:
                raise HermesSegmentationError(result["error"])
        return process
