"""Suggesting the model modality (CT, PET, MR-T1, ...) for a volume; the user can always override it.

Evidence, strongest first: the DICOM Modality of the volume (node attribute or its subject hierarchy series item,
both set by Slicer's DICOM import), refined for MR by the series description (T1, T2, cine); then the intensities
(a sizeable share of voxels below -500 is air in Hounsfield units, hence CT; else MR, flagged for checking). The model's modality table says which DICOM modality
each of its modalities corresponds to (``"dicom": ["MR"]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import slicer

DICOM_MODALITY_ATTRIBUTE = "DICOM.Modality"
DICOM_SERIES_DESCRIPTION_ATTRIBUTE = "DICOM.SeriesDescription"

_MR_HINTS = (("cine", "cine"), ("t2", "t2"), ("t1", "t1"))
# CT is in Hounsfield units: air is near -1000. A sizeable share of voxels below -500 means CT (the engine's rule).
AIR_HU = -500.0
MIN_AIR_FRACTION = 0.05


@dataclass
class ModalitySuggestion:
    modality: str | None  # a name from the model's modality table, or None when nothing fits
    reason: str


def _shAttribute(volumeNode, attribute: str) -> str | None:
    scene = volumeNode.GetScene()
    if scene is None:
        return None
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is None:
        return None
    item = shNode.GetItemByDataNode(volumeNode)
    if not item:
        return None
    value = shNode.GetItemAttribute(item, attribute)
    return value or None


def dicomModality(volumeNode) -> str | None:
    """The DICOM Modality (CT, MR, PT, ...) recorded for the volume, or None."""
    value = volumeNode.GetAttribute(DICOM_MODALITY_ATTRIBUTE) or _shAttribute(volumeNode, DICOM_MODALITY_ATTRIBUTE)
    return value.strip().upper() if value else None


def seriesDescription(volumeNode) -> str:
    return (volumeNode.GetAttribute(DICOM_SERIES_DESCRIPTION_ATTRIBUTE)
            or _shAttribute(volumeNode, DICOM_SERIES_DESCRIPTION_ATTRIBUTE) or "")


def airFraction(volumeNode, threshold: float = AIR_HU) -> float | None:
    """Share of voxels below ``threshold`` (air in Hounsfield units), on a subsample; None without image data."""
    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    if imageData is None or imageData.GetPointData() is None or imageData.GetPointData().GetScalars() is None:
        return None
    import numpy as np
    from slicer.util import arrayFromVolume
    array = arrayFromVolume(volumeNode)
    sample = array[:: max(1, array.shape[0] // 16), ::2, ::2]
    return float(np.mean(sample < threshold)) if sample.size else None


def _modalitiesForDicom(modalities: list[dict], dicom: str) -> list[str]:
    return [m["name"] for m in modalities if dicom in [d.upper() for d in m.get("dicom", [])]]


def _pickMr(candidates: list[str], description: str) -> str:
    text = description.lower()
    for hint, key in _MR_HINTS:
        if hint in text:
            for name in candidates:
                if key in name.lower():
                    return name
    for name in candidates:  # the generic "MR" entry when the sequence is unknown
        if name.upper() == "MR":
            return name
    return candidates[0]


def suggestModality(volumeNode, modalities: list[dict]) -> ModalitySuggestion:
    """The best modality of ``modalities`` (the model's ``info["modalities"]``) for ``volumeNode``."""
    names = [m["name"] for m in modalities]
    if volumeNode is None or not names:
        return ModalitySuggestion(None, "")
    dicom = dicomModality(volumeNode)
    if dicom:
        candidates = _modalitiesForDicom(modalities, dicom)
        if candidates:
            if len(candidates) == 1:
                return ModalitySuggestion(candidates[0], f"from the DICOM modality {dicom}")
            description = seriesDescription(volumeNode)
            choice = _pickMr(candidates, description)
            detail = f" and series description '{description}'" if description else ""
            return ModalitySuggestion(choice, f"from the DICOM modality {dicom}{detail}")
    fraction = airFraction(volumeNode)
    if fraction is None:
        return ModalitySuggestion(None, "")
    ct = _modalitiesForDicom(modalities, "CT")
    mr = _modalitiesForDicom(modalities, "MR")
    if fraction > MIN_AIR_FRACTION and ct:
        return ModalitySuggestion(ct[0], f"guessed: {fraction:.0%} of voxels below {AIR_HU:g}, like air in CT")
    if mr:
        return ModalitySuggestion(_pickMr(mr, volumeNode.GetName()),
                                  "guessed: no DICOM modality and intensities unlike CT; check it")
    return ModalitySuggestion(names[0], "no DICOM modality and no clear intensity range: please choose")
