"""HermesTrainingLogic end to end, headless (slicer-core, real MRML): left-atrium MR volumes whose label maps are
imported as segmentation nodes are taught to the shipped default model with a real ``hermesseg add-task`` in a
background process; the new model is registered in the user's models folder and segments a training volume through
Hermes Segmentation's logic; cancel and bad input leave nothing behind."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from paths import DATA, require

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "HermesSegmentation"))
sys.path.insert(0, str(REPO / "HermesTraining"))

from HermesSegmentationLib.process import pidAlive  # noqa: E402
from HermesTrainingLib.cases import TrainingInputError  # noqa: E402
from HermesTrainingLib.chart import TrainingChart  # noqa: E402
from HermesTrainingLib.logic import (  # noqa: E402
    HermesTrainingError,
    HermesTrainingLogic,
    TrainingCancelledError,
    TrainingState,
)
from test_slicer_training_export import load_segmentation, load_volume  # noqa: E402

vtk.vtkObject.GlobalWarningDisplayOff()

LA = DATA / "mr_left_atrium"
CASES = ["06SR5RBREL16DQ6M8LWS", "0RZDK210BSMWAA6467LU"]
DEFAULT_MODEL = REPO / "Resources" / "Models" / "hermes-mini.safetensors"
STEPS = 40  # enough for the large, bright left atrium on its own training volumes (see the Dice threshold below)


def la_pairs(scene, logic):
    pairs = []
    for case in CASES:
        volume = load_volume(scene, LA / "imagesTr" / f"{case}_0000.nii.gz", case)
        segmentation = load_segmentation(scene, LA / "labelsTr" / f"{case}.nii.gz", volume, {1: "Left atrium"})
        pairs.append(logic.checkPair(volume, segmentation))
    return pairs


def exported_left(tmp_path) -> list[Path]:
    """Exported training datasets still in the temporary folder (torch may put its own caches there)."""
    return sorted((tmp_path / "tmp").glob("HermesTraining-*"))


@pytest.fixture
def models_folder(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("HERMESSEG_MODELS_DIR", str(folder))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the exported dataset goes here: check it is removed
    (tmp_path / "tmp").mkdir()
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return folder


def test_add_structure_registers_a_model_that_segments_it(models_folder, tmp_path):
    require(DEFAULT_MODEL)
    scene = slicer.vtkMRMLScene()
    logic = HermesTrainingLogic(scene)
    pairs = la_pairs(scene, logic)
    chart = TrainingChart(scene)
    progress, metrics = [], []

    job = logic.train(pairs, ["Left atrium"], DEFAULT_MODEL, "MR", steps=STEPS, seed=0, device="cpu",
                      waitForCompletion=True, chart=chart, onMetrics=metrics.append,
                      onProgress=lambda f, m, s: progress.append(f))

    assert job.state == TrainingState.SUCCEEDED, job.errorMessage
    assert job.modelPath.parent == models_folder and job.modelPath.is_file()
    assert exported_left(tmp_path) == []  # the exported dataset was removed
    assert not pidAlive(job.pid)
    assert metrics and chart.rows() and all(np.isfinite(r[1]) for r in chart.rows() if not np.isnan(r[1]))
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    new = logic.newTaskNames(job)
    assert len(new) == 1 and "left_atrium" in new[0]
    info = logic.modelInfo(job.modelPath)
    task = next(t for t in info["tasks"] if t["name"] == new[0])
    assert task.get("display_name", "Left atrium") == "Left atrium"
    assert [round(c) for c in task["color"]] == [round(255 * c) for c in
                                                 pairs[0].segmentationNode.GetSegmentation().GetNthSegment(0).GetColor()]

    # Hermes Segmentation lists the new model and segments the structure on a training volume
    from HermesSegmentationLib import models
    assert job.modelPath in [e.path for e in models.listModels()]
    seg_job = logic.segmentWithModel(pairs[0].volumeNode, job.modelPath, new, "MR", waitForCompletion=True)
    node = seg_job.segmentationNode
    segment_id = node.GetSegmentation().GetNthSegmentID(0)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, labelmap,
                                                                                 pairs[0].volumeNode)
    predicted = slicer.util.arrayFromVolume(labelmap) > 0
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(LA / "labelsTr" / f"{CASES[0]}.nii.gz"))) > 0
    dice = 2 * np.logical_and(predicted, truth).sum() / (predicted.sum() + truth.sum())
    assert predicted.sum() > 0
    # A training volume after STEPS steps: the structure is found where it is (not a clinical figure).
    print(f"Dice of the learned left atrium on its training volume after {STEPS} steps: {dice:.3f}")
    assert dice > 0.5, dice

    # teaching the same structure again into the new model collides with the task it now has
    with pytest.raises(HermesTrainingError, match="already"):
        logic.train(pairs, ["Left atrium"], job.modelPath, "MR", steps=5, device="cpu", waitForCompletion=True)
    assert sorted(p.name for p in models_folder.iterdir()) == [job.modelPath.name]


def test_cancel_mid_run_writes_no_model_and_removes_the_dataset(models_folder, tmp_path):
    require(DEFAULT_MODEL)
    scene = slicer.vtkMRMLScene()
    logic = HermesTrainingLogic(scene)
    pairs = la_pairs(scene, logic)
    finished, metrics = [], []
    job = logic.train(pairs, ["Left atrium"], DEFAULT_MODEL, "MR", steps=100000, device="cpu",
                      onMetrics=metrics.append, onFinished=finished.append)
    deadline = time.monotonic() + 300
    while not metrics:  # training has started: the model is loaded and steps are being taken
        assert job.poll(), f"finished before it could be cancelled: {job.state} {job.errorMessage}"
        assert time.monotonic() < deadline, "no training progress from the engine"
        time.sleep(0.05)
    pid = job.pid
    logic.cancel()
    assert job.state == TrainingState.CANCELLED and finished == [job]
    assert not pidAlive(pid)
    assert not models_folder.exists() or list(models_folder.iterdir()) == []
    assert exported_left(tmp_path) == []
    assert not logic.isRunning


def test_bad_requests_are_refused_before_anything_runs(models_folder, tmp_path):
    scene = slicer.vtkMRMLScene()
    logic = HermesTrainingLogic(scene)
    with pytest.raises(TrainingInputError, match="at least one training pair"):
        logic.train([], ["Left atrium"], DEFAULT_MODEL, "MR")
    pairs = la_pairs(scene, logic)
    with pytest.raises(TrainingInputError, match="modality"):
        logic.train(pairs, ["Left atrium"], DEFAULT_MODEL, "")
    with pytest.raises(TrainingInputError, match="replace its base model"):
        logic.train(pairs, ["Left atrium"], DEFAULT_MODEL, "MR", outputPath=DEFAULT_MODEL)
    with pytest.raises(TrainingCancelledError.__mro__[1]):  # a failed engine run: not a model file
        bogus = tmp_path / "bogus.safetensors"
        bogus.write_bytes(b"not a model")
        logic.train(pairs, ["Left atrium"], bogus, "MR", steps=5, waitForCompletion=True)
    assert not models_folder.exists() or list(models_folder.iterdir()) == []
    assert exported_left(tmp_path) == []
