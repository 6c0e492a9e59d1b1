"""SNOMED CT terminology for structure names, so segments carry standard codes (DICOM SEG, Slicer's terminology
browser). The codes live in the structure catalogue (:mod:`hermesseg.catalogue`); a name outside it gets none,
rather than a wrong one, except ``<organ>_tumour``/``_lesion``, which is a neoplasm in that organ's region."""

from __future__ import annotations

from .catalogue import catalogue

ABNORMAL = ["SCT", "49755003", "Morphologically Altered Structure"]
NEOPLASM = ["SCT", "108369006", "Neoplasm"]


def terminology_for(name: str) -> dict | None:
    """Terminology for a structure name such as ``kidney_left``, ``liver_tumour`` or ``lung_tumour``; None if unknown."""
    entry = catalogue().structure(name)
    if entry is not None:
        return entry.terminology
    key = name.lower()
    if key.endswith(("_tumour", "_tumor", "_lesion")):
        region = catalogue().structure(key.rsplit("_", 1)[0])
        term = {"category": ABNORMAL, "type": NEOPLASM, "modifier": None}
        if region is not None and region.terminology:
            term["region"] = region.terminology["type"]
        return term
    return None


def slicer_terminology_entry(term: dict) -> str:
    """Slicer's segment tag string: context~category~type~typeModifier~regionContext~region~regionModifier."""

    def code(c):
        return "^".join(c) if c else "^^"

    region = term.get("region")
    return "~".join([
        "Segmentation category and type - DICOM master list",
        code(term["category"]), code(term["type"]), code(term.get("modifier")),
        "Anatomic codes - DICOM master list", code(region), "^^",
    ])
