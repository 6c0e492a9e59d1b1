"""HermesSegmentationLogic end to end, headless: real MRML (slicer-core), real images from ../shared/data, a real
background ``hermesseg`` process with the official-layout base8 model imported through the model manager.

Runs as CI on every commit: ``--fast`` and two or three tasks keep each engine run to a few seconds of CPU.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import slicer
import vtk
from paths import CONFORMANCE, DATA, require

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "HermesSegmentation"))
sys.path.insert(0, str(REPO))  # HermesLib

from HermesLib import engine, models  # noqa: E402
from HermesSegmentationLib.logic import (  # noqa: E402
    HermesSegmentationError,
    HermesSegmentationLogic,
    JobState,
    SegmentationCancelledError,
)
from HermesSegmentationLib.modality import suggestModality  # noqa: E402
from HermesLib.process import pidAlive  # noqa: E402
from HermesSegmentationLib.segmentation_import import segmentTag, terminologyEntryString  # noqa: E402

vtk.vtkObject.GlobalWarningDisplayOff()  # harmless headless noise (colour files, terminology share dir)

CT_IMAGE = DATA / "ct_abdomen_ts" / "imagesTr" / "example_ct_sm_0000.nii.gz"
MR_IMAGE = DATA / "mr_abdomen_ts" / "imagesTr" / "example_mr_sm_0000.nii.gz"
# Two tasks of one dataset (one forward pass per window) that overlap by construction (tumour inside liver):
# they must survive as separate segments.
CT_TASKS = ["lits_liver", "lits_liver_tumour"]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The base8 checkpoint imported with the model manager's code path (a real `hermesseg import-official`)."""
    checkpoint = require(CONFORMANCE / "hermes_r_base8_checkpoint.pth")
    output = tmp_path_factory.mktemp("models") / "base8.safetensors"
    logged = []
    HermesSegmentationLogic(slicer.vtkMRMLScene()).importOfficialCheckpoint(
        checkpoint, output, onLog=logged.append, waitForCompletion=True)
    assert output.is_file(), logged
    return output


@pytest.fixture(scope="module")
def info(model) -> dict:
    return HermesSegmentationLogic(slicer.vtkMRMLScene()).modelInfo(model)


def new_scene():
    """A scene with the subject hierarchy logic, as in the application."""
    scene = slicer.vtkMRMLScene()
    shLogic = slicer.vtkSlicerSubjectHierarchyModuleLogic()
    shLogic.SetMRMLScene(scene)
    scene._hermesKeepAlive = shLogic  # keep the logic alive with the scene
    return scene


def load_volume(scene, path: Path, name: str = "volume", study: bool = True):
    """Volume node read with a storage node (like Slicer's Add Data), placed under Patient/Study in the hierarchy."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(require(path)))
    assert storage.ReadData(volume) == 1
    volume.CreateDefaultDisplayNodes()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.GetItemByDataNode(volume) or sh.CreateItem(sh.GetSceneItemID(), volume)
    if study:
        patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient")
        sh.SetItemParent(item, sh.CreateStudyItem(patient, "Study"))
    return volume


def scene_snapshot(scene) -> list[tuple[str, str]]:
    return [(scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetClassName()) for i in range(scene.GetNumberOfNodes())]


def ijk_to_ras(node_or_image) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    if hasattr(node_or_image, "GetIJKToRASMatrix"):
        node_or_image.GetIJKToRASMatrix(m)
    else:
        node_or_image.GetImageToWorldMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def segment_voxels(segmentation_node, segment_id: str, volume) -> int:
    """Voxels of one segment on the volume's grid, exported through the Segmentations logic as Slicer does."""
    scene = segmentation_node.GetScene()
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "voxel count")
    try:
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap, volume)
        return int(np.count_nonzero(slicer.util.arrayFromVolume(labelmap)))
    finally:
        scene.RemoveNode(labelmap)


