"""Static checks of the Slicer modules that need no Qt: the .ui file, the widget's use of it, compilation, and that
the GUI files import (with stub qt/ctk/ScriptedLoadableModule modules: an import check only, no Qt behaviour)."""

from __future__ import annotations

import ast
import builtins
import dis
import importlib
import importlib.util
import os
import py_compile
import re
import sys
import types
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import slicer

REPO = Path(__file__).resolve().parents[1]
MODULE_DIRS = [REPO / "HermesSegmentation", REPO / "HermesTraining"]
SEG_DIR = REPO / "HermesSegmentation"
TRAIN_DIR = REPO / "HermesTraining"
SHARED_DIR = REPO / "HermesLib"
UI_FILE = SEG_DIR / "Resources" / "UI" / "HermesSegmentation.ui"
WIDGET_FILE = SEG_DIR / "HermesSegmentation.py"
MODULES = ["HermesSegmentation", "HermesTraining"]
LIB_DIRS = [SEG_DIR / "HermesSegmentationLib", TRAIN_DIR / "HermesTrainingLib", SHARED_DIR]


def module_ui_file(module: str) -> Path:
    return REPO / module / "Resources" / "UI" / f"{module}.ui"

# Which widget classes the parameter node wrapper can bind to which field types (Slicer's guiConnectors).
BINDABLE = {
    "vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"},
    "bool": {"QCheckBox", "QPushButton"},
    "str": {"QLineEdit", "QTextEdit"},  # a QComboBox needs Annotated[str, Choice(...)]
    "Device": {"QComboBox"},  # enum.Enum -> QComboBox
}


def ui_tree(module: str = "HermesSegmentation") -> ET.ElementTree:
    return ET.parse(module_ui_file(module))  # raises on malformed XML


def ui_widgets(module: str = "HermesSegmentation") -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ui_tree(module).iter("widget")}


def test_ui_is_wellformed_designer_file_with_mrml_top_level():
    root = ui_tree().getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == root.findtext("class") == "HermesSegmentation"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate objectName in the .ui"
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    used = {c for c in ui_widgets().values() if c.startswith(("ctk", "qMRML", "qSlicer"))}
    assert used <= custom, f"custom widget classes not declared: {used - custom}"
    collapsibles = [n for n, c in ui_widgets().items() if c == "ctkCollapsibleButton"]
    assert {"inputsCollapsibleButton", "tasksCollapsibleButton", "modelCollapsibleButton",
            "advancedCollapsibleButton", "logCollapsibleButton"} <= set(collapsibles)


