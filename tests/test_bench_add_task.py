"""The add-task benchmark's pieces: the patient split, the dataset subsets, method detection (fast); a tiny run (slow)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from hermesseg.nnunet import load_datasets

from paths import ACDC, DATA, REPO, require

spec = importlib.util.spec_from_file_location("bench_add_task", REPO / "benchmarks" / "bench_add_task.py")
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up here
spec.loader.exec_module(bench)

PATIENT = bench.DATASETS["acdc"].patient_pattern


def test_acdc_is_split_by_patient_never_by_frame():
    cases = bench.dataset_cases(require(ACDC))
    assert len(cases) == 40
    pool, heldout = bench.split_patients(cases, PATIENT, 10, seed=0)
    assert len(pool) == 10 and len(heldout) == 10 and not set(pool) & set(heldout)
    train = bench.cases_of(pool[:5], cases, PATIENT)
    test = bench.cases_of(heldout, cases, PATIENT)
    assert len(train) == 10 and len(test) == 20  # both frames of each patient, on one side only
    assert {c.split("_frame")[0] for c in train}.isdisjoint(c.split("_frame")[0] for c in test)
    assert bench.split_patients(cases, PATIENT, 10, seed=0) == (pool, heldout)  # seeded
    assert bench.split_patients(cases, PATIENT, 10, seed=1)[0] != pool
    assert bench.split_patients(cases, PATIENT, 10, seed=0, max_heldout=3)[1] == heldout[:3]
    with pytest.raises(ValueError, match="20 patients cannot give 20"):
        bench.split_patients(cases, PATIENT, 20, seed=0)
    with pytest.raises(ValueError, match="does not match the patient pattern"):
        bench.patient_of("case7", PATIENT)


def test_left_atrium_cases_are_patients():
    cases = bench.dataset_cases(require(DATA / "mr_left_atrium"))
    pool, heldout = bench.split_patients(cases, None, 10, seed=0)
    assert len(pool) == 10 and len(heldout) == 14 and bench.cases_of(pool[:2], cases, None) == sorted(pool[:2])


def test_subset_is_a_valid_dataset_of_only_the_chosen_cases(tmp_path):
    cases = bench.dataset_cases(require(ACDC))
    pool, _ = bench.split_patients(cases, PATIENT, 10, seed=0)
    chosen = bench.cases_of(pool[:2], cases, PATIENT)
    subset = bench.build_subset(ACDC, chosen, tmp_path / "acdc_k2")
    (ds,) = load_datasets([subset], ["MR-cine"], {})  # the engine's reader validates every case's grid
    assert sorted(c.name for c in ds.cases) == chosen and ds.name == "mr_cine_heart_acdc"
    assert json.loads((subset / "dataset.json").read_text())["numTraining"] == 4
    image = subset / "imagesTr" / f"{chosen[0]}_0000.nii.gz"
    assert image.is_symlink() and image.resolve() == (ACDC / "imagesTr" / image.name).resolve()
    bench.build_subset(ACDC, chosen[:1], subset)  # rebuilt, not merged
    assert len(list((subset / "labelsTr").iterdir())) == 1


def test_method_detection_and_options():
    assert bench.cli_offers("export-task") and not bench.cli_offers("no-such-command")
    assert not bench.cli_offers("export-task", "adapter")  # no --mode there
    args = bench.parse_args(["--methods", "unet,priors", "--k", "1,5", "--datasets", "acdc"])
    assert args.methods == ["priors", "unet"] and args.k == [1, 5]  # the U-Net runs last, for the longest Hermes time
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "magic"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--k", "11"])


def test_ratios_pair_runs_of_one_split_and_the_summary_spans_the_splits():
    def row(seed, k, method, dice):
        return {"dataset": "acdc", "seed": seed, "k": k, "method": method, "mean_dice": dice}
    rows = [row(0, 5, "adapter", 0.6), row(0, 5, "unet", 0.8), row(0, 10, "adapter", 0.75),
            row(1, 5, "adapter", 0.7), row(1, 5, "unet", 0.7),
            {"dataset": "acdc", "seed": 1, "k": 10, "method": "adapter", "status": "failed (exit 1): x"}]
    bench.add_ratios(rows)
    assert rows[0]["vs_unet"] == pytest.approx(0.75) and rows[0]["vs_k10"] == pytest.approx(0.8)
    assert rows[3]["vs_unet"] == pytest.approx(1.0) and rows[3]["vs_k10"] is None  # seed 1 has no k = 10 score
    summary = {(e["k"], e["method"]): e for e in bench.split_summary(rows)}
    adapter = summary[(5, "adapter")]
    assert adapter["seeds"] == [0, 1] and adapter["mean_dice"] == pytest.approx(0.65)
    assert adapter["mean_dice_range"] == pytest.approx([0.6, 0.7])
    assert adapter["vs_unet"] == pytest.approx(0.875) and adapter["vs_unet_range"] == pytest.approx([0.75, 1.0])
    assert adapter["vs_k10"] == pytest.approx(0.8) and adapter["vs_k10_range"] == pytest.approx([0.8, 0.8])
    assert summary[(10, "adapter")]["seeds"] == [0]  # the failed run is not averaged in
    assert summary[(5, "unet")]["vs_unet"] is None
    assert "0.650 (0.600-0.700)" in bench.format_summary(adapter)
    assert bench.parse_args(["--seed", "0,1"]).seed == [0, 1] and bench.parse_args([]).seed == [0]
    with pytest.raises(SystemExit):  # argparse's one-line usage error, exit 2
        bench.parse_args(["--seed", "0,x"])


def test_trained_parameters_counts_new_and_changed_elements():
    base = {"a.task_prior": torch.zeros(3, 4), "b": torch.ones(5)}
    new = {"a.task_prior": torch.cat([torch.zeros(3, 4), torch.ones(2, 4)]), "b": torch.tensor([1., 2, 1, 1, 3]),
           "adapters.0.w": torch.zeros(6)}
    assert bench.trained_parameters(base, new) == 8 + 2 + 6
    assert bench.trained_parameters(base, base) == 0


@pytest.mark.slow
def test_tiny_run_scores_the_unet_and_every_available_method(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--datasets", "acdc", "--k", "1", "--methods", "priors,unet", "--unet-seconds", "30",
                       "--steps", "20", "--max-heldout", "1", "--work", str(tmp_path / "work"),
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    unet = next(r for r in rows if r["method"] == "unet")
    assert unet["status"] == "ok" and unet["steps"] > 0 and unet["trained_parameters"] > 1_000_000
    assert set(unet["dice"]) == {"right_ventricle", "myocardium", "left_ventricle"}
    assert all(0.0 <= d <= 1.0 for d in unet["dice"].values())
    assert set(unet["dice_largest_piece"]) == set(unet["dice"]) and 0.0 <= unet["mean_dice_largest_piece"] <= 1.0
    priors = next(r for r in rows if r["method"] == "priors")
    if priors["status"] != "not available":
        assert priors["status"] == "ok" and priors["forgetting"] == 0.0 and priors["pack_bytes"] < 100_000
        assert priors["steps"] == 20  # one patient: one phase, of --steps
        # Every held-out ACDC volume holds all three structures, so a mask the found rule rejects can only lose Dice.
        assert set(priors["dice_without_found_rule"]) == set(priors["dice"])
        assert all(priors["dice_without_found_rule"][k] >= d - 1e-9 for k, d in priors["dice"].items())
