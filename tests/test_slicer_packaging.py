"""Packaging consistency of the Slicer extension: what the build installs, and the three metadata sources
(top-level CMakeLists.txt, HermesExtension.s4ext, the ExtensionsIndex entry HermesExtension.json) agree."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MODULES = ["HermesSegmentation", "HermesTraining"]
REPO_URL = "https://github.com/hermes-extension/HermesExtension"
SCHEMA_V101 = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
# Schema v1.0.1: additionalProperties false.
SCHEMA_PROPERTIES = {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled", "scm_revision",
                     "scm_type", "scm_url", "tier"}
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}


# ---------------------------------------------------------------------------------------------- parsing helpers
def _strip_comment(line: str) -> str:
    """A CMake line without its comment ('#' outside a quoted string); the wizard marker line is kept."""
    if line.lstrip().startswith("## NEXT_MODULE"):
        return line
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            return line[:i]
    return line


def cmake_text(path: Path) -> str:
    return "\n".join(_strip_comment(line) for line in path.read_text(encoding="utf-8").splitlines())


def cmake_set(text: str, name: str) -> list[str]:
    """Items of set(NAME ...) (quoted strings stay whole)."""
    match = re.search(rf"set\(\s*{name}\s+(.*?)\)\s*$", text, re.S | re.M)
    assert match, f"set({name} ...) not found"
    return [a.strip('"') for a in re.findall(r'"[^"]*"|[^\s"]+', match.group(1))]


def cmake_value(text: str, name: str) -> str:
    items = cmake_set(text, name)
    assert len(items) == 1, f"{name} should be one quoted string"
    return items[0]


def module_lists(module: str) -> tuple[list[str], list[str], str]:
    text = cmake_text(REPO / module / "CMakeLists.txt")
    name = cmake_value(text, "MODULE_NAME")
    expand = lambda items: [i.replace("${MODULE_NAME}", name) for i in items]  # noqa: E731
    return expand(cmake_set(text, "MODULE_PYTHON_SCRIPTS")), expand(cmake_set(text, "MODULE_PYTHON_RESOURCES")), text


def module_files(module: str) -> tuple[set[str], set[str]]:
    """Python files and run-time resources of a module folder (build/test scaffolding excluded)."""
    root = REPO / module
    scripts, resources = set(), set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if (not path.is_file() or "__pycache__" in rel.parts or rel.parts[0] == "Testing"
                or path.name == "CMakeLists.txt" or path.suffix == ".pyc"):
            continue
        (scripts if path.suffix == ".py" else resources).add(rel.as_posix())
    return scripts, resources


def s4ext() -> dict[str, str]:
    entries = {}
    for line in (REPO / "HermesExtension.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            entries[key] = value.strip()
    return entries


def catalog() -> dict:
    return json.loads((REPO / "HermesExtension.json").read_text(encoding="utf-8"))


def top() -> str:
    return cmake_text(REPO / "CMakeLists.txt")


# ---------------------------------------------------------------------------------------------- module lists
@pytest.mark.parametrize("module", MODULES)
def test_every_module_file_is_listed_in_its_cmakelists(module):
    scripts, resources, text = module_lists(module)
    on_disk_scripts, on_disk_resources = module_files(module)
    assert sorted(on_disk_scripts - set(scripts)) == [], "Python files missing from MODULE_PYTHON_SCRIPTS"
    assert sorted(on_disk_resources - set(resources)) == [], "resources missing from MODULE_PYTHON_RESOURCES"
    for listed in scripts + resources:
        assert (REPO / module / listed).is_file(), f"{module}/CMakeLists.txt lists a missing file: {listed}"
    assert len(scripts) == len(set(scripts)) and len(resources) == len(set(resources))
    assert f"{module}.py" in scripts and f"Resources/Icons/{module}.png" in resources
    assert re.search(r"slicerMacroBuildScriptedModule\(.*WITH_GENERIC_TESTS.*?\)", text, re.S)
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)
    if "add_subdirectory(Testing)" in text:
        assert (REPO / module / "Testing" / "CMakeLists.txt").is_file()


def test_modules_do_not_overwrite_each_others_resources():
    """All scripted modules of an extension install into one qt-scripted-modules folder (Resources/ is shared)."""
    seen: dict[str, str] = {}
    for module in MODULES:
        scripts, resources, _ = module_lists(module)
        for item in scripts + resources:
            assert item not in seen, f"{item} is installed by both {seen.get(item)} and {module}"
            seen[item] = module


def test_module_icons_are_pngs():
    for module in MODULES:
        with Image.open(REPO / module / "Resources" / "Icons" / f"{module}.png") as image:
            assert image.format == "PNG"


# ---------------------------------------------------------------------------------------------- extension metadata
def test_top_level_cmake_builds_every_module_and_keeps_the_wizard_marker():
    text = top()
    assert re.search(r"project\(HermesExtension\)", text)
    subdirs = re.findall(r"add_subdirectory\((\w+)\)", text)
    module_dirs = sorted(p.parent.name for p in REPO.glob("*/CMakeLists.txt") if (p.parent / f"{p.parent.name}.py").is_file())
    assert sorted(subdirs) == module_dirs == sorted(MODULES)
    marker = text.index("## NEXT_MODULE")
    assert all(text.index(f"add_subdirectory({m})") < marker for m in MODULES)
    assert "find_package(Slicer REQUIRED)" in text and "include(${Slicer_USE_FILE})" in text
    assert text.rstrip().endswith("include(${Slicer_EXTENSION_CPACK})")


def test_engine_package_is_installed_next_to_the_modules():
    text = top()
    assert re.search(r"file\(GLOB_RECURSE HERMESSEG_PYTHON_SCRIPTS RELATIVE \$\{CMAKE_CURRENT_SOURCE_DIR\}"
                     r"\s+CONFIGURE_DEPENDS\s+hermesseg/\*\.py", text)
    block = re.search(r"ctkMacroCompilePythonScript\((.*?)\)", text, re.S).group(1)
    assert "${HERMESSEG_PYTHON_SCRIPTS}" in block and "${HERMESSEG_PYTHON_RESOURCES}" in block
    assert "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" in block
    assert "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}" in block
    assert "NO_INSTALL_SUBDIR" in block
    assert (REPO / "hermesseg" / "__init__.py").is_file() and (REPO / "hermesseg" / "cli" / "__main__.py").is_file()
    # the run-time side: HermesLib.engine looks for hermesseg beside HermesLib (installed and in the checkout)
    engine_code = (REPO / "HermesLib" / "engine.py").read_text(encoding="utf-8")
    assert "Path(__file__).resolve().parent.parent" in engine_code and "_holds_package(_BESIDE)" in engine_code


def test_shared_package_is_installed_beside_the_modules_with_its_requirements():
    """HermesLib (what both modules use) goes where hermesseg goes; each module's Lib keeps only its own files."""
    text = top()
    scripts = re.search(r"file\(GLOB_RECURSE HERMESSEG_PYTHON_SCRIPTS (.*?)\)", text, re.S).group(1).split()
    resources = re.search(r"file\(GLOB_RECURSE HERMESSEG_PYTHON_RESOURCES (.*?)\)", text, re.S).group(1).split()
    assert "HermesLib/*.py" in scripts and "HermesLib/requirements.txt" in resources
    shared = {p.name for p in (REPO / "HermesLib").glob("*.py")}
    assert {"__init__.py", "engine.py", "engine_run.py", "engine_job.py", "process.py", "progress.py", "models.py",
            "dependencies.py", "widget.py"} <= shared
    for module in MODULES:
        lib = REPO / module / f"{module}Lib"
        own = {p.name for p in lib.glob("*.py")} if lib.is_dir() else set()
        assert not (own - {"__init__.py"}) & shared, f"{module}Lib repeats a HermesLib module"
        assert not (REPO / module / "Resources" / "requirements.txt").exists()


