"""A model file's safetensors header read with plain ``json``: the manifest, the tensor shapes, the ``info`` summary.

No torch here (nor in what this module imports): the Slicer modules read a model's description in Slicer's own
process, where torch may not be installed yet, and ``hermesseg info --json`` prints the same summary.

Safetensors layout (https://github.com/huggingface/safetensors, "Format"): 8 bytes little-endian unsigned header
length N, then N bytes of UTF-8 JSON ``{"__metadata__": {str: str}, NAME: {"dtype": str, "shape": [int...],
"data_offsets": [begin, end]}, ...}``, then the tensor bytes (offsets relative to the end of the header). Every
field is checked before use, so a truncated, hostile or non-model file is a ModelFileError, never a crash; the
manifest is checked against its stored digest (``hermes_manifest_sha256``) when the file has one.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .catalogue import catalogue
from .errors import ModelFileError
from .manifest import Manifest, manifest_digest
from .selection import MIN_HELDOUT_CASES, MIN_HELDOUT_DICE, default_selection, quality_text

MANIFEST_KEY = "hermes_manifest"
MANIFEST_DIGEST_KEY = "hermes_manifest_sha256"  # absent in files written before it existed (hermes-mini)
METADATA_KEY = "__metadata__"
# Our manifests are tens of kB (113 tasks: about 60 kB). 16 MiB leaves room for thousands of tasks and long model
# cards while keeping a hostile length from making Slicer read and parse gigabytes.
MAX_HEADER_BYTES = 16 * 1024 * 1024
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
               "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]


def _unreadable(path: Path, why: str) -> ModelFileError:
    return ModelFileError(f"{path} is not a readable Hermes model file ({why}); is it truncated, or an official .pth "
                          f"that needs `hermesseg import-official`?")


def _tensor_entry(path: Path, name: str, entry, data_bytes: int) -> TensorEntry:
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        raise _unreadable(path, f"tensor {name!r} has no dtype")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                              for n in shape):
        raise _unreadable(path, f"tensor {name!r} has an invalid shape")
    if entry["dtype"] not in DTYPE_BYTES:
        raise _unreadable(path, f"tensor {name!r} has an unknown dtype {entry['dtype']!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes):
        raise _unreadable(path, f"tensor {name!r} lies outside the file")
    tensor = TensorEntry(entry["dtype"], tuple(shape))
    if offsets[1] - offsets[0] != tensor.numel * DTYPE_BYTES[tensor.dtype]:
        raise _unreadable(path, f"tensor {name!r} does not match its byte range")
    return tensor


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """The metadata and the tensors' dtypes and shapes of a safetensors file, validated against the file size."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) != 8:
                raise _unreadable(path, "shorter than a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise _unreadable(path, f"header of {length} bytes, more than the {MAX_HEADER_BYTES} allowed")
            if length > size - 8:
                raise _unreadable(path, f"header of {length} bytes in a file of {size} bytes")
            raw = f.read(length)
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _unreadable(path, "the header is not JSON") from None
    if not isinstance(header, dict):
        raise _unreadable(path, "the header is not a JSON object")
    metadata = header.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise _unreadable(path, "the metadata is not a table of strings")
    data_bytes = size - 8 - length
    tensors = {name: _tensor_entry(path, name, entry, data_bytes) for name, entry in header.items()}
    return SafetensorsHeader(metadata=metadata, tensors=tensors)


def manifest_text(path: str | os.PathLike, header: SafetensorsHeader) -> str:
    """The manifest JSON text, checked against its stored digest when the file has one."""
    if MANIFEST_KEY not in header.metadata:
        raise ModelFileError(f"{path} is a safetensors file without a Hermes manifest")
    text = header.metadata[MANIFEST_KEY]
    stored = header.metadata.get(MANIFEST_DIGEST_KEY)
    if stored is not None and stored != manifest_digest(text):
        raise ModelFileError(f"{path}: the manifest does not match its stored digest (the file was edited or is "
                             f"corrupted)")
    return text


def manifest_from_header(path: str | os.PathLike, header: SafetensorsHeader) -> Manifest:
    text = manifest_text(path, header)
    try:
        return Manifest.from_json(text)
    except RecursionError:
        raise ModelFileError(f"{path}: the manifest is nested too deeply") from None
    except (TypeError, ValueError, AttributeError, KeyError) as e:  # a field of the wrong JSON type
        raise ModelFileError(f"{path}: the manifest has a malformed entry ({type(e).__name__}: {e})") from None


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate only the manifest (the header, not the weights)."""
    return manifest_from_header(path, read_header(path))


def model_identity(path: str | os.PathLike) -> str:
    """The model's identity (``hermesseg.manifest.manifest_digest`` of its manifest): covers names and weights."""
    return manifest_digest(manifest_text(path, read_header(path)))


def manifest_summary(manifest: Manifest, num_parameters: int, identity: str | None = None) -> dict:
    """What `hermesseg info --json` prints (and what the Slicer modules show); ``identity``: :func:`model_identity`;
    a task's ``default``: it runs without --tasks (hermesseg.selection)."""
    default_ids = {t.id for m in manifest.modalities for t in default_selection(manifest.tasks, m.name).chosen}
    return {
        "name": manifest.name,
        "version": manifest.version,
        "format_version": manifest.format_version,
        "architecture": manifest.architecture,
        "num_parameters": num_parameters,
        "num_task_rows": manifest.config.num_task_rows,
        "tasks": [{"id": t.id, "name": t.name, "display_name": catalogue().display_name(t), "group": t.group,
                   "modalities": t.modalities, "color": list(t.color), "terminology": catalogue().terminology(t),
                   "note": catalogue().note(t), "quality": t.quality, "quality_text": quality_text(t),
                   "default": t.id in default_ids} for t in manifest.tasks],
        "default_rule": {"min_heldout_dice": MIN_HELDOUT_DICE, "min_heldout_cases": MIN_HELDOUT_CASES},
        "groups": manifest.groups,
        "adapters": [{"group": a.group, "tasks": [manifest.task(i).name for i in a.task_ids], "design": a.design,
                      "width": a.width, "levels": a.levels, "blocks": a.blocks} for a in manifest.config.adapters],
        "modalities": [{"id": m.id, "name": m.name, "description": m.description, "dicom": m.dicom}
                       for m in manifest.modalities],
        "preprocessing": manifest.preprocessing,
        "lineage": [json.loads(json.dumps(r.__dict__)) for r in manifest.lineage],
        "weights_sha256": manifest.weights_sha256,
        "manifest_sha256": identity,
        "card": manifest.card,
    }


def model_summary(path: str | os.PathLike) -> dict:
    """The summary of a model file from its header alone; parameters counted from the tensor shapes."""
    header = read_header(path)
    manifest = manifest_from_header(path, header)
    return manifest_summary(manifest, sum(t.numel for t in header.tensors.values()),
                            manifest_digest(manifest_text(path, header)))
