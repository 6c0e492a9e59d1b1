"""The modality table: the modality names the engine knows, the manifest entry a modality gets, and the intensity
normalisation a modality gets by default. Training, add-task and the official importer all build modality tables
from here, so a model trained here and an imported official model speak the same modality language."""

from __future__ import annotations

from .manifest import ModalityEntry
from .preprocessing import IntensityNorm

# Rows of the official Hermes-R modality table (spec 3.4). Row 5 is what the reference reaches with id -1
# (AMOS-MR: sequence unknown).
KNOWN_MODALITIES = [
    ModalityEntry(0, "CT", "Computed tomography (HU)", ["CT"]),
    ModalityEntry(1, "PET", "FDG PET, SUV", ["PT"]),
    ModalityEntry(2, "MR-T1", "T1-weighted MR", ["MR"]),
    ModalityEntry(3, "MR-T2", "T2-weighted MR", ["MR"]),
    ModalityEntry(4, "MR-cine", "Cine cardiac MR", ["MR"]),
    ModalityEntry(5, "MR", "MR, sequence unknown (AMOS-MR)", ["MR"]),
]


def modality_entry(index: int, name: str) -> ModalityEntry:
    """Row ``index`` of a model's modality table for ``name``: the known description and DICOM values, or for an
    unknown name the DICOM Modality its prefix suggests (CT..., PET..., MR...)."""
    known = {m.name.lower(): m for m in KNOWN_MODALITIES}.get(name.lower())
    if known is not None:
        return ModalityEntry(index, name, known.description, list(known.dicom))
    upper = name.upper()
    dicom = ["CT"] if upper.startswith("CT") else ["PT"] if upper.startswith("PET") else \
        ["MR"] if upper.startswith("MR") else []
    return ModalityEntry(index, name, "", dicom)


def default_intensity(modality: str) -> dict:
    """CT: clip to [-991, 500] HU then z-score on the body (spec 5); anything else: clip to [p2, p98], z-score."""
    if modality.upper() == "CT":
        return IntensityNorm("ct_clip_zscore").to_dict()
    return IntensityNorm("percentile_clip_zscore").to_dict()