@pytest.mark.parametrize("module", MODULES)
def test_every_mrml_widget_gets_the_scene(module):
    root = ui_tree(module).getroot()
    assert root.findtext("class") == root.find("widget").get("name") == module
    assert root.find("widget").get("class") == "qMRMLWidget"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate objectName in the .ui"
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    used = {c for c in ui_widgets(module).values() if c.startswith(("ctk", "qMRML", "qSlicer"))}
    assert used <= custom, f"custom widget classes not declared: {used - custom}"
    connected = {(c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot"))
                 for c in root.iter("connection")}
    for name, cls in ui_widgets(module).items():
        if cls.startswith("qMRML") and cls != "qMRMLWidget":
            assert (module, "mrmlSceneChanged(vtkMRMLScene*)", name,
                    "setMRMLScene(vtkMRMLScene*)") in connected, f"{name} never receives the MRML scene"


@pytest.mark.parametrize("module", MODULES)
def test_every_ui_name_used_by_the_code_exists_in_the_ui_file(module):
    code = (REPO / module / f"{module}.py").read_text(encoding="utf-8")
    used = set(re.findall(r"\b(?:self|widget)\.ui\.(\w+)", code))
    assert len(used) >= 15
    missing = used - set(ui_widgets(module))
    assert not missing, f"self.ui.<name> used in {module}.py but absent from the .ui: {sorted(missing)}"


def parameter_node_fields() -> dict[str, str]:
    tree = ast.parse(WIDGET_FILE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in HermesSegmentation.py")


def test_slicer_parameter_names_match_parameter_node_fields_and_widget_types():
    fields = parameter_node_fields()
    assert {"inputVolume", "modality", "modelPath", "tasks", "device", "fast"} <= set(fields)
    bound = {}
    for widget in ui_tree().getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[widget.get("name")] = (widget.get("class"), prop.findtext("string"))
    assert len(bound) >= 5
    for name, (cls, parameter) in bound.items():
        assert parameter in fields, f"{name} is bound to unknown parameter {parameter!r}"
        assert cls in BINDABLE.get(fields[parameter], set()), \
            f"{name} ({cls}) cannot be bound to {parameter}: {fields[parameter]}"
    assert {p for _, p in bound.values()} >= {"inputVolume", "device", "fast"}


def module_python_files() -> list[Path]:
    files = [p for d in MODULE_DIRS + [SHARED_DIR] for p in d.rglob("*.py") if "__pycache__" not in p.parts]
    return files + [REPO / "Testing" / "run_slicer_selftests.py"]


@pytest.mark.parametrize("path", module_python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_module_python_files_compile(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)


def test_lib_imports_neither_qt_nor_torch_nor_the_engine():
    """The Lib must import under slicer-core (no Qt) and must not load torch/hermesseg into Slicer's process."""
    for path in (p for d in LIB_DIRS for p in d.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in {"ctk", "torch", "hermesseg", "monai"}, f"{path.name}: {name}"
                if name.split(".")[0] == "qt":  # only lazily, inside a function guarded for the app
                    assert not any(node is n for n in tree.body), f"{path.name} imports qt at module level"


# Engine modules imported into Slicer's process; tests/test_slicer_model_info.py checks they pull in no torch.
TORCH_FREE_ENGINE_MODULES = {"hermesseg.model_header", "hermesseg.errors", "hermesseg.parent_watch",
                             "hermesseg.add_task_options"}


def test_lib_imports_only_torch_free_engine_modules():
    used = set()
    for path in (p for d in LIB_DIRS for p in d.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                    == "importEngineModule"):
                assert isinstance(node.args[0], ast.Constant), f"{path.name}: importEngineModule needs a literal"
                used.add(node.args[0].value)
    assert used and used <= TORCH_FREE_ENGINE_MODULES, used


# ---------------------------------------------------------------------------------------------- GUI import check
class _Anything:
    """Stands for any Qt/CTK object at import time."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return _Anything()

    def __call__(self, *args, **kwargs):
        return _Anything()


def _stub_module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    module.__getattr__ = lambda attr: _Anything()  # PEP 562: any other name resolves
    return module


@pytest.fixture
def stub_slicer_gui(monkeypatch):
    base = {name: type(name, (), {"__init__": lambda self, *a, **k: None})
            for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic")}
    import unittest
    base["ScriptedLoadableModuleTest"] = type("ScriptedLoadableModuleTest", (unittest.TestCase,), {})
    slm = _stub_module("slicer.ScriptedLoadableModule", **base)
    slm.__all__ = list(base)
    i18n = _stub_module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text)
    wrapper = _stub_module("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls)
    for name, module in {"qt": _stub_module("qt"), "ctk": _stub_module("ctk"), "slicer.ScriptedLoadableModule": slm,
                         "slicer.i18n": i18n, "slicer.parameterNodeWrapper": wrapper}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", slm, raising=False)
    monkeypatch.setattr(slicer, "i18n", i18n, raising=False)
    monkeypatch.setattr(slicer, "parameterNodeWrapper", wrapper, raising=False)
    for d in MODULE_DIRS:
        monkeypatch.syspath_prepend(str(d))
    for name in ("HermesSegmentation", "HermesTraining"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    for name in ("HermesSegmentation", "HermesTraining", "HermesSegmentationLib.logic", "HermesTrainingLib.logic"):
        sys.modules.pop(name, None)  # the logic module picked the stub base class: forget it


def test_gui_files_import_with_stub_qt(stub_slicer_gui):
    seg = importlib.import_module("HermesSegmentation")
    for cls in ("HermesSegmentation", "HermesSegmentationWidget", "HermesSegmentationTest",
                "HermesSegmentationParameterNode", "Device"):
        assert hasattr(seg, cls), cls
    assert [d.value for d in seg.Device] == ["auto", "gpu", "cpu"]
    def lib_modules(*dirs):
        return {f"{d.name}.{p.stem}" for d in dirs for p in d.glob("*.py") if p.stem != "__init__"}

    assert set(seg.LIB_MODULES) == lib_modules(SHARED_DIR, SEG_DIR / "HermesSegmentationLib")
    for name in seg.LIB_MODULES:  # onReload reloads them in this order: each import resolves
        importlib.import_module(name)
    training = importlib.import_module("HermesTraining")
    assert hasattr(training, "HermesTrainingWidget") and hasattr(training, "HermesTrainingTest")
    assert set(training.LIB_MODULES) == lib_modules(SHARED_DIR, TRAIN_DIR / "HermesTrainingLib")
    for name in training.LIB_MODULES:
        importlib.import_module(name)
    assert "test_WidgetTeachesAStructure" in dir(training.HermesTrainingTest)
    # unittest collects every method whose name starts with "test": helpers must not (testModelPath once was)
    collected = unittest.TestLoader().getTestCaseNames(seg.HermesSegmentationTest)
    assert sorted(collected) == ["test_LogicBlocking", "test_WidgetCancel", "test_WidgetSegmentsRealImage"]
    assert all(n.startswith("test_") for n in unittest.TestLoader().getTestCaseNames(training.HermesTrainingTest))


def _global_names(code) -> set[str]:
    names = {i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"}
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            names |= _global_names(const)
    return names


def test_every_global_name_used_in_module_code_exists(stub_slicer_gui):
    """Catches typos in code paths only the real application runs (a NameError would surface only there)."""
    module_names = ["HermesSegmentation", "HermesTraining"] + [
        f"{d.name}.{p.stem}" for d in LIB_DIRS for p in d.glob("*.py")]
    for name in module_names:
        module = importlib.import_module(name)
        source = Path(module.__file__).read_text(encoding="utf-8")
        code = compile(source, module.__file__, "exec")
        unknown = {n for n in _global_names(code) if n not in module.__dict__ and not hasattr(builtins, n)}
        assert not unknown, f"{name}: undefined global names {sorted(unknown)}"


def _selftest_runner():
    spec = importlib.util.spec_from_file_location("run_slicer_selftests", REPO / "Testing" / "run_slicer_selftests.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)  # under this name the script does not run the tests
    return runner


@pytest.mark.parametrize("module,least", [("HermesSegmentation", 7), ("HermesTraining", 5)])
def test_every_lib_attribute_the_widget_uses_exists(stub_slicer_gui, module, least):
    """``hermesModels.X``, ``hermesDependencies.X``, ``task_selection.X``, ``dependencies.X`` in a widget (and in
    the widgets' shared mixin): X must exist (a typo would surface only in the real application, e.g. in the
    install path that no headless test drives)."""
    widget = importlib.import_module(module)
    shared = importlib.import_module("HermesLib.widget")
    used = set()
    for source, namespace in ((REPO / module / f"{module}.py", widget), (SHARED_DIR / "widget.py", shared)):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        used |= {(namespace, n.value.id, n.attr) for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                 and isinstance(n.value, ast.Name) and n.value.id in ("hermesModels", "hermesDependencies",
                                                                      "task_selection", "dependencies")}
    assert len(used) >= least + 5
    missing = sorted(f"{m}.{a}" for ns, m, a in used if not hasattr(getattr(ns, m), a))
    assert not missing, missing


def test_selftest_runner_parses_its_arguments():
    runner = _selftest_runner()
    assert runner.MODULES == ("HermesSegmentation", "HermesTraining")
    args = runner.parseArguments(["--modules", "HermesTraining", "--no-skips", "--some-slicer-option"])
    assert args.modules == "HermesTraining" and args.no_skips


class _Outcomes(unittest.TestCase):
    """Real unittest outcomes for the runner's report (run by the runner's summary test below, not collected)."""

    def test_passes(self):
        self.assertEqual(1, 1)

    def test_skips(self):
        raise unittest.SkipTest("Python packages missing in Slicer: monai>=1.4,<1.7")

    def test_fails(self):
        self.assertEqual(1, 2)


_Outcomes.__test__ = False  # pytest: not a test class of this file


def _run(*names) -> unittest.TestResult:
    suite = unittest.TestSuite(_Outcomes(name) for name in names)
    return unittest.TextTestRunner(stream=open(os.devnull, "w"), verbosity=0).run(suite)


def test_selftest_runner_reports_skips_with_their_reasons():
    runner = _selftest_runner()
    passed, lines = runner.summarize("M", _run("test_passes", "test_skips"), allowSkips=True)
    assert passed
    assert lines[0] == "M: 2 test(s): 1 passed, 0 failed or errored, 1 skipped"
    assert lines[1] == "  skipped test_skips: Python packages missing in Slicer: monai>=1.4,<1.7"

    passed, lines = runner.summarize("M", _run("test_passes", "test_skips"), allowSkips=False)
    assert not passed and lines[-1] == "FAILED: 1 test(s) skipped and --no-skips was given"

    passed, lines = runner.summarize("M", _run("test_skips"), allowSkips=True)
    assert passed and lines[-1] == "M: every test was skipped: nothing was verified"

    passed, lines = runner.summarize("M", _run("test_passes", "test_fails"), allowSkips=True)
    assert not passed and lines[0] == "M: 2 test(s): 1 passed, 1 failed or errored, 0 skipped"
