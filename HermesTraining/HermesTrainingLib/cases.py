"""Training cases: pairs of a volume and a segmentation from the scene, checked as they are added.

A pair is usable when the segmentation's labelmaps lie on the volume's voxel lattice (same directions and spacing,
origin shifted by whole voxels: a segmentation drawn on this volume in the Segment Editor) and each segment chosen
for learning is non-empty inside the volume. A segmentation drawn on another volume (another grid) is refused
rather than silently resampled: the annotator would be training on a shifted or blurred mask without knowing it.

GUI-free: real MRML only (Slicer application or the ``slicer-core`` wheel).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk

# A lattice shift within this fraction of a voxel counts as whole voxels; directions/spacing within this tolerance.
_LATTICE_TOLERANCE = 1e-3


class TrainingInputError(ValueError):
    """A training pair or selection cannot be used; the message says what is wrong and how to fix it."""


@dataclass
class TrainingPair:
    """One training case: a volume and the segmentation drawn on it."""

    volumeNode: object
    segmentationNode: object
    segmentVoxels: dict[str, int] = field(default_factory=dict)  # segment name -> voxels inside the volume

    @property
    def label(self) -> str:
        return f"{self.volumeNode.GetName()} / {self.segmentationNode.GetName()}"


def segmentNames(segmentationNode) -> list[str]:
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def _matrix(getter) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    getter(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _checkLattice(pair: TrainingPair, segmentId: str, name: str) -> None:
    labelmap = slicer.vtkOrientedImageData()
    pair.segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap)
    extent = labelmap.GetExtent()
    if extent[0] > extent[1]:
        return  # an empty labelmap has no lattice; emptiness is reported by the voxel count
    volume = _matrix(pair.volumeNode.GetIJKToRASMatrix)
    segment = _matrix(labelmap.GetImageToWorldMatrix)
    if not np.allclose(volume[:3, :3], segment[:3, :3], atol=_LATTICE_TOLERANCE * np.abs(volume[:3, :3]).max()):
        raise TrainingInputError(
            f"{pair.label}: segment '{name}' lies on another voxel grid (spacing or orientation differ from the "
            "volume's); it was drawn on another volume. Pair the segmentation with the volume it was drawn on, or "
            "resample it onto this volume first (Segmentations module, 'Specify geometry').")
    shift = np.linalg.solve(volume[:3, :3], segment[:3, 3] - volume[:3, 3])
    if np.abs(shift - np.round(shift)).max() > _LATTICE_TOLERANCE:
        raise TrainingInputError(
            f"{pair.label}: segment '{name}' is shifted by a fraction of a voxel against the volume (origin offset "
            f"{np.round(shift, 3).tolist()} voxels); it was drawn on another volume.")


def segmentVoxelCounts(pair: TrainingPair, names: list[str]) -> dict[str, int]:
    """Voxels of each named segment inside the volume, from one export onto the volume's own grid."""
    segmentation = pair.segmentationNode.GetSegmentation()
    ids = vtk.vtkStringArray()
    present = [n for n in names if segmentation.GetSegmentIdBySegmentName(n)]
    for n in present:
        ids.InsertNextValue(segmentation.GetSegmentIdBySegmentName(n))
    counts = {n: 0 for n in names}
    if not present:
        return counts
    labels = exportLabelArray(pair, ids)
    histogram = np.bincount(labels.ravel(), minlength=len(present) + 1)
    for index, n in enumerate(present):
        counts[n] = int(histogram[index + 1])
    return counts


@contextlib.contextmanager
def temporaryNodes(scene):
    """Remove every node added to ``scene`` inside the block (a labelmap and the display and colour nodes that
    export creates for it), except the scene's subject hierarchy node, which the application keeps anyway."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in before and not node.IsA("vtkMRMLSubjectHierarchyNode"):
                scene.RemoveNode(node)


def exportLabelArray(pair: TrainingPair, segmentIds) -> np.ndarray:
    """Segments ``segmentIds`` (a vtkStringArray) as a label array (k, j, i) on the volume's grid; value = position
    in ``segmentIds`` + 1 (where segments overlap, the later one wins)."""
    from slicer.util import arrayFromVolume

    scene = pair.volumeNode.GetScene()
    with temporaryNodes(scene):
        labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "HermesTrainingExport")
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                pair.segmentationNode, segmentIds, labelmapNode, pair.volumeNode):
            raise TrainingInputError(f"{pair.label}: the segments could not be exported onto the volume's grid")
        return np.asarray(arrayFromVolume(labelmapNode)).astype(np.uint8, copy=True)


def checkPair(volumeNode, segmentationNode, names: list[str] | None = None) -> TrainingPair:
    """Check a pair as it is added to the training table; returns it with per-segment voxel counts.

    ``names``: the segments to be learned (default: all of the segmentation's segments). Segments not in the
    segmentation are allowed (a structure drawn only on some cases); chosen segments that are present must be
    non-empty and on the volume's lattice.
    """
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise TrainingInputError("choose a volume with image data")
    if segmentationNode is None or segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
        raise TrainingInputError(f"'{volumeNode.GetName()}': choose a segmentation that has at least one segment")
    if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
        raise TrainingInputError(f"'{volumeNode.GetName()}' is not a single-component (grey-level) volume")
    pair = TrainingPair(volumeNode, segmentationNode)
    available = segmentNames(segmentationNode)
    wanted = available if names is None else [n for n in names if n in available]
    if not wanted:
        raise TrainingInputError(f"{pair.label}: has none of the chosen segments ({', '.join(names or [])})")
    segmentation = segmentationNode.GetSegmentation()
    for name in wanted:
        _checkLattice(pair, segmentation.GetSegmentIdBySegmentName(name), name)
    pair.segmentVoxels = segmentVoxelCounts(pair, wanted)
    empty = [n for n, count in pair.segmentVoxels.items() if count == 0]
    if empty:
        raise TrainingInputError(f"{pair.label}: segment(s) {', '.join(empty)} are empty inside the volume; draw "
                                 "them or leave them out of the segments to learn")
    return pair


def segmentOccurrences(pairs: list[TrainingPair]) -> dict[str, int]:
    """Segment name -> number of pairs that have it (the choices offered for learning)."""
    counts: dict[str, int] = {}
    for pair in pairs:
        for name in segmentNames(pair.segmentationNode):
            counts[name] = counts.get(name, 0) + 1
    return counts
