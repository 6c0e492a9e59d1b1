"""Python packages the engine needs in Slicer's Python, installed on first use with the user's consent.

Rules (learned from other extensions' issue trackers):

- nothing is installed or imported at module import time; :func:`ensureDependencies` is called when the user first
  presses Segment (or imports a checkpoint);
- torch comes only through the PyTorch extension (``PyTorchUtils``), which picks the build matching the GPU driver;
- pip never replaces packages Slicer ships or manages elsewhere: SimpleITK (Slicer's ITK IO plugins), torch
  (PyTorchUtils), requests, numpy (:data:`PROTECTED`). On Slicer >= 5.12 ``pip_ensure(skip_packages=...)`` does
  this; on older versions each package is installed with ``--no-deps`` and its own dependencies are listed in
  ``Resources/requirements.txt`` explicitly;
- checks use package metadata, never imports (an import would load torch into Slicer's process for nothing).
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from pathlib import Path
from typing import Callable

PROTECTED = ("torch", "SimpleITK", "requests", "numpy")
TORCH_REQUIREMENT = ">=2.1"


class DependencyError(RuntimeError):
    pass


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_PROTECTED_CANONICAL = {_canonical(p) for p in PROTECTED}


def readRequirements(path: str | Path) -> list[str]:
    """Requirement strings of a requirements.txt (comments, blank lines and pip options skipped)."""
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def requirementName(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(1)


def isProtected(requirement: str) -> bool:
    return _canonical(requirementName(requirement)) in _PROTECTED_CANONICAL


def isSatisfied(requirement: str) -> bool:
    """Installed at an acceptable version, or not needed on this platform (from metadata; no import)."""
    try:
        from packaging.requirements import Requirement
        req = Requirement(requirement)
    except Exception:  # noqa: BLE001 - no 'packaging' module or an unusual line: presence is all we can check
        req = None
    if req is not None and req.marker is not None and not req.marker.evaluate():
        return True  # e.g. colorama; platform_system == "Windows" on Linux
    try:
        installed = importlib.metadata.version(requirementName(requirement))
    except importlib.metadata.PackageNotFoundError:
        return False
    return True if req is None else req.specifier.contains(installed, prereleases=True)


def missingRequirements(requirements: list[str]) -> list[str]:
    """Requirements this Python lacks, protected packages excluded (they are never pip-installed here)."""
    return [r for r in requirements if not isProtected(r) and not isSatisfied(r)]


def torchInstalled() -> bool:
    try:
        importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def ensureTorch(askConfirmation: bool = True) -> None:
    """Install torch through the PyTorch extension if it is missing (it asks the user first)."""
    if torchInstalled():
        return
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyError("PyTorch is required. Install the 'PyTorch' extension from the Extensions Manager, "
                              "restart Slicer, and try again.") from None
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if torchLogic.torchInstalled():
        return
    try:
        torch = torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT)
    except TypeError:  # older PyTorchUtils signature
        torch = torchLogic.installTorch(askConfirmation)
    if torch is None:
        raise DependencyError("PyTorch was not installed; Hermes cannot run without it. Use the PyTorch Utils "
                              "module to install it (choose the computation backend there if detection fails).")


def _pipEnsure():
    """``pip_ensure`` of Slicer >= 5.12 (``slicer.packaging``; ``slicer.pydeps`` in some 5.11 builds), or None."""
    for moduleName in ("slicer.packaging", "slicer.pydeps"):
        try:
            module = __import__(moduleName, fromlist=["pip_ensure"])
        except ImportError:
            continue
        function = getattr(module, "pip_ensure", None)
        if function is not None:
            return function
    return None


def ensurePackages(requirementsFile: str | Path, confirm: Callable[[str], bool] | None = None,
                   requester: str = "HermesSegmentation") -> list[str]:
    """Install the missing non-protected requirements; returns what was installed (empty if nothing was missing).

    ``confirm(message)`` asks the user (older Slicer only; ``pip_ensure`` shows its own dialog). Raises
    DependencyError when the user declines or pip fails.
    """
    requirements = readRequirements(requirementsFile)
    missing = missingRequirements(requirements)
    if not missing:
        return []
    pipEnsure = _pipEnsure()
    if pipEnsure is not None:
        try:
            pipEnsure(missing, skip_packages=list(PROTECTED), prompt_install=True, requester=requester)
        except RuntimeError as e:
            raise DependencyError(f"Python packages needed by Hermes were not installed: {e}") from None
        except TypeError:  # a pip_ensure without skip_packages
            pipEnsure(missing, requester=requester)
    else:
        message = ("Hermes needs these Python packages, which will be downloaded and installed into Slicer's "
                   "Python now:\n\n" + "\n".join(missing) + "\n\n(SimpleITK, torch and requests are left as they "
                   "are.) This may take a few minutes.")
        if confirm is not None and not confirm(message):
            raise DependencyError("installation of the Python packages Hermes needs was declined: "
                                  + ", ".join(missing))
        import slicer.util
        for requirement in missing:
            logging.info("Installing %s", requirement)
            slicer.util.pip_install([requirement, "--no-deps"])
    still = missingRequirements(requirements)
    if still:
        raise DependencyError("these Python packages are still missing after installation: " + ", ".join(still))
    return missing


def ensureDependencies(requirementsFile: str | Path, confirm: Callable[[str], bool] | None = None,
                       askTorchConfirmation: bool = True) -> list[str]:
    """torch (through PyTorchUtils), then the engine's other packages. Call from the GUI on first use."""
    ensureTorch(askConfirmation=askTorchConfirmation)
    return ensurePackages(requirementsFile, confirm=confirm)