# ---------------------------------------------------------------------------------------------- end to end
def test_segment_imports_named_coloured_segments_on_the_volume_geometry(model, info):
    scene = new_scene()
    volume = load_volume(scene, CT_IMAGE, "CT abdomen")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.GetItemParent(sh.GetItemByDataNode(volume))
    before = scene_snapshot(scene)
    logic = HermesSegmentationLogic(scene)
    logic.modelInfo(model)  # cached: the import re-applies colours/terminology from the task table
    progress, finished, log = [], [], []

    # base8 (a conformance checkpoint) is unconfident on this CT: draw its masks anyway, to check their import.
    job = logic.segment(volume, "CT", CT_TASKS, modelPath=model, device="cpu", fast=True, waitForCompletion=True,
                        onProgress=lambda f, m, s: progress.append((f, s)), onFinished=finished.append,
                        onLog=log.append, extraArgs=["--keep-unconfident"])

    assert job.state == JobState.SUCCEEDED, job.errorMessage
    assert finished == [job] and not logic.isRunning
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"inference", "import", "done"} <= {s for _, s in progress}
    assert any("Running:" in line and "--progress json" in line for line in log)

    seg = job.segmentationNode
    assert seg.IsA("vtkMRMLSegmentationNode") and seg.GetScene() is scene
    assert seg.GetName() == "CT abdomen Hermes segmentation"
    # only the new segmentation node and its display node were added
    added = [c for c in (cls for _, cls in scene_snapshot(scene)[len(before):])]
    assert sorted(added) == ["vtkMRMLSegmentationDisplayNode", "vtkMRMLSegmentationNode"]
    assert scene_snapshot(scene)[:len(before)] == before

    segmentation = seg.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    assert sorted(ids) == sorted(CT_TASKS)  # segment id = task name; the name is the catalogue's display name
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert sorted(names) == ["Liver", "Liver tumour"]
    tasks = {t["name"]: t for t in info["tasks"]}
    for name in CT_TASKS:
        segment = segmentation.GetSegment(name)
        assert segment.GetName() == tasks[name]["display_name"] and segmentTag(segment, "HermesTask") == name
        np.testing.assert_allclose(segment.GetColor(), np.array(tasks[name]["color"]) / 255.0, atol=1e-6)
        entry = segmentTag(segment, "TerminologyEntry")
        assert entry == terminologyEntryString(tasks[name]["terminology"])
        assert "SCT^10200004^Liver" in entry  # liver as type (organ) or as region (tumour)
    assert segmentTag(segmentation.GetSegment("lits_liver_tumour"),
                      "TerminologyEntry").split("~")[2] == "SCT^108369006^Neoplasm"

    # reference geometry: node reference (needed by DICOM SEG export) and the geometry parameter
    assert seg.GetNodeReferenceID("referenceImageGeometryRef") == volume.GetID()
    reference = slicer.vtkOrientedImageData()
    geometry = segmentation.GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    assert slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, reference)
    np.testing.assert_allclose(ijk_to_ras(reference), ijk_to_ras(volume), atol=1e-4)
    assert reference.GetExtent() == volume.GetImageData().GetExtent()
    # every segment's labelmap lies on the volume's voxel grid (spacing, origin, directions), inside its extent
    for segment_id in (segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())):
        labelmap = slicer.vtkOrientedImageData()
        seg.GetBinaryLabelmapRepresentation(segment_id, labelmap)
        np.testing.assert_allclose(ijk_to_ras(labelmap), ijk_to_ras(volume), atol=1e-4)
        e, v = labelmap.GetExtent(), volume.GetImageData().GetExtent()
        if e[0] <= e[1]:  # a non-empty segment
            assert all(e[2 * k] >= v[2 * k] and e[2 * k + 1] <= v[2 * k + 1] for k in range(3))
    # subject hierarchy: next to the volume, under its study
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study
    # the segments hold voxels (an import that silently drops the masks would pass every check above)
    voxels = {name: segment_voxels(seg, name, volume) for name in CT_TASKS}
    print(f"imported voxels: {voxels} of {volume.GetImageData().GetNumberOfPoints()}")
    assert voxels["lits_liver"] > 0, voxels

    # nothing left behind
    assert not job.tempFolder.exists()
    assert not pidAlive(job.pid)


