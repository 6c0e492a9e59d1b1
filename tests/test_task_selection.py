"""Per-task measured quality in the model file, the default selection it drives, and how users name tasks.

Everything runs on the shipped default model file: its manifest carries the held-out Dice measured by
benchmarks/task_quality.py (only the brain mask transfers to another subject at Dice >= 0.5), so the CT default
is empty.
"""

from __future__ import annotations

import json
import logging

import pytest

from hermesseg import load_model
from hermesseg.cli import main
from hermesseg.default_model import default_model_path
from hermesseg.errors import ModelFileError, QueryError
from hermesseg.manifest import Manifest, TaskEntry
from hermesseg.model_file import MANIFEST_KEY
from hermesseg.selection import MIN_HELDOUT_DICE, default_selection, quality_text
from paths import DATA, require

CARD_FINGERPRINT = "e70521b42e6b55cf129d020cdd3541fd39710f136226c41e8e29da9877bab7fb"
CT_ABDOMEN = DATA / "ct_abdomen_ts" / "imagesTr" / "example_ct_sm_0000.nii.gz"


@pytest.fixture(scope="module")
def model():
    return load_model(default_model_path())  # verifies the weights against the fingerprint


def test_the_default_model_stores_measured_quality_with_unchanged_weights(model):
    manifest = model.manifest
    assert manifest.weights_sha256 == CARD_FINGERPRINT  # only the manifest was rewritten
    measured = {t.name: t.quality for t in manifest.tasks if t.quality}
    assert len(measured) == 4 and len(manifest.tasks) == 109
    brain = measured["mr_brain_structures_colin_brain"]
    assert brain["heldout_cases"] == 1 and brain["heldout_dice"] == pytest.approx(0.90, abs=0.01)
    assert "MNI152" in brain["source"]
    assert measured["mr_brain_tumour_t1c_brain_tumour"]["heldout_cases"] == 5
    # Every other measured task stays below the threshold (the skull on the head CT is the closest, 0.40).
    others = [q["heldout_dice"] for name, q in measured.items() if name != "mr_brain_structures_colin_brain"]
    assert max(others) < 0.45 < MIN_HELDOUT_DICE


@pytest.mark.parametrize("quality, message", [
    ({"heldout_dice": 1.5, "heldout_cases": 1, "source": "x"}, "invalid quality"),
    ({"heldout_dice": 0.5, "heldout_cases": 0, "source": "x"}, "invalid quality"),
    ({"heldout_dice": 0.5, "heldout_cases": 1}, "invalid quality"),
    ("good", "invalid quality"),
])
def test_a_malformed_quality_is_refused_on_read(quality, message):
    from safetensors import safe_open
    with safe_open(str(default_model_path()), framework="pt") as f:
        doc = json.loads(f.metadata()[MANIFEST_KEY])
    doc["tasks"][0]["quality"] = quality
    with pytest.raises(ModelFileError, match=message):
        Manifest.from_dict(doc)


@pytest.mark.parametrize("flag", ["yes", 1, None])
def test_a_malformed_largest_piece_flag_is_refused_on_read(flag):
    from safetensors import safe_open
    with safe_open(str(default_model_path()), framework="pt") as f:
        doc = json.loads(f.metadata()[MANIFEST_KEY])
    doc["tasks"][0]["keep_largest_component"] = flag
    with pytest.raises(ModelFileError, match="keep_largest_component must be true or false"):
        Manifest.from_dict(doc)


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5, -0.2, "0.3", None, True])
def test_a_malformed_threshold_is_refused_on_read(threshold):
    from safetensors import safe_open
    with safe_open(str(default_model_path()), framework="pt") as f:
        doc = json.loads(f.metadata()[MANIFEST_KEY])
    assert "threshold" not in doc["tasks"][0]  # files written before the field read as 0.5
    assert Manifest.from_dict(json.loads(json.dumps(doc))).tasks[0].threshold == 0.5
    doc["tasks"][0]["threshold"] = threshold
    with pytest.raises(ModelFileError, match="threshold must be a number between 0 and 1"):
        Manifest.from_dict(doc)


def test_default_selection_keeps_only_tasks_with_evidence(model):
    tasks = model.manifest.tasks
    assert [t.name for t in default_selection(tasks, "MR-T1").chosen] == ["mr_brain_structures_colin_brain"]
    for modality in ("CT", "MR", "MR-T1c"):
        selection = default_selection(tasks, modality)
        assert selection.chosen == [] and len(selection.experimental) == len(model.tasks_for_modality(modality))
    assert [t.name for t in model.resolve_tasks(None, "MR-T1")] == ["mr_brain_structures_colin_brain"]
    with pytest.raises(QueryError, match="no task with measured evidence for CT") as err:
        model.resolve_tasks(None, "CT")
    assert "--tasks" in str(err.value) and "import-official" in str(err.value)


