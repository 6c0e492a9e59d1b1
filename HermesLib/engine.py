"""Where the ``hermesseg`` engine is and how to start it in a child process.

The engine (torch, MONAI, ...) never runs inside Slicer's process: every call goes through
``[python, "-m", "hermesseg.cli", SUBCOMMAND, ...]`` with Slicer's own interpreter (``PythonSlicer``), so GPU memory,
crashes and long computations stay out of the application and cancelling is killing a process tree.

This module imports neither torch nor the engine's computing parts: it *locates* the package folder, with
``importlib.util.find_spec`` or by looking next to the module files, and puts that folder first on the child's
``PYTHONPATH``. The few torch-free engine modules (the model file header reader) are imported in Slicer's process
with :func:`importEngineModule`.

Where ``hermesseg`` is found, in this order:

1. ``$HERMESSEG_ENGINE_PATH`` (a folder that contains the ``hermesseg`` package), for developers;
2. beside this package: the top-level ``CMakeLists.txt`` installs both into the folder of the extension's scripted
   modules (``<extension>/lib/Slicer-X.Y/qt-scripted-modules/{hermesseg,HermesLib}``), and in a source checkout both
   are at the repository root (modules used from the source tree: additional module paths);
3. wherever Python finds it (``find_spec``), e.g. a venv with ``pip install -e .``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

PACKAGE = "hermesseg"
CLI_MODULE = "hermesseg.cli"
ENGINE_PATH_ENV = "HERMESSEG_ENGINE_PATH"
PYTHON_ENV = "HERMESSEG_PYTHON"
PARENT_PID_ENV = "HERMESSEG_PARENT_PID"  # hermesseg.parent_watch: the engine stops when this process dies

_BESIDE = Path(__file__).resolve().parent.parent  # repository root (source) or qt-scripted-modules (installed)


def _holds_package(folder: Path) -> bool:
    return (folder / PACKAGE / "__init__.py").is_file() and (folder / PACKAGE / "cli").is_dir()


def enginePackageFolder() -> Path | None:
    """The folder that contains the ``hermesseg`` package (the entry to put on ``PYTHONPATH``), or None."""
    override = os.environ.get(ENGINE_PATH_ENV)
    if override and _holds_package(Path(override)):
        return Path(override).resolve()
    if _holds_package(_BESIDE):
        return _BESIDE
    try:
        spec = importlib.util.find_spec(PACKAGE)  # locates, does not import (no torch import in Slicer)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).resolve().parent
    return None


def insideSlicerApplication() -> bool:
    """True inside the Slicer application (not in plain Python with the ``slicer-core`` wheel)."""
    try:
        import slicer
    except ImportError:
        return False
    return getattr(slicer, "app", None) is not None


def pythonExecutable() -> str:
    """The interpreter that runs the engine: ``$HERMESSEG_PYTHON``, else ``PythonSlicer`` inside Slicer, else the
    current interpreter (scripts, tests)."""
    override = os.environ.get(PYTHON_ENV)
    if override:
        return override
    if insideSlicerApplication():
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def baseEnvironment() -> dict[str, str]:
    """Slicer's startup environment when available (what ``launchConsoleProcess`` uses), else ``os.environ``."""
    if insideSlicerApplication():
        try:
            import slicer.util
            env = slicer.util.startupEnvironment()
            if env:
                return dict(env)
        except Exception:  # noqa: BLE001 - an older Slicer without startupEnvironment: fall back to ours
            pass
    return dict(os.environ)


def engineEnvironment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the child: the engine folder first on ``PYTHONPATH``, unbuffered UTF-8 output, and this
    process's id, so that the engine stops if Slicer dies during a run."""
    env = baseEnvironment()
    folder = enginePackageFolder()
    if folder is not None:
        parts = [str(folder)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(folder)]
        env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    # `python -m` puts the working folder first on sys.path, before PYTHONPATH: a `hermesseg` folder there would run
    # instead of the engine. PYTHONSAFEPATH (Python 3.11+) leaves it out; older interpreters ignore the variable.
    env["PYTHONSAFEPATH"] = "1"
    env[PARENT_PID_ENV] = str(os.getpid())
    if extra:
        env.update(extra)
    return env


def engineCommand(subcommand: str, *args: str, python: str | None = None) -> list[str]:
    """``[python, "-m", "hermesseg.cli", subcommand, *args]``."""
    return [python or pythonExecutable(), "-m", CLI_MODULE, subcommand, *[str(a) for a in args]]


def requireEngine() -> Path:
    """The engine folder, or an EngineNotFoundError that says how to fix it."""
    folder = enginePackageFolder()
    if folder is None:
        raise EngineNotFoundError(
            "The Hermes engine (Python package 'hermesseg') was not found. Reinstall the HermesExtension, or set "
            f"{ENGINE_PATH_ENV} to the folder that contains the 'hermesseg' package.")
    return folder


def importEngineModule(name: str):
    """Import a torch-free module of the engine (e.g. ``hermesseg.model_header``) into this process.

    Only modules that import neither torch nor MONAI may be imported this way (tests check that
    ``hermesseg.model_header`` pulls in no torch); everything else runs in a child process. The engine folder is
    put on ``sys.path`` when it is not there (modules used from a source checkout)."""
    folder = str(requireEngine())
    if folder not in sys.path:
        sys.path.append(folder)
    return importlib.import_module(name)


class EngineNotFoundError(RuntimeError):
    """The ``hermesseg`` package is not installed where this module can find it."""
