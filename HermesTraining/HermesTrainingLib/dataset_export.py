"""Writing training pairs as an nnU-Net v2 dataset folder, the input of ``hermesseg add-task`` and ``train``.

Each case: ``imagesTr/caseNNN_0000.nrrd`` (the volume as stored, its own geometry) and ``labelsTr/caseNNN.nrrd``
(the chosen segments exported onto that volume's grid with the Segmentations logic, reference geometry = the
volume, so image and label share one grid exactly). ``dataset.json`` names the labels and carries, per label, the
segment's display name, colour and terminology (``label_info``), so the learned structures keep what the annotator
chose. The folder is created in a private temporary directory, never next to the user's data.

Label names are identifiers derived from segment names ("Left atrium" -> ``left_atrium``); the engine validates
them again when it reads the dataset.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk

from .cases import TrainingInputError, TrainingPair, exportLabelArray, temporaryNodes

FILE_ENDING = ".nrrd"
TERMINOLOGY_TAG = "TerminologyEntry"


@dataclass
class ExportedDataset:
    folder: Path
    labels: dict[str, int]  # label name -> value (background excluded)
    segmentToLabel: dict[str, str]  # segment name -> label name
    cases: list[str]
    voxels: dict[str, dict[str, int]]  # case -> label name -> voxels


def labelName(segmentName: str) -> str:
    """An identifier for a segment name: lower case ASCII letters, digits and '_' ("Left atrium" -> left_atrium)."""
    text = re.sub(r"[^a-z0-9]+", "_", segmentName.strip().lower()).strip("_")
    if not text:
        raise TrainingInputError(f"segment name {segmentName!r} has no letters or digits to name a structure by; "
                                 "rename the segment")
    if not text[0].isalpha():
        text = "s_" + text
    return text[:48]


def parseTerminologyEntry(entry: str | None) -> dict | None:
    """Slicer's ``context~category~type~modifier~regionContext~region~regionModifier`` tag -> the engine's
    terminology dict (triplets [scheme, code, meaning]); None when the tag has no category/type."""
    if not entry:
        return None
    parts = entry.split("~")
    if len(parts) < 4:
        return None

    def triplet(text: str):
        fields = text.split("^")
        return fields[:3] if len(fields) >= 3 and fields[1] else None

    category, kind, modifier = triplet(parts[1]), triplet(parts[2]), triplet(parts[3])
    if category is None or kind is None:
        return None
    result = {"category": category, "type": kind, "modifier": modifier}
    region = triplet(parts[5]) if len(parts) > 5 else None
    if region is not None:
        result["region"] = region
    return result


def _segmentTag(segment, tag: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment.GetTag(tag, value) else None


def _segmentInfo(pairs: list[TrainingPair], name: str) -> dict:
    """Display name, colour (0-255) and terminology of a segment, from the first pair that has it."""
    for pair in pairs:
        segmentation = pair.segmentationNode.GetSegmentation()
        segmentId = segmentation.GetSegmentIdBySegmentName(name)
        if segmentId:
            segment = segmentation.GetSegment(segmentId)
            info = {"display_name": name,
                    "color": [int(round(255 * c)) for c in segment.GetColor()]}
            terminology = parseTerminologyEntry(_segmentTag(segment, TERMINOLOGY_TAG))
            if terminology is not None:
                info["terminology"] = terminology
            return info
    raise TrainingInputError(f"no training pair has a segment named {name!r}")


def _writeVolume(node, path: Path, compress: bool) -> None:
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(1 if compress else 0)
    if not storage.WriteData(node) or not path.is_file():
        raise TrainingInputError(f"could not write {node.GetName()} to {path}")


def _writeLabel(pair: TrainingPair, values: np.ndarray, path: Path) -> None:
    from slicer.util import updateVolumeFromArray

    scene = pair.volumeNode.GetScene()
    with temporaryNodes(scene):
        labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "HermesTrainingLabel")
        labelmapNode.CopyOrientation(pair.volumeNode)
        updateVolumeFromArray(labelmapNode, values)
        _writeVolume(labelmapNode, path, compress=True)


def exportDataset(pairs: list[TrainingPair], segmentNames: list[str], modality: str, datasetName: str,
                  parent: str | Path | None = None, description: str = "") -> ExportedDataset:
    """Write ``pairs`` as a new nnU-Net v2 dataset folder in a temporary directory (under ``parent`` if given).

    ``segmentNames``: the segments to learn; label values follow this order. A pair without some of them is
    still exported: those structures are simply absent from its label map. On any error the folder is removed.
    """
    if not pairs:
        raise TrainingInputError("add at least one training pair (a volume and its segmentation)")
    if not segmentNames:
        raise TrainingInputError("choose at least one segment to learn")
    segmentToLabel = {name: labelName(name) for name in segmentNames}
    if len(set(segmentToLabel.values())) != len(segmentToLabel):
        clash = [n for n in segmentNames if list(segmentToLabel.values()).count(segmentToLabel[n]) > 1]
        raise TrainingInputError(f"segments {', '.join(clash)} would get the same structure name; rename one")
    labels = {segmentToLabel[name]: value for value, name in enumerate(segmentNames, start=1)}
    info = {segmentToLabel[name]: _segmentInfo(pairs, name) for name in segmentNames}

    root = Path(tempfile.mkdtemp(prefix="HermesTraining-", dir=str(parent) if parent else None))
    folder = root / datasetName
    try:
        (folder / "imagesTr").mkdir(parents=True)
        (folder / "labelsTr").mkdir()
        cases, voxels = [], {}
        for index, pair in enumerate(pairs):
            case = f"case{index:03d}"
            segmentation = pair.segmentationNode.GetSegmentation()
            ids, values = vtk.vtkStringArray(), []
            for value, name in enumerate(segmentNames, start=1):
                segmentId = segmentation.GetSegmentIdBySegmentName(name)
                if segmentId:
                    ids.InsertNextValue(segmentId)
                    values.append(value)
            exported = exportLabelArray(pair, ids)
            lut = np.zeros(len(values) + 1, dtype=np.uint8)
            lut[1:] = values
            label = lut[exported]
            _writeVolume(pair.volumeNode, folder / "imagesTr" / f"{case}_0000{FILE_ENDING}", compress=False)
            _writeLabel(pair, label, folder / "labelsTr" / f"{case}{FILE_ENDING}")
            counts = np.bincount(label.ravel(), minlength=len(segmentNames) + 1)
            voxels[case] = {segmentToLabel[n]: int(counts[v]) for v, n in enumerate(segmentNames, start=1)}
            cases.append(case)
        meta = {"name": datasetName, "description": description or "Annotated in 3D Slicer (Hermes Training)",
                "modality": modality, "channel_names": {"0": modality},
                "labels": {"background": 0, **labels}, "label_info": info,
                "numTraining": len(cases), "file_ending": FILE_ENDING}
        (folder / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return ExportedDataset(folder, labels, segmentToLabel, cases, voxels)


def removeExport(exported: ExportedDataset | None) -> None:
    """Remove the temporary directory that holds an exported dataset."""
    if exported is not None:
        shutil.rmtree(exported.folder.parent, ignore_errors=True)
