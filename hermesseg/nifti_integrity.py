"""Did a ``.nii.gz`` reach the disk complete? ITK's NIfTI writer only prints ``** ERROR: NWAD: wrote only 0 of N
bytes`` when the disk is full and reports success, leaving a truncated file; this check catches that cheaply.

A gzip member ends with ISIZE, the uncompressed length mod 2**32 (RFC 1952). A complete single-file NIfTI holds
``vox_offset + voxel bytes``: the header is decompressed (its first few hundred bytes only) for ``vox_offset`` and
compared with the trailer, so a file cut anywhere fails the check, without decompressing the voxels.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

# sizeof_hdr, then where vox_offset lives and how it is stored, for NIfTI-1 (348-byte header) and NIfTI-2 (540).
_VOX_OFFSET = {348: (108, "f"), 540: (168, "q")}


def nifti_gz_complete(path: str | os.PathLike, voxel_bytes: int) -> bool:
    """True when ``path`` is a whole gzip-compressed single-file NIfTI holding ``voxel_bytes`` bytes of voxels."""
    try:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", f.read(4))
        with gzip.open(path, "rb") as g:
            head = g.read(540)
    except (OSError, EOFError, zlib.error):
        return False
    for order in "<>":
        if len(head) >= 4 and struct.unpack(f"{order}i", head[:4])[0] in _VOX_OFFSET:
            offset, kind = _VOX_OFFSET[struct.unpack(f"{order}i", head[:4])[0]]
            (vox_offset,) = struct.unpack(f"{order}{kind}", head[offset:offset + struct.calcsize(kind)])
            return (int(vox_offset) + voxel_bytes) % 2**32 == isize
    return False
