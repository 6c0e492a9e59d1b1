"""The fingerprint of a run's training data that lineage records: sha256 over every case's file names and bytes."""

from __future__ import annotations

import hashlib
from typing import Sequence

from ..nnunet import Dataset


def training_files_sha256(datasets: Sequence[Dataset]) -> str:
    """sha256 over every training file's ``<dataset>/<file name>`` and bytes, in case order."""
    h = hashlib.sha256()
    for ds in datasets:
        for case in ds.cases:
            for path in (case.image, case.label):
                h.update(f"{ds.name}/{path.name}\n".encode())
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
    return h.hexdigest()
