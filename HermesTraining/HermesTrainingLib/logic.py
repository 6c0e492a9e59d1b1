"""HermesTrainingLogic: teach a Hermes model the annotator's structures from pairs in the scene (GUI-free).

Usable from the module widget, from scripts (``Slicer --python-script``) and from tests, inside Slicer or with the
``slicer-core`` wheel::

    logic = HermesTrainingLogic()
    pairs = [logic.checkPair(volumeNode, segmentationNode)]
    job = logic.train(pairs, ["Left atrium"], baseModel, modality="MR", waitForCompletion=True)
    job.modelPath   # the new model, in the user's models folder

Steps: the pairs are exported as an nnU-Net v2 dataset into a private temporary folder (``dataset_export``), the
engine command (``hermesseg add-task`` or ``train``) runs with ``--progress json`` in a background
``PythonSlicer`` process (the same engine location and process code as Hermes Segmentation), its progress and
metrics are parsed (``onProgress``, ``onMetrics``; a live chart when ``chart`` is given), and on success the model
file, written atomically by the engine, is in the user's models folder where Hermes Segmentation lists it. Cancel
stops the whole process tree: no model is written. The temporary dataset is removed unless ``keepDataset``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from HermesSegmentationLib import engine, models
from HermesSegmentationLib.process import BackgroundProcess, ProcessState
from HermesSegmentationLib.progress import ProgressParser

from .cases import TrainingInputError, TrainingPair, checkPair, segmentOccurrences
from .dataset_export import ExportedDataset, exportDataset, labelName, removeExport
from .packs import importedPackModelPath, runPackCommand

try:  # real Slicer: the standard base class (parameter node helpers)
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _Base
except ImportError:  # slicer-core wheel: no scripted-module layer
    _Base = object

import slicer

# Engine commands per mode. "finetune" and add-task's "adapter" mode are not in the engine yet: refused here with a
# clear message rather than by the engine's argument parser.
MODES = {"add": "add-task", "train": "train"}
ADD_TASK_KINDS = ("priors",)


class HermesTrainingError(RuntimeError):
    """A training run failed; the message is meant for the user."""


class TrainingCancelledError(HermesTrainingError):
    """The run was cancelled; no model was written."""


class TrainingState:
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINAL = (SUCCEEDED, FAILED, CANCELLED)


@dataclass
class TrainingRequest:
    """What to train. ``mode``: "add" (new structures on a frozen base) or "train" (a new model)."""

    pairs: list[TrainingPair]
    segmentNames: list[str]
    baseModel: str | None
    modality: str
    mode: str = "add"  # "add" or "train"
    kind: str = "priors"  # add-task only
    steps: int | None = None
    timeLimit: float | None = None
    device: str = "auto"
    seed: int | None = None
    outputPath: str | None = None
    datasetName: str | None = None
    keepDataset: bool = False
    extraArgs: list[str] = field(default_factory=list)


def _temporaryBase() -> str | None:
    """Slicer's temporary folder inside the application (cleaned by Slicer), else the system's."""
    app = getattr(slicer, "app", None)
    path = getattr(app, "temporaryPath", None) if app is not None else None
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
    return path or None


def defaultDatasetName(segmentNames: list[str]) -> str:
    """The exported dataset's name, which add-task makes the new tasks' group (``my_<structures>``): one group per
    set of structures taught together, so teaching the same structure twice into one model is refused as a name
    collision instead of silently creating a second group that would be queried together with the first."""
    return ("my_" + "_".join(labelName(n) for n in segmentNames))[:40].rstrip("_")


def safeModelStem(text: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"
    return stem[:60]


def defaultOutputPath(request: TrainingRequest) -> Path:
    """A new file in the user's models folder, never overwriting an existing one."""
    folder = models.userModelsFolder()
    base = Path(request.baseModel).stem if request.baseModel else "hermes"
    stem = safeModelStem(f"{base}+{'+'.join(request.segmentNames)}" if request.mode != "train"
                         else f"hermes-{'+'.join(request.segmentNames)}")
    candidate = folder / f"{stem}{models.MODEL_SUFFIX}"
    n = 2
    while candidate.exists():
        candidate = folder / f"{stem}-{n}{models.MODEL_SUFFIX}"
        n += 1
    return candidate


