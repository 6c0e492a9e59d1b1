"""HermesSegmentation: segment many structures in CT, MR and PET with one Hermes model.

The widget is thin: every computation is in ``HermesSegmentationLib`` (GUI-free, tested headless with the
``slicer-core`` wheel). The engine (``hermesseg``, torch) runs in a background ``PythonSlicer`` process, so the GUI
never blocks and Cancel kills the process tree.
"""

import enum
import importlib
import logging
import os
import unittest
from pathlib import Path

import ctk
import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from HermesSegmentationLib import task_selection  # first: it makes HermesLib importable from a source checkout
from HermesLib import dependencies as hermesDependencies
from HermesLib import models as hermesModels
from HermesLib import MODULES as SHARED_MODULES
from HermesLib.engine import EngineNotFoundError
from HermesLib.widget import JobWidgetMixin, waitFor
from HermesSegmentationLib.logic import HermesSegmentationError, HermesSegmentationLogic, JobState
from HermesSegmentationLib.modality import suggestModality
from HermesSegmentationLib.segmentation_import import segmentTag, terminologyEntryString

# Lib modules in import order, for onReload (a module must come after the ones it imports).
LIB_MODULES = (
    *SHARED_MODULES,
    "HermesSegmentationLib.volume_export",
    "HermesSegmentationLib.segmentation_import",
    "HermesSegmentationLib.modality",
    "HermesSegmentationLib.task_selection",
    "HermesSegmentationLib.logic",
)

HOMEPAGE = "https://github.com/hermes-extension/HermesExtension"


#
# HermesSegmentation
#


class HermesSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Hermes Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["HermesExtension contributors (hermes-extension)"]
        self.parent.helpText = _("""
Automatic segmentation of many anatomical structures and lesions in CT, MR and PET with one
<b>Hermes</b> universal segmentation model.
<ol>
<li>Choose the <b>volume</b>. The <b>modality</b> is pre-filled from DICOM or the intensity range; change it if wrong.</li>
<li>Tick the <b>structures</b> to segment (search box; grouped by the dataset they were learned from).</li>
<li>Press <b>Segment</b>. The model runs in the background; the button cancels it.</li>
</ol>
The result is a segmentation with standard terminology, ready for review, editing and DICOM SEG export.
Use <b>Import checkpoint</b> to add an official Hermes-R checkpoint, and <b>Fast mode</b> on computers without a GPU.
Read the model card for the licences of the weights (the datasets they were trained on may restrict use).
See the <a href="{homepage}">documentation</a>.
""").format(homepage=HOMEPAGE)
        self.parent.acknowledgementText = _("""
Hermes is described in: Yunhe Gao, Zhuowei Li, Di Liu, Mu Zhou, Shaoting Zhang, Dimitris N. Metaxas.
<i>Training Like a Medical Resident: Context-Prior Learning Toward Universal Medical Image Segmentation.</i>
CVPR 2024. Please cite it when you use this module. Model weights keep the licences of their training datasets
(see the model card).
""")


#
# Parameter node
#


class Device(enum.Enum):
    AUTO = "auto"
    GPU = "gpu"
    CPU = "cpu"

    def label(self):  # shown in the combo box by the parameter node wrapper
        return {"auto": _("Auto (GPU if available)"), "gpu": _("GPU"), "cpu": _("CPU")}[self.value]


@parameterNodeWrapper
class HermesSegmentationParameterNode:
    """Saved with the scene. Widgets with a SlicerParameterName property are bound automatically; modality,
    modelPath and tasks are kept in step by the widget (their choices depend on the model)."""

    inputVolume: vtkMRMLScalarVolumeNode
    modality: str = ""
    modelPath: str = ""
    tasks: list[str]
    taskFilter: str = ""
    device: Device = Device.AUTO
    fast: bool = False
    show3D: bool = False


#
# HermesSegmentationWidget
#