def test_cancel_mid_run_leaves_the_scene_unchanged(model):
    scene = new_scene()
    volume = load_volume(scene, CT_IMAGE)
    before = scene_snapshot(scene)
    logic = HermesSegmentationLogic(scene)
    finished, stages = [], []

    # Non-blocking, as the widget runs it; without a Qt event loop the test polls.
    job = logic.segment(volume, "CT", CT_TASKS, modelPath=model, device="cpu", fast=True,
                        onProgress=lambda f, m, s: stages.append(s), onFinished=finished.append)
    assert job.isRunning and logic.isRunning and pidAlive(job.pid)
    deadline = time.monotonic() + 120
    while "preprocess" not in stages:  # the engine has loaded the model and is working on the image
        assert job.poll(), f"finished before it could be cancelled: {job.state} {job.errorMessage}"
        assert time.monotonic() < deadline, "no progress from the engine"
        time.sleep(0.02)
    pid = job.pid

    logic.cancel()

    assert job.state == JobState.CANCELLED and finished == [job]
    assert job.segmentationNode is None and not logic.isRunning
    assert not pidAlive(pid), "the engine process survived the cancel"
    assert scene_snapshot(scene) == before
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert not job.tempFolder.exists()
    assert job.poll() is False  # nothing more happens, no late import
    assert scene_snapshot(scene) == before


def test_cancel_in_blocking_mode_raises_and_imports_nothing(model):
    scene = new_scene()
    volume = load_volume(scene, MR_IMAGE)
    before = scene_snapshot(scene)
    logic = HermesSegmentationLogic(scene)

    def cancel_on_first_progress(fraction, message, stage):
        if stage == "load":
            logic.cancel()

    with pytest.raises(SegmentationCancelledError):
        logic.segment(volume, "MR", ["amos_liver"], modelPath=model, device="cpu", fast=True,
                      waitForCompletion=True, onProgress=cancel_on_first_progress)
    assert scene_snapshot(scene) == before


def test_failing_process_reports_its_error_and_imports_nothing(model):
    scene = new_scene()
    volume = load_volume(scene, CT_IMAGE)
    before = scene_snapshot(scene)
    logic = HermesSegmentationLogic(scene)
    finished = []

    with pytest.raises(HermesSegmentationError, match="no_such_structure"):
        logic.segment(volume, "CT", ["no_such_structure"], modelPath=model, device="cpu", fast=True,
                      waitForCompletion=True, onFinished=finished.append)
    job = finished[0]
    assert job.state == JobState.FAILED and "unknown task" in job.errorMessage
    assert job.segmentationNode is None and not job.tempFolder.exists()
    assert scene_snapshot(scene) == before
    assert not logic.isRunning


def test_a_structure_not_found_is_reported_with_its_reason_in_the_log():
    """The default model on an abdominal CT, asked for the left subclavian artery (above this image): its mask is
    unconfident, so nothing is imported and the job says why (the same line is in the log, from the engine's
    progress)."""
    scene = new_scene()
    volume = load_volume(scene, CT_IMAGE)
    before = scene_snapshot(scene)
    finished, log = [], []
    with pytest.raises(HermesSegmentationError, match=r"^not found in this image: "
                                                      r"ct_body_tsdataset_subclavian_artery_left "
                                                      r"\(not confident: mean probability 0\.\d\d"):
        HermesSegmentationLogic(scene).segment(volume, "CT", ["ct_body_tsdataset_subclavian_artery_left"],
                                               modelPath=models.defaultModelPath(), device="cpu",
                                               waitForCompletion=True, onFinished=finished.append, onLog=log.append)
    assert finished[0].state == JobState.FAILED and finished[0].segmentationNode is None
    assert any(line.startswith("[write] not found in this image: ct_body_tsdataset_subclavian_artery_left "
                               "(not confident") for line in log), log
    assert scene_snapshot(scene) == before


