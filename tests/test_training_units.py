"""Training building blocks: config, loss, schedule, EMA, LAMB, sampler, augmentation, splits, cache, checkpoints."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from hermesseg.errors import OutputError
from hermesseg.training import checkpoint as ckpt_mod
from hermesseg.training.augment import augment_intensity, apply_affine, draw_affine
from hermesseg.training.cache import build_cache
from hermesseg.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from hermesseg.training.config import DEFAULTS, TrainingConfigError, resolve_config
from hermesseg.nnunet import Case, Dataset, load_datasets, plan_tasks
from hermesseg.training.loss import hermes_loss
from hermesseg.training.optim import EMA, Lamb, lr_at
from hermesseg.training.sampling import PatchSampler, Source, crop, make_targets
from hermesseg.training.splits import make_splits
from hermesseg.preprocessing import IntensityNorm

from paths import DATA, require

# ---------------------------------------------------------------------------------------------------- config


def test_config_defaults_and_validation():
    cfg = resolve_config({})
    assert cfg["architecture"] == {"base_channels": 8, "head_dim": 16, "mask_padding": True}
    assert cfg["patch_size"] == [64, 64, 64] and cfg["spacing"] == [3.0, 3.0, 3.0] and cfg["batch_size"] == 2
    assert resolve_config({"spacing": 4, "augmentation": {"affine_probability": 0.2}})["spacing"] == [4.0] * 3
    assert resolve_config({"augmentation": {"affine_probability": 0.2}})["augmentation"]["gamma"] == [0.7, 1.5]
    for bad, message in [({"iteratons": 5}, "unknown configuration key 'iteratons'"),
                         ({"augmentation": {"flip": True}}, "unknown configuration key augmentation.'flip'"),
                         ({"architecture": {"num_task_rows": 3}}, "derived from the tasks"),
                         ({"architecture": {"base_chanels": 3}}, "architecture: unknown architecture keys"),
                         ({"patch_size": [32, 32, 31.5]}, "patch_size must be three positive integers"),
                         ({"optimizer": "sgd"}, "optimizer 'sgd' is unknown"),
                         ({"datasets": {"x": {"weight": 0}}}, "datasets.x.weight must be a positive number"),
                         ({"intensity": {"CT": {"scheme": "minmax"}}}, r"intensity\['CT'\]")]:
        with pytest.raises(TrainingConfigError, match=message):
            resolve_config(bad)
    assert set(DEFAULTS) >= {"seed", "lr", "iterations", "checkpoint_every", "datasets", "modality_map"}


# ---------------------------------------------------------------------------------------------------- loss


def test_loss_ignores_null_slots_and_empty_ground_truth_in_dice():
    torch.manual_seed(0)
    targets = torch.zeros(2, 3, 4, 4, 4, dtype=torch.bool)
    targets[0, 0, :2] = True  # sample 0: task slot 0 has foreground, slot 1 is empty; sample 1: slot 2 is null
    targets[1, 0, 1:] = True
    task_ids = torch.tensor([[5, 6, 7], [5, 8, -1]])
    logits = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    loss, parts = hermes_loss(logits, targets, task_ids)
    assert parts["pairs"] == 5 and parts["dice_pairs"] == 2
    loss.backward()
    assert torch.count_nonzero(logits.grad[1, 2]) == 0  # the null slot gets no gradient
    assert torch.count_nonzero(logits.grad[0, 1]) > 0  # empty ground truth still penalises false positives (BCE)
    changed = logits.detach().clone()
    changed[1, 2] += 100
    assert hermes_loss(changed, targets, task_ids)[1]["loss"] == pytest.approx(parts["loss"])

    perfect = torch.where(targets, 20.0, -20.0)
    _, p = hermes_loss(perfect, targets, task_ids)
    assert p["dice"] < 1e-4 and p["bce"] < 1e-6  # empty pairs are not a constant 1 (spec 7.8)
    _, none = hermes_loss(perfect, torch.zeros_like(targets), task_ids)
    assert none["dice"] == 0.0 and none["dice_pairs"] == 0

    mod_logits = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])
    total, q = hermes_loss(perfect, targets, task_ids, mod_logits, torch.tensor([0, 1]))
    assert q["modality_ce"] < 1e-3 and float(total) == pytest.approx(q["bce"] + q["dice"] + 0.01 * q["modality_ce"])


def test_targets_follow_slots_and_stay_zero_in_padding():
    label = torch.tensor([[0, 1, 2, 3]], dtype=torch.uint8).view(1, 1, 1, 4).repeat(2, 1, 1, 1)
    task_ids = torch.tensor([[4, 9, 2], [1, -1, -1]])
    t = make_targets(label, task_ids)
    assert t.shape == (2, 3, 1, 1, 4)
    assert t[0, :, 0, 0].tolist() == [[False, True, False, False], [False, False, True, False],
                                      [False, False, False, True]]
    assert not t[1, 1:].any()


# ---------------------------------------------------------------------------------------------------- schedule


def test_learning_rate_schedule():
    cfg = {**DEFAULTS, "lr": 1e-3, "iterations": 110, "warmup_iterations": 10, "poly_power": 0.9}
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert lr_at(110, cfg) == 0.0
    exp = {**cfg, "warmup": "exponential"}
    assert lr_at(0, exp) == pytest.approx(1e-3 * math.exp(-10)) and lr_at(5, exp) == pytest.approx(1e-3 * math.exp(-5))
    lrs = [lr_at(i, cfg) for i in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_a_run_the_clock_stops_decays_to_where_it_stops():
    """add-task and finetune stop on steps or seconds: given the iterations its seconds allow (``horizon``), a run
    that the clock will stop first ends at its smallest learning rate; a run its steps end keeps the pure schedule."""
    cfg = {**DEFAULTS, "lr": 1e-3, "iterations": 110, "warmup_iterations": 10, "poly_power": 0.9}
    assert lr_at(35, cfg, horizon=60) == pytest.approx(1e-3 * 0.5 ** 0.9)  # half-way to the 60 steps that fit
    assert lr_at(60, cfg, horizon=60) == 0.0
    assert [lr_at(i, cfg, horizon=1000) for i in range(110)] == [lr_at(i, cfg) for i in range(110)]
    assert lr_at(0, cfg, horizon=60) == pytest.approx(1e-4)  # warm-up still counts steps


def test_ema_decay_and_update():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = EMA(net, 0.99)
    assert [ema.decay(s) for s in (0, 1, 3)] == [0.0, 0.5, 0.75] and ema.decay(10_000) == 0.99
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update(net, 0)
    assert torch.all(ema.module.weight == 3.0)
    with torch.no_grad():
        net.weight.fill_(5.0)
    ema.update(net, 1)
    assert torch.all(ema.module.weight == 4.0)
    assert not ema.module.weight.requires_grad


def test_ema_averages_only_the_trained_parameters_and_copies_buffers():
    """The fused update gives each trained tensor exactly ``d*ema + (1-d)*w`` (the per-tensor formula), leaves frozen
    ones with their bytes, copies buffers, and follows a module it is handed later (a copy, as a refit's network)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.BatchNorm3d(4), torch.nn.Conv3d(4, 2, 1))
    net[0].requires_grad_(False)
    ema = EMA(net, 0.9)
    frozen = net[0].weight.detach().clone()
    for step in range(3):
        before = {k: v.clone() for k, v in ema.module.state_dict().items()}
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
        ema.update(net, step)
        d = ema.decay(step)
        for name, p in net.named_parameters():
            averaged = ema.module.get_parameter(name)
            if p.requires_grad:
                assert torch.equal(averaged, before[name].mul(d).add(p.detach(), alpha=1.0 - d)), name
            else:
                assert torch.equal(averaged, frozen if name == "0.weight" else before[name]), name
        assert torch.equal(ema.module[1].running_mean, net[1].running_mean)
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[2].weight.fill_(7.0)
    start = ema.module[2].weight.clone()
    ema.update(other, 10)
    assert torch.equal(ema.module[2].weight, start.mul(0.9).add(other[2].weight.detach(), alpha=0.1))


def test_lamb_minimises_a_quadratic():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(10) * 3)
    opt = Lamb([w], lr=0.05, weight_decay=0.0)
    start = float((w.detach() ** 2).sum())
    for _ in range(100):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    assert float((w.detach() ** 2).sum()) < 0.05 * start


