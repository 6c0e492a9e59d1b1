"""First-use installation of the engine's Python packages in Slicer: never torch/SimpleITK/numpy/requests through
pip, one confirmation for everything (torch included), Slicer >= 5.12 ``pip_ensure`` when present, ``--no-deps`` pip
installs otherwise; the requirements agree with the engine's own pins in pyproject.toml.

Slicer's installers are replaced by recorders (nothing is installed); the requirement checks are real.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
import types
from pathlib import Path

import pytest
import slicer
import slicer.util
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "HermesSegmentation"))
sys.path.insert(0, str(REPO))  # HermesLib

from HermesLib import dependencies as deps  # noqa: E402

REQUIREMENTS = REPO / "HermesLib" / "requirements.txt"


def recording_pytorch_utils(calls: list, result):
    """A PyTorchUtils module whose installTorch records (askConfirmation, torchVersionRequirement) and returns
    ``result`` (None: the user declined)."""
    class RecordingLogic:
        def torchInstalled(self):
            return False

        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            calls.append((askConfirmation, torchVersionRequirement))
            return result

    return types.SimpleNamespace(PyTorchUtilsLogic=RecordingLogic)


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
    # the user was asked once already (by ensureDependencies): pip_ensure must not ask again
    assert kwargs["skip_packages"] == list(deps.PROTECTED) and kwargs["prompt_install"] is False


@pytest.mark.parametrize("error", [RuntimeError("user declined"), OSError("No space left on device")])
def test_a_failing_pip_ensure_is_one_dependency_error(monkeypatch, requirements_file, error):
    def fail(reqs, **kwargs):
        raise error

    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = fail
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    with pytest.raises(deps.DependencyError, match=f"were not installed: {error}"):
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
    monkeypatch.setattr(deps, "installedTorchVersion", lambda: None)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(deps.DependencyError, match="'PyTorch' extension"):
        deps.ensureTorch()

    calls = []
    monkeypatch.setitem(sys.modules, "PyTorchUtils", recording_pytorch_utils(calls, result=None))  # declined
    with pytest.raises(deps.DependencyError, match="PyTorch was not installed"):
        deps.ensureTorch(askConfirmation=True)
    assert calls == [(True, deps.TORCH_REQUIREMENT)]


def test_one_confirmation_lists_torch_and_the_packages_then_installs_without_asking(monkeypatch, requirements_file):
    """As TotalSegmentator does: a fresh Slicer (no torch) asks once; PyTorchUtils and pip_ensure do not ask."""
    monkeypatch.setattr(deps, "installedTorchVersion", lambda: None)
    torchCalls, pipCalls, asked = [], [], []
    monkeypatch.setitem(sys.modules, "PyTorchUtils",
                        recording_pytorch_utils(torchCalls, result=types.SimpleNamespace(__version__="2.13.0")))
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = lambda reqs, **kwargs: pipCalls.append((list(reqs), kwargs))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)

    assert deps.missingDependencies(requirements_file) == ["torch>=2.8", "hermes-not-a-real-package>=1"]
    with pytest.raises(deps.DependencyDeclined):
        deps.ensureDependencies(requirements_file, confirm=lambda message: asked.append(message) or False)
    assert torchCalls == [] and pipCalls == []  # declined: nothing was installed
    assert "torch>=2.8, through the PyTorch extension" in asked[0] and "hermes-not-a-real-package>=1" in asked[0]

    with pytest.raises(deps.DependencyError, match="still missing"):  # the recorders install nothing
        deps.ensureDependencies(requirements_file, confirm=lambda message: asked.append(message) or True)
    assert len(asked) == 2  # one question per attempt
    assert torchCalls == [(False, deps.TORCH_REQUIREMENT)]
    assert [(reqs, kwargs["prompt_install"]) for reqs, kwargs in pipCalls] == [(["hermes-not-a-real-package>=1"],
                                                                                  False)]


def test_too_old_torch_is_reported_not_reinstalled(monkeypatch):
    monkeypatch.setattr(deps, "installedTorchVersion", lambda: "2.1.0")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    assert not deps.torchSatisfied()
    with pytest.raises(deps.DependencyError, match=r"needs torch>=2.8, but PyTorch 2.1.0 is installed"):
        deps.ensureTorch()


def test_nothing_missing_in_the_test_environment_means_no_question():
    """The engine runs in this venv, so a Slicer with the same packages would segment at once."""
    assert deps.missingDependencies(REQUIREMENTS) == []
    assert deps.ensureDependencies(REQUIREMENTS, confirm=lambda message: pytest.fail("asked")) == []


# ---------------------------------------------------------------------------------------------- consistency
def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _engine_dependencies() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {_canonical(r.name): r for r in map(Requirement, project["dependencies"])}


def test_requirements_txt_has_the_engine_pins_line_for_line():
    """Every engine dependency that pip installs in Slicer has a line in requirements.txt with the same version
    range as pyproject.toml; the protected ones (torch, SimpleITK, numpy) have none."""
    shipped = {_canonical(r.name): r for r in map(Requirement, deps.readRequirements(REQUIREMENTS))}
    engine = _engine_dependencies()
    for name, requirement in engine.items():
        if deps.isProtected(requirement.name):
            assert name not in shipped, f"{name} must never be pip-installed from the module"
            continue
        assert name in shipped, f"engine dependency {requirement} has no line in requirements.txt"
        assert shipped[name].specifier == requirement.specifier, \
            f"{name}: requirements.txt says {shipped[name].specifier}, pyproject.toml says {requirement.specifier}"


def test_torch_requirement_fits_monai_and_the_engine_pin():
    """The torch asked of PyTorchUtils satisfies what MONAI needs and admits the engine's pinned torch.

    MONAI's own metadata says what it needs (the installed MONAI, which must lie in the allowed range; MONAI 1.6,
    the newest series allowed, needs torch>=2.8, older series need less). With ">=2.1" this test fails."""
    torch_spec = SpecifierSet(deps.TORCH_REQUIREMENT)
    engine = _engine_dependencies()
    pinned = Version(str(next(iter(engine["torch"].specifier)).version))
    assert pinned in torch_spec, f"pyproject pins torch {pinned}, outside {deps.TORCH_REQUIREMENT}"

    monai_range = engine["monai"].specifier
    monai_version = importlib.metadata.version("monai")
    assert monai_version in monai_range
    monai_torch = [Requirement(r) for r in importlib.metadata.requires("monai")
                   if Requirement(r).name == "torch" and Requirement(r).marker is None]
    assert monai_torch, "MONAI declares no torch requirement"
    floor = min((Version(s.version) for s in torch_spec if s.operator in (">=", ">")), default=None)
    assert floor is not None, "the torch requirement has no lower bound"
    for requirement in monai_torch:
        assert floor in requirement.specifier, \
            f"MONAI {monai_version} needs {requirement}; {deps.TORCH_REQUIREMENT} admits torch {floor}"