class TrainingJob:
    """One training run: state, progress, metrics, log, the model it wrote, and cancel/wait/poll."""

    def __init__(self, logic: "HermesTrainingLogic", request: TrainingRequest, onProgress, onMetrics, onLog,
                 onFinished, chart):
        self.logic = logic
        self.request = request
        self.onProgress = onProgress
        self.onMetrics = onMetrics
        self.onLog = onLog
        self.onFinished = onFinished
        self.chart = chart
        self.state = TrainingState.RUNNING
        self.fraction = 0.0
        self.message = ""
        self.errorMessage: str | None = None
        self.metrics: list[dict] = []
        self.log: list[str] = []
        self.command: list[str] = []
        self.dataset: ExportedDataset | None = None
        self.outputPath: Path | None = None
        self.modelPath: Path | None = None
        self.result: dict = {}
        self.process: BackgroundProcess | None = None
        self.parser = ProgressParser()
        self.startTime = time.monotonic()
        self.endTime: float | None = None

    @property
    def isRunning(self) -> bool:
        return self.state not in TrainingState.FINAL

    @property
    def elapsedSeconds(self) -> float:
        return (self.endTime or time.monotonic()) - self.startTime

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def poll(self) -> bool:
        if self.process is not None and not self.process.finished:
            self.process.poll()
        return self.isRunning

    def wait(self, timeout: float | None = None) -> "TrainingJob":
        if self.process is not None and not self.process.finished:
            self.process.wait(timeout)
        return self

    def cancel(self) -> None:
        """Stop the engine's process tree; no model is written; ``onFinished`` runs before this returns."""
        if not self.isRunning:
            return
        if self.process is not None and not self.process.finished:
            self.process.cancel()
        else:
            self._finish(TrainingState.CANCELLED)

    # ------------------------------------------------------------------ engine output
    def _emitLog(self, text: str) -> None:
        self.log.append(text)
        if self.onLog is not None:
            self.onLog(text)

    def _onLine(self, line: str) -> None:
        event = self.parser.feed(line)
        if event is None:
            if line.strip():
                self._emitLog(line)
            return
        if event.isError:
            self._emitLog(f"Error: {event.message}")
            return
        record = metricsRecord(event.data)
        if record:
            self.metrics.append(record)
            if self.chart is not None:
                self.chart.add(record.get("step", len(self.metrics)), record.get("loss"), record.get("dice"))
            if self.onMetrics is not None:
                self.onMetrics(record)
        if event.message:
            self._emitLog(f"[{event.stage}] {event.message}")
        if event.isDone:
            self.result = event.data
        self.fraction, self.message = event.fraction, event.message or event.stage
        if self.onProgress is not None:
            self.onProgress(event.fraction, self.message, event.stage)

    def _onProcessFinished(self, process: BackgroundProcess) -> None:
        if process.state == ProcessState.CANCELLED:
            self._finish(TrainingState.CANCELLED)
        elif process.returnCode != 0 or self.parser.doneEvent is None:
            message = self.parser.failureMessage(process.returnCode)
            if process.returnCode == 0:
                message = "the engine finished without reporting its output"
            self._finish(TrainingState.FAILED, message)
        elif not self.outputPath.is_file():
            self._finish(TrainingState.FAILED, f"the engine reported success but {self.outputPath} is missing")
        else:
            self.modelPath = self.outputPath
            self._finish(TrainingState.SUCCEEDED)

    def _finish(self, state: str, error: str | None = None) -> None:
        self.state, self.errorMessage, self.endTime = state, error, time.monotonic()
        if not self.request.keepDataset:
            removeExport(self.dataset)
        if state == TrainingState.SUCCEEDED:
            self._emitLog(f"Training finished in {self.elapsedSeconds:.0f} s: {self.modelPath}")
        elif state == TrainingState.CANCELLED:
            self._emitLog(f"Cancelled after {self.elapsedSeconds:.0f} s; no model was written")
        else:
            self._emitLog(f"Training failed: {error}")
        if self.logic.job is self:
            self.logic.job = None
        if self.onFinished is not None:
            self.onFinished(self)


def metricsRecord(data: dict) -> dict:
    """Step, loss and held-out Dice from one engine progress object (keys the engine writes; others ignored)."""
    record = {}
    for key, names in (("step", ("step", "iteration")), ("total", ("total", "steps")),
                       ("loss", ("loss",)), ("dice", ("heldout_dice", "held_out_dice", "validation_dice", "dice")),
                       ("eta", ("eta_seconds", "eta"))):
        for name in names:
            value = data.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                record[key] = value
                break
    return record if ("loss" in record or "dice" in record) else {}


