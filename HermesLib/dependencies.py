"""Python packages the engine needs in Slicer's Python, installed on first use with the user's consent.

Rules (learned from other extensions' issue trackers):

- nothing is installed or imported at module import time; :func:`ensureDependencies` is called when the user first
  presses Segment (or imports a checkpoint); it lists everything missing (torch included) and asks once, as
  TotalSegmentator does, then installs without asking again;
- torch comes only through the PyTorch extension (``PyTorchUtils``), which picks the build matching the GPU driver;
- pip never replaces packages Slicer ships or manages elsewhere: SimpleITK (Slicer's ITK IO plugins), torch
  (PyTorchUtils), requests, numpy (:data:`PROTECTED`). On Slicer >= 5.12 ``pip_ensure(skip_packages=...)`` does
  this; on older versions each package is installed with ``--no-deps`` and its own dependencies are listed in
  ``requirements.txt`` (beside this module) explicitly;
- checks use package metadata, never imports (an import would load torch into Slicer's process for nothing).
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from pathlib import Path
from typing import Callable

PROTECTED = ("torch", "SimpleITK", "requests", "numpy")
REQUIREMENTS_FILE = Path(__file__).resolve().with_name("requirements.txt")  # installed beside this package
# What PyTorchUtils is asked to install: the torch that every MONAI allowed by requirements.txt needs (MONAI 1.6
# requires torch>=2.8) and that the engine's own pin in pyproject.toml satisfies (tests/test_slicer_dependencies.py
# checks both).
TORCH_REQUIREMENT = ">=2.8"


class DependencyError(RuntimeError):
    pass


class DependencyDeclined(DependencyError):
    """The user said no; nothing was installed."""


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


def torchRequirement() -> str:
    return "torch" + TORCH_REQUIREMENT


def missingDependencies(requirementsFile: str | Path = REQUIREMENTS_FILE) -> list[str]:
    """Everything Hermes lacks in this Python: torch first (if absent or too old), then the pip packages."""
    missing = [] if torchSatisfied() else [torchRequirement()]
    return missing + missingRequirements(readRequirements(requirementsFile))


def installMessage(missing: list[str]) -> str:
    """The one question asked before installing."""
    torchLine = [m for m in missing if isProtected(m)]
    packages = [m for m in missing if not isProtected(m)]
    parts = ["Hermes needs Python packages that are not installed in Slicer yet:", ""]
    if torchLine:
        parts.append(f"- {torchLine[0]}, through the PyTorch extension (it picks the build for your GPU driver)")
    parts += [f"- {p}" for p in packages]
    parts += ["", "Download and install them now? This may take several minutes. SimpleITK, numpy and requests "
                  "are left as they are."]
    return "\n".join(parts)


def installedTorchVersion() -> str | None:
    """torch's version from its metadata (importing torch into Slicer's process just to check would be costly)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def torchSatisfied() -> bool:
    version = installedTorchVersion()
    if version is None:
        return False
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # no 'packaging' module: presence is all we can check
        return True
    return SpecifierSet(TORCH_REQUIREMENT).contains(version, prereleases=True)


def ensureTorch(askConfirmation: bool = True) -> None:
    """Install torch through the PyTorch extension if it is missing (``askConfirmation``: PyTorchUtils asks)."""
    if torchSatisfied():
        return
    if installedTorchVersion() is not None:
        raise DependencyError(f"Hermes needs {torchRequirement()}, but PyTorch {installedTorchVersion()} is "
                              "installed: update it in the PyTorch Utils module, restart Slicer, and try again.")
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyError("PyTorch is required. Install the 'PyTorch' extension from the Extensions Manager, "
                              "restart Slicer, and try again.") from None
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if torchLogic.torchInstalled():
        return
    try:
        try:
            torch = torchLogic.installTorch(askConfirmation=askConfirmation,
                                            torchVersionRequirement=TORCH_REQUIREMENT)
        except TypeError:  # older PyTorchUtils signature
            torch = torchLogic.installTorch(askConfirmation)
    except Exception as e:  # noqa: BLE001 - download or pip failure inside PyTorchUtils: one message for the user
        raise DependencyError(f"PyTorch could not be installed: {e}. Try the PyTorch Utils module (choose the "
                              "computation backend there if detection fails).") from None
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


def _askOnce(confirm: Callable[[str], bool] | None, missing: list[str]) -> None:
    """The one question before installing ``missing`` (None: already asked); DependencyDeclined on no."""
    if confirm is not None and not confirm(installMessage(missing)):
        raise DependencyDeclined("installation of the Python packages Hermes needs was declined: "
                                 + ", ".join(missing))


def ensurePackages(requirementsFile: str | Path = REQUIREMENTS_FILE, confirm: Callable[[str], bool] | None = None,
                   requester: str = "HermesExtension") -> list[str]:
    """Install the missing non-protected requirements; returns what was installed (empty if nothing was missing).

    ``confirm(message)`` asks the user first (None: the caller has asked already). Raises DependencyDeclined when
    the user declines, DependencyError when pip fails.
    """
    requirements = readRequirements(requirementsFile)
    missing = missingRequirements(requirements)
    if not missing:
        return []
    _askOnce(confirm, missing)
    pipEnsure = _pipEnsure()
    try:
        if pipEnsure is not None:
            try:
                pipEnsure(missing, skip_packages=list(PROTECTED), prompt_install=False, requester=requester)
            except TypeError:  # a pip_ensure without skip_packages / prompt_install
                pipEnsure(missing, requester=requester)
        else:
            import slicer.util
            for requirement in missing:
                logging.info("Installing %s", requirement)
                slicer.util.pip_install([requirement, "--no-deps"])
    except Exception as e:  # noqa: BLE001 - pip's and Slicer's errors vary by version; the user gets one message
        raise DependencyError(f"Python packages needed by Hermes were not installed: {e}") from None
    still = missingRequirements(requirements)
    if still:
        raise DependencyError("these Python packages are still missing after installation: " + ", ".join(still))
    return missing


def ensureDependencies(requirementsFile: str | Path = REQUIREMENTS_FILE,
                       confirm: Callable[[str], bool] | None = None) -> list[str]:
    """Everything missing, after one ``confirm(message)`` (None: install without asking): torch through
    PyTorchUtils, then the engine's other packages. Returns what was missing (empty: nothing to do); raises
    DependencyDeclined or DependencyError, after which the caller refreshes what depends on the packages."""
    missing = missingDependencies(requirementsFile)
    if not missing:
        return []
    _askOnce(confirm, missing)
    ensureTorch(askConfirmation=False)
    ensurePackages(requirementsFile)
    return missing
