"""HermesTrainingLogic: teach a Hermes model the annotator's structures from pairs in the scene (GUI-free).

Usable from the module widget, from scripts (``Slicer --python-script``) and from tests, inside Slicer or with the
``slicer-core`` wheel::

    logic = HermesTrainingLogic()
    pairs = [logic.checkPair(volumeNode, segmentationNode)]
    job = logic.train(pairs, ["Left atrium"], baseModel, modality="MR", waitForCompletion=True)
    job.modelPath   # the new model, in the user's models folder

``mode``: "add" (``hermesseg add-task``, ``addMode`` "priors" or "adapter"), "finetune" (``hermesseg finetune``:
all weights train; ``logic.forgettingReport(job)`` gives each base task's Dice before and after) or "train"
(``hermesseg train``).

Steps: the pairs are exported as an nnU-Net v2 dataset into a private temporary folder (``dataset_export``), the
engine command runs with ``--progress json`` in a background ``PythonSlicer`` process
(``HermesLib.engine_run.startEngineCommand``, the same as Hermes Segmentation's), its progress and
metrics are parsed (``onProgress``, ``onMetrics``; a live chart when ``chart`` is given), and on success the model
file, written atomically by the engine, is in the user's models folder where Hermes Segmentation lists it. Cancel
stops the whole process tree: no model is written. The temporary dataset is removed unless ``keepDataset``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from HermesLib import engine, models
from HermesLib.engine_job import EngineJob, JobState
from HermesLib.engine_run import EngineRun, startEngineCommand, startFileCommand
from HermesLib.progress import ProgressEvent

from .cases import TrainingInputError, TrainingPair, checkPair, segmentOccurrences
from .dataset_export import ExportedDataset, exportDataset, labelName, removeExport
from .forgetting import ForgettingReport, forgettingRecord, parseForgetting
from .packs import PackError, importedPackModelPath

try:  # real Slicer: the standard base class (parameter node helpers)
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _Base
except ImportError:  # slicer-core wheel: no scripted-module layer
    _Base = object

import slicer

# Engine commands per mode: "add" = add-task (frozen base, nothing forgotten; addMode "priors" or "adapter"),
# "finetune" = finetune (all weights; forgetting measured), "train" = train (a new model from these cases only).
MODES = {"add": "add-task", "finetune": "finetune", "train": "train"}
ADD_MODES = ("priors", "adapter")


def availableModes() -> list[str]:
    """The modes the installed engine has: each engine subcommand is ``hermesseg/cli/<name>_command.py``, so an
    engine older than a mode is seen without starting it (the widget offers only these)."""
    cli = engine.requireEngine() / engine.PACKAGE / "cli"
    return [mode for mode, command in MODES.items() if (cli / f"{command.replace('-', '_')}_command.py").is_file()]


def availableAddModes() -> list[str]:
    """add-task's ``--mode`` choices in the installed engine (``hermesseg.add_task_options``, torch-free), the
    engine's default first (the widget preselects it)."""
    options = engine.importEngineModule("hermesseg.add_task_options")
    default = getattr(options, "DEFAULT_MODE", "priors")
    return sorted((m for m in ADD_MODES if m in options.MODES), key=lambda m: m != default)


class HermesTrainingError(RuntimeError):
    """A training run failed; the message is meant for the user."""


class TrainingCancelledError(HermesTrainingError):
    """The run was cancelled; no model was written."""


@dataclass
class TrainingRequest:
    """What to train. ``mode``: "add" (new structures on a frozen base), "finetune" (new structures, all weights
    train) or "train" (a new model); ``addMode``: add-task's "priors" or "adapter", or None for the engine's
    default (``availableAddModes()[0]``)."""

    pairs: list[TrainingPair]
    segmentNames: list[str]
    baseModel: str | None
    modality: str
    mode: str = "add"
    addMode: str | None = None  # add-task only; None: the engine's default (its --mode is not passed)
    steps: int | None = None
    timeLimit: float | None = None
    device: str = "auto"
    seed: int | None = None
    outputPath: str | None = None
    datasetName: str | None = None
    keepDataset: bool = False
    replay: list[str] = field(default_factory=list)  # finetune only: datasets of the base's own tasks
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
    base = Path(request.baseModel).stem if request.baseModel else "hermes"
    return models.newModelPath(safeModelStem(f"{base}+{'+'.join(request.segmentNames)}" if request.mode != "train"
                                             else f"hermes-{'+'.join(request.segmentNames)}"))