class HermesTrainingLogic(_Base):
    """Training with Hermes in a background process. ``scene``: the MRML scene (default ``slicer.mrmlScene``)."""

    def __init__(self, scene=None):
        if _Base is not object:
            _Base.__init__(self)
        self._scene = scene
        self.pythonExecutable: str | None = None
        self.catalog = models.ModelCatalog()
        self.job: TrainingJob | None = None

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    @property
    def isRunning(self) -> bool:
        return self.job is not None and self.job.isRunning

    # ------------------------------------------------------------------ cases
    @staticmethod
    def checkPair(volumeNode, segmentationNode, segmentNames: list[str] | None = None) -> TrainingPair:
        return checkPair(volumeNode, segmentationNode, segmentNames)

    def scenePairs(self) -> list[tuple[object, object]]:
        """(volume, segmentation) for every segmentation whose reference geometry is a volume of the scene."""
        pairs = []
        scene = self.scene
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
            segmentation = scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
            volume = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
            if volume is not None and volume.IsA("vtkMRMLScalarVolumeNode") and not volume.IsA(
                    "vtkMRMLLabelMapVolumeNode"):
                pairs.append((volume, segmentation))
        return pairs

    @staticmethod
    def segmentChoices(pairs: list[TrainingPair]) -> dict[str, int]:
        return segmentOccurrences(pairs)

    # ------------------------------------------------------------------ training
    def buildCommand(self, request: TrainingRequest, dataset: ExportedDataset, output: Path) -> list[str]:
        if request.mode not in MODES:
            raise TrainingInputError(f"unknown training mode {request.mode!r}; choose one of {', '.join(MODES)}")
        subcommand = MODES[request.mode]
        args: list[str] = []
        if request.mode == "add":
            if not request.baseModel:
                raise TrainingInputError("choose the base model to teach")
            args.append(str(request.baseModel))
        args += ["--data", str(dataset.folder), "-o", str(output), "--progress", "json"]
        if request.mode == "add":
            if request.kind not in ADD_TASK_KINDS:
                raise TrainingInputError(f"unknown add-task mode {request.kind!r}")
            args += ["--modality", request.modality, "--mode", request.kind]
        if request.steps:
            args += ["--steps" if request.mode != "train" else "--iterations", str(int(request.steps))]
        if request.timeLimit and request.mode != "train":
            args += ["--time-limit", f"{float(request.timeLimit):g}"]
        if request.seed is not None and request.mode != "train":
            args += ["--seed", str(int(request.seed))]
        if request.device and request.device != "auto":
            args += ["--device", "cuda" if request.device == "gpu" else request.device]
        return engine.engineCommand(subcommand, *args, *request.extraArgs,
                                    python=self.pythonExecutable or engine.pythonExecutable())

    def train(self, pairs: list[TrainingPair], segmentNames: list[str], baseModel, modality: str,
              mode: str = "add", kind: str = "priors", steps: int | None = None, timeLimit: float | None = None,
              device: str = "auto", seed: int | None = None, outputPath=None, keepDataset: bool = False,
              waitForCompletion: bool = False, onProgress=None, onMetrics=None, onLog=None,
              onFinished: Callable[[TrainingJob], None] | None = None, chart=None,
              timeout: float | None = None, extraArgs: list[str] | None = None) -> TrainingJob:
        """Start training; see the module docstring. Bad input raises TrainingInputError before anything runs."""
        if self.isRunning:
            raise HermesTrainingError("a training run is already running; cancel it or wait for it to finish")
        if not pairs:
            raise TrainingInputError("add at least one training pair (a volume and its segmentation)")
        if not modality:
            raise TrainingInputError("choose the modality of the training volumes")
        request = TrainingRequest(list(pairs), list(segmentNames), str(baseModel) if baseModel else None, modality,
                                  mode, kind, steps, timeLimit, device, seed,
                                  str(outputPath) if outputPath else None, keepDataset=keepDataset,
                                  extraArgs=list(extraArgs or []))
        output = Path(request.outputPath) if request.outputPath else defaultOutputPath(request)
        if request.baseModel and output.resolve() == Path(request.baseModel).resolve():
            raise TrainingInputError("the new model must not replace its base model; choose another output file")
        engine.requireEngine()
        job = TrainingJob(self, request, onProgress, onMetrics, onLog, onFinished, chart)
        job.outputPath = output
        output.parent.mkdir(parents=True, exist_ok=True)
        job.dataset = exportDataset(pairs, request.segmentNames, modality, request.datasetName or
                                    defaultDatasetName(request.segmentNames), parent=_temporaryBase())
        try:
            job.command = self.buildCommand(request, job.dataset, output)
        except Exception:
            removeExport(job.dataset)
            raise
        self.job = job
        job._emitLog("Running: " + " ".join(job.command))
        job.process = BackgroundProcess(job.command, env=engine.engineEnvironment(), onOutputLine=job._onLine,
                                        onFinished=job._onProcessFinished)
        job.process.start(useTimer=False if waitForCompletion else None)
        if waitForCompletion:
            try:
                job.wait(timeout)
            except TimeoutError:
                job.cancel()
                raise HermesTrainingError(f"training did not finish within {timeout} s; it was cancelled") from None
            if job.state == TrainingState.CANCELLED:
                raise TrainingCancelledError("training was cancelled; no model was written")
            if job.state == TrainingState.FAILED:
                raise HermesTrainingError(job.errorMessage or "training failed")
        return job

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    # ------------------------------------------------------------------ after training
    def modelInfo(self, modelPath) -> dict:
        """A model's description (tasks, modalities, card), as Hermes Segmentation reads it."""
        return self.catalog.info(modelPath)

    def newTaskNames(self, job: TrainingJob) -> list[str]:
        """Tasks of the new model that its base did not have (all tasks for a new model), in model order."""
        for output in job.result.get("outputs") or []:
            if isinstance(output, dict) and isinstance(output.get("tasks"), list) and output["tasks"]:
                return [str(t) for t in output["tasks"]]
        new = [t["name"] for t in self.modelInfo(job.modelPath)["tasks"]]
        if job.request.baseModel and job.request.mode != "train":
            old = {t["name"] for t in self.modelInfo(job.request.baseModel)["tasks"]}
            new = [name for name in new if name not in old]
        return new

    def resultSummary(self, job: TrainingJob) -> str:
        """One paragraph for the annotator: what was learned, the held-out figures, the forgetting check."""
        info = self.modelInfo(job.modelPath)
        lines = [f"{Path(job.modelPath).name}: {', '.join(self.newTaskNames(job))}"]
        for key, label in (("heldout", "held-out check"), ("held_out", "held-out check"),
                           ("forgetting", "forgetting check"), ("zero_forgetting", "forgetting check")):
            value = job.result.get(key, (info.get("card") or {}).get(key))
            if value is not None:
                lines.append(f"{label}: {value}")
        lineage = info.get("lineage") or []
        if lineage:
            lines.append(f"lineage: {' -> '.join(str(r.get('operation')) for r in lineage)}")
        return "\n".join(lines)

    def segmentWithModel(self, volumeNode, modelPath, taskNames: list[str], modality: str, onFinished=None,
                         onLog=None, waitForCompletion: bool = False):
        """Run Hermes Segmentation's logic on ``volumeNode`` with the new model and its new structures."""
        from HermesSegmentationLib.logic import HermesSegmentationLogic

        return HermesSegmentationLogic(self.scene).segment(
            volumeNode, modality or None, taskNames, modelPath=modelPath, waitForCompletion=waitForCompletion,
            onFinished=onFinished, onLog=onLog)

    def exportTaskPack(self, modelPath, taskNames: list[str], output, onFinished=None,
                       waitForCompletion: bool = False):
        output = Path(output)
        command = engine.engineCommand("export-task", str(modelPath), *taskNames, "-o", str(output),
                                       python=self.pythonExecutable or engine.pythonExecutable())
        return runPackCommand(command, output, onFinished, waitForCompletion)

    def importTaskPack(self, baseModel, pack, output=None, onFinished=None, waitForCompletion: bool = False):
        output = Path(output) if output else importedPackModelPath(baseModel, pack)
        command = engine.engineCommand("import-task", str(baseModel), str(pack), "-o", str(output),
                                       python=self.pythonExecutable or engine.pythonExecutable())
        return runPackCommand(command, output, onFinished, waitForCompletion)