# ---------------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def ct_cache(tmp_path_factory):
    (ds,) = load_datasets([require(DATA / "ct_abdomen_ts")], ["CT"], {})
    plan = plan_tasks([ds], {})
    root = tmp_path_factory.mktemp("cache")
    norms = {"CT": IntensityNorm("ct_clip_zscore")}
    entries = build_cache([ds], plan.per_dataset, [6.0, 6.0, 6.0], norms, root)
    return ds, plan, root, norms, entries[("ct_abdomen_ts", "example_ct_sm")]


def test_cache_is_built_once_memory_mapped_and_keyed(ct_cache):
    ds, plan, root, norms, entry = ct_cache
    assert isinstance(entry.image, np.memmap) and entry.image.dtype == np.float32
    assert entry.label.dtype == np.uint8 and entry.image.shape == entry.label.shape == (15, 50, 61)
    assert int(entry.label.max()) == 41  # 41 TotalSegmentator ids -> slots 1..41
    liver = plan.per_dataset["ct_abdomen_ts"].task_names.index("ct_abdomen_ts_liver") + 1
    assert entry.meta["slot_voxels"][liver - 1] == int((np.asarray(entry.label) == liver).sum()) > 1000
    pts = entry.foreground_points(liver)
    assert np.all(np.asarray(entry.label)[tuple(pts.T)] == liver)
    files = sorted(p.name for p in entry.directory.iterdir())
    assert files == ["foreground.npy", "image.npy", "label.npy", "meta.json"]  # no temporary files
    mtimes = {p: p.stat().st_mtime_ns for p in entry.directory.iterdir()}
    again = build_cache([ds], plan.per_dataset, [6.0, 6.0, 6.0], norms, root)[("ct_abdomen_ts", "example_ct_sm")]
    assert again.directory == entry.directory and {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    other = build_cache([ds], plan.per_dataset, [8.0, 8.0, 8.0], norms, root)[("ct_abdomen_ts", "example_ct_sm")]
    assert other.directory != entry.directory and other.shape != entry.shape
    (entry.directory / "meta.json").unlink()  # an incomplete entry (meta is written last) is rebuilt
    rebuilt = build_cache([ds], plan.per_dataset, [6.0, 6.0, 6.0], norms, root)[("ct_abdomen_ts", "example_ct_sm")]
    assert np.array_equal(rebuilt.image, entry.image)


def _sampler(entry, plan, **kw) -> PatchSampler:
    ids = list(range(len(plan.per_dataset["ct_abdomen_ts"].task_names)))
    cfg = {**DEFAULTS["augmentation"], **kw.pop("augmentation", {})}
    args = dict(patch_size=[32, 32, 32], batch_size=2, foreground_probability=0.5, augmentation=cfg, seed=7)
    args.update(kw)
    return PatchSampler([Source("ct_abdomen_ts", 1.0, ids, 0, [entry])], **args)


def test_sampler_is_a_function_of_seed_iteration_and_rank(ct_cache):
    *_, plan, _, _, entry = ct_cache
    a, b = _sampler(entry, plan).sample(5), _sampler(entry, plan).sample(5)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"]) and a["where"] == b["where"]
    assert not torch.equal(a["image"], _sampler(entry, plan).sample(6)["image"])
    assert not torch.equal(a["image"], _sampler(entry, plan, rank=1).sample(5)["image"])
    assert a["image"].shape == (2, 1, 32, 32, 32) and a["label"].shape == (2, 32, 32, 32)
    assert a["task_ids"].shape == (2, 41) and a["modality"].tolist() == [0, 0]


def test_small_volumes_are_padded_and_foreground_is_centred(ct_cache):
    *_, plan, _, _, entry = ct_cache
    sampler = _sampler(entry, plan, foreground_probability=1.0, augmentation={"enabled": False})
    for i in range(4):
        batch = sampler.sample(i)
        for b, (_, _, start, fg) in enumerate(batch["where"]):
            assert fg
            assert start[0] <= 0 and start[0] + 32 >= 15  # z (15 voxels) is shorter than the patch: all of it inside
            assert (batch["label"][b] > 0).any()
    patch = crop(np.ones((3, 3, 3), np.float32), [-1, -1, -1], [5, 5, 5], 0.0)
    assert patch.sum() == 27 and patch[0].sum() == 0 and patch[1:4, 1:4, 1:4].all()


def test_augmentation_never_mirrors_left_and_right():
    rng = np.random.default_rng(0)
    label = np.zeros((40, 40, 40), np.uint8)
    label[12:28, 12:28, 4:16] = 1  # "right" structure at low x, "left" at high x
    label[12:28, 12:28, 24:36] = 2
    image = label.astype(np.float32)
    cfg = {**DEFAULTS["augmentation"], "affine_probability": 1.0}
    for _ in range(20):
        params = draw_affine(rng, cfg)
        assert all(s > 0 for s in params["scale"])
        img, lab = apply_affine(image, label, params, [32, 32, 32])
        x = np.arange(32)
        right, left = (lab == 1).sum(axis=(0, 1)), (lab == 2).sum(axis=(0, 1))
        assert (right * x).sum() / right.sum() < (left * x).sum() / left.sum()
        assert set(np.unique(lab)) <= {0, 1, 2}
    out = augment_intensity(image[:32, :32, :32], rng, {**cfg, "intensity_probability": 1.0})
    assert out.shape == (32, 32, 32) and out.dtype == np.float32 and np.isfinite(out).all()


# ---------------------------------------------------------------------------------------------------- splits


def _fake_dataset(name: str, cases: list[str]) -> Dataset:
    return Dataset(name, Path("/nonexistent"), "CT", "CT", {"background": 0, "x": 1}, ".nii.gz",
                   [Case(c, Path(c), Path(c)) for c in cases])


def test_splits():
    split = DEFAULTS["split"]
    s = make_splits([_fake_dataset("one", ["a"]), _fake_dataset("two", ["a", "b"])], 0, split, {})
    for name, n in (("one", 1), ("two", 2)):
        e = s["datasets"][name]
        assert e["held_out"] is False and len(e["train"]) == n and e["validation"] == e["test"] == []
    four = make_splits([_fake_dataset("d", list("abcd"))], 0, split, {})["datasets"]["d"]
    assert (len(four["train"]), len(four["validation"]), len(four["test"])) == (2, 1, 1)
    assert sorted(four["train"] + four["validation"] + four["test"]) == list("abcd")
    assert make_splits([_fake_dataset("d", list("abcd"))], 0, split, {}) == make_splits(
        [_fake_dataset("d", list("abcd"))], 0, split, {})
    cases = [f"patient{p:03d}_frame0{f}" for p in range(10) for f in (1, 2)]
    grouped = make_splits([_fake_dataset("acdc", cases)], 1, split,
                          {"acdc": {"split_group_pattern": r"^(patient\d+)_"}})["datasets"]["acdc"]
    assert grouped["groups"] == 10 and (len(grouped["validation"]), len(grouped["test"])) == (2, 4)
    patients = {part: {c.split("_")[0] for c in grouped[part]} for part in ("train", "validation", "test")}
    assert not (patients["train"] & patients["validation"]) and not (patients["train"] & patients["test"])


# ---------------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    torch.manual_seed(123)
    state = rng_state()
    expected = torch.rand(3)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"iteration": 7, "model": net.state_dict(), "optimizer": opt.state_dict(), "rng": state})
    loaded = load_checkpoint(path)  # torch.load(weights_only=True) inside
    assert loaded["iteration"] == 7 and torch.equal(loaded["model"]["weight"], net.weight.detach())
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    torch.manual_seed(0)
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected)


