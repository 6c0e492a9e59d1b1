"""Hostile names are refused everywhere a name enters: a model file's manifest, dataset.json, the train config and
``import-official --name``; output names cannot leave their folder even when a name bypasses validation.

Real material only: the shipped model file (its manifest rewritten in tmp_path, tensors byte for byte the same), a
copy of a real dataset folder, the official-layout conformance checkpoint.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from hermesseg.cli import main
from hermesseg.errors import DatasetError, ModelFileError, OutputError
from hermesseg.model_file import MANIFEST_DIGEST_KEY, MANIFEST_KEY, model_identity, read_manifest
from hermesseg.names import NAME_RULE, TEXT_RULE, check_name
from hermesseg.output_paths import child_path
from hermesseg.nnunet import read_dataset

from paths import CONFORMANCE, DATA, require, SHIPPED_MODEL

SHIPPED = SHIPPED_MODEL
BREAST = DATA / "mr_breast_lesion"  # one small MR case, label "breast_lesion"
MR_IMAGE = BREAST / "imagesTr" / "breast1_0000.nii.gz"

HOSTILE = ["..", "../../x", "../../../../tmp/x", "/abs", "a/b", "a\\b", "a\0b", "a\nb", "; rm -rf ~", "$(touch x)",
           "`id`", "x" * 65, "", "l\u0430ver",  # Cyrillic а
           "\uff4c\uff49\uff56\uff45\uff52",  # full-width "liver"
           "CON", "nul.nii", "COM1", "lpt9", "-rf", "a.", ".hidden", "a b", "a|b"]


# ------------------------------------------------------------------------------------------------ model files

def _split(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_with_manifest(src: Path, dst: Path, edit, digest: str | None = None) -> Path:
    """``src`` with its manifest edited by ``edit(dict)``: the safetensors header is rewritten, the tensor bytes are
    copied unchanged. ``digest`` is stored as the manifest digest when given."""
    header, body = _split(src)
    manifest = json.loads(header["__metadata__"][MANIFEST_KEY])
    edit(manifest)
    header["__metadata__"] = {MANIFEST_KEY: json.dumps(manifest)}
    if digest is not None:
        header["__metadata__"][MANIFEST_DIGEST_KEY] = digest
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return dst


def _set_task_name(value):
    return lambda m: m["tasks"][0].update(name=value)


def _set_group(value):
    return lambda m: m["tasks"][0].update(group=value)


def _set_modality(value):
    def edit(m):
        old = m["modalities"][0]["name"]
        m["modalities"][0]["name"] = value
        m["preprocessing"]["intensity"][value] = m["preprocessing"]["intensity"].pop(old)
        for t in m["tasks"]:
            t["modalities"] = [value if x == old else x for x in t["modalities"]]
    return edit


def _set_model_name(value):
    return lambda m: m.update(name=value)


def _set_lineage_dataset(value):
    return lambda m: m["lineage"][0]["datasets"].__setitem__(0, value)


FIELDS = {"task name": _set_task_name, "group": _set_group, "modality name": _set_modality,
          "model name": _set_model_name, "lineage dataset": _set_lineage_dataset}


def test_every_hostile_name_in_every_manifest_field_is_refused(tmp_path):
    require(SHIPPED)
    for field, setter in FIELDS.items():
        for value in HOSTILE:
            path = write_with_manifest(SHIPPED, tmp_path / "m.safetensors", setter(value))
            with pytest.raises(ModelFileError) as info:
                read_manifest(path)
            message = str(info.value)
            assert NAME_RULE in message, (field, value, message)
            assert "\n" not in message and "\0" not in message, (field, value)


@pytest.mark.parametrize("edit, where", [
    (lambda m: m["tasks"][0].update(description="liver\n\x1b[2Jforged log line"), "task ct_abdomen_ts_spleen desc"),
    (lambda m: m["card"].update(description="right-to-left \u202e override"), "card.description"),
    (lambda m: m["lineage"][0].update(notes="a\0b"), "lineage[0] notes"),
    (lambda m: m["modalities"][0].update(description="x" * 5000), "modality CT description"),
])
def test_control_characters_in_free_text_are_refused(tmp_path, edit, where):
    path = write_with_manifest(require(SHIPPED), tmp_path / "m.safetensors", edit)
    with pytest.raises(ModelFileError, match=TEXT_RULE.replace("(", r"\(").replace(")", r"\)")) as info:
        read_manifest(path)
    assert where in str(info.value)


def test_terminology_codes_cannot_split_slicer_tags(tmp_path):
    path = write_with_manifest(require(SHIPPED), tmp_path / "m.safetensors",
                               lambda m: m["tasks"][0]["terminology"]["type"].__setitem__(2, "Spleen~SCT^1^x"))
    with pytest.raises(ModelFileError, match="separate Slicer terminology fields"):
        read_manifest(path)


def test_a_traversal_task_name_writes_nothing_anywhere(tmp_path, capsys):
    """The reported attack: a task named ../../../../tmp/x and `segment --nifti` wrote x.nii.gz outside -o."""
    model = write_with_manifest(require(SHIPPED), tmp_path / "evil.safetensors",
                                _set_task_name("../../../../" + str(tmp_path / "escaped").lstrip("/")))
    out = tmp_path / "a" / "b" / "out"
    code = main(["segment", str(require(MR_IMAGE)), "-o", str(out), "--model", str(model), "--progress", "none", "--nifti",
                 "--fast", "--modality", "MR"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "is not a valid name" in err and NAME_RULE in err
    assert not list(tmp_path.rglob("*.nii.gz")) and not list(tmp_path.rglob("escaped*"))
    assert not out.exists() or not list(out.iterdir())


def test_output_names_stay_inside_the_folder_even_if_validation_is_bypassed(tmp_path):
    """Second line of defence: a task name changed after validation still cannot leave the output folder."""
    from hermesseg import load_model
    from hermesseg.progress import Progress
    from hermesseg.inference.segment_job import SegmentRequest, segment_inputs
    from hermesseg.inference.pipeline import InferenceOptions

    model = load_model(require(SHIPPED))
    task = next(t for t in model.manifest.tasks if t.group == "mr_breast_lesion")
    task.name = "../escaped"
    out = tmp_path / "out"
    request = SegmentRequest([require(MR_IMAGE)], out, [task.group], "MR", nifti=True,
                             options=InferenceOptions(fast=True))
    with pytest.raises(OutputError, match="must be a plain file name inside"):
        segment_inputs(model, request, Progress("none"))
    assert not (tmp_path / "escaped.nii.gz").exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "a\\b", "", ".", "..", "a\0b"])
def test_child_path_refuses_anything_but_a_plain_name(tmp_path, name):
    with pytest.raises(OutputError):
        child_path(tmp_path, name)
    assert child_path(tmp_path, "liver.nii.gz") == tmp_path / "liver.nii.gz"


# ------------------------------------------------------------------------------------------------ identity

def test_manifest_digest_detects_an_edited_manifest_and_identity_follows_names(tmp_path):
    from hermesseg.official.importer import import_official

    model = tmp_path / "base8.safetensors"
    import_official(require(CONFORMANCE / "hermes_r_base8_checkpoint.pth"), model)
    header, _ = _split(model)
    stored = header["__metadata__"][MANIFEST_DIGEST_KEY]
    assert model_identity(model) == stored and len(stored) == 64
    # A valid rename that keeps the old digest is detected...
    renamed = write_with_manifest(model, tmp_path / "renamed.safetensors", _set_task_name("liver"), digest=stored)
    with pytest.raises(ModelFileError, match="does not match its stored digest"):
        read_manifest(renamed)
    # ...and a file without a digest (the shipped model's format) is accepted, with an identity of its own.
    legacy = write_with_manifest(model, tmp_path / "legacy.safetensors", _set_task_name("liver"))
    assert read_manifest(legacy).tasks[0].name == "liver"
    assert model_identity(legacy) != stored
    assert read_manifest(legacy).weights_sha256 == read_manifest(model).weights_sha256


def test_shipped_model_still_loads_and_info_shows_its_identity(capsys):
    assert main(["info", str(require(SHIPPED))]) == 0
    out = capsys.readouterr().out
    assert f"identity: manifest {model_identity(SHIPPED)[:12]}" in out
    assert main(["info", str(SHIPPED), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["manifest_sha256"] == model_identity(SHIPPED) and len(summary["tasks"]) == 109


# ------------------------------------------------------------------------------------------------ datasets

def _dataset_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(require(BREAST), dst)
    return dst


def _write_meta(ds: Path, **changes) -> None:
    meta = json.loads((ds / "dataset.json").read_text())
    meta.update(changes)
    (ds / "dataset.json").write_text(json.dumps(meta))


def test_every_hostile_dataset_and_label_name_is_refused(tmp_path):
    ds = _dataset_copy(tmp_path)
    original = json.loads((ds / "dataset.json").read_text())
    label = next(k for k, v in original["labels"].items() if v != 0)
    for value in HOSTILE:
        if value == "":
            continue  # an empty dataset name falls back to the folder name, by design
        _write_meta(ds, name=value, labels=original["labels"])
        with pytest.raises(DatasetError, match="the dataset name") as info:
            read_dataset(ds)
        assert NAME_RULE in str(info.value)
        labels = {k: v for k, v in original["labels"].items() if k != label}
        labels[value] = original["labels"][label]
        _write_meta(ds, name=original["name"], labels=labels)
        with pytest.raises(DatasetError, match="the label name") as info:
            read_dataset(ds)
        assert NAME_RULE in str(info.value)


def test_train_refuses_a_hostile_label_and_leaves_nothing(tmp_path, capsys):
    ds = _dataset_copy(tmp_path)
    meta = json.loads((ds / "dataset.json").read_text())
    label = next(k for k, v in meta["labels"].items() if v != 0)
    labels = {("$(touch pwned)" if k == label else k): v for k, v in meta["labels"].items()}
    _write_meta(ds, labels=labels)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["train", "--data", str(ds), "-o", str(tmp_path / "m.safetensors"), "--cache-dir",
                 str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and "'$(touch pwned)' is not a valid name" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no model, run folder or cache
    assert not Path("pwned").exists()


def test_a_dataset_and_label_whose_task_name_is_too_long_is_refused(tmp_path):
    from hermesseg.nnunet import load_datasets, plan_tasks

    ds = _dataset_copy(tmp_path)
    meta = json.loads((ds / "dataset.json").read_text())
    _write_meta(ds, name="d" * 40, labels={("l" * 40 if v else k): v for k, v in meta["labels"].items()})
    datasets = load_datasets([ds], ["MR"], {"MR": "MR"} if meta["modality"] != "MR" else {})
    with pytest.raises(DatasetError, match="rename it with the config's datasets") as info:
        plan_tasks(datasets, {})
    assert "it has 81 characters" in str(info.value)


@pytest.mark.parametrize("settings, field", [
    ({"tasks": {"breast_lesion": "../lesion"}}, "datasets.ds.tasks['breast_lesion']"),
    ({"group": "a;b"}, "datasets.ds.group"),
])
def test_config_renames_are_checked_before_anything_runs(tmp_path, settings, field):
    from hermesseg.training.config import TrainingConfigError, resolve_config

    with pytest.raises(TrainingConfigError, match=NAME_RULE.replace("(", r"\(").replace(")", r"\)")) as info:
        resolve_config({"datasets": {"ds": settings}})
    assert field in str(info.value)
    with pytest.raises(TrainingConfigError, match="name \\(the model name\\)"):
        resolve_config({"name": "x/y"})


# ------------------------------------------------------------------------------------------------ import-official

def test_import_official_refuses_a_hostile_name(tmp_path, capsys):
    ckpt = require(CONFORMANCE / "hermes_r_base8_checkpoint.pth")
    out = tmp_path / "m.safetensors"
    for value in HOSTILE:
        code = main(["import-official", str(ckpt), "-o", str(out), f"--name={value}"])
        err = capsys.readouterr().err
        assert code == 2, value
        assert NAME_RULE in err and err.count("\n") == 1, (value, err)
    assert list(tmp_path.iterdir()) == []


def test_the_rule_accepts_every_shipped_and_official_name():
    from hermesseg.official.task_table import OFFICIAL_MODALITIES, official_tasks

    manifest = read_manifest(require(SHIPPED))
    names = [manifest.name] + [t.name for t in manifest.tasks] + [t.group for t in manifest.tasks]
    names += [t.name for t in official_tasks()] + [m.name for m in OFFICIAL_MODALITIES]
    for name in names:
        assert check_name(name, "name") == name
