"""HermesTrainingLogic end to end, headless (slicer-core, real MRML): a real T1 brain MR whose tissue label map is
imported as a segmentation node is taught to the shipped default model with a real ``hermesseg add-task`` in a
background process; the new model is registered in the user's models folder and segments its training volume
through Hermes Segmentation's logic; cancel and bad input leave nothing behind.

What the Dice threshold tests. The structure taught is the brain tissue (grey + white matter) of the MNI152 T1
template. add-task starts the new prior rows from the base task whose prediction overlaps the label best (here the
default model's brain mask), so the threshold checks that the whole chain keeps a structure the rows can represent:
export on the volume's own grid, the engine's training and zero-forgetting check, registration, segmentation and
import back onto the volume (a flipped axis or a shifted grid anywhere would drop the Dice to near 0). How well a
structure the base has never seen is learned from k cases is the add-task benchmark's question
(benchmarks/bench_add_task.py), not this test's."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from safetensors import safe_open
from paths import DATA, require, SHIPPED_MODEL

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "HermesSegmentation"))
sys.path.insert(0, str(REPO / "HermesTraining"))

from HermesTrainingLib.cases import TrainingInputError  # noqa: E402  (first: puts the checkout's HermesLib on the path)
from HermesLib.engine_job import JobState  # noqa: E402
from HermesLib.process import pidAlive  # noqa: E402
from HermesTrainingLib.chart import TrainingChart  # noqa: E402
from HermesTrainingLib.logic import (  # noqa: E402
    HermesTrainingError,
    HermesTrainingLogic,
    TrainingCancelledError,
)
from HermesTrainingLib.packs import PackError  # noqa: E402
from test_slicer_training_export import load_segmentation, load_volume  # noqa: E402

vtk.vtkObject.GlobalWarningDisplayOff()

MNI = DATA / "mr_brain_tissue_mni"
CASE = "mni152_2009a_sym"
DEFAULT_MODEL = SHIPPED_MODEL
STEPS = 20
MIN_DICE = 0.7  # see the module docstring


def tissue_label(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Grey and white matter as one label (1), on the image's grid."""
    source = sitk.ReadImage(str(require(MNI / "labelsTr" / f"{CASE}.nii.gz")))
    tissue = sitk.Cast(source > 0, sitk.sitkUInt8)
    path = tmp_path / "tissue.nrrd"
    sitk.WriteImage(tissue, str(path))
    return path, sitk.GetArrayFromImage(tissue) > 0


def brain_pairs(scene, logic, tmp_path):
    volume = load_volume(scene, MNI / "imagesTr" / f"{CASE}_0000.nii.gz", "MNI152 T1")
    label, _ = tissue_label(tmp_path)
    segmentation = load_segmentation(scene, label, volume, {1: "Brain tissue"})
    return [logic.checkPair(volume, segmentation)]


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
    pairs = brain_pairs(scene, logic, tmp_path)
    chart = TrainingChart(scene)
    progress, metrics = [], []

    job = logic.train(pairs, ["Brain tissue"], DEFAULT_MODEL, "MR-T1", steps=STEPS, seed=0, device="cpu",
                      waitForCompletion=True, chart=chart, onMetrics=metrics.append,
                      onProgress=lambda f, m, s: progress.append(f))

    assert job.state == JobState.SUCCEEDED, job.errorMessage
    assert job.modelPath.parent == models_folder and job.modelPath.is_file()
    assert exported_left(tmp_path) == []  # the exported dataset was removed
    assert not pidAlive(job.pid)
    assert metrics and chart.rows() and all(np.isfinite(r[1]) for r in chart.rows() if not np.isnan(r[1]))
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    new = logic.newTaskNames(job)
    assert new == ["my_brain_tissue_brain_tissue"]
    info = logic.modelInfo(job.modelPath)
    task = next(t for t in info["tasks"] if t["name"] == new[0])
    assert task["display_name"] == "Brain tissue" and task["modalities"] == ["MR-T1"]
    assert [round(c) for c in task["color"]] == [round(255 * c) for c in
                                                 pairs[0].segmentationNode.GetSegmentation().GetNthSegment(0).GetColor()]

    # Hermes Segmentation lists the new model and segments the structure on a training volume
    from HermesLib import models
    assert job.modelPath in [e.path for e in models.listModels()]
    seg_job = logic.segmentWithModel(pairs[0].volumeNode, job.modelPath, new, "MR-T1", waitForCompletion=True)
    node = seg_job.segmentationNode
    segment_id = node.GetSegmentation().GetNthSegmentID(0)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, labelmap,
                                                                                 pairs[0].volumeNode)
    assert node.GetSegmentation().GetNthSegment(0).GetName() == "Brain tissue"
    predicted = slicer.util.arrayFromVolume(labelmap) > 0
    _, truth = tissue_label(tmp_path)
    dice = 2 * np.logical_and(predicted, truth).sum() / (predicted.sum() + truth.sum())
    print(f"Dice of the taught brain tissue on its training volume after {STEPS} steps: {dice:.3f}")
    assert dice > MIN_DICE, dice

    # teaching the same structure again into the new model collides with the task it now has
    with pytest.raises(HermesTrainingError, match="already"):
        logic.train(pairs, ["Brain tissue"], job.modelPath, "MR-T1", steps=5, device="cpu", waitForCompletion=True)
    assert sorted(p.name for p in models_folder.iterdir()) == [job.modelPath.name]

    # the model list's task-pack actions: the taught structure exported (no image in it), then imported into the base
    pack = tmp_path / "brain-tissue.safetensors"
    ended = []
    logic.exportTaskPack(job.modelPath, new, pack, onFinished=lambda path, error: ended.append((path, error)),
                         waitForCompletion=True)
    with safe_open(str(job.modelPath), "pt") as f:  # add-task's default mode taught an adapter with the rows
        adapter = [f.get_tensor(k) for k in f.keys() if k.startswith("adapters.")]
    adapter_bytes = sum(t.numel() * t.element_size() for t in adapter)
    # the pack is the new rows and the group's adapter, nothing of the base model
    assert ended == [(pack, None)] and 0 < adapter_bytes < pack.stat().st_size < adapter_bytes + 60_000
    logic.importTaskPack(DEFAULT_MODEL, pack, onFinished=lambda path, error: ended.append((path, error)),
                         waitForCompletion=True)
    imported = models_folder / "hermes-mini+brain-tissue.safetensors"
    assert ended[-1] == (imported, None)
    imported_task = next(t for t in logic.modelInfo(imported)["tasks"] if t["name"] == new[0])
    assert imported_task == task  # name, display name, colour, modality and terminology travel with the pack
    with pytest.raises(PackError, match="is a model file, not a task pack"):
        logic.importTaskPack(DEFAULT_MODEL, DEFAULT_MODEL, output=tmp_path / "never.safetensors",
                             waitForCompletion=True)
    assert not (tmp_path / "never.safetensors").exists()