class TrainingJob(EngineJob):
    """One training run: progress, metrics, the model it wrote (:class:`~HermesLib.engine_job.EngineJob` for state,
    log and cancel/wait/poll). ``result``: the engine's ``done`` event (its ``outputs``)."""

    what = "Training"
    cancelledNote = "no model was written"

    def __init__(self, logic: "HermesTrainingLogic", request: TrainingRequest, output: Path, onProgress, onMetrics,
                 onLog, onFinished, chart):
        super().__init__(logic, onFinished, onLog)
        self.request = request
        self.outputPath = output
        self.onProgress = onProgress
        self.onMetrics = onMetrics
        self.chart = chart
        self.fraction = 0.0
        self.message = ""
        self.metrics: list[dict] = []
        self.dataset: ExportedDataset | None = None
        self.modelPath: Path | None = None
        self.result: dict = {}

    def _onProgress(self, event: ProgressEvent) -> None:
        record = metricsRecord(event.data)
        if record:
            self.metrics.append(record)
            if self.chart is not None:
                self.chart.add(record.get("step", len(self.metrics)), record.get("loss"), record.get("dice"))
            if self.onMetrics is not None:
                self.onMetrics(record)
        if event.isDone:
            self.result = event.data
        self.fraction, self.message = event.fraction, event.message or event.stage
        if self.onProgress is not None:
            self.onProgress(event.fraction, self.message, event.stage)

    def _succeeded(self, run: EngineRun) -> None:
        if not self.outputPath.is_file():
            self._finish(JobState.FAILED, f"the engine reported success but {self.outputPath} is missing")
            return
        self.modelPath = self.outputPath
        self._finish(JobState.SUCCEEDED)

    def _cleanUp(self) -> None:
        if not self.request.keepDataset:
            removeExport(self.dataset)

    def _resultText(self) -> str:
        return str(self.modelPath)


