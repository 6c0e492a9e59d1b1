"""HermesTraining: teach a Hermes model new structures from your own annotated scans (placeholder).

Training is not available yet; it comes in a later release of HermesExtension. This module only says so, so that
nobody mistakes it for a working feature.

When it is implemented it will reuse HermesSegmentation's GUI-free helpers rather than copy them:
``HermesSegmentationLib.process.BackgroundProcess`` to run ``hermesseg train`` in a ``PythonSlicer`` child process
(progress polling, process-tree cancel), ``HermesSegmentationLib.engine`` to locate the engine, and
``HermesSegmentationLib.models`` for the models folder. Both modules install into the same ``qt-scripted-modules``
folder, so ``import HermesSegmentationLib`` works from here; the dependency declared below makes Slicer load
HermesSegmentation first.
"""

import qt

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

NOT_AVAILABLE_TEXT = (
    "Training is not available yet. It will come in a later release of HermesExtension: it will teach a Hermes "
    "model new structures from a few of your annotated scans. Until then, use the Hermes Segmentation module to "
    "segment the structures the models already know."
)


class HermesTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Hermes Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["HermesSegmentation"]
        self.parent.contributors = ["HermesExtension contributors (hermes-extension)"]
        self.parent.helpText = _(NOT_AVAILABLE_TEXT)
        self.parent.acknowledgementText = _(
            "Hermes: Gao et al., Training Like a Medical Resident: Context-Prior Learning Toward Universal Medical "
            "Image Segmentation, CVPR 2024.")


class HermesTrainingWidget(ScriptedLoadableModuleWidget):
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.notAvailableLabel = qt.QLabel(_(NOT_AVAILABLE_TEXT))
        self.notAvailableLabel.objectName = "notAvailableLabel"
        self.notAvailableLabel.wordWrap = True
        self.layout.addWidget(self.notAvailableLabel)
        self.layout.addStretch(1)


class HermesTrainingTest(ScriptedLoadableModuleTest):
    """The placeholder must say plainly that training is not available (and offer nothing that pretends to train)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PlaceholderSaysNotAvailable()

    def test_PlaceholderSaysNotAvailable(self):
        if slicer.util.mainWindow() is not None:
            slicer.util.selectModule("HermesTraining")
        widget = slicer.util.getModuleWidget("HermesTraining")
        self.assertIn("not available", widget.notAvailableLabel.text)
        buttons = slicer.util.findChildren(widget.parent, className="QPushButton")
        self.assertFalse([b for b in buttons if "train" in b.text.lower()], "a training button exists")
