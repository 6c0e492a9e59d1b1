"""HermesTraining: teach a Hermes model your structures from a few scans you annotated in Slicer.

The annotator segments a new structure on a few volumes (Segment Editor), adds the (volume, segmentation) pairs
here, ticks the segments to learn, picks the base model and presses Train. Training runs in a background
``PythonSlicer`` process (``hermesseg add-task`` by default: the base model is frozen, so nothing it knew changes);
Slicer stays responsive, a chart shows loss and held-out Dice as they arrive, and Cancel stops the whole process tree
and writes no model. The new model goes into the user's models folder, where Hermes Segmentation lists it at once.

The widget is thin: the work is in ``HermesTrainingLib`` (GUI-free, tested headless with ``slicer-core``), and
what both modules need (engine location and runs, background process, progress, models folder and list, dependency
installation) comes from the shared package ``HermesLib``, not copies. ``HermesLib`` is installed beside the modules;
from a source checkout, importing ``HermesTrainingLib`` puts it on ``sys.path``.
"""

import importlib
import logging
import os
import time
from pathlib import Path

import qt

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from HermesTrainingLib.cases import TrainingInputError  # first: it makes HermesLib importable from a source checkout
from HermesLib import MODULES as SHARED_MODULES
from HermesLib import dependencies as hermesDependencies
from HermesLib import models as hermesModels
from HermesLib.engine import EngineNotFoundError
from HermesLib.widget import JobWidgetMixin, waitFor
from HermesSegmentationLib.modality import suggestModality
from HermesTrainingLib.chart import TrainingChart
from HermesTrainingLib.logic import HermesTrainingError, HermesTrainingLogic

# Lib modules in import order, for onReload (a module must come after the ones it imports).
LIB_MODULES = (
    *SHARED_MODULES,
    "HermesTrainingLib.cases",
    "HermesTrainingLib.dataset_export",
    "HermesTrainingLib.chart",
    "HermesTrainingLib.packs",
    "HermesTrainingLib.forgetting",
    "HermesTrainingLib.logic",
)

# The choices; only those the installed engine has are offered (HermesTrainingLib.logic.availableModes).
MODES = (("add", "Add structures (frozen base, nothing forgotten)"),
         ("finetune", "Fine-tune (all weights; forgetting is measured)"),
         ("train", "Train new model (these cases only)"))
ADD_MODES = (("priors", "Priors (new prior tokens only)"),
             ("adapter", "Adapter (prior tokens + the group's adapter weights)"))
DEVICES = (("auto", "Auto (GPU if available)"), ("gpu", "GPU"), ("cpu", "CPU"))


class HermesTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Hermes Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["HermesSegmentation"]
        self.parent.contributors = ["HermesExtension contributors (hermes-extension)"]
        self.parent.helpText = _("""
Teach a Hermes model new structures from a few scans you annotated, without it forgetting anything.
<ol>
<li>Segment the structure on a few volumes with the Segment Editor.</li>
<li>Add the <b>training cases</b> (a volume and its segmentation; or all pairs in the scene) and tick the
<b>segments to learn</b>.</li>
<li>Choose the <b>base model</b>, the <b>modality</b> (a new modality is learned as one) and the <b>mode</b>:
<i>Add structures</i> keeps every structure the model knew exactly as it was.</li>
<li>Press <b>Train</b>: it runs in the background with a live chart; the button cancels it.</li>
<li>When it ends the new model is in your models folder and in Hermes Segmentation's model list; press
<b>Segment with new model</b> to try it.</li>
</ol>""")
        self.parent.acknowledgementText = _(
            "Hermes: Gao et al., Training Like a Medical Resident: Context-Prior Learning Toward Universal Medical "
            "Image Segmentation, CVPR 2024.")