def test_corrupt_model_error_arrives_through_the_callback(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage, not a model" * 100)
    scene = new_scene()
    volume = load_volume(scene, CT_IMAGE)
    before = scene_snapshot(scene)
    logic = HermesSegmentationLogic(scene)
    finished = []

    job = logic.segment(volume, "CT", CT_TASKS, modelPath=corrupt, onFinished=finished.append)  # non-blocking
    deadline = time.monotonic() + 120
    while job.poll():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert finished == [job] and job.state == JobState.FAILED
    assert "corrupt.safetensors" in job.errorMessage and "not a readable Hermes model" in job.errorMessage
    assert scene_snapshot(scene) == before


def test_a_second_run_is_refused_while_one_is_running(model):
    scene = new_scene()
    volume = load_volume(scene, CT_IMAGE)
    logic = HermesSegmentationLogic(scene)
    job = logic.segment(volume, "CT", CT_TASKS, modelPath=model, fast=True)
    try:
        with pytest.raises(HermesSegmentationError, match="already running"):
            logic.segment(volume, "CT", CT_TASKS, modelPath=model, fast=True)
    finally:
        job.cancel()
    assert job.state == JobState.CANCELLED


# ---------------------------------------------------------------------------------------------- model catalogue
def test_model_catalogue(model, info, tmp_path, monkeypatch):
    assert len(info["tasks"]) == 71 and {m["name"] for m in info["modalities"]} >= {"CT", "MR", "PET"}
    groups = models.tasksByGroup(info, "MR")
    assert groups and all("MR" in t["modalities"] for tasks in groups.values() for t in tasks)
    assert "amos" in groups and "lits" not in groups
    assert "hermes-r-official-base8" in models.modelCardHtml(info, model)

    monkeypatch.setenv("HERMESSEG_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("HERMESSEG_MODEL", str(model))
    (tmp_path / "mine.safetensors").write_bytes(b"x")
    entries = models.listModels()
    assert entries[0].path == model and entries[0].embedded
    assert [e.path.name for e in entries[1:]] == ["mine.safetensors"]
    assert models.importedModelPath("/a/b/official.pth") == tmp_path / "official.safetensors"

    with pytest.raises(models.ModelInfoError, match="not a readable Hermes model"):
        models.ModelCatalog().info(tmp_path / "mine.safetensors")


def test_engine_is_found_without_importing_it():
    folder = engine.enginePackageFolder()
    assert folder == REPO  # source checkout: <repo>/hermesseg next to <repo>/HermesSegmentation
    env = engine.engineEnvironment()
    assert env["PYTHONPATH"].split(":")[0] == str(REPO)
    assert env["HERMESSEG_PARENT_PID"] == str(os.getpid())  # the engine stops if this process dies
    command = engine.engineCommand("info", "m.safetensors")
    assert command[1:4] == ["-m", "hermesseg.cli", "info"] and command[0] == sys.executable


# ---------------------------------------------------------------------------------------------- modality
def test_modality_suggestion_from_intensities_and_dicom(info):
    scene = new_scene()
    ct = load_volume(scene, CT_IMAGE, "ct", study=False)
    mr = load_volume(scene, MR_IMAGE, "mr", study=False)
    assert suggestModality(ct, info["modalities"]).modality == "CT"
    assert suggestModality(mr, info["modalities"]).modality == "MR"
    mr.SetAttribute("DICOM.Modality", "PT")
    assert suggestModality(mr, info["modalities"]).modality == "PET"
    mr.SetAttribute("DICOM.Modality", "MR")
    mr.SetAttribute("DICOM.SeriesDescription", "ax T2 haste")
    suggestion = suggestModality(mr, info["modalities"])
    assert suggestion.modality == "MR-T2" and "DICOM" in suggestion.reason


# ---------------------------------------------------------------------------------------------- right answer
MR_LIVER_TASK = "mr_abdomen_ts_liver"
MR_LIVER_LABEL = 5  # dataset.json of mr_abdomen_ts (TotalSegmentator v2 id)


def test_default_model_liver_in_the_scene_matches_the_reference():
    """The embedded default model through the Logic on a real abdominal MR: the imported segment must overlap the
    reference liver, read into the same scene, with Dice >= 0.5. This image is the one the task was trained on
    (model card: Dice 0.598 there): the test checks that the whole path (export, engine, import, geometry) keeps
    the answer right, not how well the model generalises; a flip or a shift anywhere drops Dice far below."""
    model = models.defaultModelPath()
    assert model is not None and model.name == "hermes-mini.safetensors"
    scene = new_scene()
    volume = load_volume(scene, MR_IMAGE, "mr")
    reference = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "reference")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(require(DATA / "mr_abdomen_ts" / "labelsTr" / "example_mr_sm.nii.gz")))
    assert storage.ReadData(reference) == 1
    truth = slicer.util.arrayFromVolume(reference) == MR_LIVER_LABEL

    job = HermesSegmentationLogic(scene).segment(volume, "MR", [MR_LIVER_TASK], modelPath=model, device="cpu",
                                                 waitForCompletion=True)
    seg = job.segmentationNode
    segment_id = MR_LIVER_TASK  # segment id = task name
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "exported")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg, ids, exported, volume)
    predicted = slicer.util.arrayFromVolume(exported) > 0
    assert predicted.shape == truth.shape and truth.sum() > 0
    dice = 2 * np.logical_and(predicted, truth).sum() / (predicted.sum() + truth.sum())
    print(f"liver Dice {dice:.3f} ({predicted.sum()} voxels predicted, {truth.sum()} in the reference)")
    assert dice >= 0.5
