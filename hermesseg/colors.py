"""Display colours: recognisable organ colours (close to Slicer's GenericAnatomyColors) and a fallback palette."""

from __future__ import annotations

import hashlib

ORGAN_COLORS: dict[str, tuple[int, int, int]] = {
    "liver": (221, 130, 101), "spleen": (157, 108, 162), "kidney": (185, 102, 83), "gallbladder": (139, 150, 98),
    "esophagus": (211, 171, 143), "stomach": (216, 132, 105), "aorta": (224, 97, 76), "inferior_vena_cava": (0, 151, 206),
    "pancreas": (249, 180, 111), "adrenal_gland": (244, 214, 49), "duodenum": (255, 253, 229),
    "urinary_bladder": (222, 154, 132), "prostate": (230, 158, 140), "lung": (197, 165, 145), "heart": (206, 110, 84),
    "trachea": (182, 228, 255), "spinal_cord": (244, 214, 49), "brainstem": (250, 250, 225), "eye": (194, 255, 194),
    "lens": (194, 255, 255), "optic_nerve": (241, 214, 145), "brain": (250, 250, 225), "mandible": (241, 213, 144),
    "myocardium": (206, 110, 84), "left_ventricle": (216, 101, 79), "right_ventricle": (0, 151, 206),
    "grey_matter": (128, 128, 128), "white_matter": (250, 250, 225), "csf": (85, 188, 255),
    "tumour": (255, 0, 0), "tumor": (255, 0, 0), "lesion": (255, 0, 0),
}


def color_for(name: str) -> tuple[int, int, int]:
    """A stable colour for a task name: the organ's colour if its name contains one, else a hash-based colour."""
    key = name.lower()
    if any(word in key for word in ("tumour", "tumor", "lesion")):
        return ORGAN_COLORS["tumour"]
    for organ in sorted(ORGAN_COLORS, key=len, reverse=True):
        if organ in key:
            return ORGAN_COLORS[organ]
    digest = hashlib.sha256(key.encode()).digest()
    return tuple(60 + b % 180 for b in digest[:3])  # type: ignore[return-value]