def test_cancel_mid_run_writes_no_model_and_removes_the_dataset(models_folder, tmp_path):
    require(DEFAULT_MODEL)
    scene = slicer.vtkMRMLScene()
    logic = HermesTrainingLogic(scene)
    pairs = brain_pairs(scene, logic, tmp_path)
    finished, metrics = [], []
    job = logic.train(pairs, ["Brain tissue"], DEFAULT_MODEL, "MR-T1", steps=100000, device="cpu",
                      onMetrics=metrics.append, onFinished=finished.append)
    deadline = time.monotonic() + 300
    while not metrics:  # training has started: the model is loaded and steps are being taken
        assert job.poll(), f"finished before it could be cancelled: {job.state} {job.errorMessage}"
        assert time.monotonic() < deadline, "no training progress from the engine"
        time.sleep(0.05)
    pid = job.pid
    logic.cancel()
    assert job.state == JobState.CANCELLED and finished == [job]
    assert not pidAlive(pid)
    assert not models_folder.exists() or list(models_folder.iterdir()) == []
    assert exported_left(tmp_path) == []
    assert not logic.isRunning


def test_bad_requests_are_refused_before_anything_runs(models_folder, tmp_path):
    scene = slicer.vtkMRMLScene()
    logic = HermesTrainingLogic(scene)
    with pytest.raises(TrainingInputError, match="at least one training pair"):
        logic.train([], ["Brain tissue"], DEFAULT_MODEL, "MR-T1")
    pairs = brain_pairs(scene, logic, tmp_path)
    with pytest.raises(TrainingInputError, match="modality"):
        logic.train(pairs, ["Brain tissue"], DEFAULT_MODEL, "")
    with pytest.raises(TrainingInputError, match="replace its base model"):
        logic.train(pairs, ["Brain tissue"], DEFAULT_MODEL, "MR-T1", outputPath=DEFAULT_MODEL)
    with pytest.raises(TrainingInputError, match="unknown training mode 'refine'; choose one of add, finetune, train"):
        logic.train(pairs, ["Brain tissue"], DEFAULT_MODEL, "MR-T1", mode="refine")
    with pytest.raises(TrainingInputError, match="unknown add-task mode 'lora'; choose one of priors, adapter"):
        logic.train(pairs, ["Brain tissue"], DEFAULT_MODEL, "MR-T1", addMode="lora")
    with pytest.raises(TrainingInputError, match="choose the base model"):
        logic.train(pairs, ["Brain tissue"], None, "MR-T1", mode="finetune")
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a model")
    with pytest.raises(HermesTrainingError, match="bogus.safetensors") as failed:
        logic.train(pairs, ["Brain tissue"], bogus, "MR-T1", steps=5, waitForCompletion=True)
    assert not isinstance(failed.value, TrainingCancelledError)
    assert not models_folder.exists() or list(models_folder.iterdir()) == []
    assert exported_left(tmp_path) == []

    # asked to keep it, the exported dataset stays (a failed run too), in the private temporary folder, not beside
    # the user's data; its folder is on the logged command line
    log = []
    with pytest.raises(HermesTrainingError, match="bogus.safetensors"):
        logic.train(pairs, ["Brain tissue"], bogus, "MR-T1", steps=5, keepDataset=True, waitForCompletion=True,
                    onLog=log.append)
    (kept,) = exported_left(tmp_path)
    (dataset,) = [p.parent for p in kept.glob("*/dataset.json")]
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir()) == ["case000_0000.nrrd"]
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == ["case000.nrrd"]
    assert f"--data {dataset}" in log[0]
    assert not models_folder.exists() or list(models_folder.iterdir()) == []
