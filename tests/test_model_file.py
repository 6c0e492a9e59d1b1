"""The model file: atomic, self-describing, validated on read with specific messages."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hermesseg import load_model
from hermesseg.errors import ModelFileError
from hermesseg.manifest import LineageRecord, Manifest, ModalityEntry, TaskEntry, architecture_dict
from hermesseg.model_file import MANIFEST_KEY, read_manifest, save_model
from hermesseg.network import HermesR, HermesRConfig

CONFIG = HermesRConfig(base_channels=4, head_dim=8, num_task_rows=3, num_modalities=2)


def _manifest(config=CONFIG) -> Manifest:
    return Manifest(
        name="tiny", architecture=architecture_dict(config),
        tasks=[TaskEntry(0, "liver", "ds_a", ["CT"], (200, 100, 50)), TaskEntry(1, "spleen", "ds_a", ["CT"]),
               TaskEntry(2, "brain", "ds_b", ["MR"])],
        modalities=[ModalityEntry(0, "CT", dicom=["CT"]), ModalityEntry(1, "MR", dicom=["MR"])],
        preprocessing={"spacing": [3.0, 3.0, 3.0], "orientation": "LPS", "patch_size": [64, 64, 64],
                       "intensity": {"CT": {"scheme": "ct_clip_zscore"},
                                     "MR": {"scheme": "percentile_clip_zscore"}}},
        lineage=[LineageRecord(operation="train", datasets=["ds_a", "ds_b"])])


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    net = HermesR(CONFIG)
    path = tmp_path / "tiny.safetensors"
    save_model(path, net, _manifest())
    return path, net


def test_round_trip_keeps_weights_and_manifest(saved):
    path, net = saved
    model = load_model(path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, model.network.state_dict()[k]), k
    m = model.manifest
    assert [t.name for t in m.tasks] == ["liver", "spleen", "brain"]
    assert m.tasks[0].color == (200, 100, 50)
    assert m.lineage[0].datasets == ["ds_a", "ds_b"]
    assert len(m.weights_sha256) == 64
    assert [p.name for p in path.parent.iterdir()] == ["tiny.safetensors"]  # no temporary files left


def test_corrupted_weights_are_detected(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="do not match the manifest's fingerprint"):
        load_model(path)


def test_truncated_file_is_refused(saved):
    path, _ = saved
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="not a readable Hermes model file"):
        load_model(path)


def _rewrite(path, edit_manifest=None, edit_tensors=None):
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        manifest = json.loads(f.metadata()[MANIFEST_KEY])
    if edit_manifest:
        edit_manifest(manifest)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(path), metadata={MANIFEST_KEY: json.dumps(manifest)})


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["tasks"].append({**m["tasks"][0], "id": 2}), "task id 2 is used twice"),
    (lambda m: m["tasks"][1].update(name="liver"), "task name 'liver' is used twice"),
    (lambda m: m["tasks"][0].update(id=7), "task 'liver' has id 7 outside the task table (0..2)"),
    (lambda m: m["tasks"][0].update(modalities=["PET"]), "task 'liver' names unknown modalities ['PET']"),
    (lambda m: m.update(format_version=99), "unsupported model format version 99"),
    (lambda m: m["preprocessing"]["intensity"].pop("MR"), "no intensity normalisation for modalities ['MR']"),
    (lambda m: m.pop("tasks"), "manifest is missing the field 'tasks'"),
    (lambda m: m["architecture"].update(base_channels=8), "has shape"),
])
def test_invalid_manifests_are_refused_with_the_reason(saved, edit, message):
    path, _ = saved
    _rewrite(path, edit_manifest=edit)
    with pytest.raises(ModelFileError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_model(path)


def test_missing_and_misshaped_tensors_are_named(saved):
    path, _ = saved
    _rewrite(path, edit_tensors=lambda t: t.pop("fusion.2.null_token"))
    with pytest.raises(ModelFileError, match="tensor 'fusion.2.null_token' is missing"):
        load_model(path)


def test_header_only_read_is_cheap_and_validated(saved):
    path, _ = saved
    assert read_manifest(path).name == "tiny"
    with pytest.raises(ModelFileError, match="not found"):
        read_manifest(path.parent / "missing.safetensors")


def test_failed_save_leaves_the_previous_file_intact(saved, tmp_path):
    path, net = saved
    before = path.read_bytes()
    bad = _manifest()
    bad.tasks.append(TaskEntry(0, "duplicate", "ds_a", ["CT"]))
    with pytest.raises(ModelFileError):
        save_model(path, net, bad)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.safetensors"]
