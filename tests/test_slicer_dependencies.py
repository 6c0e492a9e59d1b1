"""First-use installation of the engine's Python packages in Slicer: never torch/SimpleITK/numpy/requests through
pip, consent first, Slicer >= 5.12 ``pip_ensure`` when present, ``--no-deps`` pip installs otherwise.

Slicer's installers are replaced by recorders (nothing is installed); the requirement checks are real.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import slicer
import slicer.util

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "HermesSegmentation"))

from HermesSegmentationLib import dependencies as deps  # noqa: E402

REQUIREMENTS = REPO / "HermesSegmentation" / "Resources" / "requirements.txt"


@pytest.fixture
def requirements_file(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\n--index-url https://example.invalid\nnumpy>=1\nSimpleITK\n"
                    "pytest>=1  # installed\nhermes-not-a-real-package>=1\n", encoding="utf-8")
    return path


@pytest.fixture
def no_modern_installer(monkeypatch):
    for name in ("slicer.packaging", "slicer.pydeps"):
        monkeypatch.setitem(sys.modules, name, None)  # import -> ImportError


def test_requirement_checks_use_metadata():
    assert deps.isSatisfied("pytest>=1") and not deps.isSatisfied("pytest>=999")
    assert not deps.isSatisfied("hermes-not-a-real-package")
    assert deps.isSatisfied('hermes-not-a-real-package; platform_system == "Nonexistent"')  # marker not for us
    assert deps.isProtected("SimpleITK>=2.3") and deps.isProtected("torch==2.13.0") and deps.isProtected("Numpy")
    assert not deps.isProtected("monai>=1.4")
    assert deps.missingRequirements(["numpy>=999", "torch>=999", "pytest", "hermes-not-a-real-package"]) == [
        "hermes-not-a-real-package"]


def test_shipped_requirements_are_satisfied_in_the_test_environment():
    """The engine runs in this venv, so everything requirements.txt asks for (on this platform) is here."""
    assert deps.missingRequirements(deps.readRequirements(REQUIREMENTS)) == []


def test_pip_ensure_gets_only_missing_packages_and_the_protected_list(monkeypatch, requirements_file):
    calls = []
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = lambda reqs, **kwargs: calls.append((list(reqs), kwargs))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)

    with pytest.raises(deps.DependencyError, match="still missing.*hermes-not-a-real-package"):
        deps.ensurePackages(requirements_file)  # the recorder installs nothing
    (reqs, kwargs), = calls
    assert reqs == ["hermes-not-a-real-package>=1"]
    assert kwargs["skip_packages"] == list(deps.PROTECTED) and kwargs["prompt_install"] is True


def test_declining_pip_ensure_is_an_error(monkeypatch, requirements_file):
    def decline(reqs, **kwargs):
        raise RuntimeError("user declined")

    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = decline
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    with pytest.raises(deps.DependencyError, match="user declined"):
        deps.ensurePackages(requirements_file)


def test_older_slicer_asks_first_and_installs_each_package_without_dependencies(
        monkeypatch, requirements_file, no_modern_installer):
    installed = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda args: installed.append(args))
    asked = []

    with pytest.raises(deps.DependencyError, match="declined"):
        deps.ensurePackages(requirements_file, confirm=lambda message: asked.append(message) or False)
    assert installed == [] and "hermes-not-a-real-package>=1" in asked[0] and "SimpleITK" in asked[0]

    with pytest.raises(deps.DependencyError, match="still missing"):
        deps.ensurePackages(requirements_file, confirm=lambda message: True)
    assert installed == [["hermes-not-a-real-package>=1", "--no-deps"]]


def test_nothing_to_do_when_everything_is_installed(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise AssertionError("no installer may run")

    monkeypatch.setattr(slicer.util, "pip_install", fail)
    path = tmp_path / "requirements.txt"
    path.write_text("pytest>=1\nSimpleITK>=999\n", encoding="utf-8")  # SimpleITK is never pip-installed here
    assert deps.ensurePackages(path, confirm=fail) == []


def test_torch_comes_only_from_the_pytorch_extension(monkeypatch):
    monkeypatch.setattr(deps, "torchInstalled", lambda: False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(deps.DependencyError, match="'PyTorch' extension"):
        deps.ensureTorch()

    calls = []

    class FakeLogic:
        def torchInstalled(self):
            return False

        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            calls.append((askConfirmation, torchVersionRequirement))
            return None  # the user declined

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FakeLogic))
    with pytest.raises(deps.DependencyError, match="PyTorch was not installed"):
        deps.ensureTorch(askConfirmation=True)
    assert calls == [(True, deps.TORCH_REQUIREMENT)]