def test_catalog_entry_follows_schema_v1_0_1():
    entry = catalog()
    assert entry["$schema"] == SCHEMA_V101
    assert set(entry) <= SCHEMA_PROPERTIES, f"not allowed by the schema: {set(entry) - SCHEMA_PROPERTIES}"
    assert SCHEMA_REQUIRED <= set(entry)
    assert isinstance(entry["build_dependencies"], list) and 1 <= entry["tier"] <= 5
    assert entry.get("scm_type", "git") in ("git", "local")


def test_s4ext_json_and_cmake_metadata_agree():
    text, s4, entry = top(), s4ext(), catalog()
    # category
    assert cmake_value(text, "EXTENSION_CATEGORY") == s4["category"] == entry["category"] == "Segmentation"
    # dependencies
    depends = cmake_value(text, "EXTENSION_DEPENDS").split()
    assert depends == s4["depends"].split() == entry["build_dependencies"] == ["PyTorch"]
    # source repository and homepage
    assert s4["scm"] == entry.get("scm_type", "git") == "git"
    assert s4["scmurl"].removesuffix(".git") == entry["scm_url"] == REPO_URL
    assert s4["scmrevision"] == entry["scm_revision"] == "main"
    assert s4.get("build_subdirectory", ".") == entry.get("build_subdirectory", ".") == "."
    homepage = cmake_value(text, "EXTENSION_HOMEPAGE")
    assert homepage == s4["homepage"] and homepage.startswith(REPO_URL)
    # description, contributors, icon and screenshots
    description = cmake_value(text, "EXTENSION_DESCRIPTION")
    assert description == s4["description"]
    assert "licen" in description.lower() and "weights" in description.lower()
    assert "non-commercial" in description.lower()
    assert cmake_value(text, "EXTENSION_CONTRIBUTORS") == s4["contributors"]
    raw = REPO_URL.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    icon = cmake_value(text, "EXTENSION_ICONURL")
    assert icon == s4["iconurl"] == raw + "HermesExtension.png"
    screenshots = cmake_value(text, "EXTENSION_SCREENSHOTURLS").split()
    assert screenshots == s4["screenshoturls"].split() and screenshots
    assert all(url.startswith(raw) for url in screenshots)