class HermesTrainingWidget(JobWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    title = _("Hermes Training")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._pairs = []
        self._job = None
        self._chart = None
        self._lastModel = None
        self._lastNewTasks = []
        self._segmentJob = None
        self._packProcess = None
        self._dependenciesReady = False
        self.showPopups = True  # self-tests set False: nothing may wait on a dialog

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HermesTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = HermesTrainingLogic()

        self.ui.pairsTableWidget.setHorizontalHeaderLabels([_("Volume"), _("Segmentation"), _("Segments")])
        self.ui.pairsTableWidget.horizontalHeader().setStretchLastSection(True)
        self.ui.forgettingTableWidget.setHorizontalHeaderLabels([_("Structure"), _("Dice before"), _("Dice after"),
                                                                 _("Change")])
        self.ui.forgettingTableWidget.setVisible(False)
        modes, addModes = self.logic.availableChoices()
        for combo, items, available in ((self.ui.modeComboBox, MODES, modes),
                                        (self.ui.addModeComboBox, ADD_MODES, addModes),
                                        (self.ui.deviceComboBox, DEVICES, None)):
            labels = dict(items)
            for value in labels if available is None else available:  # the engine's order: its default first
                if value in labels:
                    combo.addItem(_(labels[value]), value)
        self.ui.progressBar.setVisible(False)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.ui.addPairButton.connect("clicked()", self.onAddPair)
        self.ui.addAllPairsButton.connect("clicked()", self.onAddAllPairs)
        self.ui.removePairButton.connect("clicked()", self.onRemovePairs)
        self.ui.segmentsListWidget.connect("itemChanged(QListWidgetItem*)", lambda item: self.updateButtons())
        self.ui.baseModelComboBox.connect("currentIndexChanged(int)", self.onBaseModelChanged)
        self.ui.modeComboBox.connect("currentIndexChanged(int)", self.onModeChanged)
        self.ui.modalityComboBox.connect("currentTextChanged(QString)", lambda text: self.updateModalityHint())
        self.ui.trainButton.connect("clicked()", self.onTrainButton)
        self.ui.segmentWithNewModelButton.connect("clicked()", self.onSegmentWithNewModel)
        self.ui.exportPackButton.connect("clicked()", self.onExportPack)
        self.ui.importPackButton.connect("clicked()", self.onImportPack)
        self.refreshModels()
        self.onModeChanged()

    def cleanup(self) -> None:
        """Application closing or module reloading: never leave an engine running."""
        for job in (self._job, self._segmentJob):
            if job is not None and job.isRunning:
                job.cancel()
        if self._packProcess is not None and not self._packProcess.finished:
            self._packProcess.cancel()
        self.removeObservers()

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None and self._job.isRunning:
            self.addLog(_("Scene closed: cancelling the training run."))
            self._job.cancel()
        self._pairs = []
        self._chart = None
        self.refreshPairs()

    # ------------------------------------------------------------------ models
    def refreshModels(self, reread: bool = False) -> None:
        """Base models: the same list as Hermes Segmentation (default model first, then the user's folder);
        ``reread``: read the models' descriptions again (after an install)."""
        if reread:
            self.logic.catalog = hermesModels.ModelCatalog()
        for combo in (self.ui.baseModelComboBox, self.ui.packModelComboBox):
            previous = combo.currentData
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            for entry in hermesModels.listModels():
                combo.addItem(entry.label, str(entry.path))
            index = combo.findData(previous) if previous else -1
            combo.setCurrentIndex(index if index >= 0 else (0 if combo.count else -1))
            combo.blockSignals(wasBlocked)
        self.onBaseModelChanged()

    def currentBaseModel(self) -> str:
        return self.ui.baseModelComboBox.currentData or ""

    def baseModelInfo(self):
        path = self.currentBaseModel()
        if not path:
            return None
        try:
            return self.logic.modelInfo(path)
        except Exception as e:  # noqa: BLE001 - shown to the user, the module stays usable
            self.setStatus(_("Cannot read the model: {error}").format(error=e), error=True)
            return None

    def onBaseModelChanged(self, index=None) -> None:
        info = self.baseModelInfo()
        combo = self.ui.modalityComboBox
        current = combo.currentText
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for modality in (info or {}).get("modalities", []):
            combo.addItem(modality["name"])
        if current:
            combo.setCurrentText(current)
        combo.blockSignals(wasBlocked)
        self.suggestModality()
        self.updateButtons()

    def suggestModality(self) -> None:
        info = self.baseModelInfo() if self._pairs else None
        if info is None:
            self.updateModalityHint()
            return
        suggestion = suggestModality(self._pairs[0].volumeNode, info.get("modalities", []))
        if suggestion.modality:
            self.ui.modalityComboBox.setCurrentText(suggestion.modality)
        self.ui.modalityHintLabel.text = suggestion.reason
        self.updateModalityHint()

    def updateModalityHint(self) -> None:
        info = self.baseModelInfo() if self.currentBaseModel() else None
        modality = self.ui.modalityComboBox.currentText.strip()
        known = [m["name"] for m in (info or {}).get("modalities", [])]
        if modality and info is not None and modality not in known and self.currentMode() != "train":
            self.ui.modalityHintLabel.text = _("'{name}' is new to this model: a modality prior is learned with the "
                                               "new structures.").format(name=modality)
        self.updateButtons()

    # ------------------------------------------------------------------ training cases
    def addPair(self, volume, segmentation) -> bool:
        for pair in self._pairs:
            if pair.volumeNode is volume and pair.segmentationNode is segmentation:
                return False
        try:
            self._pairs.append(self.logic.checkPair(volume, segmentation))
        except TrainingInputError as e:
            self.setStatus(str(e), error=True)
            return False
        return True

    def onAddPair(self) -> None:
        if self.addPair(self.ui.volumeSelector.currentNode(), self.ui.segmentationSelector.currentNode()):
            self.setStatus(_("Added {pair}.").format(pair=self._pairs[-1].label))
        self.refreshPairs()

    def onAddAllPairs(self) -> None:
        added = sum(self.addPair(volume, segmentation) for volume, segmentation in self.logic.scenePairs())
        if added:
            self.setStatus(_("Added {count} training case(s).").format(count=added))
        elif not self.logic.scenePairs():
            self.setStatus(_("No segmentation in the scene is tied to a volume (segment one in the Segment Editor "
                             "first)."), error=True)
        self.refreshPairs()

    def onRemovePairs(self) -> None:
        rows = sorted({index.row() for index in self.ui.pairsTableWidget.selectedIndexes()}, reverse=True)
        for row in rows:
            del self._pairs[row]
        self.refreshPairs()

    def refreshPairs(self) -> None:
        table = self.ui.pairsTableWidget
        table.setRowCount(len(self._pairs))
        for row, pair in enumerate(self._pairs):
            segments = ", ".join(f"{n} ({v:,} voxels)" for n, v in pair.segmentVoxels.items())
            for column, text in enumerate((pair.volumeNode.GetName(), pair.segmentationNode.GetName(), segments)):
                table.setItem(row, column, qt.QTableWidgetItem(text))
        listWidget = self.ui.segmentsListWidget
        ticked = set(self.selectedSegments()) if listWidget.count else None
        wasBlocked = listWidget.blockSignals(True)
        listWidget.clear()
        for name, count in self.logic.segmentChoices(self._pairs).items():
            item = qt.QListWidgetItem(_("{name} (in {count} of {total} cases)").format(
                name=name, count=count, total=len(self._pairs)))
            item.setData(qt.Qt.UserRole, name)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if ticked is None or name in ticked else qt.Qt.Unchecked)
            listWidget.addItem(item)
        listWidget.blockSignals(wasBlocked)
        if self._pairs and self.ui.segmentVolumeSelector.currentNode() is None:
            self.ui.segmentVolumeSelector.setCurrentNode(self._pairs[0].volumeNode)
        self.suggestModality()
        self.updateButtons()

    def selectedSegments(self) -> list:
        listWidget = self.ui.segmentsListWidget
        return [listWidget.item(i).data(qt.Qt.UserRole) for i in range(listWidget.count)
                if listWidget.item(i).checkState() == qt.Qt.Checked]

    # ------------------------------------------------------------------ train / cancel
    def currentMode(self) -> str:
        return self.ui.modeComboBox.currentData or "add"

    def onModeChanged(self, index=None) -> None:
        mode = self.currentMode()
        self.ui.addModeComboBox.enabled = mode == "add"
        self.ui.replayLineEdit.enabled = mode == "finetune"
        self.ui.modeHintLabel.text = {
            "add": _("The base model is frozen: every structure it knew gives exactly the same result."),
            "finetune": _("All weights train, so structures the model knew may change: when it ends, their Dice "
                          "before and after is shown."),
            "train": _("A new model that knows only these structures."),
        }[mode]
        self.updateModalityHint()

    def isBusy(self) -> bool:
        return self._job is not None and self._job.isRunning

    def updateButtons(self) -> None:
        button = self.ui.trainButton
        if self.isBusy():
            button.text, button.enabled = _("Cancel"), True
            button.toolTip = _("Stop training; no model is written.")
            return
        button.text = _("Train")
        missing = []
        if not self._pairs:
            missing.append(_("add a training case"))
        if not self.selectedSegments():
            missing.append(_("tick a segment to learn"))
        if self.currentMode() != "train" and not self.currentBaseModel():
            missing.append(_("choose a base model"))
        if not self.ui.modalityComboBox.currentText.strip():
            missing.append(_("choose the modality"))
        button.enabled = not missing
        button.toolTip = (_("Train in the background.") if not missing
                          else _("To train: {what}.").format(what=", ".join(missing)))
        self.ui.segmentWithNewModelButton.enabled = self._lastModel is not None and not self.isBusy()

    def replayFolders(self) -> list:
        """Fine-tune's replay datasets (folders separated by ';'); none for the other modes."""
        if self.currentMode() != "finetune":
            return []
        return [f.strip() for f in self.ui.replayLineEdit.text.split(";") if f.strip()]

    def onTrainButton(self) -> None:
        if self.isBusy():
            self.setStatus(_("Cancelling..."))
            self._job.cancel()
            return
        if not self.ensureDependencies():
            return
        self.ui.logTextEdit.clear()
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(True)
        self._chart = TrainingChart(slicer.mrmlScene, _("Hermes training {time}").format(time=time.strftime("%H:%M")))
        minutes = self.ui.timeLimitSpinBox.value
        try:
            self._job = self.logic.train(
                self._pairs, self.selectedSegments(), self.currentBaseModel() or None,
                self.ui.modalityComboBox.currentText.strip(), mode=self.currentMode(),
                addMode=self.ui.addModeComboBox.currentData or None, steps=self.ui.stepsSpinBox.value or None,
                timeLimit=60.0 * minutes if minutes else None, device=self.ui.deviceComboBox.currentData,
                seed=self.ui.seedSpinBox.value, keepDataset=self.ui.keepDatasetCheckBox.checked,
                replay=self.replayFolders(),
                onProgress=self.onTrainingProgress, onLog=self.addLog, onFinished=self.onTrainingFinished,
                chart=self._chart)
        except (TrainingInputError, HermesTrainingError, EngineNotFoundError, OSError) as e:
            self._job = None
            self.ui.progressBar.setVisible(False)
            self.setStatus(str(e), error=True)
        else:
            self.setStatus(_("Training started (the log shows the engine's messages)."))
        self.updateButtons()

    def onTrainingProgress(self, fraction: float, message: str, stage: str) -> None:
        self.ui.progressBar.setValue(int(round(100 * fraction)))
        record = self._job.metrics[-1] if self._job is not None and self._job.metrics else {}
        details = []
        if "step" in record:
            details.append(_("step {step}").format(step=record["step"]) + (f"/{record['total']}" if "total" in record
                                                                            else ""))
        if "eta" in record:
            details.append(_("about {minutes:.0f} min left").format(minutes=record["eta"] / 60.0))
        self.setStatus(" - ".join([message, *details]))
        if self._chart is not None and self._chart.chartNode is not None and not getattr(self, "_chartShown", False):
            slicer.modules.plots.logic().ShowChartInLayout(self._chart.chartNode)
            self._chartShown = True

    def onTrainingFinished(self, job) -> None:
        self._chartShown = False
        self.finishJob(job, self.showTrainedModel, _("Cancelled; no model was written."), _("Training failed: {error}"))

    def showTrainedModel(self, job) -> None:
        self._lastModel = str(job.modelPath)
        self._lastNewTasks = self.logic.newTaskNames(job)
        self.ui.resultLabel.text = self.logic.resultSummary(job)
        self.showForgetting(self.logic.forgettingReport(job))
        self.setStatus(_("Done in {seconds:.0f} s: {path}").format(seconds=job.elapsedSeconds, path=job.modelPath))
        self.refreshModels()
        segmentationWidget = slicer.util.getModuleWidget("HermesSegmentation")
        if segmentationWidget is not None:
            segmentationWidget.refreshModels()  # the new model is listed there at once

    def showForgetting(self, report) -> None:
        """A fine-tune's forgetting check: a row per structure the base knew (Dice before, after, change), and the
        same in the log; "not measured" with the engine's reason in the log; hidden after the other modes."""
        table = self.ui.forgettingTableWidget
        table.setVisible(report is not None and report.measured)
        table.setRowCount(0)
        if report is None:
            return
        for line in report.lines():
            self.addLog(line)
        table.setRowCount(len(report.rows))
        for row, entry in enumerate(report.rows):
            for column, text in enumerate(entry.cells()):
                table.setItem(row, column, qt.QTableWidgetItem(text))

    # ------------------------------------------------------------------ result
    def onSegmentWithNewModel(self) -> None:
        volume = self.ui.segmentVolumeSelector.currentNode()
        if volume is None or self._lastModel is None:
            return
        self.setStatus(_("Segmenting {name} with the new model...").format(name=volume.GetName()))
        self._segmentJob = self.logic.segmentWithModel(
            volume, self._lastModel, self._lastNewTasks, self.ui.modalityComboBox.currentText.strip(),
            onFinished=self.onSegmentFinished, onLog=self.addLog)

    def onSegmentFinished(self, job) -> None:
        if job.segmentationNode is not None:
            self.setStatus(_("New structures in '{name}': {segments}").format(
                name=job.segmentationNode.GetName(), segments=", ".join(job.segmentNames())))
        else:
            self.setStatus(_("Segmentation failed: {error}").format(error=job.errorMessage), error=True)
        self._segmentJob = None

    # ------------------------------------------------------------------ packs
    def onExportPack(self) -> None:
        model = self.ui.packModelComboBox.currentData
        tasks = [t.strip() for t in self.ui.packTasksLineEdit.text.split(",") if t.strip()]
        if not model or not tasks:
            self.setStatus(_("Choose a model and the structures (task or group names) to export."), error=True)
            return
        output = qt.QFileDialog.getSaveFileName(self.parent, _("Export task pack"), "", _("Task pack (*.safetensors)"))
        if output:
            self._packProcess = self.logic.exportTaskPack(model, tasks, output, onFinished=self.onPackFinished)

    def onImportPack(self) -> None:
        base = self.ui.packModelComboBox.currentData
        pack = qt.QFileDialog.getOpenFileName(self.parent, _("Import task pack"), "", _("Task pack (*.safetensors)"))
        if base and pack:
            self._packProcess = self.logic.importTaskPack(base, pack, onFinished=self.onPackFinished)

    def onPackFinished(self, path, error) -> None:
        self._packProcess = None
        if error:
            self.setStatus(_("Task pack: {error}").format(error=error), error=True)
        else:
            self.setStatus(_("Wrote {path}").format(path=path))
            self.refreshModels()

    # ------------------------------------------------------------------ developer
    def onReload(self) -> None:
        self.cleanup()
        for name in LIB_MODULES:
            importlib.reload(importlib.import_module(name))
        ScriptedLoadableModuleWidget.onReload(self)