def test_a_checkpoint_write_failing_midway_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"iteration": 10, "model": {"w": torch.ones(1000)}})
    before = path.read_bytes()
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # a partial file: the first bytes written, then the disk fills up
            fh.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OutputError, match=f"cannot write {path}: No space left"):  # atomic_path names the target
        save_checkpoint(path, {"iteration": 20, "model": {"w": torch.zeros(1000)}})
    assert path.read_bytes() == before
    assert load_checkpoint(path)["iteration"] == 10
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # the partial temporary file is gone


def test_held_out_scoring_draws_as_segment_does_and_a_changed_drawing_wins_only_when_it_helps():
    """A real ACDC left ventricle as the probability's true piece, plus a false piece far from the heart: keeping the
    largest piece gives Dice 1, keeping both less; a scatter of small pieces is rejected by the found rule (Dice 0,
    as segment would draw nothing); a rim of the structure at probability 0.45 is drawn at 0.4, not at 0.5; the
    choice follows the held-out Dice, task by task, and a later candidate wins only when strictly higher."""
    import SimpleITK as sitk

    from hermesseg.inference.found_rule import DEFAULT_RULE, NO_RULE, task_evidence
    from hermesseg.masks import largest_piece_only
    from hermesseg.training.postprocessing import CANDIDATES, Drawing, HeldOutScores, drawn_dice

    label = sitk.GetArrayFromImage(sitk.ReadImage(str(require(
        DATA / "mr_cine_heart_acdc" / "labelsTr" / "patient001_frame01.nii.gz"))))
    truth = label == 3
    probability = torch.from_numpy(truth.astype(np.float32) * 0.95)
    probability[:, :20, :20] = 0.95  # a false piece in a corner, far from the heart
    assert not truth[:, :20, :20].any()
    assert drawn_dice(probability, truth, (1.0, 1.0, 1.0), NO_RULE) < 0.9
    assert drawn_dice(largest_piece_only(probability, 0.5), truth, (1.0, 1.0, 1.0), DEFAULT_RULE) == 1.0
    scatter = torch.zeros(truth.shape)
    scatter[:, ::4, ::4] = 0.95  # one-voxel columns: hundreds of pieces
    assert drawn_dice(scatter, truth, (1.0, 1.0, 1.0), DEFAULT_RULE) == 0.0
    assert drawn_dice(torch.zeros(truth.shape), np.zeros_like(truth), (1.0, 1.0, 1.0), NO_RULE) is None
    core = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(truth.astype(np.uint8)), [2, 2, 0])) > 0
    rim = torch.from_numpy(np.where(core, 0.95, np.where(truth, 0.45, 0.0)).astype(np.float32))
    assert 0.85 < drawn_dice(rim, truth, (1.0, 1.0, 1.0), DEFAULT_RULE) < 0.9  # the rim is left out at 0.5
    assert drawn_dice(rim, truth, (1.0, 1.0, 1.0), DEFAULT_RULE, threshold=0.4) == 1.0
    # A wide rim at 0.35: the mask at 0.3 is right, but its mean probability (0.68) is below the rule's 0.73; the rule
    # judges at 0.5, where it was calibrated, so the mask is drawn (found_rule.EVIDENCE_THRESHOLD).
    core = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(truth.astype(np.uint8)), [5, 5, 0])) > 0
    wide = torch.from_numpy(np.where(core, 0.95, np.where(truth, 0.35, 0.0)).astype(np.float32))
    assert task_evidence(wide, 0.3, (1.0, 1.0, 1.0)).mean_probability < DEFAULT_RULE.min_mean_probability
    assert drawn_dice(wide, truth, (1.0, 1.0, 1.0), DEFAULT_RULE, threshold=0.3) == 1.0

    assert CANDIDATES[0] == Drawing() == Drawing(0.5, False)  # segment's usual drawing is preferred on a tie
    # per case, for the candidates in order (0.5, 0.5 largest, 0.4, 0.4 largest, 0.3, 0.3 largest); None: the case
    # has neither the structure nor a mask of it
    table = {"lv": [[0.6], [0.9], [0.6], [0.9], [0.6], [0.9]], "rv": [[0.5], [0.4], [0.5], [0.4], [0.55], [0.4]],
             "la": [[0.7], [0.7], [0.8], [0.8], [0.8], [0.8]],
             # absent from the second case: undrawn there at 0.5, a false mask at the lower thresholds
             "myo": [[0.6, None], [0.6, None], [0.7, 0.0], [0.7, 0.0], [0.8, 0.0], [0.8, 0.0]],
             "ra": [[None]] * 6}
    scores = HeldOutScores({c: {name: values[i] for name, values in table.items()} for i, c in enumerate(CANDIDATES)})
    assert scores.choice == {"lv": Drawing(0.5, True), "rv": Drawing(0.3, False), "la": Drawing(0.4, False),
                             "myo": Drawing(), "ra": Drawing()}
    assert scores.keep_largest == ["lv"]
    assert scores.chosen == {"lv": 0.9, "rv": 0.55, "la": 0.8, "myo": 0.6, "ra": None}
    assert scores.record["threshold"] == {"lv": 0.5, "rv": 0.3, "la": 0.4, "myo": 0.5, "ra": 0.5}
    assert scores.record["dice_by_drawing"]["0.3"] == {"lv": 0.6, "rv": 0.55, "la": 0.8, "myo": 0.4, "ra": None}