def _number(value) -> float | None:
    """A finite figure from a progress field: a number, or the mean of a per-task ``{name: dice or None}``."""
    if isinstance(value, dict):
        values = [v for v in value.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return sum(values) / len(values) if values else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def metricsRecord(data: dict) -> dict:
    """Step, loss, held-out Dice (mean over the new tasks) and ETA from one engine progress object."""
    record = {}
    for key, names in (("step", ("step", "iteration")), ("total", ("total", "steps")),
                       ("loss", ("loss",)), ("dice", ("held_out_dice", "heldout_dice", "validation_dice", "dice")),
                       ("eta", ("eta_s", "eta_seconds", "eta"))):
        for name in names:
            value = _number(data.get(name))
            if value is not None:
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

    @staticmethod
    def availableChoices() -> tuple[list[str], list[str]]:
        """(modes, add-task modes) the installed engine has; all of them when there is no engine to ask (Train then
        says that the engine is missing)."""
        try:
            return availableModes(), availableAddModes()
        except (engine.EngineNotFoundError, ImportError, AttributeError):
            return list(MODES), list(ADD_MODES)

    # ------------------------------------------------------------------ training
    @staticmethod
    def engineArguments(request: TrainingRequest, dataset: ExportedDataset, output: Path) -> tuple[str, list[str]]:
        """The engine subcommand and its arguments for ``request`` (JSON progress on stdout)."""
        if request.mode not in MODES:
            raise TrainingInputError(f"unknown training mode {request.mode!r}; choose one of {', '.join(MODES)}")
        args: list[str] = []
        if request.mode != "train":
            if not request.baseModel:
                raise TrainingInputError("choose the base model to teach")
            args.append(str(request.baseModel))
        args += ["--data", str(dataset.folder), "-o", str(output), "--progress", "json"]
        if request.mode != "train":
            args += ["--modality", request.modality]
        if request.mode == "add" and request.addMode is not None:
            if request.addMode not in ADD_MODES:
                raise TrainingInputError(f"unknown add-task mode {request.addMode!r}; choose one of "
                                         f"{', '.join(ADD_MODES)}")
            args += ["--mode", request.addMode]
        if request.replay and request.mode != "finetune":
            raise TrainingInputError("replay datasets are for Fine-tune only (the other modes change nothing the "
                                     "base model knew)")
        for folder in request.replay:
            args += ["--replay", str(folder)]
        if request.steps:
            args += ["--steps" if request.mode != "train" else "--iterations", str(int(request.steps))]
        if request.timeLimit and request.mode != "train":
            args += ["--time-limit", f"{float(request.timeLimit):g}"]
        if request.seed is not None and request.mode != "train":
            args += ["--seed", str(int(request.seed))]
        if request.device and request.device != "auto":
            args += ["--device", "cuda" if request.device == "gpu" else request.device]
        return MODES[request.mode], args + list(request.extraArgs)

    @staticmethod
    def requireEngineSupport(request: TrainingRequest) -> None:
        """Refuse, before anything runs, a mode or add-task mode that the installed engine does not have."""
        if request.mode in MODES and request.mode not in availableModes():
            raise TrainingInputError(f"this engine has no `hermesseg {MODES[request.mode]}` (update HermesExtension)")
        if request.mode == "add" and request.addMode in ADD_MODES and request.addMode not in availableAddModes():
            raise TrainingInputError(f"this engine's add-task has no {request.addMode!r} mode (it has: "
                                     f"{', '.join(availableAddModes())})")

    def train(self, pairs: list[TrainingPair], segmentNames: list[str], baseModel, modality: str,
              mode: str = "add", addMode: str | None = None, steps: int | None = None, timeLimit: float | None = None,
              device: str = "auto", seed: int | None = None, outputPath=None, keepDataset: bool = False,
              waitForCompletion: bool = False, onProgress=None, onMetrics=None, onLog=None,
              onFinished: Callable[[TrainingJob], None] | None = None, chart=None,
              timeout: float | None = None, extraArgs: list[str] | None = None,
              replay: list | None = None) -> TrainingJob:
        """Start training; see the module docstring. ``replay``: nnU-Net dataset folders of the base model's own
        tasks, replayed by a fine-tune and used for its forgetting check. Bad input raises TrainingInputError before
        anything runs."""
        if self.isRunning:
            raise HermesTrainingError("a training run is already running; cancel it or wait for it to finish")
        if not pairs:
            raise TrainingInputError("add at least one training pair (a volume and its segmentation)")
        if not modality:
            raise TrainingInputError("choose the modality of the training volumes")
        request = TrainingRequest(list(pairs), list(segmentNames), str(baseModel) if baseModel else None, modality,
                                  mode, addMode, steps, timeLimit, device, seed,
                                  str(outputPath) if outputPath else None, keepDataset=keepDataset,
                                  replay=[str(r) for r in replay or []], extraArgs=list(extraArgs or []))
        output = Path(request.outputPath) if request.outputPath else defaultOutputPath(request)
        if request.baseModel and output.resolve() == Path(request.baseModel).resolve():
            raise TrainingInputError("the new model must not replace its base model; choose another output file")
        engine.requireEngine()
        self.requireEngineSupport(request)
        job = TrainingJob(self, request, output, onProgress, onMetrics, onLog, onFinished, chart)
        output.parent.mkdir(parents=True, exist_ok=True)
        job.dataset = exportDataset(pairs, request.segmentNames, modality, request.datasetName or
                                    defaultDatasetName(request.segmentNames), parent=_temporaryBase())
        try:
            subcommand, args = self.engineArguments(request, job.dataset, output)
            job.run = startEngineCommand(subcommand, args, onProgress=job._onProgress, onLog=job.logSink,
                                         onFinished=job._onRunFinished, python=self.pythonExecutable,
                                         pollWithQtTimer=False if waitForCompletion else None)
        except Exception:
            removeExport(job.dataset)
            raise
        job.state = JobState.RUNNING
        self.job = job
        job._emitLog("Running: " + " ".join(job.command))  # first: no callback runs before the start returns
        if waitForCompletion:
            job.outcome(timeout, HermesTrainingError, TrainingCancelledError)
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

    def forgettingReport(self, job: TrainingJob) -> ForgettingReport | None:
        """A fine-tune's forgetting check, from the new model's card (None for the other modes)."""
        if job.request.mode != "finetune" or job.modelPath is None:
            return None
        card = self.modelInfo(job.modelPath).get("card")
        return parseForgetting(forgettingRecord(card, job.result.get("outputs")))

    def resultSummary(self, job: TrainingJob) -> str:
        """One paragraph for the annotator: what was learned, the held-out figures, the forgetting check."""
        info = self.modelInfo(job.modelPath)
        lines = [f"{Path(job.modelPath).name}: {', '.join(self.newTaskNames(job))}"]
        output = next((o for o in job.result.get("outputs") or [] if isinstance(o, dict)), {})
        held = output.get("held_out_dice")
        if isinstance(held, dict) and held:
            lines.append("held-out Dice: " + ", ".join(f"{k} {'n/a' if v is None else format(v, '.3f')}"
                                                       for k, v in held.items()))
        elif "held_out_dice" in output:
            lines.append("held-out Dice: not measured (fewer than 3 case groups)")
        report = self.forgettingReport(job)
        if report is not None:
            lines += report.lines()
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
                       waitForCompletion: bool = False) -> EngineRun:
        """``hermesseg export-task``: ``onFinished(output, None)`` or ``(None, error)``; blocking raises PackError."""
        return startFileCommand("export-task", [str(modelPath), *taskNames, "-o", str(output)], Path(output),
                                onFinished, python=self.pythonExecutable, waitForCompletion=waitForCompletion,
                                error=PackError)

    def importTaskPack(self, baseModel, pack, output=None, onFinished=None,
                       waitForCompletion: bool = False) -> EngineRun:
        """``hermesseg import-task`` into a new file beside the user's models (refused by the engine, with both
        fingerprints, when ``pack`` was made for another base)."""
        output = Path(output) if output else importedPackModelPath(baseModel, pack)
        return startFileCommand("import-task", [str(baseModel), str(pack), "-o", str(output)], output, onFinished,
                                python=self.pythonExecutable, waitForCompletion=waitForCompletion, error=PackError)
