"""SNOMED CT codes for structure names, so segments carry standard terminology (DICOM SEG, Slicer's terminology
browser). Only codes we are sure of are listed; unknown structures get no terminology rather than a wrong one."""

from __future__ import annotations

ANATOMY = ["SCT", "123037004", "Anatomical Structure"]
TISSUE = ["SCT", "85756007", "Tissue"]
ABNORMAL = ["SCT", "49755003", "Morphologically Altered Structure"]
NEOPLASM = ["SCT", "108369006", "Neoplasm"]
LEFT = ["SCT", "7771000", "Left"]
RIGHT = ["SCT", "24028007", "Right"]

STRUCTURES: dict[str, list[str]] = {
    "liver": ["SCT", "10200004", "Liver"],
    "spleen": ["SCT", "78961009", "Spleen"],
    "kidney": ["SCT", "64033007", "Kidney"],
    "gallbladder": ["SCT", "28231008", "Gallbladder"],
    "esophagus": ["SCT", "32849002", "Esophagus"],
    "stomach": ["SCT", "69695003", "Stomach"],
    "aorta": ["SCT", "15825003", "Aorta"],
    "inferior_vena_cava": ["SCT", "64131007", "Inferior vena cava"],
    "pancreas": ["SCT", "15776009", "Pancreas"],
    "adrenal_gland": ["SCT", "23451007", "Adrenal gland"],
    "duodenum": ["SCT", "38848004", "Duodenum"],
    "urinary_bladder": ["SCT", "89837001", "Urinary bladder"],
    "prostate": ["SCT", "41216001", "Prostate"],
    "lung": ["SCT", "39607008", "Lung"],
    "heart": ["SCT", "80891009", "Heart"],
    "trachea": ["SCT", "44567001", "Trachea"],
    "spinal_cord": ["SCT", "2748008", "Spinal cord"],
    "brainstem": ["SCT", "15926001", "Brainstem"],
    "eye": ["SCT", "81745001", "Eye"],
    "lens": ["SCT", "78076003", "Lens of eye"],
    "optic_nerve": ["SCT", "18234004", "Optic nerve"],
    "optic_chiasm": ["SCT", "244453006", "Optic chiasm"],
    "temporal_lobe": ["SCT", "78277001", "Temporal lobe"],
    "pituitary_gland": ["SCT", "56329008", "Pituitary gland"],
    "parotid_gland": ["SCT", "45289007", "Parotid gland"],
    "mandible": ["SCT", "91609006", "Mandible"],
    "brain": ["SCT", "12738006", "Brain"],
    "myocardium": ["SCT", "74281007", "Myocardium"],
    "left_ventricle": ["SCT", "87878005", "Left ventricle"],
    "right_ventricle": ["SCT", "53085002", "Right ventricle"],
    "portal_vein": ["SCT", "32764006", "Portal vein"],
}


def terminology_for(name: str) -> dict | None:
    """Terminology for a task name such as ``kidney_left``, ``liver_tumour`` or ``lung_tumour``; None if unknown."""
    key = name.lower()
    modifier = None
    for suffix, mod in (("_left", LEFT), ("_right", RIGHT)):
        if key.endswith(suffix):
            key, modifier = key[: -len(suffix)], mod
    for prefix, mod in (("left_", LEFT), ("right_", RIGHT)):
        if key.startswith(prefix) and key not in STRUCTURES:
            key, modifier = key[len(prefix):], mod
    if key.endswith(("_tumour", "_tumor", "_lesion")):
        region = key.rsplit("_", 1)[0]
        entry = {"category": ABNORMAL, "type": NEOPLASM, "modifier": None}
        if region in STRUCTURES:
            entry["region"] = STRUCTURES[region]
        return entry
    if key in STRUCTURES:
        return {"category": ANATOMY, "type": STRUCTURES[key], "modifier": modifier}
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