def test_segment_without_tasks_on_ct_says_what_to_do_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", str(require(CT_ABDOMEN)), "-o", str(out), "--modality", "CT", "--progress", "none"])
    err = capsys.readouterr().err
    assert code != 0 and "no task with measured evidence for CT" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_tasks_by_display_name_or_id_and_a_warning_for_experimental_ones(model, caplog):
    with caplog.at_level(logging.WARNING, logger="hermesseg"):
        tasks = model.resolve_tasks(["LIVER", "Left kidney", "ct_abdomen_ts_spleen", "spinal cord"], "CT")
    assert [t.name for t in tasks] == ["ct_abdomen_ts_spleen", "ct_abdomen_ts_kidney_left", "ct_abdomen_ts_liver",
                                       "ct_abdomen_ts_spinal_cord"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith("experimental: no measured evidence for")
    assert "Liver (ct_abdomen_ts_liver)" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hermesseg"):
        assert [t.name for t in model.resolve_tasks(["brain"], "MR-T1")] == ["mr_brain_structures_colin_brain"]
    assert not caplog.records  # a task with evidence runs without a warning


def test_an_unknown_name_gets_the_closest_matches(model):
    with pytest.raises(QueryError, match=r"did you mean: Liver\?"):
        model.resolve_tasks(["livr"], "CT")
    with pytest.raises(QueryError, match="did you mean: Left kidney, Right kidney"):
        model.resolve_tasks(["kidney"], "CT")
    with pytest.raises(QueryError, match="'Brain' was learned for .*not MR-T1c"):
        model.resolve_tasks(["brain"], "MR-T1c")
    with pytest.raises(QueryError, match="group 'mr_brain_structures_colin' has no task for CT"):
        model.resolve_tasks(["mr_brain_structures_colin"], "CT")


def test_tasks_command_lists_structures_once_with_quality(capsys):
    assert main(["tasks", "--modality", "CT"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(rows) == 69  # 69 CT tasks, one per structure
    spinal = [r for r in rows if r.strip().startswith("Spinal cord")]
    assert len(spinal) == 1 and "ct_abdomen_ts_spinal_cord" in spinal[0] and "also:" not in spinal[0]
    assert "seen in training only" in spinal[0]  # both CT subjects that label it trained it: no held-out image
    assert main(["tasks", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    defaults = [r for r in listing if r["default"]]
    assert [(r["structure"], r["modality"], r["task"]) for r in defaults] == [
        ("Brain", "MR-T1", "mr_brain_structures_colin_brain")]
    assert main(["tasks", "--modality", "PET"]) != 0
    assert "unknown modality 'PET'" in capsys.readouterr().err


def test_info_without_a_model_describes_the_default_with_licences_and_card(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hermes-mini 1.1.0")
    assert "licence: BSD-3-Clause (pyradiomics" in out
    assert f"model card: {default_model_path().with_suffix('.md')}" in out
    assert "4 of 109 tasks have held-out Dice, 1 run by default" in out
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    brain = next(t for t in info["tasks"] if t["name"] == "mr_brain_structures_colin_brain")
    assert brain["default"] and brain["display_name"] == "Brain" and brain["quality_text"].startswith("Dice 0.90")
    assert info["default_rule"] == {"min_heldout_dice": 0.5, "min_heldout_cases": 1}


def test_a_missing_model_says_where_models_are(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HERMESSEG_MODEL", str(tmp_path / "gone.safetensors"))
    assert main(["tasks"]) != 0
    err = capsys.readouterr().err
    assert f"the default model {tmp_path / 'gone.safetensors'} ($HERMESSEG_MODEL) does not exist" in err


def test_quality_text_says_when_a_task_keeps_only_its_largest_piece():
    quality = {"heldout_dice": 0.7512, "heldout_cases": 2, "source": "held-out cases of its split"}
    task = TaskEntry(id=0, name="lv", group="heart", modalities=["MR-cine"], quality=quality)
    assert quality_text(task) == "Dice 0.75 on 2 held-out cases"
    task.keep_largest_component = True
    assert quality_text(task) == "Dice 0.75 on 2 held-out cases, largest piece only"
    task.threshold = 0.3
    assert quality_text(task) == "Dice 0.75 on 2 held-out cases, largest piece only, drawn at probability 0.3"
    assert quality_text(TaskEntry(id=1, name="rv", group="heart", modalities=["MR-cine"])) == "seen in training only"
