"""Output file names built from untrusted names (task names from a model file, input file names) stay in their folder.

Names are validated where they enter (``hermesseg.names``); this is the second line of defence at the place a name
becomes a path, so a name that bypassed validation (a new code path, a future format) still cannot write elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import OutputError
from .names import shown


def child_path(folder: str | os.PathLike, file_name: str) -> Path:
    """``folder / file_name``, refused with OutputError unless ``file_name`` is one plain name directly inside
    ``folder`` (no separator, no ``..``, no drive, not empty, no NUL), checked on the normalised absolute paths."""
    folder = Path(folder)
    plain = (isinstance(file_name, str) and file_name not in ("", ".", "..") and "\0" not in file_name
             and "/" not in file_name and "\\" not in file_name and os.path.basename(file_name) == file_name)
    path = folder / file_name if plain else None
    if path is None or Path(os.path.abspath(path)).parent != Path(os.path.abspath(folder)):
        raise OutputError(f"refusing to write {shown(file_name)}: an output name must be a plain file name inside "
                          f"{folder}")
    return path
