"""The model catalogue: which Hermes model files exist and what they hold.

- the embedded default model (``$HERMESSEG_MODEL``, else ``hermesseg/resources/`` or ``Resources/Models/`` beside
  the package: the rule of ``hermesseg.default_model.default_model_path``), found by looking at files: importing
  ``hermesseg`` would import torch into Slicer's process;
- the user's models folder (``$HERMESSEG_MODELS_DIR``, else ``~/.hermesseg/models``): official checkpoints imported
  with the model manager, models trained by HermesTraining, files the user copies there;
- any other file the user picks.

What a model holds (tasks grouped by dataset, modalities, colours, terminology, model card) is read from the file's
header in Slicer's process by the engine's torch-free reader (:func:`readModelInfo`), so a model is described even
before torch is installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import engine

MODEL_SUFFIX = ".safetensors"
DEFAULT_MODEL_FILE = "hermes-mini.safetensors"  # hermesseg.default_model.DEFAULT_MODEL_FILE
MODELS_DIR_ENV = "HERMESSEG_MODELS_DIR"
DEFAULT_MODEL_ENV = "HERMESSEG_MODEL"


class ModelInfoError(RuntimeError):
    pass


@dataclass
class ModelEntry:
    path: Path
    label: str
    embedded: bool = False


def userModelsFolder() -> Path:
    override = os.environ.get(MODELS_DIR_ENV)
    return Path(override).expanduser() if override else Path.home() / ".hermesseg" / "models"


def defaultModelPath() -> Path | None:
    """The embedded default model, if this installation has one."""
    env = os.environ.get(DEFAULT_MODEL_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    folder = engine.enginePackageFolder()
    if folder is None:
        return None
    for resources in (folder / engine.PACKAGE / "resources", folder / "Resources" / "Models"):
        preferred = resources / DEFAULT_MODEL_FILE
        if preferred.is_file():
            return preferred
    return None


def listModels(extraFolders: list[Path] | None = None) -> list[ModelEntry]:
    """The default model first, then the user's models (sorted by name); no duplicates."""
    entries: list[ModelEntry] = []
    seen: set[Path] = set()
    default = defaultModelPath()
    if default is not None:
        entries.append(ModelEntry(default, f"{default.stem} (default)", embedded=True))
        seen.add(default.resolve())
    for folder in [userModelsFolder(), *(extraFolders or [])]:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"*{MODEL_SUFFIX}")):
            if path.resolve() in seen or path.name.startswith("."):
                continue
            seen.add(path.resolve())
            entries.append(ModelEntry(path, path.stem))
    return entries


def importedModelPath(checkpoint: str | Path, folder: Path | None = None) -> Path:
    """Where the model manager writes the model imported from ``checkpoint``."""
    return (folder or userModelsFolder()) / (Path(checkpoint).stem + MODEL_SUFFIX)


def newModelPath(stem: str, folder: Path | None = None) -> Path:
    """``<folder>/<stem>.safetensors`` (default folder: the user's models), numbered ``-2``, ``-3``... so that a
    trained or imported model never overwrites an existing file."""
    folder = folder or userModelsFolder()
    candidate, n = folder / f"{stem}{MODEL_SUFFIX}", 2
    while candidate.exists():
        candidate, n = folder / f"{stem}-{n}{MODEL_SUFFIX}", n + 1
    return candidate


def readModelInfo(path: str | Path) -> dict:
    """What a model file holds, with the same keys as ``hermesseg info --json``, read in this process without torch.

    The engine's own reader does it (``hermesseg.model_header``: the safetensors header and the manifest, validated
    as the engine validates them), so Slicer and the engine never disagree about a model. Raises ModelInfoError with
    the engine's one-line message for a missing, truncated or hostile file."""
    header = engine.importEngineModule("hermesseg.model_header")
    errors = engine.importEngineModule("hermesseg.errors")
    try:
        return header.model_summary(path)
    except errors.HermesError as e:
        raise ModelInfoError(str(e)) from None


class ModelCatalog:
    """Model descriptions cached per file (path, size, modification time): reading one is a header read (ms)."""

    def __init__(self):
        self._cache: dict[tuple[str, int, int], dict] = {}

    @staticmethod
    def _key(path: str | Path) -> tuple[str, int, int]:
        p = Path(path)
        st = p.stat()
        return (str(p.resolve()), st.st_size, st.st_mtime_ns)

    def cachedInfo(self, path: str | Path) -> dict | None:
        try:
            return self._cache.get(self._key(path))
        except OSError:
            return None

    def info(self, path: str | Path) -> dict:
        cached = self.cachedInfo(path)
        if cached is not None:
            return cached
        info = readModelInfo(path)
        try:
            self._cache[self._key(path)] = info
        except OSError:  # removed meanwhile: nothing to cache
            pass
        return info


def tasksByGroup(info: dict, modality: str | None = None) -> dict[str, list[dict]]:
    """The model's tasks grouped by dataset (model order), keeping those learned for ``modality`` if given."""
    groups: dict[str, list[dict]] = {g: [] for g in info.get("groups", [])}
    for task in info.get("tasks", []):
        if modality and modality not in task.get("modalities", []):
            continue
        groups.setdefault(task.get("group", ""), []).append(task)
    return {g: tasks for g, tasks in groups.items() if tasks}


def modelCardHtml(info: dict, path: str | Path | None = None) -> str:
    """A short model card for the model manager (name, version, size, tasks, modalities, lineage, licence notes)."""
    import html

    def esc(x) -> str:
        return html.escape(str(x))

    rows = [f"<b>{esc(info.get('name', '?'))}</b> version {esc(info.get('version', '?'))}"]
    if path:
        rows.append(f"File: {esc(path)}")
    if info.get("num_parameters"):
        rows.append(f"Parameters: {int(info['num_parameters']):,}")
    rows.append(f"Structures: {len(info.get('tasks', []))} in {len(info.get('groups', []))} datasets")
    rows.append("Modalities: " + ", ".join(esc(m.get("name")) for m in info.get("modalities", [])))
    for key, value in (info.get("card") or {}).items():
        rows.append(f"{esc(key.replace('_', ' ').capitalize())}: {esc(value)}")
    for record in info.get("lineage", []) or []:
        rows.append(f"History: {esc(record.get('operation'))} {esc(record.get('created', ''))}"
                    + (f" on {esc(', '.join(record.get('datasets', [])))}" if record.get("datasets") else ""))
    return "<br>".join(rows)
