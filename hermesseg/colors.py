"""Display colours: the structure catalogue's (Slicer's recommended colours), a red for lesions, else a stable
hash-based colour."""

from __future__ import annotations

import hashlib

from .catalogue import catalogue

LESION_COLOR = (255, 0, 0)


def color_for(name: str) -> tuple[int, int, int]:
    """A stable colour for a structure name: the catalogue's, red for a tumour or lesion, else from a hash."""
    entry = catalogue().structure(name)
    if entry is not None:
        return entry.color
    key = name.lower()
    if any(word in key for word in ("tumour", "tumor", "lesion")):
        return LESION_COLOR
    digest = hashlib.sha256(key.encode()).digest()
    return tuple(60 + b % 180 for b in digest[:3])  # type: ignore[return-value]
