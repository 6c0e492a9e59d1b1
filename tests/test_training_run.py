"""End-to-end training on real data (tiny network, 32^3 patches at 5 mm): learning, resume, --init, DDP.

One baseline run (30 iterations, two datasets mixed in every batch) is shared by the tests of this module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hermesseg.catalogue import catalogue
from hermesseg.errors import DatasetError
from hermesseg.model import load_model
from hermesseg.model_file import read_model_state, weights_fingerprint
from hermesseg.network import HermesR
from hermesseg.training import TrainingInterrupted, TrainRequest, train
from hermesseg.training.checkpoint import load_checkpoint
from hermesseg.training.run_files import read_metrics
from hermesseg.training.validation import dice_per_task, predict_volume

from paths import DATA, REPO, require

MNI = DATA / "mr_brain_tissue_mni"
T1C = DATA / "mr_brain_tumour_t1c"
MR_ABDOMEN = DATA / "mr_abdomen_ts"
ITERATIONS = 30

CONFIG = {
    "name": "tiny-brain",
    "seed": 3,
    "architecture": {"base_channels": 4, "head_dim": 8},
    "modalities": ["CT", "MR-T1"],
    "modality_map": {"MR-T1c": "MR-T1"},
    "spacing": [5.0, 5.0, 5.0],
    "patch_size": [32, 32, 32],
    "batch_size": 2,
    "iterations": ITERATIONS,
    "lr": 3e-3,
    "warmup_iterations": 3,
    "checkpoint_every": 10,
    "log_every": 1,
    "num_workers": 0,
    "datasets": {"mr_brain_tissue_mni": {"weight": 3.0}, "mr_brain_tumour_t1c": {"weight": 1.0}},
}


def _request(tmp: Path, name: str, cache: Path, **kw) -> TrainRequest:
    return TrainRequest(data=[str(require(MNI)), str(require(T1C))], output=str(tmp / f"{name}.safetensors"),
                        config=kw.pop("config", CONFIG), cache_dir=str(cache), **kw)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return root, root / "cache"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The test machine's 2 cores are shared with other work: one thread avoids OpenMP oversubscription (2-3x faster
    under load). The bitwise resume comparison runs in this same process, so it uses the same thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def baseline(work):
    """The uninterrupted run. At iteration 23 (checkpoint at 20, three iterations logged after it) a copy of its run
    directory is taken: exactly what a process killed at that moment leaves on disk."""
    root, cache = work

    def snapshot(iteration):
        if iteration == 23:
            shutil.copytree(root / "base.run", root / "killed.run")

    return train(_request(root, "base", cache), after_iteration=snapshot)


def _mni_cache(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    entry = next((cache / "mr_brain_tissue_mni" / "5x5x5mm").iterdir())
    image = np.load(entry / "image.npy", mmap_mode="r")
    label = np.load(entry / "label.npy", mmap_mode="r")
    assert isinstance(image, np.memmap)
    return np.asarray(image), np.asarray(label)


def test_loss_decreases_and_dice_beats_the_initial_network(baseline, work):
    _, cache = work
    rows = [r for r in read_metrics(baseline.run_dir / "metrics.jsonl") if "loss" in r]
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 1))
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
    print(f"loss: first 5 iterations {first:.3f}, last 5 {last:.3f}")
    assert last < 0.75 * first

    image, label = _mni_cache(cache)
    model = load_model(baseline.output)
    grey, white = model.manifest.task("mr_brain_tissue_mni_grey_matter"), model.manifest.task(
        "mr_brain_tissue_mni_white_matter")
    ids, mod = [grey.id, white.id], model.manifest.modality("MR-T1").id
    torch.manual_seed(CONFIG["seed"])
    initial = HermesR(model.network.config)  # the network the run started from (same seed)
    dice = {}
    for name, net in (("initial", initial), ("trained", model.network)):
        probs = predict_volume(net, image, ids, mod, CONFIG["patch_size"], torch.device("cpu"))
        dice[name] = dice_per_task(probs, label)
    print(f"Dice grey/white matter: initial {dice['initial']}, trained EMA {dice['trained']}")
    assert np.mean(dice["trained"]) > 0.4
    assert np.mean(dice["trained"]) > np.mean(dice["initial"]) + 0.2


def test_run_directory_and_model_manifest(baseline):
    run = baseline.run_dir
    assert {p.name for p in run.iterdir()} >= {"config.json", "splits.json", "metrics.jsonl", "curves.png",
                                               "checkpoint.pt"}
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary files left behind
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    splits = json.loads((run / "splits.json").read_text())
    for name, n in (("mr_brain_tissue_mni", 1), ("mr_brain_tumour_t1c", 2)):
        entry = splits["datasets"][name]
        assert entry["held_out"] is False and len(entry["train"]) == n and entry["validation"] == []
        assert "none held out" in entry["note"]
    ckpt = load_checkpoint(run / "checkpoint.pt")  # weights_only=True inside
    assert ckpt["iteration"] == ITERATIONS and ckpt["scheduler"]["iteration"] == ITERATIONS

    manifest, state = read_model_state(baseline.output)
    assert weights_fingerprint(ckpt["ema"]) == manifest.weights_sha256  # the model file holds the final EMA
    assert [(t.id, t.name, t.group, t.modalities) for t in manifest.tasks] == [
        (0, "mr_brain_tissue_mni_grey_matter", "mr_brain_tissue_mni", ["MR-T1"]),
        (1, "mr_brain_tissue_mni_white_matter", "mr_brain_tissue_mni", ["MR-T1"]),
        (2, "mr_brain_tumour_t1c_brain_tumour", "mr_brain_tumour_t1c", ["MR-T1"]),
    ]
    # Colours from the structure catalogue (Slicer's recommended grey-matter colour); red for a tumour.
    assert manifest.tasks[0].color == catalogue().structure("grey_matter").color == (200, 200, 235)
    assert manifest.tasks[2].color == (255, 0, 0)
    assert manifest.tasks[2].terminology["type"][2] == "Neoplasm"
    assert [t.quality for t in manifest.tasks] == [None] * 3  # nothing held out: seen in training only
    assert [m.name for m in manifest.modalities] == ["CT", "MR-T1"]
    assert manifest.preprocessing["spacing"] == [5.0, 5.0, 5.0]
    assert manifest.preprocessing["patch_size"] == [32, 32, 32]
    assert manifest.architecture["base_channels"] == 4 and manifest.architecture["mask_padding"] is True
    (record,) = manifest.lineage
    assert record.operation == "train" and record.parent is None
    assert record.datasets == ["mr_brain_tissue_mni", "mr_brain_tumour_t1c"]
    assert manifest.card["training"]["iterations"] == ITERATIONS
    assert manifest.card["shippable"] is True
    assert baseline.selected == "final"


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(baseline, work):
    root, _ = work
    run = root / "killed.run"
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 20  # at most checkpoint_every iterations lost
    assert len(read_metrics(run / "metrics.jsonl")) == 23
    result = train(TrainRequest(resume=str(run), output=str(root / "resumed.safetensors")))
    assert result.iterations == ITERATIONS
    ref = load_checkpoint(baseline.run_dir / "checkpoint.pt")
    got = load_checkpoint(run / "checkpoint.pt")
    for part in ("model", "ema"):
        for key, value in ref[part].items():
            assert torch.equal(value, got[part][key]), f"{part}.{key} differs after resume"
    assert weights_fingerprint(read_model_state(result.output)[1]) == weights_fingerprint(
        read_model_state(baseline.output)[1])
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 1))  # repeated iterations not logged twice
    base_rows = read_metrics(baseline.run_dir / "metrics.jsonl")
    assert [r["loss"] for r in rows] == [r["loss"] for r in base_rows]


def test_init_appends_new_tasks_and_refuses_a_new_modality(baseline, work):
    root, cache = work
    base = read_model_state(baseline.output)[0]
    small = {**CONFIG, "iterations": 2, "datasets": {}, "checkpoint_every": 2}
    small.pop("modalities")
    request = TrainRequest(data=[str(require(MR_ABDOMEN))], output=str(root / "child.safetensors"),
                           config={**small, "modality_map": {}}, init=str(baseline.output), cache_dir=str(cache))
    with pytest.raises(DatasetError, match=r"dataset mr_abdomen_ts: unknown modality 'MR'.*cannot learn a new "
                                           r"modality"):
        train(request)
    assert not (root / "child.safetensors").exists() and not (root / "child.run").exists()

    request.config = {**small, "modality_map": {"MR": "MR-T1"}, "task_init": {"mr_abdomen_ts_liver":
                                                                              "mr_brain_tissue_mni_white_matter"}}
    result = train(request)
    child = load_model(result.output)
    m = child.manifest
    assert [(t.id, t.name) for t in m.tasks[:3]] == [(t.id, t.name) for t in base.tasks]
    new = m.tasks[3:]
    assert len(new) == 23 and sorted(t.id for t in new) == list(range(3, 26))
    assert all(t.group == "mr_abdomen_ts" and t.modalities == ["MR-T1"] for t in new)
    assert m.config.num_task_rows == 26 and [x.name for x in m.modalities] == ["CT", "MR-T1"]
    assert [r.operation for r in m.lineage] == ["train", "fine-tune"]
    assert m.lineage[-1].parent == base.weights_sha256
    assert m.name == "tiny-brain" and m.card["parent"]["weights_sha256"] == base.weights_sha256


@pytest.mark.slow  # two torchrun ranks, each starting torch and training: the longest test
@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is exercised on Linux")
def test_two_rank_ddp_ends_with_identical_weights(tmp_path, work):
    _, cache = work
    cfg = {**CONFIG, "iterations": 4, "checkpoint_every": 2, "debug_rank_fingerprints": True}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "hermesseg.cli", "train", "--data", str(require(MNI)), str(require(T1C)), "-o", str(out),
           "--config", str(tmp_path / "cfg.json"), "--cache-dir", str(cache), "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "ddp.run"
    ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["iteration"] for r in ranks] == [4, 4]
    assert ranks[0]["model"] == ranks[1]["model"]
    assert ranks[0]["ema"] == ranks[1]["ema"]
    assert ranks[0]["stream"] != ranks[1]["stream"]  # each rank sampled its own patches
    manifest, _ = read_model_state(out)
    assert manifest.weights_sha256 == ranks[0]["ema"]
    assert manifest.card["training"]["world_size"] == 2 and manifest.card["training"]["global_batch"] == 4
    assert len(read_metrics(run / "metrics.jsonl")) == 4  # only rank 0 writes the log


def test_held_out_case_validation_selects_the_best_ema(tmp_path, work):
    _, cache = work
    cfg = {**CONFIG, "iterations": 4, "validate_every": 2, "checkpoint_every": 2, "datasets": {},
           "split": {"min_cases_to_hold_out": 2, "test_fraction": 0.0}}
    result = train(TrainRequest(data=[str(require(T1C))], output=str(tmp_path / "v.safetensors"), config=cfg,
                                cache_dir=str(cache)))
    splits = json.loads((result.run_dir / "splits.json").read_text())["datasets"]["mr_brain_tumour_t1c"]
    assert splits["held_out"] is True and len(splits["train"]) == 1 and len(splits["validation"]) == 1
    rows = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "validation_dice" in r]
    assert [r["iteration"] for r in rows] == [2, 4]
    best = max(rows, key=lambda r: r["validation_dice"])
    assert result.selected == f"best@{best['iteration']}" and result.validation_dice == best["validation_dice"]
    manifest, state = read_model_state(result.output)
    assert weights_fingerprint(load_checkpoint(result.run_dir / "best.pt")["ema"]) == manifest.weights_sha256
    assert manifest.card["training"]["validation_dice"] == best["validation_dice"]
    # The task's measured quality: its Dice on the one validation case, with the saved (best) weights.
    (task,) = manifest.tasks
    assert task.quality["heldout_cases"] == 1
    assert task.quality["heldout_dice"] == pytest.approx(best["validation_dice"], abs=1e-4)
    assert "validation split" in task.quality["source"]


def test_sigterm_stops_after_a_checkpoint_and_the_run_resumes(tmp_path, work):
    _, cache = work
    cfg = {**CONFIG, "iterations": 6, "checkpoint_every": 100}

    def terminate(iteration):
        if iteration == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    request = _request(tmp_path, "stopped", cache, config=cfg)
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM after iteration 3; checkpoint written"):
        train(request, after_iteration=terminate)
    assert load_checkpoint(tmp_path / "stopped.run" / "checkpoint.pt")["iteration"] == 3
    assert not (tmp_path / "stopped.safetensors").exists()
    assert train(TrainRequest(resume=str(tmp_path / "stopped.run"))).iterations == 6
    assert (tmp_path / "stopped.safetensors").is_file()


def test_train_progress_json_is_the_segment_protocol(tmp_path, work):
    """`train --progress json`: stdout holds only JSON events, one per logged iteration, then one naming the model."""
    _, cache = work
    cfg = {**CONFIG, "iterations": 3, "checkpoint_every": 3}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "p.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "hermesseg.cli", "train", "--data", str(require(MNI)), "-o", str(out), "--config",
           str(tmp_path / "cfg.json"), "--cache-dir", str(cache), "--device", "cpu", "--progress", "json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    steps = [e for e in events if e["stage"] == "train"]
    assert [e["step"] for e in steps] == [1, 2, 3] and all(e["total"] == 3 for e in steps)
    assert [e["fraction"] for e in steps] == [pytest.approx(1 / 3, abs=1e-4), pytest.approx(2 / 3, abs=1e-4), 1.0]
    assert all(e["loss"] > 0 and e["eta_s"] >= 0 for e in steps) and steps[-1]["eta_s"] == 0
    assert events[-1]["stage"] == "done" and events[-1]["outputs"][0]["model"] == str(out)
    assert events[-1]["outputs"][0]["iterations"] == 3 and out.is_file()
    assert f"wrote {out}" in proc.stderr
