"""Task packs: export a model's new task groups, import them into a fresh copy of the base, same logits bit for bit.

The base is the shipped default model; the taught model gains tasks the way add-task adds them (new rows in every
task table, a new modality block) with distinct random rows. Logits are compared on a real cine-MR image.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hermesseg.cli import main
from hermesseg.compatibility import compatibility_fingerprint
from hermesseg.errors import TaskPackError
from hermesseg.inference.query_plan import plan_queries
from hermesseg.manifest import LineageRecord, ModalityEntry, TaskEntry
from hermesseg.model import load_model
from hermesseg.model_file import read_model_state, save_model, weights_fingerprint
from hermesseg.network import HermesR
from hermesseg.preprocessing import Preprocessing, normalize_intensity, to_model_grid
from hermesseg.task_pack import PACK_KEY, read_pack

from threads import one_torch_thread  # noqa: F401 (autouse fixture)
from paths import ACDC, require, SHIPPED_MODEL

BASE = SHIPPED_MODEL
CINE_TASKS = ["acdc_right_ventricle", "acdc_myocardium", "acdc_left_ventricle"]


def teach(base_path, out, group: str, names: list[str], modality: str, seed: int):
    """Save ``base`` + one group of tasks with random rows (and a random block if ``modality`` is new), as add-task
    would: every tensor the base had stays as it was."""
    manifest, state = read_model_state(base_path)
    gen = torch.Generator().manual_seed(seed)
    state = dict(state)
    new_modality = modality not in [m.name for m in manifest.modalities]
    for name, tensor in list(state.items()):
        grow = len(names) if name.endswith(".task_prior") else 0
        if new_modality and (name.endswith(".modality_prior") or name.startswith("modality_head.classifier.fc2.")):
            grow = 1
        if grow:
            rows = torch.randn((grow, *tensor.shape[1:]), generator=gen) * tensor.std()
            state[name] = torch.cat([tensor, rows])
    first = manifest.config.num_task_rows
    config = replace(manifest.config, num_task_rows=first + len(names),
                     num_modalities=manifest.config.num_modalities + new_modality)
    net = HermesR(config)
    net.load_state_dict(state)
    modalities = list(manifest.modalities)
    intensity = dict(manifest.preprocessing["intensity"])
    if new_modality:
        modalities.append(ModalityEntry(len(modalities), modality, "cine MR", ["MR"]))
        intensity[modality] = {"scheme": "percentile_clip_zscore", "percentiles": [1.0, 99.0], "stats_region": "all"}
    tasks = [TaskEntry(first + i, n, group, [modality], (200, 60 + 40 * i, 60)) for i, n in enumerate(names)]
    taught = replace(manifest, tasks=manifest.tasks + tasks, modalities=modalities,
                     preprocessing={**manifest.preprocessing, "intensity": intensity},
                     lineage=manifest.lineage + [LineageRecord("add-task", parent=manifest.weights_sha256,
                                                               datasets=[group], tasks=names)])
    save_model(out, net, taught)
    return out




@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("packs")
    base = root / "base.safetensors"
    shutil.copyfile(require(BASE), base)
    taught = teach(base, root / "taught.safetensors", "acdc", CINE_TASKS, "MR-cine", seed=1)
    return root, base, taught


@pytest.fixture(scope="module")
def cine_patch():
    """A real ACDC image on the model grid, normalised as the new modality says: (1, 1, 16, 48, 48)."""
    image = sitk.ReadImage(str(require(ACDC) / "imagesTr" / "patient001_frame01_0000.nii.gz"))
    pre = Preprocessing.from_dict({"spacing": [3.0, 3.0, 3.0], "intensity": {
        "MR-cine": {"scheme": "percentile_clip_zscore", "percentiles": [1.0, 99.0], "stats_region": "all"}}})
    array = sitk.GetArrayFromImage(to_model_grid(image, pre.spacing))
    array = normalize_intensity(array, pre.norm_for("MR-cine"))
    z, y, x = (max(0, (s - p) // 2) for s, p in zip(array.shape, (16, 48, 48)))
    patch = array[z:z + 16, y:y + 48, x:x + 48]
    assert patch.shape == (16, 48, 48) and float(patch.std()) > 0.5
    return torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32))[None, None]


def group_logits(path, group: str, image: torch.Tensor) -> torch.Tensor:
    """Logits of one group, queried as segment queries it (the group's tasks, then one null token)."""
    model = load_model(path)
    tasks = [t for t in model.manifest.tasks if t.group == group]
    modality = tasks[0].modalities[0]
    (query,) = plan_queries(model.manifest, tasks, modality)
    with torch.no_grad():
        logits, _ = model.network(image, torch.tensor([query.task_ids]),
                                  torch.tensor([model.manifest.modality(modality).id]))
    return logits[0, :len(tasks)]


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def pack(work):
    root, _, taught = work
    path = root / "acdc.pack.safetensors"
    assert main(["export-task", str(taught), "acdc", "-o", str(path)]) == 0
    return path


def test_pack_holds_only_the_groups_rows_and_block(work, pack):
    _, base, taught = work
    _, state = read_model_state(taught)
    p = read_pack(pack)
    assert [t.name for t in p.tasks] == CINE_TASKS
    assert [m.entry.name for m in p.modalities] == ["MR-cine"]
    assert p.modalities[0].intensity["percentiles"] == [1.0, 99.0]
    assert p.lineage[-1].operation == "add-task" and p.lineage[-1].tasks == CINE_TASKS
    ids = torch.tensor([t.id for t in p.tasks])
    for i in range(5):
        assert torch.equal(p.tensors[f"fusion.{i}.task_prior"], state[f"fusion.{i}.task_prior"][ids])
        assert torch.equal(p.tensors[f"fusion.{i}.modality_prior"], state[f"fusion.{i}.modality_prior"][4:5])
    assert p.base_fingerprint == compatibility_fingerprint(read_model_state(base)[1])
    # 3 tasks x 272 floats + one modality block (10 x 272) and head row (272 + 1), plus the JSON metadata
    floats = 3 * 272 + 10 * 272 + 273
    assert floats * 4 < pack.stat().st_size < floats * 4 + 8000


def test_fingerprint_ignores_added_tasks_and_sees_shared_weights(work):
    _, base, taught = work
    _, base_state = read_model_state(base)
    _, taught_state = read_model_state(taught)
    assert weights_fingerprint(base_state) != weights_fingerprint(taught_state)
    assert compatibility_fingerprint(base_state) == compatibility_fingerprint(taught_state)
    tuned = dict(base_state, **{"stem.conv.weight": base_state["stem.conv.weight"] * 1.001})
    assert compatibility_fingerprint(tuned) != compatibility_fingerprint(base_state)


def test_round_trip_gives_bit_identical_logits(work, pack, cine_patch, capsys):
    root, base, taught = work
    fresh = root / "fresh_base.safetensors"
    shutil.copyfile(require(BASE), fresh)
    out = root / "imported.safetensors"
    code, err = run_cli(capsys, "import-task", fresh, pack, "-o", out)
    assert code == 0, err
    assert fresh.read_bytes() == BASE.read_bytes()  # the base is never modified
    expected = group_logits(taught, "acdc", cine_patch)
    got = group_logits(out, "acdc", cine_patch)
    assert got.shape == (3, 16, 48, 48) and float(expected.abs().max()) > 0
    assert torch.equal(got, expected)
    assert not torch.equal(got[0], got[1])  # distinct rows give distinct channels: the rows are what was moved
    # the base's own tasks are untouched: same logits as in the base
    assert torch.equal(group_logits(out, "mr_abdomen_ts", cine_patch), group_logits(base, "mr_abdomen_ts",
                                                                                       cine_patch))
    imported = load_model(out).manifest
    assert [m.name for m in imported.modalities][-1] == "MR-cine"
    assert imported.lineage[-1].operation == "import-task" and imported.lineage[-1].tasks == CINE_TASKS
    assert imported.lineage[-1].parent == read_model_state(base)[0].weights_sha256
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["compatibility_fingerprint"] == read_pack(pack).base_fingerprint


def test_packs_from_two_sites_combine(work, pack, cine_patch, capsys):
    """A second site teaches the same base a group in a modality the base knows: no block is appended, and both
    packs import into one model (the first import keeps the base's fingerprint)."""
    root, base, taught = work
    other = teach(base, root / "other.safetensors", "site_b_heart", ["site_b_heart_cavity"], "MR", seed=2)
    other_pack = root / "other.pack.safetensors"
    assert main(["export-task", str(other), "site_b_heart_cavity", "-o", str(other_pack)]) == 0
    assert read_pack(other_pack).tensors["fusion.0.modality_prior"].shape == (1, 10, 32)
    step = root / "step.safetensors"
    both = root / "both.safetensors"
    assert run_cli(capsys, "import-task", base, pack, "-o", step)[0] == 0
    code, err = run_cli(capsys, "import-task", step, other_pack, "-o", both)
    assert code == 0, err
    merged = load_model(both).manifest
    assert merged.config.num_modalities == 5  # MR reused, MR-cine from the first pack
    assert merged.task("site_b_heart_cavity").modalities == ["MR"]
    assert torch.equal(group_logits(both, "acdc", cine_patch), group_logits(taught, "acdc", cine_patch))
    assert torch.equal(group_logits(both, "site_b_heart", cine_patch), group_logits(other, "site_b_heart", cine_patch))


def test_pack_for_another_base_is_refused_naming_both_fingerprints(work, pack, capsys):
    root, base, _ = work
    manifest, state = read_model_state(base)
    state["stem.conv.weight"] = state["stem.conv.weight"] * 1.01  # what finetune does to shared weights
    net = HermesR(manifest.config)
    net.load_state_dict(state)
    tuned = root / "tuned.safetensors"
    save_model(tuned, net, manifest)
    out = root / "never.safetensors"
    code, err = run_cli(capsys, "import-task", tuned, pack, "-o", out)
    assert code == 2 and not out.exists()
    assert read_pack(pack).base_fingerprint in err and compatibility_fingerprint(state) in err
    assert err.startswith("hermesseg import-task: error: ") and "\n" not in err


def _rewrite_pack(src, dst, edit_meta=None, edit_tensors=None, resign=True):
    with safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()[PACK_KEY])
    if edit_tensors:
        edit_tensors(tensors)
    if resign:
        meta["tensors_sha256"] = weights_fingerprint(tensors)
    if edit_meta:
        edit_meta(meta)
    save_file(tensors, str(dst), metadata={PACK_KEY: meta if isinstance(meta, str) else json.dumps(meta)})
    return dst


