"""A model's description read in Slicer's process without torch (``HermesLib.models.readModelInfo``):
the same JSON as ``hermesseg info --json`` for every kind of model the project has, and a clean error for hostile
files.

Each comparison runs readModelInfo in a fresh interpreter where torch, MONAI and safetensors cannot be imported
(as in a Slicer that has not installed them yet) and ``hermesseg info --json`` normally, in its own process.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from paths import CONFORMANCE, DATA, REPO, require, SHIPPED_MODEL

sys.path.insert(0, str(REPO / "HermesSegmentation"))
sys.path.insert(0, str(REPO))  # HermesLib

from HermesLib import models  # noqa: E402

DEFAULT_MODEL = SHIPPED_MODEL
# Never in Slicer's process before the user agrees to install them (numpy and SimpleITK ship with Slicer; the
# manifest's preprocessing check uses them).
HEAVY = ("torch", "monai", "safetensors")


def engine_info(path: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "hermesseg.cli", "info", str(path), "--json"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def info_without_torch(paths: list[Path]) -> tuple[list[dict], list[str]]:
    """readModelInfo of each path in an interpreter where the heavy packages are unimportable; and what it
    imported of them."""
    code = textwrap.dedent(f"""
        import json, sys
        for name in {HEAVY!r}:
            sys.modules[name] = None  # import -> ImportError, as in a fresh Slicer
        sys.path.insert(0, {str(REPO / "HermesSegmentation")!r})
        import HermesSegmentationLib  # as the module does: puts the checkout's HermesLib on sys.path
        from HermesLib import models
        infos = [models.readModelInfo(p) for p in {[str(p) for p in paths]!r}]
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} and sys.modules[m] is not None)
        print(json.dumps({{"infos": infos, "loaded": loaded}}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    return out["infos"], out["loaded"]


@pytest.fixture(scope="module")
def official_model(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("official") / "base8.safetensors"
    result = subprocess.run([sys.executable, "-m", "hermesseg.cli", "import-official",
                             str(require(CONFORMANCE / "hermes_r_base8_checkpoint.pth")), "-o", str(output)],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    return output


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> Path:
    """Two iterations of real training on the MNI brain (enough to write a model file with lineage and card)."""
    from hermesseg.training import TrainRequest, train

    root = tmp_path_factory.mktemp("trained")
    config = {"name": "tiny-brain", "seed": 1, "architecture": {"base_channels": 4, "head_dim": 8},
              "modalities": ["MR-T1"], "spacing": [6.0, 6.0, 6.0], "patch_size": [32, 32, 32], "batch_size": 1,
              "iterations": 2, "warmup_iterations": 1, "checkpoint_every": 2, "log_every": 1, "num_workers": 0}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainRequest(data=[str(require(DATA / "mr_brain_tissue_mni"))], output=str(root / "tiny.safetensors"),
                           config=config, cache_dir=str(root / "cache")))
    finally:
        torch.set_num_threads(threads)
    return root / "tiny.safetensors"


def test_read_without_torch_equals_the_engines_info_for_every_kind_of_model(official_model, trained_model):
    paths = [require(DEFAULT_MODEL), official_model, trained_model]
    infos, loaded = info_without_torch(paths)
    assert loaded == []
    for path, info in zip(paths, infos):
        engine = engine_info(path)
        # the one key only the engine gives: it hashes the weights' bytes (task-pack compatibility), not the header
        assert len(engine.pop("compatibility_fingerprint")) == 64
        assert info == engine, path.name
    default, official, trained = infos
    assert default["name"] == "hermes-mini" and len(default["tasks"]) == 109
    assert default["num_parameters"] == 3_851_828  # the model card's count
    assert official["name"] == "hermes-r-official-base8" and len(official["tasks"]) == 71
    assert trained["lineage"][-1]["operation"] == "train" and trained["lineage"][-1]["datasets"] == [
        "mr_brain_tissue_mni"]
    assert {t["name"] for t in trained["tasks"]} == {"mr_brain_tissue_mni_grey_matter",
                                                     "mr_brain_tissue_mni_white_matter"}


def test_importing_the_engines_reader_pulls_in_no_heavy_package():
    code = ("import sys, hermesseg.model_header, hermesseg.errors, hermesseg.parent_watch; "
            "import hermesseg.add_task_options; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_catalogue_caches_per_file_and_rereads_a_changed_file(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(require(DEFAULT_MODEL).read_bytes())
    catalog = models.ModelCatalog()
    first = catalog.info(path)
    assert catalog.info(path) is first
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")  # same path, other content
    with pytest.raises(models.ModelInfoError, match="without a Hermes manifest"):
        catalog.info(path)


# ---------------------------------------------------------------------------------------------- hostile files
def header_file(path: Path, header: bytes, length: int | None = None, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


def manifest_file(path: Path, edit) -> Path:
    """The default model's header with its manifest edited by ``edit(manifest_dict)`` (weights left out)."""
    raw = require(DEFAULT_MODEL).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    manifest = json.loads(header["__metadata__"]["hermes_manifest"])
    edit(manifest)
    return header_file(path, json.dumps({"__metadata__": {"hermes_manifest": json.dumps(manifest)}}).encode())


def _set_first_task_name(value):
    return lambda m: m["tasks"][0].update(name=value)


@pytest.mark.parametrize("make, message", [
    (lambda p: header_file(p, b"{}", length=2 ** 62), "more than the 16777216 allowed"),
    (lambda p: header_file(p, b"{}", length=1000), "header of 1000 bytes in a file of 10 bytes"),
    (lambda p: p.write_bytes(require(DEFAULT_MODEL).read_bytes()[:5000]) and p, "in a file of 5000 bytes"),
    (lambda p: p.write_bytes(b"\x01\x02\x03") and p, "shorter than a safetensors header"),
    (lambda p: header_file(p, b"not json at all"), "the header is not JSON"),
    (lambda p: header_file(p, b"\xff\xfe\x00garbage"), "the header is not JSON"),
    (lambda p: header_file(p, b"[" * 200_000 + b"]" * 200_000), "the header is not JSON"),
    (lambda p: header_file(p, b"[1, 2]"), "not a JSON object"),
    (lambda p: header_file(p, b'{"__metadata__": {"hermes_manifest": 5}}'), "not a table of strings"),
    (lambda p: header_file(p, b'{"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}'),
     "tensor 'w' lies outside the file"),
    (lambda p: header_file(p, b'{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}', data=b"\0" * 4),
     "tensor 'w' does not match its byte range"),
    (lambda p: header_file(p, b'{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}'),
     "tensor 'w' has an invalid shape"),
    (lambda p: header_file(p, b'{"__metadata__": {"hermes_manifest": "{not json"}}'), "manifest is not valid JSON"),
    (lambda p: manifest_file(p, _set_first_task_name(["a", "list"])), "is not a valid name (it is a list"),
    (lambda p: manifest_file(p, _set_first_task_name({"nested": "object"})), "is not a valid name (it is a dict"),
    (lambda p: manifest_file(p, lambda m: m.update(tasks="not a list")), "malformed entry"),
    (lambda p: manifest_file(p, lambda m: m["tasks"].append(dict(m["tasks"][0]))), "is used twice"),
    # names that would reach a path or forge a line in Slicer (issue 8's name rule, applied by the same reader)
    (lambda p: manifest_file(p, _set_first_task_name("../../escape")), "'../../escape' is not a valid name"),
    (lambda p: manifest_file(p, _set_first_task_name("liver\nERROR forged log line")), "(it contains '\\n', ' ')"),
    (lambda p: manifest_file(p, lambda m: m["tasks"][0].update(group="a/b")), "group 'a/b' is not a valid name"),
    (lambda p: manifest_file(p, lambda m: m.update(card={"notes": "spoof\u202eevil"})),
     "card.notes 'spoof\\u202eevil' contains the character"),
])
def test_hostile_files_give_one_clean_error(tmp_path, make, message):
    path = make(tmp_path / "hostile.safetensors")
    with pytest.raises(models.ModelInfoError) as caught:
        models.readModelInfo(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_file_or_a_folder_is_named(tmp_path):
    with pytest.raises(models.ModelInfoError, match="model file not found"):
        models.readModelInfo(tmp_path / "nothing.safetensors")
    with pytest.raises(models.ModelInfoError, match="is a folder, not a model file"):
        models.readModelInfo(tmp_path)
