"""Evaluation: metric definitions on known geometry, and `hermesseg evaluate` agreeing with the written masks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from hermesseg.cli import main
from hermesseg.evaluation.metrics import dice, hd95
from paths import DATA, require
from segment_helpers import import_base8


def _reference(spacing=(1.0, 1.0, 2.0)) -> sitk.Image:
    ref = sitk.Image(40, 40, 40, sitk.sitkUInt8)
    ref.SetSpacing(spacing)
    return ref


def test_dice_and_hd95_of_a_shifted_cube():
    a = np.zeros((40, 40, 40), bool)
    a[10:20, 10:20, 10:20] = True
    b = np.roll(a, 2, axis=0)  # two slices along z, 2 mm each
    assert dice(a, b) == pytest.approx(0.8)
    assert hd95(a, b, _reference()) == pytest.approx(4.0)
    assert hd95(a, a, _reference()) == 0.0


def test_absent_structures_count_as_false_positives():
    empty = np.zeros((40, 40, 40), bool)
    blob = empty.copy()
    blob[5:8, 5:8, 5:8] = True
    assert dice(blob, empty) == 0.0 and math.isnan(hd95(blob, empty, _reference()))
    assert dice(empty, empty) == 1.0 and hd95(empty, empty, _reference()) == 0.0


def test_evaluate_matches_masks_written_by_segment(tmp_path, capsys):
    model = import_base8(tmp_path)
    dataset = require(DATA / "ct_abdomen_ts")
    task_map = tmp_path / "map.json"
    task_map.write_text(json.dumps({"ct_abdomen_ts/liver": "amos_liver", "ct_abdomen_ts/spleen": "amos_spleen"}))
    report = tmp_path / "report.json"
    assert main(["evaluate", str(model), "--data", str(dataset), "--task-map", str(task_map), "--fast",
                 "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert {s["task"] for s in result["scores"]} == {"amos_liver", "amos_spleen"}
    assert (tmp_path / "report.md").read_text().startswith("Model `hermes-r-official-base8`")

    out = tmp_path / "seg"
    assert main(["segment", str(dataset / "imagesTr" / "example_ct_sm_0000.nii.gz"), "-o", str(out), "--model",
                 str(model), "--modality", "CT", "--tasks", "amos_liver,amos_spleen", "--fast", "--nifti",
                 "--progress", "none"]) == 0
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "labelsTr" / "example_ct_sm.nii.gz")))
    for score, value in ((s, 5 if s["task"] == "amos_liver" else 1) for s in result["scores"]):
        path = out / "example_ct_sm_0000" / f"{score['task']}.nii.gz"  # absent when segment reported it not found
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(path))) if path.exists() else np.zeros_like(truth)
        assert score["dice"] == pytest.approx(dice(mask, truth == value), abs=1e-9)
        assert score["truth_voxels"] == int((truth == value).sum()) > 0
        assert score["predicted_voxels"] == int(mask.sum())
    assert result["per_dataset"]["ct_abdomen_ts"]["cases"] == 2


def test_evaluate_refuses_a_dataset_without_matching_tasks(tmp_path, capsys):
    model = import_base8(tmp_path)
    code = main(["evaluate", str(model), "--data", str(require(DATA / "mr_breast_lesion"))])
    assert code != 0
    assert "none of its labels matches a task of the model" in capsys.readouterr().err


def test_split_selection_reads_a_training_runs_splits_file(tmp_path):
    from hermesseg.evaluation.evaluate import cases_for_split
    from hermesseg.errors import DatasetError
    from hermesseg.nnunet import read_dataset

    _, cases = read_dataset(require(DATA / "mr_brain_tumour_t1c"))
    run_splits = {"format": 1, "seed": 0, "datasets": {"mr_brain_tumour_t1c": {
        "train": ["brain2"], "validation": [], "test": ["brain1"]}}}
    assert [c.name for c in cases_for_split("mr_brain_tumour_t1c", cases, "test", run_splits)] == ["brain1"]
    assert [c.name for c in cases_for_split("mr_brain_tumour_t1c", cases, "all", None)] == ["brain1", "brain2"]
    with pytest.raises(DatasetError, match="no 'test' split for dataset 'other'"):
        cases_for_split("other", cases, "test", run_splits)
