"""The official Hermes-R task and modality tables (spec 3.4) and the preprocessing its weights expect (spec 5)."""

from __future__ import annotations

from ..colors import color_for
from ..manifest import TaskEntry
from ..modalities import KNOWN_MODALITIES
from ..terminology import terminology_for

OFFICIAL_MODALITIES = KNOWN_MODALITIES

_AMOS = ["spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach", "aorta",
         "inferior_vena_cava", "pancreas", "adrenal_gland_right", "adrenal_gland_left", "duodenum",
         "urinary_bladder", "prostate_uterus"]
_BCV = ["spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach", "aorta",
        "inferior_vena_cava", "portal_splenic_vein", "pancreas", "adrenal_gland_right", "adrenal_gland_left"]
_STRUCTSEG_THORAX = ["lung_left", "lung_right", "heart", "esophagus", "trachea", "spinal_cord"]
_CHAOS = ["liver", "kidney_right", "kidney_left", "spleen"]
_STRUCTSEG_HAN = ["brainstem", "eye_left", "eye_right", "lens_left", "lens_right", "optic_nerve_left",
                  "optic_nerve_right", "optic_chiasm", "temporal_lobe_left", "temporal_lobe_right", "pituitary_gland",
                  "parotid_gland_left", "parotid_gland_right", "inner_ear_left", "inner_ear_right", "middle_ear_left",
                  "middle_ear_right", "tm_joint_left", "tm_joint_right", "spinal_cord", "mandible_left",
                  "mandible_right"]

# (group, structure names in slot order, modalities). Task names are "<group>_<structure>" (unique per model).
_GROUPS: list[tuple[str, list[str], list[str]]] = [
    ("lits", ["liver", "liver_tumour"], ["CT"]),
    ("kits", ["kidney", "kidney_tumour"], ["CT"]),
    ("amos", _AMOS, ["CT"]),
    ("bcv", _BCV, ["CT"]),
    ("structseg_thorax", _STRUCTSEG_THORAX, ["CT"]),
    ("chaos", _CHAOS, ["MR-T1", "MR-T2"]),
    ("structseg_han", _STRUCTSEG_HAN, ["CT"]),
    ("mnms", ["left_ventricle", "myocardium", "right_ventricle"], ["MR-cine"]),
    ("brain_structure", ["grey_matter", "white_matter", "csf"], ["MR-T1"]),
    ("autopet", ["fdg_avid_lesion"], ["PET"]),
]
# AMOS-MR queries the AMOS tasks 4..16 with the unknown-MR modality (labels 14, 15 were dropped).
_AMOS_MR_TASKS = set(_AMOS[:13])


def official_tasks() -> list[TaskEntry]:
    tasks: list[TaskEntry] = []
    for group, structures, modalities in _GROUPS:
        for structure in structures:
            mods = list(modalities)
            if group == "amos" and structure in _AMOS_MR_TASKS:
                mods.append("MR")
            tasks.append(TaskEntry(id=len(tasks), name=f"{group}_{structure}", group=group, modalities=mods,
                                   color=color_for(structure), terminology=terminology_for(structure),
                                   description=f"{structure.replace('_', ' ')} as annotated in {group}"))
    assert len(tasks) == 71
    return tasks


def official_preprocessing() -> dict:
    """Spec 5: reoriented to LPS, 1.5 mm isotropic, CT clipped to [-991, 500] HU and z-scored on the body
    (the reference z-scored body-cropped volumes), MR and PET clipped to [p2, p98] and z-scored."""
    mr = {"scheme": "percentile_clip_zscore", "percentiles": [2.0, 98.0], "stats_region": "body"}
    return {
        "spacing": [1.5, 1.5, 1.5],
        "orientation": "LPS",
        "patch_size": [128, 128, 128],
        "intensity": {
            "CT": {"scheme": "ct_clip_zscore", "clip": [-991.0, 500.0], "stats_region": "body"},
            **{m.name: dict(mr) for m in OFFICIAL_MODALITIES if m.name != "CT"},
        },
    }