def _nan(t):
    t["fusion.1.task_prior"][0, 0] = float("nan")


def _flip_bit(t):
    t["fusion.2.task_prior"][1, 3] += 1.0


@pytest.mark.parametrize("name, make, message", [
    ("truncated", lambda src, dst: dst.write_bytes(src.read_bytes()[:3000]), "not a readable task pack"),
    ("garbage", lambda src, dst: dst.write_bytes(np.random.default_rng(0).bytes(20000)), "not a readable task pack"),
    ("model", lambda src, dst: shutil.copyfile(BASE, dst), "is a model file, not a task pack"),
    ("edited_bytes", lambda s, d: _rewrite_pack(s, d, edit_tensors=_flip_bit, resign=False),
     "do not match the pack's sha256"),
    ("nan", lambda s, d: _rewrite_pack(s, d, edit_tensors=_nan), "'fusion.1.task_prior' is not finite"),
    ("extra_tensor", lambda s, d: _rewrite_pack(s, d, edit_tensors=lambda t: t.update(
        {"stem.conv.weight": torch.zeros(8, 1, 3, 3, 3)})), "unexpected tensor 'stem.conv.weight'"),
    ("row_count", lambda s, d: _rewrite_pack(s, d, edit_tensors=lambda t: t.update(
        {"fusion.0.task_prior": t["fusion.0.task_prior"][:2].clone()})), "'fusion.0.task_prior' has shape (2, 32)"),
    ("width", lambda s, d: _rewrite_pack(s, d, edit_tensors=lambda t: t.update(
        {"fusion.0.task_prior": torch.zeros(3, 33)})), "does not fit the base model's (109, 32)"),
    ("block", lambda s, d: _rewrite_pack(s, d, edit_tensors=lambda t: t["fusion.3.modality_prior"].mul_(2)),
     "prior tokens of modality 'MR-cine' do not match"),
    ("not_json", lambda s, d: _rewrite_pack(s, d, edit_meta=None, edit_tensors=None) and _rewrite_raw(d, "{tasks"),
     "not valid JSON"),
    ("version", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m.update(format_version=7)),
     "unsupported task pack version 7"),
    ("tasks_type", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m.update(tasks={"a": 1})),
     "'tasks' must be a list, not dict"),
    ("name_type", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["tasks"][0].update(name=["x"])),
     "pack task 0: 'name' must be a str, not list"),
    ("unknown_field", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["tasks"][1].update(script="rm")),
     "pack task 1 is malformed"),
    ("colour", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["tasks"][0].update(color=[300, 0, 0])),
     "has an invalid colour"),
    ("piece_flag", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["tasks"][0].update(
        keep_largest_component="yes")), "keep_largest_component must be true or false"),
    ("threshold", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["tasks"][0].update(threshold=7)),
     "threshold must be a number between 0 and 1"),
    ("duplicate", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["tasks"][1].update(
        name=m["tasks"][0]["name"])), "is used twice"),
    ("modality", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["tasks"][0].update(modalities=["CT"])),
     "names modalities ['CT'] whose prior tokens are not in the pack"),
    ("intensity", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["modalities"][0]["intensity"].update(
        scheme="exec")), "invalid intensity normalisation"),
    ("lineage", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["lineage"][0].update(datasets=[1])),
     "'datasets' must be a list of strings"),
    # hostile names and text: the one name rule (hermesseg.names) applies to everything a pack brings in
    ("path_name", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["tasks"][0].update(name="../../etc/x")),
     "task name '../../etc/x' is not a valid name"),
    ("newline_group", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["tasks"][2].update(group="a\nb")),
     "group 'a\\nb' is not a valid name"),
    ("long_name", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["tasks"][1].update(name="x" * 65)),
     "it has 65 characters"),
    ("device_modality", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["modalities"][0]["entry"].update(
        name="CON")), "modality name 'CON' is not a valid name"),
    ("bidi_notes", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["lineage"][0].update(
        notes="ok\u202egnp.exe")), "contains the character '\\u202e'"),
    ("fingerprint", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m.update(
        base_fingerprint="ab\nhermesseg: all good")), "base_fingerprint 'ab\\nhermesseg: all good' is not a sha256"),
    ("source_name", lambda s, d: _rewrite_pack(s, d, edit_meta=lambda m: m["source"].update(name="-rf")),
     "model name '-rf' is not a valid name"),
])
def test_corrupt_packs_are_refused_with_one_line(work, pack, capsys, name, make, message):
    root, base, _ = work
    bad = root / f"bad_{name}.safetensors"
    make(pack, bad)
    out = root / f"out_{name}.safetensors"
    code, err = run_cli(capsys, "import-task", base, bad, "-o", out)
    assert code == 2 and not out.exists()
    assert err.startswith("hermesseg import-task: error: ") and "\n" not in err, err
    assert message in err
    assert sorted(p.name for p in root.glob(".out_*")) == []  # no temporary file left behind


