"""Loading the engine's ``.seg.nrrd`` into the scene, ready for review and DICOM SEG export.

The engine writes one segment per task (segment id = task name, name = the structure's display name from the
engine's catalogue, colour, ``TerminologyEntry``, ``HermesTask`` and ``HermesTaskGroup`` tags), in separate layers
where segments overlap, on the input volume's grid. The import:

- reads the file into a new ``vtkMRMLSegmentationNode`` *outside* the scene, and adds it only when everything
  worked (a failed import leaves the scene untouched);
- re-applies display names, colours and terminology from the task table when one is given (the model manifest as
  printed by ``hermesseg info --json``), so the segments are right even if a file lacks a name or tag;
- sets the reference geometry from the volume (``SetReferenceImageGeometryParameterFromVolumeNode`` and the
  ``referenceImageGeometryRef`` node reference, which DICOM SEG export requires);
- puts the segmentation under the volume's parent transform and, in the subject hierarchy, under the volume's study.

GUI-free: runs in the Slicer application and with the ``slicer-core`` wheel (tests). Reused by HermesTraining.
"""

from __future__ import annotations

from pathlib import Path

import slicer

TERMINOLOGY_TAG = "TerminologyEntry"
TASK_TAG = "HermesTask"
DEFAULT_TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
DEFAULT_REGION_CONTEXT = "Anatomic codes - DICOM master list"


class SegmentationImportError(RuntimeError):
    pass


def _code(triplet) -> str:
    if not triplet:
        return "^^"
    return "^".join(str(x) for x in triplet)


def terminologyEntryString(terminology: dict | None) -> str | None:
    """Slicer's tag string ``context~category~type~typeModifier~regionContext~region~regionModifier`` for the
    engine's terminology dict ``{"category": [scheme, code, meaning], "type": [...], "modifier": [...]|None,
    "region": [...]?}``; None when there is no terminology."""
    if not terminology or not terminology.get("category") or not terminology.get("type"):
        return None
    return "~".join([
        DEFAULT_TERMINOLOGY_CONTEXT,
        _code(terminology.get("category")), _code(terminology.get("type")), _code(terminology.get("modifier")),
        DEFAULT_REGION_CONTEXT,
        _code(terminology.get("region")), _code(terminology.get("regionModifier")),
    ])


def _taskTable(modelInfo: dict | None) -> dict[str, dict]:
    if not modelInfo:
        return {}
    return {t["name"]: t for t in modelInfo.get("tasks", []) if isinstance(t, dict) and "name" in t}


def segmentNames(segmentationNode) -> list[str]:
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def segmentTaskNames(segmentationNode) -> list[str]:
    """The task of each segment: its ``HermesTask`` tag, else its id (the engine writes id = task name)."""
    segmentation = segmentationNode.GetSegmentation()
    names = []
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        names.append(segmentTag(segment, TASK_TAG) or segmentation.GetNthSegmentID(i))
    return names


def segmentTag(segment, tag: str) -> str | None:
    """A segment's tag value, or None (``GetTag(name, value&)`` takes a ``vtk.reference`` in Python)."""
    import vtk
    value = vtk.reference("")
    return str(value) if segment.GetTag(tag, value) else None


def placeUnderVolumeStudy(scene, segmentationNode, volumeNode) -> None:
    """Put the segmentation next to the volume in the subject hierarchy (under its study, else its parent)."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is None:
        return
    volumeItem = shNode.GetItemByDataNode(volumeNode)
    if not volumeItem:
        return
    parentItem = shNode.GetItemParent(volumeItem)
    studyLevel = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
    item = parentItem
    while item and item != shNode.GetSceneItemID() and shNode.GetItemLevel(item) != studyLevel:
        item = shNode.GetItemParent(item)
    if item and item != shNode.GetSceneItemID():
        parentItem = item
    if not parentItem:
        return
    segmentationItem = shNode.GetItemByDataNode(segmentationNode)
    if not segmentationItem:
        segmentationItem = shNode.CreateItem(parentItem, segmentationNode)
    else:
        shNode.SetItemParent(segmentationItem, parentItem)


def importSegmentation(scene, segFile: str | Path, volumeNode, name: str | None = None,
                       modelInfo: dict | None = None, expectedSegments: list[str] | None = None):
    """Load ``segFile`` as a new segmentation node of ``scene`` tied to ``volumeNode``; returns the node.

    ``modelInfo``: the model's ``hermesseg info --json`` object (display names, colours, terminology).
    ``expectedSegments``: the task names that were requested; a file without any of them is an error, and the node
    is not added.
    """
    segFile = Path(segFile)
    if not segFile.is_file():
        raise SegmentationImportError(f"the engine did not write {segFile}")
    segmentationNode = slicer.vtkMRMLSegmentationNode()
    storageNode = slicer.vtkMRMLSegmentationStorageNode()
    storageNode.SetFileName(str(segFile))
    if not storageNode.ReadData(segmentationNode):
        raise SegmentationImportError(f"could not read the segmentation file {segFile}")
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        raise SegmentationImportError(f"{segFile.name} holds no segment")
    taskNames = segmentTaskNames(segmentationNode)
    if expectedSegments:
        found = set(taskNames)
        if not found & set(expectedSegments):
            raise SegmentationImportError(f"{segFile.name} holds none of the requested structures "
                                          f"({', '.join(expectedSegments)}); it has {', '.join(sorted(found))}")

    tasks = _taskTable(modelInfo)
    for i, taskName in enumerate(taskNames):
        segment = segmentation.GetNthSegment(i)
        task = tasks.get(taskName)
        if task is not None:
            if task.get("display_name"):
                segment.SetName(str(task["display_name"]))
            color = task.get("color")
            if color and len(color) == 3:
                segment.SetColor(*[float(c) / 255.0 for c in color])
            entry = terminologyEntryString(task.get("terminology"))
            if entry and not segmentTag(segment, TERMINOLOGY_TAG):
                segment.SetTag(TERMINOLOGY_TAG, entry)

    segmentationNode.SetName(name or f"{volumeNode.GetName()} Hermes")
    scene.AddNode(segmentationNode)
    try:
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentationNode.SetNodeReferenceID(segmentationNode.GetReferenceImageGeometryReferenceRole(),
                                            volumeNode.GetID())
        if volumeNode.GetParentTransformNode() is not None:
            segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetParentTransformNode().GetID())
        placeUnderVolumeStudy(scene, segmentationNode, volumeNode)
    except Exception:
        removeSegmentationNode(scene, segmentationNode)
        raise
    return segmentationNode


def removeSegmentationNode(scene, segmentationNode) -> None:
    """Remove a segmentation node with its display and storage nodes."""
    if segmentationNode is None or segmentationNode.GetScene() is None:
        return
    for i in range(segmentationNode.GetNumberOfDisplayNodes()):
        display = segmentationNode.GetNthDisplayNode(i)
        if display is not None:
            scene.RemoveNode(display)
    storage = segmentationNode.GetStorageNode()
    if storage is not None:
        scene.RemoveNode(storage)
    scene.RemoveNode(segmentationNode)
