"""Bad training data is refused before training starts, naming dataset and case, leaving nothing behind.

The bad datasets are built in tmp_path from a real dataset's files (ct_abdomen_ts: one small CT with TotalSegmentator
ids), never inside the repository.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk

from hermesseg.cli import main
from hermesseg.errors import DatasetError
from hermesseg.training import TrainRequest, train
from hermesseg.nnunet import load_datasets, plan_tasks

from paths import DATA, require

SOURCE = DATA / "ct_abdomen_ts"
CASE = "example_ct_sm"
TINY = {"architecture": {"base_channels": 4, "head_dim": 8}, "spacing": [6.0, 6.0, 6.0], "patch_size": [32, 32, 32],
        "iterations": 1, "num_workers": 0}


def _copy(tmp_path: Path, name: str = "bad_ds") -> Path:
    dst = tmp_path / name
    shutil.copytree(require(SOURCE), dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    dst.chmod(0o755)
    meta = json.loads((dst / "dataset.json").read_text())
    meta["name"] = name
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


def _edit_json(ds: Path, **changes) -> None:
    meta = json.loads((ds / "dataset.json").read_text())
    meta.update(changes)
    (ds / "dataset.json").write_text(json.dumps(meta))


def _refused(tmp_path: Path, ds: Path, pattern: str) -> None:
    out, run, cache = tmp_path / "m.safetensors", tmp_path / "m.run", tmp_path / "cache"
    with pytest.raises(DatasetError, match=pattern):
        train(TrainRequest(data=[str(ds)], output=str(out), config=TINY, cache_dir=str(cache)))
    assert not out.exists() and not run.exists() and not cache.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_dataset_json(tmp_path):
    ds = _copy(tmp_path)
    (ds / "dataset.json").unlink()
    _refused(tmp_path, ds, r"dataset bad_ds: no dataset.json")


def test_label_on_another_grid(tmp_path):
    ds = _copy(tmp_path)
    label_path = ds / "labelsTr" / f"{CASE}.nii.gz"
    label = sitk.ReadImage(str(label_path))
    label.SetOrigin([o + 4.5 for o in label.GetOrigin()])
    sitk.WriteImage(label, str(label_path))
    _refused(tmp_path, ds, rf"dataset bad_ds, case {CASE}: label and image are on different grids \(origin")

    label.SetOrigin([o - 4.5 for o in label.GetOrigin()])
    label.SetSpacing([s * 1.1 for s in label.GetSpacing()])
    sitk.WriteImage(label, str(label_path))
    _refused(tmp_path, ds, rf"dataset bad_ds, case {CASE}: .* different grids \(spacing")

    smaller = sitk.ReadImage(str(label_path))[:, :, 1:]
    sitk.WriteImage(smaller, str(label_path))
    _refused(tmp_path, ds, rf"dataset bad_ds, case {CASE}: .* different grids \(size")


def test_label_value_not_in_labels(tmp_path):
    ds = _copy(tmp_path)
    meta = json.loads((ds / "dataset.json").read_text())
    del meta["labels"]["liver"]  # value 5 is in the label map
    (ds / "dataset.json").write_text(json.dumps(meta))
    _refused(tmp_path, ds, rf"dataset bad_ds, case {CASE}: label values 5 are not in dataset.json 'labels'")


def test_no_training_cases(tmp_path):
    ds = _copy(tmp_path)
    for p in (ds / "imagesTr").iterdir():
        p.unlink()
    for p in (ds / "labelsTr").iterdir():
        p.unlink()
    _refused(tmp_path, ds, r"dataset bad_ds: no training cases")


def test_label_without_image_and_image_without_label(tmp_path):
    ds = _copy(tmp_path)
    (ds / "imagesTr" / f"{CASE}_0000.nii.gz").rename(ds / "imagesTr" / "other_0000.nii.gz")
    _refused(tmp_path, ds, r"dataset bad_ds, case other: label file .* is missing")


def test_unknown_modality(tmp_path):
    ds = _copy(tmp_path)
    _edit_json(ds, modality="XRAY")
    _refused(tmp_path, ds, r"dataset bad_ds: unknown modality 'XRAY'.*modality_map")


def test_one_bad_case_among_good_datasets_stops_everything(tmp_path):
    good = _copy(tmp_path, "good_ds")
    bad = _copy(tmp_path, "bad_ds")
    _edit_json(bad, modality="XRAY")
    out = tmp_path / "m.safetensors"
    with pytest.raises(DatasetError, match="dataset bad_ds"):
        train(TrainRequest(data=[str(good), str(bad)], output=str(out), config=TINY,
                           cache_dir=str(tmp_path / "cache")))
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_cli_prints_the_dataset_error(tmp_path, capsys):
    ds = _copy(tmp_path)
    (ds / "dataset.json").unlink()
    rc = main(["train", "--data", str(ds), "-o", str(tmp_path / "m.safetensors")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "hermesseg train: error: dataset bad_ds: no dataset.json" in err and "Traceback" not in err


def test_tasks_of_non_contiguous_labels_and_config_mapping():
    (ds,) = load_datasets([require(SOURCE)], ["CT", "MR"], {})
    plan = plan_tasks([ds], {"ct_abdomen_ts": {"group": "abdomen", "tasks": {
        "liver": "abdomen_liver", "kidney_left": "kidney", "kidney_right": "kidney", "colon": None}}})
    tasks = plan.per_dataset["ct_abdomen_ts"]
    assert len(tasks.task_names) == 41 - 1 - 1  # two kidneys merged, colon dropped
    assert tasks.task_names[:3] == ["ct_abdomen_ts_spleen", "kidney", "ct_abdomen_ts_gallbladder"]
    lut = tasks.lut()
    assert lut[2] == lut[3] == 2  # TotalSegmentator ids 2 and 3 -> one slot
    assert lut[20] == 0  # colon -> background
    assert lut[117] == len(tasks.task_names)  # costal cartilages, id 117 -> the last slot
    assert plan.task("abdomen_liver").group == "abdomen" and plan.task("abdomen_liver").structure == "abdomen_liver"
    assert plan.task("kidney").modalities == ["CT"]
    with pytest.raises(DatasetError, match="names labels that are not in dataset.json: nerve"):
        plan_tasks([ds], {"ct_abdomen_ts": {"tasks": {"nerve": "x"}}})


def test_modality_mapping_is_case_insensitive_and_checked():
    (ds,) = load_datasets([require(DATA / "mr_brain_tumour_t1c")], ["CT", "MR-T1"], {"MR-T1c": "mr-t1"},
                          check_cases=False)
    assert ds.model_modality == "MR-T1"
    with pytest.raises(DatasetError, match="modality_map sends 'MR-T1c' to 'MR-T9'"):
        load_datasets([require(DATA / "mr_brain_tumour_t1c")], ["CT", "MR-T1"], {"MR-T1c": "MR-T9"})
    assert ds.labels["brain_tumour"] == 1
