"""HermesTraining logic, headless (slicer-core, real MRML): checking training pairs as they are added and exporting
them as an nnU-Net v2 dataset, on real cine-MR volumes whose label maps are imported as segmentation nodes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from paths import ACDC, require

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "HermesTraining"))

from HermesTrainingLib.cases import TrainingInputError, checkPair, segmentOccurrences  # noqa: E402
from HermesTrainingLib.dataset_export import (  # noqa: E402
    exportDataset,
    labelName,
    parseTerminologyEntry,
    removeExport,
)

vtk.vtkObject.GlobalWarningDisplayOff()

LABELS = {1: "Right ventricle", 2: "Myocardium", 3: "Left ventricle"}
LV_TERMINOLOGY = ("Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure~"
                  "SCT^87878005^Left ventricle~^^~Anatomic codes - DICOM master list~^^~^^")


def load_volume(scene, path: Path, name: str):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(require(path)))
    assert storage.ReadData(volume) == 1
    return volume


def load_segmentation(scene, labelPath: Path, volume, names=LABELS):
    """A label map file imported as a segmentation node with named segments (as the Segment Editor would hold)."""
    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "colors")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(max(names) + 1)
    colors.SetColor(0, "background", 0, 0, 0, 0)
    for value, name in names.items():
        colors.SetColor(value, name, 0.2 * value, 0.5, 1.0 - 0.2 * value, 1.0)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(require(labelPath)))
    assert storage.ReadData(labelmap) == 1
    labelmap.CreateDefaultDisplayNodes()
    labelmap.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} segmentation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation, "")
    scene.RemoveNode(labelmap)
    scene.RemoveNode(colors)
    return segmentation


def acdc_pair(scene, case: str):
    volume = load_volume(scene, ACDC / "imagesTr" / f"{case}_0000.nii.gz", case)
    return volume, load_segmentation(scene, ACDC / "labelsTr" / f"{case}.nii.gz", volume)


def test_export_writes_each_pair_on_its_own_volume_grid(tmp_path):
    scene = slicer.vtkMRMLScene()
    cases = ["patient001_frame01", "patient002_frame01"]
    pairs = []
    for case in cases:
        volume, segmentation = acdc_pair(scene, case)
        pair = checkPair(volume, segmentation)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(ACDC / "labelsTr" / f"{case}.nii.gz")))
        assert pair.segmentVoxels == {LABELS[v]: int((truth == v).sum()) for v in LABELS}
        pairs.append(pair)
    lv = pairs[0].segmentationNode.GetSegmentation().GetSegment(
        pairs[0].segmentationNode.GetSegmentation().GetSegmentIdBySegmentName("Left ventricle"))
    lv.SetTag("TerminologyEntry", LV_TERMINOLOGY)
    assert segmentOccurrences(pairs) == {name: 2 for name in LABELS.values()}
    nodes_before = scene.GetNumberOfNodes()

    exported = exportDataset(pairs, ["Left ventricle", "Myocardium"], "MR-cine", "heart_local", parent=tmp_path)
    try:
        assert scene.GetNumberOfNodes() == nodes_before  # temporary label nodes are removed again
        assert exported.folder.parent.parent == tmp_path and exported.folder.name == "heart_local"
        meta = json.loads((exported.folder / "dataset.json").read_text())
        assert meta["labels"] == {"background": 0, "left_ventricle": 1, "myocardium": 2}
        assert meta["modality"] == "MR-cine" and meta["file_ending"] == ".nrrd" and meta["numTraining"] == 2
        assert meta["label_info"]["left_ventricle"]["display_name"] == "Left ventricle"
        assert meta["label_info"]["left_ventricle"]["terminology"]["type"] == ["SCT", "87878005", "Left ventricle"]
        assert meta["label_info"]["myocardium"]["color"] == [102, 128, 153]
        for index, case in enumerate(cases):
            source_image = sitk.ReadImage(str(ACDC / "imagesTr" / f"{case}_0000.nii.gz"))
            source_label = sitk.GetArrayFromImage(sitk.ReadImage(str(ACDC / "labelsTr" / f"{case}.nii.gz")))
            image = sitk.ReadImage(str(exported.folder / "imagesTr" / f"case{index:03d}_0000.nrrd"))
            label = sitk.ReadImage(str(exported.folder / "labelsTr" / f"case{index:03d}.nrrd"))
            for item in (image, label):  # same physical grid as the source image
                assert item.GetSize() == source_image.GetSize()
                np.testing.assert_allclose(item.GetSpacing(), source_image.GetSpacing(), atol=1e-5)
                np.testing.assert_allclose(item.GetOrigin(), source_image.GetOrigin(), atol=1e-4)
                np.testing.assert_allclose(item.GetDirection(), source_image.GetDirection(), atol=1e-6)
            np.testing.assert_allclose(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(source_image), atol=1e-6)
            expected = np.select([source_label == 3, source_label == 2], [1, 2], 0)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(label), expected)
            assert exported.voxels[f"case{index:03d}"] == {"left_ventricle": int((source_label == 3).sum()),
                                                          "myocardium": int((source_label == 2).sum())}
    finally:
        removeExport(exported)
    assert not exported.folder.exists() and list(tmp_path.iterdir()) == []


def test_a_segment_present_in_some_pairs_only_is_absent_from_the_others_labels(tmp_path):
    scene = slicer.vtkMRMLScene()
    first = checkPair(*acdc_pair(scene, "patient007_frame01"))
    volume = load_volume(scene, ACDC / "imagesTr" / "patient008_frame01_0000.nii.gz", "p8")
    second = checkPair(volume, load_segmentation(scene, ACDC / "labelsTr" / "patient008_frame01.nii.gz", volume,
                                                 {1: "Right ventricle", 2: "Myocardium", 3: "LV blood pool"}))
    exported = exportDataset([first, second], ["Left ventricle", "Right ventricle"], "MR-cine", "partial",
                             parent=tmp_path)
    try:
        assert exported.voxels["case000"]["left_ventricle"] > 0
        assert exported.voxels["case001"]["left_ventricle"] == 0 and exported.voxels["case001"]["right_ventricle"] > 0
    finally:
        removeExport(exported)


def test_bad_pairs_are_refused_with_their_reason(tmp_path):
    scene = slicer.vtkMRMLScene()
    volume, segmentation = acdc_pair(scene, "patient011_frame01")
    with pytest.raises(TrainingInputError, match="at least one training pair"):
        exportDataset([], ["Myocardium"], "MR-cine", "x", parent=tmp_path)
    with pytest.raises(TrainingInputError, match="at least one segment"):
        exportDataset([checkPair(volume, segmentation)], [], "MR-cine", "x", parent=tmp_path)

    empty = segmentation.GetSegmentation().AddEmptySegment("", "Aorta")
    assert empty
    with pytest.raises(TrainingInputError, match="Aorta are empty"):
        checkPair(volume, segmentation)
    segmentation.GetSegmentation().RemoveSegment(empty)

    # the label map resampled onto a coarser grid: a segmentation drawn on another volume
    source = sitk.ReadImage(str(ACDC / "labelsTr" / "patient011_frame01.nii.gz"))
    coarse = sitk.Resample(source, [s // 2 for s in source.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                           source.GetOrigin(), [2 * s for s in source.GetSpacing()], source.GetDirection())
    sitk.WriteImage(coarse, str(tmp_path / "coarse.nrrd"))
    other = load_segmentation(scene, tmp_path / "coarse.nrrd", volume)
    with pytest.raises(TrainingInputError, match="another voxel grid"):
        checkPair(volume, other)

    shifted = sitk.Image(source)
    shifted.SetOrigin([o + 0.5 * s for o, s in zip(source.GetOrigin(), source.GetSpacing())])
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nrrd"))
    with pytest.raises(TrainingInputError, match="fraction of a voxel"):
        checkPair(volume, load_segmentation(scene, tmp_path / "shifted.nrrd", volume))

    clash = load_segmentation(scene, ACDC / "labelsTr" / "patient011_frame01.nii.gz", volume,
                              {1: "Left-ventricle", 2: "left ventricle", 3: "LV"})
    with pytest.raises(TrainingInputError, match="same structure name"):
        exportDataset([checkPair(volume, clash)], ["Left-ventricle", "left ventricle"], "MR-cine", "x",
                      parent=tmp_path)
    assert list(tmp_path.glob("HermesTraining-*")) == []


def test_label_names_and_terminology_parsing():
    assert labelName("Left atrium") == "left_atrium"
    assert labelName("  LV (blood pool) ") == "lv_blood_pool"
    assert labelName("3rd ventricle") == "s_3rd_ventricle"
    assert labelName("../../etc/passwd") == "etc_passwd"
    with pytest.raises(TrainingInputError, match="no letters or digits"):
        labelName("---")
    assert parseTerminologyEntry(LV_TERMINOLOGY) == {"category": ["SCT", "123037004", "Anatomical Structure"],
                                                      "type": ["SCT", "87878005", "Left ventricle"],
                                                      "modifier": None}
    assert parseTerminologyEntry("") is None and parseTerminologyEntry("garbage") is None


def test_training_chart_holds_loss_and_dice_rows_as_mrml_nodes():
    from HermesTrainingLib.chart import TrainingChart

    scene = slicer.vtkMRMLScene()
    chart = TrainingChart(scene, "run 1")
    chart.add(1, loss=1.5)
    chart.add(2, loss=1.2)
    chart.add(2, dice=0.4)
    chart.add(3)  # nothing to plot: no row
    rows = chart.rows()
    assert [r[0] for r in rows] == [1, 2, 2] and rows[0][1] == 1.5 and np.isnan(rows[0][2]) and rows[2][2] == 0.4
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 2
    assert chart.chartNode.GetNumberOfPlotSeriesNodes() == 2
    series = chart.seriesNodes["held-out Dice"]
    assert series.GetTableNodeID() == chart.tableNode.GetID() and series.GetYColumnName() == "held-out Dice"
    chart.remove()
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0
