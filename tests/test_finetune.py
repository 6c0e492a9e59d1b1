"""finetune on real data: the shipped default model (hermes-mini) learns a structure with every weight trainable,
the backbone at the scaled learning rate, cases of the parent's own datasets replayed, and forgetting of the parent's
tasks measured (before = the parent's Dice, recomputed here independently); cancel leaves nothing, bad input is
refused before any work.

Step counts are tiny: these tests check behaviour, numbers and bytes, not how well a structure is learned.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from hermesseg.compatibility import compatibility_fingerprint
from hermesseg.finetune_options import DEFAULT_LR
from hermesseg.imageio import read_image
from hermesseg.inference.sliding_window import sliding_window_probabilities
from hermesseg.model import load_model
from hermesseg.model_file import read_manifest, read_model_state
from hermesseg.preprocessing import Preprocessing, normalize_intensity, resample_label_to_grid, to_model_grid
from hermesseg.training.config import DEFAULTS
from hermesseg.training.finetune import FinetuneRequest, finetune
from hermesseg.training.loop import prepare_optimisation, scaled_groups
from hermesseg.training.optim import set_lr
from hermesseg.training.phase import phase_config

from paths import ACDC, DATA, require, SHIPPED_MODEL
from new_task_helpers import assert_refused, assert_sigterm_cancels, dataset_subset as _subset, run_json
from threads import one_torch_thread  # noqa: F401 (autouse fixture)

BASE = SHIPPED_MODEL
N_BASE = len(read_manifest(BASE).tasks)
BREAST = DATA / "mr_breast_lesion"
ABDOMEN = DATA / "mr_abdomen_ts"
ACDC_CASES = ("patient001_frame01", "patient002_frame01", "patient007_frame01")  # 3 patients: one is held out
DONE_KEYS = {"model", "tasks", "held_out_dice", "steps", "wall_s", "forgetting"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _parent_dice(model, dataset: Path, case: str, task: str) -> float:
    """The parent's Dice of ``task`` on one case, recomputed from the public pieces: the case on the model grid
    (the manifest's spacing and normalisation), the sliding window (25 % overlap, as validation), the dataset's
    parent tasks queried in label order with the null token, threshold 0.5, Dice against the resampled label."""
    meta = json.loads((dataset / "dataset.json").read_text())
    manifest = model.manifest
    pre = Preprocessing.from_dict(manifest.preprocessing)
    ids = {t.name: t.id for t in manifest.tasks}
    labels = sorted(((v, k) for k, v in meta["labels"].items() if v and f"{meta['name']}_{k}" in ids))
    query = [ids[f"{meta['name']}_{k}"] for _, k in labels] + [-1]
    grid = to_model_grid(read_image(dataset / "imagesTr" / f"{case}_0000.nii.gz"), pre.spacing)
    image = normalize_intensity(sitk.GetArrayFromImage(grid), pre.norm_for(meta["modality"])).astype(np.float32)
    label = sitk.GetArrayFromImage(resample_label_to_grid(sitk.ReadImage(str(dataset / "labelsTr" /
                                                                              f"{case}.nii.gz")), grid))
    model.network.eval()
    probs = sliding_window_probabilities(model.network, torch.from_numpy(image), query,
                                         manifest.modality(meta["modality"]).id, tuple(pre.patch_size),
                                         overlap=0.25, batch_size=1).numpy()
    k = [f"{meta['name']}_{name}" for _, name in labels].index(task)
    pred, truth = probs[k] > 0.5, label == labels[k][0]
    return 2.0 * float((pred & truth).sum()) / (int(pred.sum()) + int(truth.sum()))


# ---------------------------------------------------------------------------------------------------- runs

@pytest.fixture(scope="module")
def acdc_run(tmp_path_factory):
    """One real `hermesseg finetune` process, --progress json: 3 ACDC patients in a modality the base model never
    saw (held-out Dice, no refit), no case of a base task: forgetting "not measured"."""
    root = tmp_path_factory.mktemp("acdc")
    data = _subset(require(ACDC), root / "acdc3", list(ACDC_CASES), name="acdc3")
    out = root / "heart.safetensors"
    events = run_json(["finetune", str(require(BASE)), "--data", str(data), "-o", str(out), "--steps", "2",
                       "--seed", "1", "--no-refit", "--device", "cpu"], root / "cache")
    return out, events


@pytest.fixture(scope="module")
def replay_run(tmp_path_factory):
    """finetune of a breast lesion task (a new group) with the parent's own abdominal MR replayed."""
    root = tmp_path_factory.mktemp("replay")
    base_sha = _sha256(require(BASE))
    request = FinetuneRequest(base=str(BASE), data=[str(require(BREAST))], output=str(root / "ft.safetensors"),
                              group="breast_ft", replay=[str(require(ABDOMEN))], steps=3, seed=3, device="cpu",
                              cache_dir=str(root / "cache"))
    result = finetune(request)
    return result, base_sha


def test_done_event_progress_and_forgetting_not_measured(acdc_run):
    out, events = acdc_run
    done = events[-1]
    assert done["stage"] == "done" and set(done["outputs"][0]) == DONE_KEYS
    o = done["outputs"][0]
    assert o["model"] == str(out) and o["steps"] == 2 and o["wall_s"] > 0
    assert o["tasks"] == ["acdc3_right_ventricle", "acdc3_myocardium", "acdc3_left_ventricle"]
    assert set(o["held_out_dice"]) == set(o["tasks"])
    assert all(v is None or 0.0 <= v <= 1.0 for v in o["held_out_dice"].values())
    assert set(o["forgetting"]) == {"not_measured"} and "no --replay" in o["forgetting"]["not_measured"]
    steps = [e for e in events if e.get("stage") == "held-out training"]
    assert [e["step"] for e in steps] == [1, 2] and all(e["total"] == 2 for e in steps)
    assert all(isinstance(e["loss"], float) and e["eta_s"] is not None and 0 <= e["fraction"] <= 1 for e in steps)
    assert any(e.get("held_out_dice") == o["held_out_dice"] for e in events)
    assert all({"stage", "fraction", "message"} <= set(e) for e in events)

    manifest, _ = read_model_state(out)
    assert manifest.card["fine_tuned"][-1]["forgetting"] == o["forgetting"]
    assert manifest.card["fine_tuned"][-1]["held_out_dice"] == o["held_out_dice"]
    assert [m.name for m in manifest.modalities][-1] == "MR-cine" and manifest.tasks[N_BASE].modalities == ["MR-cine"]
    d = manifest.lineage[-1].details
    assert manifest.lineage[-1].operation == "finetune" and d["held_out"]["dice"] == o["held_out_dice"]
    assert len({c.split("_")[0] for c in d["held_out"]["held_out_cases"]}) == 1
    # finetune trains with base training's augmentation (add-task's stronger one was measured for its adapter only)
    assert d["training"]["augmentation"] == DEFAULTS["augmentation"]
    assert d["training"]["lr"] == DEFAULT_LR and d["training"]["batch_size"] == 2


def test_forgetting_is_measured_on_the_replay_cases_and_before_is_the_parents_dice(replay_run):
    result, _ = replay_run
    f = result.forgetting
    assert f["measured_on"] == ["mr_abdomen_ts/example_mr_sm"]
    parent = load_model(BASE)
    abdomen = [t.name for t in parent.manifest.tasks if t.group == "mr_abdomen_ts"]
    assert sorted(f["tasks"]) == sorted(abdomen) and len(abdomen) == 23
    for name in ("mr_abdomen_ts_liver", "mr_abdomen_ts_spleen"):
        before, after = f["tasks"][name]["before"], f["tasks"][name]["after"]
        assert isinstance(before, float) and isinstance(after, float) and 0.0 <= after <= 1.0
        assert before == pytest.approx(_parent_dice(parent, ABDOMEN, "example_mr_sm", name), abs=2e-4)
    assert f["tasks"]["mr_abdomen_ts_liver"]["before"] > 0.5  # the parent knows the liver on its own image
    manifest = result.manifest
    entry = manifest.card["fine_tuned"][-1]
    assert set(entry) == {"tasks", "group", "held_out_dice", "forgetting", "steps", "wall_s", "note"}
    assert entry["forgetting"] == f and entry["tasks"] == ["breast_ft_breast_lesion"] and entry["held_out_dice"] is None
    record = manifest.lineage[-1]
    assert record.operation == "finetune" and record.parent == parent.manifest.weights_sha256
    d = record.details
    assert d["forgetting"] == f and d["replay"] == {"mr_abdomen_ts": ["example_mr_sm"]}
    assert d["cases"] == {"mr_breast_lesion": ["breast1"]} and len(d["data_sha256"]) == 64
    assert d["steps"] == 3 and d["device"] == "cpu" and d["held_out"] is None
    # the replay dataset was sampled: its cases went through the loop with the parent's tasks as query
    assert d["samples"]["mr_abdomen_ts"] > 0 and d["samples"]["new"] > 0
    assert sum(d["samples"].values()) == 3 * 2


def test_parent_file_unchanged_and_every_kind_of_weight_trained(replay_run):
    result, base_sha = replay_run
    assert _sha256(BASE) == base_sha
    _, base_state = read_model_state(BASE)
    _, state = read_model_state(result.output)
    changed = {name for name, old in base_state.items()
               if not torch.equal(state[name][: old.shape[0]] if state[name].shape != old.shape else state[name], old)}
    assert compatibility_fingerprint(state) != compatibility_fingerprint(base_state)  # task packs do not fit it
    for prefix in ("stem.", "encoder.0.", "encoder.3.", "decoder.0.", "decoder.3.", "fusion.0.blocks.", "task_head."):
        assert any(n.startswith(prefix) for n in changed), prefix
    tables = [n for n in state if n.endswith(".task_prior")]
    assert all(n in changed for n in tables)  # the parent's own rows moved too: nothing is frozen
    assert all(state[n].shape[0] == N_BASE + 1 for n in tables)


def test_backbone_trains_at_the_scaled_learning_rate(replay_run):
    """The run's optimiser groups (recorded from the optimiser itself), and the hook on a real network."""
    result, _ = replay_run
    groups = {g["name"]: g for g in result.manifest.lineage[-1].details["parameter_groups"]}
    assert set(groups) == {"new rows", "backbone", "decoder, fusion, heads"}
    rest = groups["decoder, fusion, heads"]["peak_lr"]
    assert rest == pytest.approx(1e-3)
    assert groups["backbone"]["peak_lr"] == pytest.approx(0.1 * rest) and groups["backbone"]["lr_scale"] == 0.1
    assert groups["new rows"]["peak_lr"] == pytest.approx(10 * rest)
    net = load_model(BASE).network
    net.add_new_rows([0])  # the run's one new task
    backbone = sum(p.numel() for m in (net.stem, net.encoder) for p in m.parameters())
    assert groups["backbone"]["parameters"] == backbone
    assert sum(g["parameters"] for g in groups.values()) == sum(p.numel() for p in net.parameters())

    opt = prepare_optimisation(net, phase_config({"lr": 2e-3}, 0, 5, (48, 48, 48)), scaled_groups(0.25, 4.0))
    set_lr(opt.optimizer, 2e-3)
    lrs = {g["name"]: g["lr"] for g in opt.optimizer.param_groups}
    assert lrs == {"new rows": pytest.approx(8e-3), "backbone": pytest.approx(5e-4),
                   "decoder, fusion, heads": pytest.approx(2e-3)}
    stem = next(g for g in opt.optimizer.param_groups if g["name"] == "backbone")["params"]
    assert any(p is net.stem.conv.weight for p in stem) and all(p.requires_grad for p in net.parameters())


def test_without_replay_forgetting_is_measured_on_given_cases_that_label_a_base_task(tmp_path):
    parent = load_model(BASE)
    result = finetune(FinetuneRequest(base=str(BASE), data=[str(require(BREAST))], output=str(tmp_path / "b.st"),
                                      group="b", steps=1, seed=0, device="cpu", cache_dir=str(tmp_path / "c")))
    f = result.forgetting
    assert f["measured_on"] == ["mr_breast_lesion/breast1"] and list(f["tasks"]) == ["mr_breast_lesion_breast_lesion"]
    before = f["tasks"]["mr_breast_lesion_breast_lesion"]["before"]
    assert before == pytest.approx(_parent_dice(parent, BREAST, "breast1", "mr_breast_lesion_breast_lesion"),
                                   abs=2e-4)
    assert isinstance(f["tasks"]["mr_breast_lesion_breast_lesion"]["after"], float)


def test_sigterm_stops_within_seconds_with_exit_130_and_no_output(tmp_path):
    out = tmp_path / "cancelled.safetensors"
    assert_sigterm_cancels(["finetune", str(require(BASE)), "--data", str(require(BREAST)), "-o", str(out),
                            "--group", "b", "--steps", "100000", "--device", "cpu"], out, tmp_path)


# ---------------------------------------------------------------------------------------------------- bad input

_refused = functools.partial(assert_refused, "finetune", BASE)


def test_bad_inputs_are_refused_before_any_work(tmp_path, capsys):
    breast, abdomen, acdc = str(require(BREAST)), str(require(ABDOMEN)), str(require(ACDC))
    ok = ["", "--data", breast, "--group", "b"]
    _refused(tmp_path, capsys, [*ok, "--labels", "tumour"], r"--labels tumour: not in dataset.json 'labels'")
    _refused(tmp_path, capsys, ["", "--data", breast], r"group 'mr_breast_lesion' already exists in the base model")
    _refused(tmp_path, capsys, [*ok, "-o", str(BASE)], r"is the base model")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model at all" * 10)
    _refused(tmp_path, capsys, [str(junk), *ok[1:]], r"BASE: .* not a readable Hermes model")
    _refused(tmp_path, capsys, [*ok, "--lr", "0"], r"--lr must be a positive number, got 0")
    _refused(tmp_path, capsys, [*ok, "--lr", "nan"], r"--lr must be a positive number, got nan")
    _refused(tmp_path, capsys, [*ok, "--backbone-lr-scale", "2"], r"--backbone-lr-scale must be in \(0, 1\], got 2")
    _refused(tmp_path, capsys, [*ok, "--steps", "0"], r"--steps must be at least 1")
    _refused(tmp_path, capsys, [*ok, "--replay", str(tmp_path / "nowhere")], r"dataset folder not found")
    _refused(tmp_path, capsys, [*ok, "--replay", acdc], r"--replay .*: modality 'MR-cine' is not one the base model "
                                                        r"knows")
    _refused(tmp_path, capsys, ["", "--data", abdomen, "--group", "b", "--replay", abdomen],
             r"dataset mr_abdomen_ts is also given with --data")
    foreign = _subset(require(BREAST), tmp_path / "foreign", ["breast1"], name="site_breast")
    _refused(tmp_path, capsys, [*ok, "--replay", str(foreign)],
             r"none of the labels of dataset site_breast is a task of the base model .*site_breast_breast_lesion is not")
