"""add-task on real data: the shipped default model (hermes-mini) learns ACDC heart structures in a modality it never
saw, every base task stays bit-identical, a held-out figure is reported, cancel leaves nothing, bad input is refused.

Step counts are tiny: these tests check behaviour and bytes, not how well a structure is learned (the benchmark and
the README give those numbers).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from hermesseg.add_task_options import DEFAULT_TOTAL_STEPS
from hermesseg.cli import main
from hermesseg.model import load_model
from hermesseg.model_file import read_manifest, read_model_state
from hermesseg.training.add_task import AddTaskRequest, add_task
from hermesseg.training.forgetting import group_queries
from hermesseg.training.held_out_training import phase_steps
from hermesseg.imageio import read_image
from hermesseg.preprocessing import Preprocessing, normalize_intensity, to_model_grid

from new_task_helpers import assert_refused, assert_sigterm_cancels, dataset_subset as _subset, run_json
from threads import one_torch_thread  # noqa: F401 (autouse fixture)
from paths import ACDC, DATA, require, SHIPPED_MODEL

BASE = SHIPPED_MODEL
N_BASE = len(read_manifest(BASE).tasks)  # the base model's tasks: new rows are appended after them
BREAST = DATA / "mr_breast_lesion"
# 3 patients (the first with both frames): enough for a held-out patient, small enough for a fast test.
ACDC_CASES = ("patient001_frame01", "patient001_frame02", "patient002_frame01", "patient007_frame01")
# A real image per base modality, for the bit-identical check of every base group.
MODALITY_IMAGES = {"CT": DATA / "ct_abdomen_ts" / "imagesTr" / "example_ct_sm_0000.nii.gz",
                   "MR": DATA / "mr_abdomen_ts" / "imagesTr" / "example_mr_sm_0000.nii.gz",
                   "MR-T1": DATA / "mr_brain_tissue_mni" / "imagesTr" / "mni152_2009a_sym_0000.nii.gz",
                   "MR-T1c": DATA / "mr_brain_tumour_t1c" / "imagesTr" / "brain1_0000.nii.gz"}


@pytest.fixture(scope="module")
def acdc_run(tmp_path_factory):
    """One real `hermesseg add-task` process: 3 ACDC patients (6 frames), new modality MR-cine, --progress json."""
    root = tmp_path_factory.mktemp("acdc")
    data = _subset(require(ACDC), root / "acdc3", list(ACDC_CASES), name="acdc3")
    out = root / "heart.safetensors"
    events = run_json(["add-task", str(require(BASE)), "--data", str(data), "-o", str(out), "--steps", "3",
                       "--seed", "1", "--device", "cpu", "--init-from", "mr_abdomen_ts_liver",
                       "--mode", "priors"], root / "cache")
    return out, events, data


def test_new_modality_tasks_are_appended_and_base_tensors_keep_their_bytes(acdc_run):
    out, _, _ = acdc_run
    base_manifest, base_state = read_model_state(BASE)
    manifest, state = read_model_state(out)
    new = manifest.tasks[len(base_manifest.tasks):]
    assert [t.name for t in new] == ["acdc3_right_ventricle", "acdc3_myocardium", "acdc3_left_ventricle"]
    assert [t.id for t in new] == [N_BASE, N_BASE + 1, N_BASE + 2] and {t.group for t in new} == {"acdc3"}
    assert all(t.modalities == ["MR-cine"] for t in new)
    assert [m.name for m in manifest.modalities] == ["CT", "MR", "MR-T1", "MR-T1c", "MR-cine"]
    assert manifest.modalities[4].dicom == ["MR"] and "MR-cine" in manifest.preprocessing["intensity"]
    assert manifest.tasks[:N_BASE] == base_manifest.tasks
    assert set(state) == set(base_state)
    grown = 0
    for name, old in base_state.items():
        now = state[name]
        if now.shape != old.shape:  # appended rows / blocks: the old part must be byte-identical
            grown += 1
            assert now.shape[1:] == old.shape[1:] and now.shape[0] > old.shape[0], name
            assert torch.equal(now[: old.shape[0]], old), name
        else:
            assert torch.equal(now, old), f"{name} changed"
    task_tables = [n for n in state if n.endswith(".task_prior")]
    modality_tables = [n for n in state if n.endswith(".modality_prior")]
    assert len(task_tables) == 5 and all(state[n].shape[0] == N_BASE + 3 for n in task_tables)
    assert all(state[n].shape[0] == 5 for n in modality_tables)
    assert grown == 5 + 5 + 2  # task tables, modality tables, modality head's last Linear (weight, bias)
    assert not torch.equal(state[task_tables[0]][N_BASE], base_state[task_tables[0]][0])  # rows trained/initialised


def test_every_base_task_gives_bit_identical_logits_on_a_real_image(acdc_run):
    """Independent of add-task's own check: every base group on a real image of its own modality (model grid,
    the manifest's normalisation), the centre window, parent vs child logits compared bit for bit."""
    out, _, _ = acdc_run
    base, child = load_model(BASE), load_model(out)
    pre = Preprocessing.from_dict(base.manifest.preprocessing)
    patch = pre.patch_size
    windows = {}
    for modality, path in MODALITY_IMAGES.items():
        grid = to_model_grid(read_image(require(path)), pre.spacing)
        array = normalize_intensity(sitk.GetArrayFromImage(grid), pre.norm_for(modality)).astype(np.float32)
        start = [max((s - p) // 2, 0) for s, p in zip(array.shape, patch)]
        window = np.zeros(patch, np.float32)
        part = array[tuple(slice(a, a + p) for a, p in zip(start, patch))]
        window[tuple(slice(0, n) for n in part.shape)] = part
        windows[modality] = torch.from_numpy(window)[None, None]
    compared = 0
    with torch.no_grad():
        for group, ids, modality in group_queries(base.manifest):
            image = windows[base.manifest.modality(modality).name]
            q, m = torch.tensor([ids]), torch.tensor([modality])
            a, b = base.network(image, q, m)[0], child.network(image, q, m)[0]
            assert torch.equal(a, b), group
            assert a.abs().max() > 0
            compared += len(ids) - 1
    assert compared == N_BASE


def test_held_out_report_lineage_card_and_progress(acdc_run):
    out, events, _ = acdc_run
    manifest, _ = read_model_state(out)
    base = read_model_state(BASE)[0]
    record = manifest.lineage[-1]
    assert [r.operation for r in manifest.lineage] == ["train", "add-task"]
    assert record.parent == base.weights_sha256
    d = record.details
    assert d["mode"] == "priors" and d["new_modality"] is True and d["modality"] == "MR-cine"
    assert d["cases"]["acdc3"] == list(ACDC_CASES)
    assert len(d["data_sha256"]) == 64 and d["steps"] == 6 and d["device"] == "cpu"
    held = d["held_out"]
    patients = {c.split("_")[0] for c in held["held_out_cases"]}
    assert len(patients) == 1 and not patients & {c.split("_")[0] for c in held["train_cases"]}  # split by patient
    assert sorted(held["held_out_cases"] + held["train_cases"]) == list(ACDC_CASES)
    assert set(held["dice"]) == {"acdc3_left_ventricle", "acdc3_myocardium", "acdc3_right_ventricle"}
    assert all(v is None or 0.0 <= v <= 1.0 for v in held["dice"].values())
    assert d["forgetting_check"]["max_abs_logit_difference"] == 0.0 and d["forgetting_check"]["tasks"] == N_BASE
    assert d["init"] == {n: {"from": "mr_abdomen_ts_liver", "reason": "--init-from", "soft_dice": None}
                         for n in held["dice"]}
    added = manifest.card["added_tasks"][-1]
    assert added["held_out_dice"] == held["dice"] and manifest.card["shippable"] is False  # ACDC is not shippable
    # Each new task's measured quality is its held-out Dice (what `tasks`, `info` and the default selection read).
    for task in manifest.tasks[-3:]:
        dice = held["dice"][task.name]
        assert task.quality == (None if dice is None else {
            "heldout_dice": dice, "heldout_cases": len(held["held_out_cases"]),
            "source": "held-out cases of its split; the saved weights then went on training on every case"})
    assert [t.quality for t in manifest.tasks[:N_BASE]] == [t.quality for t in base.tasks]
    # The held-out cases chose, per new task, how segment draws it (threshold, largest piece only); the Dice reported
    # is the chosen drawing's, every candidate was scored, and a changed drawing was chosen only when strictly better
    # than every drawing before it (postprocessing.py).
    keep = held["keep_largest_component"]
    assert keep == [t.name for t in manifest.tasks[-3:] if t.keep_largest_component]
    assert held["threshold"] == {t.name: t.threshold for t in manifest.tasks[-3:]}
    by_drawing = held["dice_by_drawing"]
    assert list(by_drawing) == ["0.5", "0.5, largest piece", "0.4", "0.4, largest piece", "0.3", "0.3, largest piece"]
    for name, dice in held["dice"].items():
        chosen = f"{held['threshold'][name]:g}" + (", largest piece" if name in keep else "")
        assert dice == by_drawing[chosen][name]
        before = [scores[name] for key, scores in by_drawing.items()][:list(by_drawing).index(chosen)]
        assert all(d is None or dice > d for d in before)
        assert held["dice_all_pieces"][name] == by_drawing["0.5"][name]
    assert not any(t.keep_largest_component for t in manifest.tasks[:N_BASE])
    assert [t.threshold for t in manifest.tasks[:N_BASE]] == [t.threshold for t in base.tasks]
    assert manifest.card["parent"]["weights_sha256"] == base.weights_sha256

    steps = [e for e in events if e.get("stage") in ("held-out training", "refit")]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6] and all(e["total"] == 6 for e in steps)
    assert all(isinstance(e["loss"], float) and e["eta_s"] is not None for e in steps)
    assert any(e.get("held_out_dice") == held["dice"] for e in events)
    done = events[-1]
    assert done["stage"] == "done" and done["outputs"][0]["model"] == str(out)
    assert done["outputs"][0]["held_out_dice"] == held["dice"]


def test_info_shows_the_lineage_chain(acdc_run, capsys):
    out, _, _ = acdc_run
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "lineage: train" in text and "lineage: add-task" in text and "acdc3_myocardium" in text
    assert "held-out Dice" in text


def test_one_case_known_modality_is_deterministic_and_says_no_held_out_figure(tmp_path):
    cache = tmp_path / "cache"
    runs = []
    for k in (1, 2):
        req = AddTaskRequest(base=str(require(BASE)), data=[str(require(BREAST))], output=str(tmp_path / f"{k}.st"),
                             group="breast_new", steps=2, seed=5, device="cpu", cache_dir=str(cache))
        runs.append(add_task(req))
    a, b = runs
    assert a.held_out_dice is None and a.manifest.weights_sha256 == b.manifest.weights_sha256
    assert [t.name for t in a.manifest.tasks[N_BASE:]] == ["breast_new_breast_lesion"]
    assert a.manifest.tasks[N_BASE].modalities == ["MR"] and len(a.manifest.modalities) == 4
    assert a.manifest.lineage[-1].details["held_out"] is None
    (init,) = a.init.values()
    assert init["reason"] == "best overlap" and 0.0 < init["soft_dice"] <= 1.0
    assert init["from"] in {t.name for t in a.manifest.tasks[:N_BASE]}
    assert "no held-out figure" in a.manifest.card["added_tasks"][-1]["note"]
    assert a.manifest.tasks[N_BASE].quality is None  # seen in training only


def test_sigterm_stops_within_seconds_with_exit_130_and_no_output(tmp_path):
    out = tmp_path / "cancelled.safetensors"
    event = assert_sigterm_cancels(["add-task", str(require(BASE)), "--data", str(require(BREAST)), "-o", str(out),
                                    "--group", "breast_new", "--device", "cpu"], out, tmp_path)
    # without --steps, the one phase of a one-case run gets the whole default length, not one phase's share
    assert event["stage"] == "training" and event["total"] == DEFAULT_TOTAL_STEPS == 800


def test_without_steps_the_phases_share_the_default_length():
    # (steps per phase, steps over every phase)
    assert [phase_steps(None, held_out, refit) for held_out, refit in ((True, True), (True, False), (False, True))] \
        == [(400, 800), (800, 800), (800, 800)]
    assert phase_steps(7, True, True) == (7, 14)  # --steps N is per phase


# ---------------------------------------------------------------------------------------------------- bad input

def _refused(tmp_path, capsys, args, pattern):
    return assert_refused("add-task", BASE, tmp_path, capsys, args, pattern)


def _breast_copy(tmp_path, **meta) -> Path:
    dst = tmp_path / "breast"
    shutil.copytree(require(BREAST), dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    dst.chmod(0o755)
    if meta:
        m = json.loads((dst / "dataset.json").read_text())
        m.update(meta)
        (dst / "dataset.json").write_text(json.dumps(m))
    return dst


def test_bad_inputs_are_refused_before_any_work(tmp_path, capsys):
    breast = str(require(BREAST))
    _refused(tmp_path, capsys, ["", "--data", breast, "--group", "b", "--labels", "tumour"],
             r"--labels tumour: not in dataset.json 'labels' \(non-background labels: breast_lesion\)")
    _refused(tmp_path, capsys, ["", "--data", breast], r"group 'mr_breast_lesion' already exists in the base model")
    _refused(tmp_path, capsys, ["", "--data", breast, "--group", "b", "--init-from", "no_such_task"],
             r"--init-from 'no_such_task': the base model has no such task")
    _refused(tmp_path, capsys, ["", "--data", breast, "--group", "b", "-o", str(BASE)], r"is the base model")
    _refused(tmp_path, capsys, ["", "--data", breast, "--group", "../x"], r"--group '../x' is not a valid name")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model at all" * 10)
    _refused(tmp_path, capsys, [str(junk), "--data", breast, "--group", "b"], r"BASE: .* not a readable Hermes model")

    renamed = _breast_copy(tmp_path, labels={"background": 0, "lesion": 1})
    _refused(tmp_path, capsys, ["", "--data", str(renamed), "--group", "mr_breast_lesion_breast"],
             r"new task 'mr_breast_lesion_breast_lesion' collides with a task of the base model")
    shutil.rmtree(renamed)

    empty = _breast_copy(tmp_path, labels={"background": 0, "breast_lesion": 1, "cyst": 2})
    _refused(tmp_path, capsys, ["", "--data", str(empty), "--group", "b", "--labels", "cyst"],
             r"label cyst is empty in every case")
    shutil.rmtree(empty)

    unlabelled = _breast_copy(tmp_path)
    (unlabelled / "labelsTr" / "breast1.nii.gz").unlink()
    _refused(tmp_path, capsys, ["", "--data", str(unlabelled), "--group", "b"],
             r"case breast1: label file .* is missing")
    shutil.rmtree(unlabelled)

    shifted = _breast_copy(tmp_path)
    label_path = shifted / "labelsTr" / "breast1.nii.gz"
    label = sitk.ReadImage(str(label_path))
    label.SetSpacing(tuple(s * 2 for s in label.GetSpacing()))
    sitk.WriteImage(label, str(label_path))
    _refused(tmp_path, capsys, ["", "--data", str(shifted), "--group", "b"],
             r"case breast1: label and image are on different grids \(spacing")


def test_label_info_gives_colour_terminology_and_name_and_is_validated(tmp_path, capsys):
    from hermesseg.errors import DatasetError
    from hermesseg.nnunet import load_datasets, plan_tasks
    from hermesseg.training.model_plan import task_entry

    info = {"breast_lesion": {"color": [10, 20, 30], "display_name": "Breast mass",
                              "terminology": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                                              "type": ["SCT", "4147007", "Mass"], "modifier": None}}}
    ds = _breast_copy(tmp_path, label_info=info)
    (d,) = load_datasets([ds], ["MR"], {})
    entry = task_entry(plan_tasks([d], {}).tasks[0], 7)
    assert entry.color == (10, 20, 30) and entry.terminology["type"] == ["SCT", "4147007", "Mass"]
    assert entry.description == "Breast mass as annotated in mr_breast_lesion"
    shutil.rmtree(ds)
    for bad, pattern in (({"tumour": {}}, r"label_info\['tumour'\]: not a non-background label"),
                         ({"breast_lesion": {"color": [300, 0, 0]}}, r"color must be three integers 0..255"),
                         ({"breast_lesion": {"colour": [1, 2, 3]}}, r"must be an object with keys among"),
                         ({"breast_lesion": {"terminology": {"type": ["SCT", "1"]}}}, r"terminology must be"),
                         ({"breast_lesion": {"terminology": {"category": ["SCT", "1", "x"], "type": ["SCT", "", "y"]}}},
                          r"terminology.type must be a non-empty string"),
                         ({"breast_lesion": {"display_name": "a\nb"}}, r"display_name 'a\\nb' contains the character")):
        ds = _breast_copy(tmp_path, label_info=bad)
        with pytest.raises(DatasetError, match=pattern):
            load_datasets([ds], ["MR"], {})
        shutil.rmtree(ds)


def test_the_forgetting_check_sees_a_one_ulp_change_in_a_shared_weight():
    """The check add-task runs before writing: a real model against a copy whose stem differs in one weight by one
    unit in the last place must be reported as changed (and the identical copy as identical)."""
    import copy

    from hermesseg.training.forgetting import compare_parent_tasks

    base = load_model(BASE)
    image = sitk.GetArrayFromImage(to_model_grid(read_image(require(MODALITY_IMAGES["CT"])), (3.0, 3.0, 3.0)))
    image = normalize_intensity(image, Preprocessing.from_dict(base.manifest.preprocessing).norm_for("CT"))
    same = copy.deepcopy(base.network)
    report = compare_parent_tasks(base.network, same, base.manifest, image, (32, 32, 32))
    assert report.identical and report.max_abs_difference == 0.0 and report.tasks == N_BASE and report.queries == 8
    nudged = copy.deepcopy(base.network)
    with torch.no_grad():
        w = nudged.stem.conv.weight.view(-1)
        w[0] = torch.nextafter(w[0], torch.tensor(float("inf")))
    report = compare_parent_tasks(base.network, nudged, base.manifest, image, (32, 32, 32))
    assert not report.identical and report.max_abs_difference > 0.0