class HermesTrainingTest(ScriptedLoadableModuleTest):
    """Drives the widget on a real image: a head mask drawn by thresholding MRHead (Sample Data) is learned with
    add-task on the default model, then the new model segments the same volume; the Dice against the drawn mask
    and the new model file are checked. Skipped (not failed) when packages or the default model are missing."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_WidgetTeachesAStructure()

    def test_WidgetTeachesAStructure(self):
        import unittest

        import numpy as np
        import SampleData

        if hermesModels.defaultModelPath() is None:
            raise unittest.SkipTest("no default model installed")
        if not hermesDependencies.torchSatisfied():
            raise unittest.SkipTest(f"{hermesDependencies.torchRequirement()} is not installed in Slicer (PyTorch "
                                    "extension)")
        volume = SampleData.downloadSample("MRHead")
        array = slicer.util.arrayFromVolume(volume)
        mask = (array > np.percentile(array, 60)).astype(np.uint8)
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "head")
        labelmap.CopyOrientation(volume)
        slicer.util.updateVolumeFromArray(labelmap, mask)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "head segmentation")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
        segmentation.GetSegmentation().GetNthSegment(0).SetName("Head")
        slicer.mrmlScene.RemoveNode(labelmap)

        if slicer.util.mainWindow() is not None:
            slicer.util.selectModule("HermesTraining")
        widget = slicer.util.getModuleWidget("HermesTraining")
        widget.showPopups = False
        widget._dependenciesReady = True
        widget.ui.volumeSelector.setCurrentNode(volume)
        widget.ui.segmentationSelector.setCurrentNode(segmentation)
        widget.ui.addPairButton.click()
        self.assertEqual(len(widget._pairs), 1, widget.ui.statusLabel.text)
        self.assertEqual(widget.selectedSegments(), ["Head"])
        widget.ui.stepsSpinBox.value = 60
        self.assertTrue(widget.ui.trainButton.enabled, widget.ui.trainButton.toolTip)
        widget.ui.trainButton.click()
        self.assertEqual(widget.ui.trainButton.text, _("Cancel"))
        waitFor(lambda: not widget.isBusy(), 1800, "training")
        self.assertIsNotNone(widget._lastModel, widget.ui.statusLabel.text)
        self.assertTrue(os.path.isfile(widget._lastModel))
        self.assertTrue(widget._chart.rows(), "no metrics reached the chart")

        widget.ui.segmentVolumeSelector.setCurrentNode(volume)
        widget.ui.segmentWithNewModelButton.click()
        waitFor(lambda: widget._segmentJob is None, 900, "segmentation with the new model")
        nodes = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
        result = [n for n in nodes if n is not segmentation]
        self.assertEqual(len(result), 1, widget.ui.statusLabel.text)
        node = result[0]
        segmentId = node.GetSegmentation().GetNthSegmentID(0)
        predicted = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentId, volume)
        dice = 2.0 * np.logical_and(predicted > 0, mask > 0).sum() / max(1, (predicted > 0).sum() + mask.sum())
        self.assertGreater(dice, 0.5, f"Dice of the learned head mask on its training volume: {dice:.3f}")
        Path(widget._lastModel).unlink()
        self.delayDisplay(f"Training test passed (Dice {dice:.3f})")