def test_screenshots_exist_and_the_readme_shows_them():
    """The catalogue links raw URLs of files in this repository: each must exist (a PNG) and README shows it."""
    raw = REPO_URL.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for url in cmake_value(top(), "EXTENSION_SCREENSHOTURLS").split():
        name = url.removeprefix(raw)
        with Image.open(REPO / name) as image:
            assert image.format == "PNG" and image.size[0] >= 800
        assert f"]({name})" in readme, f"README does not show {name}"


def test_extension_icon_is_a_128_pixel_png():
    with Image.open(REPO / "HermesExtension.png") as image:
        assert image.format == "PNG" and image.size == (128, 128)


# ---------------------------------------------------------------------------------------------- dependencies
def test_requirements_cover_the_engine_dependencies():
    """Every dependency of the engine is installed in Slicer: by pip from requirements.txt, or (torch, SimpleITK,
    numpy, requests) by Slicer / the PyTorch extension, never by pip from this module."""
    import sys
    sys.path.insert(0, str(REPO))
    from HermesLib.dependencies import PROTECTED, readRequirements, requirementName

    canonical = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    requirements = {canonical(requirementName(r)) for r in
                    readRequirements(REPO / "HermesLib" / "requirements.txt")}
    protected = {canonical(p) for p in PROTECTED}
    assert not requirements & protected, "requirements.txt must not pip-install torch/SimpleITK/numpy/requests"
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for dependency in project["dependencies"]:
        name = canonical(requirementName(dependency))
        assert name in requirements | protected, f"engine dependency {dependency} is not installed in Slicer"