class HermesSegmentationWidget(JobWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    title = _("Hermes Segmentation")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self._modelInfo = None
        self._modelInfoPath = None
        self._importProcess = None
        self._job = None
        self._suggestedForVolumeID = None
        self._dependenciesReady = False
        self.showPopups = True  # self-tests set False: nothing may wait on a dialog

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HermesSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = HermesSegmentationLogic()
        self.ui.progressBar.setVisible(False)
        self.ui.taskTreeWidget.setSelectionMode(qt.QAbstractItemView.NoSelection)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.modalityComboBox.connect("currentIndexChanged(int)", self.onModalityChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.taskFilterLineEdit.connect("textChanged(QString)", self.onTaskFilterChanged)
        self.ui.taskTreeWidget.connect("itemChanged(QTreeWidgetItem*,int)", self.onTaskItemChanged)
        self.ui.selectAllTasksButton.connect("clicked()", lambda: self.setShownTasksChecked(True))
        self.ui.clearTasksButton.connect("clicked()", lambda: self.setShownTasksChecked(False))
        self.ui.importCheckpointButton.connect("clicked()", self.onImportCheckpoint)
        self.ui.addModelFileButton.connect("clicked()", self.onAddModelFile)
        self.ui.openModelFolderButton.connect("clicked()", self.onOpenModelFolder)
        self.ui.refreshModelsButton.connect("clicked()", self.refreshModels)
        self.ui.installDependenciesButton.connect("clicked()", self.onInstallDependencies)
        self.ui.segmentButton.connect("clicked()", self.onSegmentButton)

        self.initializeParameterNode()
        self.refreshModels()
        self.updateButtons()

    def cleanup(self) -> None:
        """Called when the application closes or the module is reloaded: never leave an engine running."""
        self.stopBackgroundWork()
        self.removeObservers()

    def stopBackgroundWork(self) -> None:
        if self._job is not None and self._job.isRunning:
            self._job.cancel()
        if self._importProcess is not None and not self._importProcess.finished:
            self._importProcess.cancel()
        self._importProcess = None

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None and self._job.isRunning:
            self.addLog(_("Scene closed: cancelling the segmentation."))
            self._job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(HermesSegmentationParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.inputVolume:
            volumeNode = (self.ui.inputVolumeSelector.currentNode()
                          or slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode"))
            if volumeNode:
                self._parameterNode.inputVolume = volumeNode

    def ensureParameterNode(self):
        """The parameter node, re-created if a scene close removed it while the module was not entered (scripts and
        self-tests drive the widget without entering it: without a main window it never is)."""
        if self._parameterNode is None or self._parameterNode.parameterNode.GetScene() is None:
            self.setParameterNode(None)
            self.initializeParameterNode()
        return self._parameterNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with the "SlicerParameterName" dynamic property (see the .ui file) are bound here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Bring the model, modality and task widgets in line with the parameter node (e.g. after loading a scene)."""
        if self._updatingGui or not self._parameterNode:
            return
        previousUpdating, self._updatingGui = self._updatingGui, True
        try:
            modelPath = self._parameterNode.modelPath
            if modelPath and modelPath != self.currentModelPath():
                self._selectModelInCombo(modelPath)
            modality = self._parameterNode.modality
            if modality and modality != self.currentModality():
                index = self.ui.modalityComboBox.findData(modality)
                if index >= 0:
                    self.ui.modalityComboBox.setCurrentIndex(index)
            wanted = set(self._parameterNode.tasks)
            for item in self._taskItems():
                state = qt.Qt.Checked if item.data(0, qt.Qt.UserRole) in wanted else qt.Qt.Unchecked
                if item.checkState(0) != state:
                    item.setCheckState(0, state)
        finally:
            self._updatingGui = previousUpdating
        self._updateGroupStates()
        self.updateTaskCount()
        self.updateButtons()

    # ------------------------------------------------------------------ models
    def currentModelPath(self) -> str:
        index = self.ui.modelComboBox.currentIndex
        if index < 0:
            return ""
        return self.ui.modelComboBox.itemData(index) or ""

    def _selectModelInCombo(self, path: str) -> None:
        index = self.ui.modelComboBox.findData(path)
        if index < 0 and os.path.isfile(path):
            self.ui.modelComboBox.addItem(Path(path).stem, path)
            index = self.ui.modelComboBox.findData(path)
        if index >= 0:
            self.ui.modelComboBox.setCurrentIndex(index)

    def refreshModels(self, reread: bool = False) -> None:
        """List the default model, the user's models folder, and the file stored in the parameter node;
        ``reread``: read the selected model's description again (after an install or import)."""
        if reread:
            self._modelInfo, self._modelInfoPath = None, None
            self.logic.catalog = hermesModels.ModelCatalog()
        wanted = (self._parameterNode.modelPath if self._parameterNode else "") or self.currentModelPath()
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            for entry in hermesModels.listModels():
                combo.addItem(entry.label, str(entry.path))
                combo.setItemData(combo.count - 1, str(entry.path), qt.Qt.ToolTipRole)
            if wanted and combo.findData(wanted) < 0 and os.path.isfile(wanted):
                combo.addItem(Path(wanted).stem, wanted)
            index = combo.findData(wanted) if wanted else -1
            combo.setCurrentIndex(index if index >= 0 else (0 if combo.count else -1))
        finally:
            combo.blockSignals(wasBlocked)
        if combo.count == 0:
            self.ui.modelCardTextBrowser.setHtml(_(
                "No model found. Use <b>Import checkpoint...</b> to convert an official Hermes-R checkpoint, or "
                "<b>Add model file...</b>. Models folder: {folder}").format(folder=hermesModels.userModelsFolder()))
        self.onModelChanged()

    def onModelChanged(self, index=None) -> None:
        path = self.currentModelPath()
        if self._parameterNode and not self._updatingGui and self._parameterNode.modelPath != path:
            self._parameterNode.modelPath = path
        if not path:
            self._setModelInfo(None, None)
            return
        if path == self._modelInfoPath and self._modelInfo is not None:
            return
        try:
            info = self.logic.modelInfo(path)  # the file's header, read in Slicer's process: no torch needed
        except (hermesModels.ModelInfoError, EngineNotFoundError) as e:
            message = _("Cannot use this model: {error}").format(error=e)
            self._setModelInfo(None, None)
            self.ui.modelCardTextBrowser.setPlainText(message)
            self.setStatus(message, error=True)
            return
        self.setStatus("")
        self._setModelInfo(path, info)

    def _setModelInfo(self, path, info) -> None:
        self._modelInfo, self._modelInfoPath = info, path
        combo = self.ui.modalityComboBox
        previousUpdating, self._updatingGui = self._updatingGui, True
        try:
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            for modality in (info or {}).get("modalities", []):
                text = modality["name"] + (f" - {modality['description']}" if modality.get("description") else "")
                combo.addItem(text, modality["name"])
            wanted = self._parameterNode.modality if self._parameterNode else ""
            index = combo.findData(wanted) if wanted else -1
            combo.setCurrentIndex(index if index >= 0 else (0 if combo.count else -1))
            combo.blockSignals(wasBlocked)
        finally:
            self._updatingGui = previousUpdating
        self.ui.modelCardTextBrowser.setHtml(hermesModels.modelCardHtml(info, path) if info else "")
        self._suggestedForVolumeID = None
        self.suggestModalityForVolume()
        self.onModalityChanged()

    # ------------------------------------------------------------------ modality
    def currentModality(self) -> str:
        index = self.ui.modalityComboBox.currentIndex
        return (self.ui.modalityComboBox.itemData(index) or "") if index >= 0 else ""

    def onInputVolumeChanged(self, node=None) -> None:
        if not self._updatingGui and not slicer.mrmlScene.IsBatchProcessing():  # not while a scene closes/loads
            self.ensureParameterNode()
        self.suggestModalityForVolume()
        self.updateButtons()

    def suggestModalityForVolume(self) -> None:
        """Pre-fill the modality from the volume (once per volume, so the user's choice is kept)."""
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is None or self._modelInfo is None:
            self.ui.modalityHintLabel.text = ""
            return
        if volume.GetID() == self._suggestedForVolumeID:
            return
        self._suggestedForVolumeID = volume.GetID()
        suggestion = suggestModality(volume, self._modelInfo.get("modalities", []))
        if suggestion.modality:
            index = self.ui.modalityComboBox.findData(suggestion.modality)
            if index >= 0:
                self.ui.modalityComboBox.setCurrentIndex(index)
        self.ui.modalityHintLabel.text = suggestion.reason

    def onModalityChanged(self, index=None) -> None:
        modality = self.currentModality()
        if self._parameterNode and not self._updatingGui and self._parameterNode.modality != modality:
            self._parameterNode.modality = modality
        if index is not None and not self._updatingGui:
            volume = self.ui.inputVolumeSelector.currentNode()
            if volume is not None and volume.GetID() == self._suggestedForVolumeID:
                self.ui.modalityHintLabel.text = _("chosen by you")
        self._populateTasks()

    # ------------------------------------------------------------------ tasks
    def _taskItems(self):
        tree = self.ui.taskTreeWidget
        for g in range(tree.topLevelItemCount):
            group = tree.topLevelItem(g)
            for c in range(group.childCount()):
                yield group.child(c)

    def _populateTasks(self) -> None:
        tree = self.ui.taskTreeWidget
        previousUpdating, self._updatingGui = self._updatingGui, True
        try:
            tree.clear()
            if self._modelInfo is None:
                return
            wanted = set(self._parameterNode.tasks) if self._parameterNode else set()
            groups = hermesModels.tasksByGroup(self._modelInfo, self.currentModality() or None)
            for groupName, tasks in groups.items():
                groupItem = qt.QTreeWidgetItem(tree)
                groupItem.setText(0, f"{groupName} ({len(tasks)})")
                groupItem.setData(0, qt.Qt.UserRole + 1, groupName)
                # Not auto-tristate: Qt would tick hidden children too; onTaskItemChanged ticks the shown ones.
                groupItem.setFlags(groupItem.flags() | qt.Qt.ItemIsUserCheckable)
                groupItem.setCheckState(0, qt.Qt.Unchecked)  # shows the box; _updateGroupStates sets it
                for task in tasks:
                    name = task["name"]
                    item = qt.QTreeWidgetItem(groupItem)
                    shortName = name[len(groupName) + 1:] if name.startswith(groupName + "_") else name
                    label = task.get("display_name") or shortName.replace("_", " ")
                    # Tasks without measured evidence (engine's hermesseg.selection rule) are marked, not pre-ticked.
                    item.setText(0, label if task.get("default", True) else _("{label} (experimental)").format(
                        label=label))
                    item.setData(0, qt.Qt.UserRole, name)
                    item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                    item.setCheckState(0, qt.Qt.Checked if name in wanted else qt.Qt.Unchecked)
                    color = task.get("color") or [128, 128, 128]
                    pixmap = qt.QPixmap(12, 12)
                    pixmap.fill(qt.QColor(*color))
                    item.setIcon(0, qt.QIcon(pixmap))
                    terminology = task.get("terminology") or {}
                    meaning = (terminology.get("type") or ["", "", ""])[2]
                    item.setToolTip(0, _("{name}\nDataset: {group}\nLearned for: {modalities}{meaning}\n"
                                         "Measured quality: {quality}{note}").format(
                        name=name, group=groupName, modalities=", ".join(task.get("modalities", [])),
                        meaning=f"\nSNOMED CT: {meaning}" if meaning else "",
                        quality=task.get("quality_text") or _("not stated"),
                        note=f"\nNote: {task['note']}" if task.get("note") else ""))
        finally:
            self._updatingGui = previousUpdating
        self.onTaskFilterChanged(self.ui.taskFilterLineEdit.text)
        self.updateTaskCount()
        self.updateButtons()

    def onTaskFilterChanged(self, text=None) -> None:
        words = task_selection.filterWords(text)
        tree = self.ui.taskTreeWidget
        for g in range(tree.topLevelItemCount):
            group = tree.topLevelItem(g)
            groupName = group.data(0, qt.Qt.UserRole + 1) or ""
            shown = 0
            for c in range(group.childCount()):
                item = group.child(c)
                visible = task_selection.matchesFilter(words, item.data(0, qt.Qt.UserRole), groupName, item.text(0))
                item.setHidden(not visible)
                shown += visible
            group.setHidden(shown == 0)
            group.setExpanded(bool(words) and shown > 0)
        self._updateGroupStates()
        self.updateTaskCount()

    def shownTaskItems(self) -> list:
        return [item for item in self._taskItems() if not item.isHidden() and not item.parent().isHidden()]

    def _shownTaskNames(self) -> set:
        return {item.data(0, qt.Qt.UserRole) for item in self.shownTaskItems()}

    def _updateGroupStates(self) -> None:
        """Each group's tick box from its shown tasks (task_selection.groupState)."""
        states = {task_selection.CHECKED: qt.Qt.Checked, task_selection.PARTIAL: qt.Qt.PartiallyChecked,
                  task_selection.UNCHECKED: qt.Qt.Unchecked}
        ticked, shown = set(self.selectedTasks()), self._shownTaskNames()
        tree = self.ui.taskTreeWidget
        previousUpdating, self._updatingGui = self._updatingGui, True
        try:
            for g in range(tree.topLevelItemCount):
                group = tree.topLevelItem(g)
                names = [group.child(c).data(0, qt.Qt.UserRole) for c in range(group.childCount())]
                state = states[task_selection.groupState(names, ticked, shown)]
                if group.checkState(0) != state:
                    group.setCheckState(0, state)
        finally:
            self._updatingGui = previousUpdating

    def _setTickedTasks(self, ticked: set) -> None:
        previousUpdating, self._updatingGui = self._updatingGui, True
        try:
            for item in self._taskItems():
                state = qt.Qt.Checked if item.data(0, qt.Qt.UserRole) in ticked else qt.Qt.Unchecked
                if item.checkState(0) != state:
                    item.setCheckState(0, state)
        finally:
            self._updatingGui = previousUpdating
        self.onTaskItemChanged()

    def setShownTasksChecked(self, checked: bool) -> None:
        """Select all (the shown tasks) / Clear (every task)."""
        if checked:
            self._setTickedTasks(set(self.selectedTasks()) | self._shownTaskNames())
        else:
            self._setTickedTasks(set())

    def onTaskItemChanged(self, item=None, column=0) -> None:
        if self._updatingGui:
            return
        if item is not None and item.parent() is None:  # a dataset group was (un)ticked: only its shown tasks
            names = [item.child(c).data(0, qt.Qt.UserRole) for c in range(item.childCount())]
            ticked = task_selection.tickGroup(self.selectedTasks(), names, self._shownTaskNames(),
                                              tick=item.checkState(0) != qt.Qt.Unchecked)
            self._setTickedTasks(ticked)
            return
        checked = self.selectedTasks()
        if self._parameterNode is not None:
            # keep ticks of tasks hidden by another modality; replace the ones of the current list
            shownNames = {i.data(0, qt.Qt.UserRole) for i in self._taskItems()}
            kept = [t for t in self._parameterNode.tasks if t not in shownNames]
            previousUpdating, self._updatingGui = self._updatingGui, True
            try:
                self._parameterNode.tasks = kept + checked
            finally:
                self._updatingGui = previousUpdating
        self._updateGroupStates()
        self.updateTaskCount()
        self.updateButtons()

    def selectedTasks(self) -> list:
        """Ticked tasks that the current model learned for the current modality (model order): what Segment runs."""
        return [i.data(0, qt.Qt.UserRole) for i in self._taskItems() if i.checkState(0) == qt.Qt.Checked]

    def updateTaskCount(self) -> None:
        count, hidden = task_selection.selectionCounts(self.selectedTasks(), self._shownTaskNames())
        text = _("{count} selected").format(count=count) if count else ""
        if hidden:
            text += " " + _("({hidden} hidden by the search)").format(hidden=hidden)
        self.ui.taskCountLabel.text = text

    # ------------------------------------------------------------------ segment / cancel
    def isBusy(self) -> bool:
        return self._job is not None and self._job.isRunning

    def updateButtons(self) -> None:
        button = self.ui.segmentButton
        if self.isBusy():
            button.text = _("Cancel")
            button.toolTip = _("Stop the segmentation (nothing is added to the scene).")
            button.enabled = True
            return
        button.text = _("Segment")
        missing = []
        if self.ui.inputVolumeSelector.currentNode() is None:
            missing.append(_("choose a volume"))
        if self._modelInfo is None:
            missing.append(_("choose a model"))
        elif not self.selectedTasks():
            missing.append(_("tick at least one structure"))
        button.enabled = not missing
        button.toolTip = (_("Segment the ticked structures in the background.") if not missing
                          else _("To segment: {what}.").format(what=", ".join(missing)))
        importing = self._importProcess is not None and not self._importProcess.finished
        self.ui.importCheckpointButton.enabled = not importing

    def onInstallDependencies(self) -> None:
        self._dependenciesReady = False
        if self.ensureDependencies():
            self.setStatus(_("All Python packages Hermes needs are installed."))

    def onSegmentButton(self) -> None:
        if self.isBusy():
            self.setStatus(_("Cancelling..."))
            self._job.cancel()
            return
        parameterNode = self.ensureParameterNode()
        if not self.ensureDependencies():
            return
        volume = self.ui.inputVolumeSelector.currentNode()
        tasks = self.selectedTasks()
        if volume is None or self._modelInfo is None or not tasks:  # e.g. the model list changed after an install
            self.updateButtons()
            self.setStatus(self.ui.segmentButton.toolTip, error=True)
            return
        self.ui.logTextEdit.clear()
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(True)
        self.setStatus(_("Starting..."))
        try:
            self._job = self.logic.segment(
                volume, self.currentModality() or None, tasks, modelPath=self.currentModelPath() or None,
                device=parameterNode.device.value, fast=parameterNode.fast, waitForCompletion=False,
                onProgress=self.onJobProgress, onFinished=self.onJobFinished, onLog=self.addLog)
        except (HermesSegmentationError, ValueError) as e:
            self._job = None
            self.ui.progressBar.setVisible(False)
            self.setStatus(str(e), error=True)
        self.updateButtons()

    def onJobProgress(self, fraction: float, message: str, stage: str) -> None:
        self.ui.progressBar.setValue(int(round(fraction * 100)))
        self.setStatus(message)

    def onJobFinished(self, job) -> None:
        self.finishJob(job, self.showSegmentation, _("Cancelled; nothing was added to the scene."),
                       _("Segmentation failed: {error}"))

    def showSegmentation(self, job) -> None:
        segmentationNode = job.segmentationNode
        count = segmentationNode.GetSegmentation().GetNumberOfSegments()
        self.setStatus(_("Done in {seconds:.0f} s: {count} structures in '{name}'.").format(
            seconds=job.elapsedSeconds, count=count, name=segmentationNode.GetName()))
        if self._parameterNode is not None and self._parameterNode.show3D:
            segmentationNode.CreateClosedSurfaceRepresentation()
        if slicer.app.layoutManager() is not None:
            slicer.util.setSliceViewerLayers(background=job.volumeNode)

    # ------------------------------------------------------------------ model manager
    def onImportCheckpoint(self) -> None:
        checkpoint = qt.QFileDialog.getOpenFileName(
            self.parent, _("Import an official Hermes-R checkpoint"), "",
            _("PyTorch checkpoint (*.pth *.pt);;All files (*)"))
        if not checkpoint:
            return
        self.importCheckpoint(checkpoint)

    def importCheckpoint(self, checkpoint: str, output: str = None) -> None:
        """Convert ``checkpoint`` in the background; the new model is selected when done."""
        if not self.ensureDependencies():
            return
        output = Path(output) if output else hermesModels.importedModelPath(checkpoint)
        if output.exists() and self.popupsAllowed():
            if not slicer.util.confirmOkCancelDisplay(
                    _("{path} exists. Replace it?").format(path=output), _("Hermes Segmentation")):
                return
        self.setStatus(_("Importing {name} (runs in the background)...").format(name=Path(checkpoint).name))
        self._importProcess = self.logic.importOfficialCheckpoint(
            checkpoint, output, onLog=self.addLog, onFinished=self.onCheckpointImported)
        self.updateButtons()

    def onCheckpointImported(self, modelPath, error) -> None:
        self._importProcess = None
        if error:
            self.setStatus(_("Import failed: {error}").format(error=error), error=True)
            if self.popupsAllowed():
                slicer.util.errorDisplay(_("Import failed: {error}").format(error=error))
        else:
            self.setStatus(_("Imported {path}").format(path=modelPath))
            if self._parameterNode is not None:
                self._parameterNode.modelPath = str(modelPath)
            self.refreshModels()
            self._selectModelInCombo(str(modelPath))
        self.updateButtons()

    def onAddModelFile(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Choose a Hermes model file"), "",
                                              _("Hermes model (*.safetensors);;All files (*)"))
        if path:
            self.selectModel(path)

    def selectModel(self, path: str) -> None:
        """Use the model file ``path`` (added to the list if needed); its description is read from its header."""
        path = str(path)
        self.ensureParameterNode().modelPath = path
        self._selectModelInCombo(path)
        self.onModelChanged()

    def onOpenModelFolder(self) -> None:
        folder = hermesModels.userModelsFolder()
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    # ------------------------------------------------------------------ developer
    def onReload(self) -> None:
        """Reload the Lib modules too (importlib; the old ``imp`` module is gone in Python 3.12)."""
        self.stopBackgroundWork()
        for name in LIB_MODULES:
            module = importlib.import_module(name)
            importlib.reload(module)
        ScriptedLoadableModuleWidget.onReload(self)


#
# HermesSegmentationLogic lives in HermesSegmentationLib/logic.py (GUI-free, importable without Qt).
#


#
# HermesSegmentationTest
#


class HermesSegmentationTest(ScriptedLoadableModuleTest):
    """Drives the module widget on a real image and checks the resulting segments.

    Needs a model: ``$HERMES_TEST_MODEL``, the default model, ``$HERMES_TEST_CHECKPOINT`` (an official Hermes-R
    checkpoint, imported through the model manager), or a model in the user's models folder; otherwise the tests
    are skipped. Image: ``$HERMES_TEST_IMAGE``, else the CTChest sample (Sample Data module).
    """

    def setUp(self):
        slicer.mrmlScene.Clear()
        self._tempFolder = None

    def tearDown(self):
        if self._tempFolder is not None:
            import shutil
            shutil.rmtree(self._tempFolder, ignore_errors=True)

    def runTest(self):
        """Reload and Test: every test in turn; a test that cannot run here is reported as skipped, with its reason.
        (unittest runners, e.g. Testing/run_slicer_selftests.py, collect the test_* methods themselves.)"""
        for test in (self.test_WidgetSegmentsRealImage, self.test_WidgetCancel, self.test_LogicBlocking):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as e:
                self.delayDisplay(f"{test.__name__} skipped: {e}")
            finally:
                self.tearDown()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def showModuleWidget(name: str):
        """The module's widget, selected in the main window when there is one (--no-main-window has none)."""
        if slicer.util.mainWindow() is not None:
            slicer.util.selectModule(name)
        return slicer.util.getModuleWidget(name)

    def requireDependencies(self, widget) -> None:
        """Tests never install packages (and must never wait on a dialog): without them the test is skipped."""
        missing = hermesDependencies.missingDependencies()
        if missing:
            raise unittest.SkipTest("Python packages missing in Slicer (install them by pressing Segment once, or "
                                    "torch with the PyTorch Utils module): " + ", ".join(missing))
        widget._dependenciesReady = True
        widget.showPopups = False

    @staticmethod
    def sceneNodes() -> list:
        scene = slicer.mrmlScene
        return [(scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetClassName())
                for i in range(scene.GetNumberOfNodes())]

    def modelPathForTests(self) -> str:
        path = os.environ.get("HERMES_TEST_MODEL")
        if path:
            return path
        default = hermesModels.defaultModelPath()
        if default is not None:
            return str(default)
        checkpoint = os.environ.get("HERMES_TEST_CHECKPOINT")
        if checkpoint:
            import tempfile
            self._tempFolder = tempfile.mkdtemp(prefix="HermesSegmentationTest-")
            output = os.path.join(self._tempFolder, "imported.safetensors")
            widget = self.showModuleWidget("HermesSegmentation")
            self.requireDependencies(widget)
            widget.importCheckpoint(checkpoint, output)
            waitFor(lambda: widget._importProcess is None, 600, "the checkpoint import")
            self.assertTrue(os.path.isfile(output), "the model manager did not write the imported model")
            return output
        models = hermesModels.listModels()
        if models:
            return str(models[0].path)
        raise unittest.SkipTest("no Hermes model: set HERMES_TEST_MODEL or HERMES_TEST_CHECKPOINT")

    def loadTestVolume(self):
        path = os.environ.get("HERMES_TEST_IMAGE")
        if path:
            return slicer.util.loadVolume(path)
        import SampleData
        try:
            volume = SampleData.downloadSample("CTChest")
        except Exception as e:  # noqa: BLE001 - no network on this machine: cannot test, not a failure
            raise unittest.SkipTest(f"the CTChest sample could not be downloaded ({e}); set HERMES_TEST_IMAGE") from e
        if volume is None:
            raise unittest.SkipTest("the CTChest sample could not be downloaded; set HERMES_TEST_IMAGE")
        return volume

    def checkSegmentation(self, segmentationNode, volumeNode, taskNames, info) -> None:
        segmentation = segmentationNode.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(sorted(ids), sorted(taskNames))  # segment id = task name, name = display name
        voxels = {segmentId: int(slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId,
                                                                            volumeNode).sum()) for segmentId in ids}
        self.assertTrue(any(voxels.values()), f"every imported segment is empty: {voxels}")
        tasks = {t["name"]: t for t in info["tasks"]}
        for name in taskNames:
            segment = segmentation.GetSegment(name)
            self.assertEqual(segment.GetName(), tasks[name].get("display_name", name))
            expected = [c / 255.0 for c in tasks[name]["color"]]
            for got, want in zip(segment.GetColor(), expected):
                self.assertAlmostEqual(got, want, places=4)
            entry = terminologyEntryString(tasks[name].get("terminology"))
            if entry:
                self.assertEqual(segmentTag(segment, "TerminologyEntry"), entry)
        self.assertEqual(segmentationNode.GetNodeReferenceID(segmentationNode.GetReferenceImageGeometryReferenceRole()),
                         volumeNode.GetID())
        labelmap = slicer.vtkOrientedImageData()
        segmentationNode.GetBinaryLabelmapRepresentation(segmentation.GetNthSegmentID(0), labelmap)
        volumeMatrix, labelmapMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(volumeMatrix)
        labelmap.GetImageToWorldMatrix(labelmapMatrix)
        for r in range(4):
            for c in range(4):
                self.assertAlmostEqual(volumeMatrix.GetElement(r, c), labelmapMatrix.GetElement(r, c), places=3)

    # ------------------------------------------------------------------ tests
    def test_WidgetSegmentsRealImage(self):
        self.delayDisplay("Segmenting a real image through the widget")
        volume = self.loadTestVolume()
        widget = self.showModuleWidget("HermesSegmentation")
        self.requireDependencies(widget)
        modelPath = self.modelPathForTests()
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        widget.selectModel(modelPath)
        waitFor(lambda: widget._modelInfo is not None, 300, "the model description")
        self.assertTrue(widget.currentModality(), "no modality was pre-filled")

        widget.ui.taskFilterLineEdit.text = "liver"
        shown = widget.shownTaskItems()
        if not shown:
            widget.ui.taskFilterLineEdit.text = ""
            shown = widget.shownTaskItems()
        self.assertTrue(shown, "the model lists no structure for this modality")
        if widget.ui.taskFilterLineEdit.text:
            for item in shown:
                self.assertIn("liver", item.data(0, qt.Qt.UserRole).lower())
        chosen = [item.data(0, qt.Qt.UserRole) for item in shown[:2]]
        for item in shown[:2]:
            item.setCheckState(0, qt.Qt.Checked)
        self.assertEqual(sorted(widget.selectedTasks()), sorted(chosen))
        widget.ui.fastModeCheckBox.checked = True

        before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        self.assertTrue(widget.ui.segmentButton.enabled)
        widget.ui.segmentButton.click()
        self.assertEqual(widget.ui.segmentButton.text, _("Cancel"))
        waitFor(lambda: not widget.isBusy(), 3600, "the segmentation")
        self.assertEqual(widget.ui.segmentButton.text, _("Segment"))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), before + 1,
                         widget.ui.statusLabel.text)
        segmentationNode = slicer.mrmlScene.GetNthNodeByClass(before, "vtkMRMLSegmentationNode")
        self.checkSegmentation(segmentationNode, volume, chosen, widget._modelInfo)
        self.delayDisplay("Widget test passed")

    def test_WidgetCancel(self):
        self.delayDisplay("Cancelling a run through the widget")
        volume = self.loadTestVolume()
        widget = self.showModuleWidget("HermesSegmentation")
        self.requireDependencies(widget)
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        widget.selectModel(self.modelPathForTests())
        waitFor(lambda: widget._modelInfo is not None, 300, "the model description")
        widget.ui.taskFilterLineEdit.text = ""
        widget.setShownTasksChecked(False)
        widget.shownTaskItems()[0].setCheckState(0, qt.Qt.Checked)
        nodesBefore = self.sceneNodes()
        widget.ui.segmentButton.click()
        job = widget._job
        self.assertIsNotNone(job)
        waitFor(lambda: job.fraction > 0 or not job.isRunning, 600, "the engine's first progress report")
        pid = job.pid
        widget.ui.segmentButton.click()  # Cancel
        self.assertEqual(job.state, JobState.CANCELLED)
        self.assertEqual(widget.ui.segmentButton.text, _("Segment"))
        from HermesLib.process import pidAlive
        self.assertFalse(pidAlive(pid), "the engine process survived the cancel")
        self.assertEqual(self.sceneNodes(), nodesBefore)
        self.delayDisplay("Cancel test passed")

    def test_LogicBlocking(self):
        self.delayDisplay("Logic from a script (blocking)")
        volume = self.loadTestVolume()
        self.requireDependencies(self.showModuleWidget("HermesSegmentation"))
        logic = HermesSegmentationLogic()
        modelPath = self.modelPathForTests()
        info = logic.modelInfo(modelPath)
        modality = suggestModality(volume, info["modalities"]).modality
        task = next(t["name"] for t in info["tasks"] if modality in t["modalities"])
        job = logic.segment(volume, modality, [task], modelPath=modelPath, fast=True, waitForCompletion=True)
        self.assertEqual(job.state, JobState.SUCCEEDED)
        self.checkSegmentation(job.segmentationNode, volume, [task], info)
        with self.assertRaises(HermesSegmentationError):
            logic.segment(volume, modality, ["no_such_structure"], modelPath=modelPath, fast=True,
                          waitForCompletion=True)
        self.delayDisplay("Logic test passed")