def test_the_drawing_choice_travels_with_the_pack(work, pack, capsys):
    """A task's held-out choices, to keep only its largest piece and its threshold, reach the importing model
    (segment reads them)."""
    root, base, _ = work
    flagged = _rewrite_pack(pack, root / "flagged.safetensors",
                            edit_meta=lambda m: (m["tasks"][1].update(keep_largest_component=True),
                                                 m["tasks"][2].update(threshold=0.3)))
    out = root / "flagged_import.safetensors"
    code, err = run_cli(capsys, "import-task", base, flagged, "-o", out)
    assert code == 0, err
    imported = {t.name: (t.keep_largest_component, t.threshold) for t in load_model(out).manifest.tasks}
    assert [imported[n] for n in CINE_TASKS] == [(False, 0.5), (True, 0.5), (False, 0.3)]
    assert all(v == (False, 0.5) for n, v in imported.items() if n not in CINE_TASKS)


def _rewrite_raw(path, text: str):
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={PACK_KEY: text})
    return path


@pytest.mark.parametrize("argv, message", [
    (lambda r, b, t, p: ["import-task", t, p, "-o", r / "x.safetensors"], "task 'acdc_right_ventricle' already exists"),
    (lambda r, b, t, p: ["import-task", b, p, "-o", b], "is the input"),
    (lambda r, b, t, p: ["import-task", b, p, "-o", r], "is a folder"),
    (lambda r, b, t, p: ["export-task", t, "acdc_myocardium", "-o", r / "x.safetensors"],
     "export the group 'acdc'"),
    (lambda r, b, t, p: ["export-task", t, "no_such_task", "-o", r / "x.safetensors"], "unknown task or group"),
    (lambda r, b, t, p: ["export-task", t, "acdc", "-o", t], "is the input"),
    (lambda r, b, t, p: ["import-task", p, p, "-o", r / "x.safetensors"], "without a Hermes manifest"),
    (lambda r, b, t, p: ["import-task", b, b, "-o", r / "x.safetensors"], "is a model file, not a task pack"),
])
def test_bad_requests_are_refused(work, pack, capsys, argv, message):
    root, base, taught = work
    before = {p.name: p.stat().st_mtime_ns for p in root.iterdir()}
    code, err = run_cli(capsys, *argv(root, base, taught, pack))
    assert code == 2 and message in err and "\n" not in err, err
    assert {p.name: p.stat().st_mtime_ns for p in root.iterdir()} == before  # nothing written or replaced


def test_a_different_block_for_a_known_modality_is_refused(work, pack):
    """Two sites that each taught the base a new 'MR-cine' learned different blocks: the second is refused."""
    root, base, _ = work
    other = teach(base, root / "other_cine.safetensors", "site_c", ["site_c_lv"], "MR-cine", seed=3)
    with pytest.raises(TaskPackError, match="modality 'MR-cine' has other prior tokens"):
        from hermesseg.task_pack import import_pack
        import_pack(other, pack, root / "never2.safetensors")
    assert not (root / "never2.safetensors").exists()


@pytest.mark.slow  # one real add-task run: about 90 s on the shared 2 cores
def test_round_trip_of_a_real_add_task_output(tmp_path, cine_patch, capsys):
    """add-task teaches the base one ACDC patient's three structures in the new modality MR-cine; its pack, imported
    into a fresh copy of the base, gives the same logits bit for bit, and the copy keeps the base's fingerprint."""
    from hermesseg.training.add_task import AddTaskRequest, add_task

    data = tmp_path / "acdc1"
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir(parents=True)
    meta = json.loads((require(ACDC) / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**meta, "name": "acdc1", "numTraining": 2}))
    for frame in ("patient001_frame01", "patient001_frame02"):
        (data / "imagesTr" / f"{frame}_0000.nii.gz").symlink_to(ACDC / "imagesTr" / f"{frame}_0000.nii.gz")
        (data / "labelsTr" / f"{frame}.nii.gz").symlink_to(ACDC / "labelsTr" / f"{frame}.nii.gz")
    taught = tmp_path / "taught.safetensors"
    add_task(AddTaskRequest(base=str(require(BASE)), data=[str(data)], output=str(taught), steps=2, seed=1,
                            device="cpu", cache_dir=str(tmp_path / "cache")))
    pack, fresh, out = tmp_path / "acdc1.pack", tmp_path / "fresh.safetensors", tmp_path / "imported.safetensors"
    assert run_cli(capsys, "export-task", taught, "acdc1", "-o", pack)[0] == 0
    shutil.copyfile(BASE, fresh)
    code, err = run_cli(capsys, "import-task", fresh, pack, "-o", out)
    assert code == 0, err
    assert [t.name for t in read_pack(pack).tasks] == ["acdc1_right_ventricle", "acdc1_myocardium",
                                                         "acdc1_left_ventricle"]
    assert torch.equal(group_logits(out, "acdc1", cine_patch), group_logits(taught, "acdc1", cine_patch))
    base_fp = compatibility_fingerprint(read_model_state(BASE)[1])
    assert compatibility_fingerprint(read_model_state(taught)[1]) == base_fp == read_pack(pack).base_fingerprint
    assert pack.stat().st_size < 20_000
