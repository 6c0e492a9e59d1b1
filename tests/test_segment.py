"""`hermesseg segment`: geometry, query composition, outputs, cancellation and bad input, on real images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from hermesseg.cli import main
from segment_helpers import CT_ABDOMEN, CT_OBLIQUE, MR_BRAIN, assert_same_grid, dice, import_base8, read
from paths import require


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return import_base8(tmp_path_factory.mktemp("model"))


def segment(model, inputs, out, *extra) -> int:
    """base8 is a conformance checkpoint that draws organs on any image: these tests check the geometry and files
    of its masks, so every mask that reaches 0.5 is drawn (the found rule is tested in test_found_rule.py)."""
    return main(["segment", *map(str, inputs), "-o", str(out), "--model", str(model), "--progress", "none",
                 "--keep-unconfident", *extra])


def test_outputs_share_the_input_grid_and_open_in_slicer(model, tmp_path):
    slicer = pytest.importorskip("slicer")
    assert segment(model, [MR_BRAIN], tmp_path, "--modality", "MR-T1", "--tasks", "chaos", "--fast", "--nifti",
                   "--probabilities") == 0
    image = read(MR_BRAIN)
    names = ["chaos_liver", "chaos_kidney_right", "chaos_kidney_left", "chaos_spleen"]
    for name in names:
        mask = sitk.ReadImage(str(tmp_path / "brain1_0000" / f"{name}.nii.gz"))
        assert_same_grid(mask, image)
        prob = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "brain1_0000" / f"{name}_probability.nii.gz")))
        assert np.array_equal(sitk.GetArrayFromImage(mask), (prob >= 0.5).astype(np.uint8))
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(tmp_path / "brain1_0000.seg.nrrd"))
    assert storage.ReadData(node) == 1
    seg = node.GetSegmentation()
    assert [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())] == names
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == [
        "Liver", "Right kidney", "Left kidney", "Spleen"]
    liver = seg.GetSegment("chaos_liver")
    assert "SCT^10200004^Liver" in liver.GetTerminology()
    kidney = seg.GetSegment("chaos_kidney_left").GetTerminology()
    assert "SCT^64033007^Kidney~SCT^7771000^Left" in kidney, kidney
    from vtk import reference
    tags = {}
    for tag in ("HermesTask", "HermesTaskGroup"):
        value = reference("")
        assert liver.GetTag(tag, value)
        tags[tag] = str(value)
    assert tags == {"HermesTask": "chaos_liver", "HermesTaskGroup": "chaos"}
    assert liver.GetColor() == pytest.approx((221 / 255, 130 / 255, 101 / 255), abs=1e-4)
    # The segment's voxels equal the NIfTI mask, in physical space.
    labelmap = slicer.vtkOrientedImageData()
    node.GetBinaryLabelmapRepresentation("chaos_kidney_left", labelmap)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "brain1_0000" / "chaos_kidney_left.nii.gz")))
    assert labelmap.GetSpacing() == pytest.approx(image.GetSpacing(), abs=1e-5)
    from vtk.util.numpy_support import vtk_to_numpy
    count = int((vtk_to_numpy(labelmap.GetPointData().GetScalars()) > 0).sum()) if labelmap.GetPointData().GetScalars() else 0
    assert count == int(mask.sum())


def test_subset_selection_gives_the_same_masks_as_everything(model):
    """A task's output must not depend on which other tasks were selected (spec 1.7)."""
    from hermesseg import load_model
    from hermesseg.inference import InferenceOptions, predict

    loaded = load_model(model)
    image = read(CT_ABDOMEN)
    everything = loaded.tasks_for_modality("CT")
    assert len(everything) == 60
    subset = loaded.resolve_tasks(["bcv_liver", "amos_spleen"], "CT")
    options = InferenceOptions(fast=True)
    all_probs = predict(loaded, image, everything, "CT", options).probabilities
    sub_probs = predict(loaded, image, subset, "CT", options).probabilities
    for i, task in enumerate(subset):
        j = [t.id for t in everything].index(task.id)
        assert np.abs(all_probs[j] - sub_probs[i]).max() < 1e-5, task.name
        assert np.array_equal(all_probs[j] >= 0.5, sub_probs[i] >= 0.5)


def _flip_permute(image: sitk.Image) -> sitk.Image:
    """The same physical image stored with axes (x, y, z) -> (z, x, y) and the new first axis reversed."""
    a = sitk.GetArrayFromImage(image)  # (z, y, x)
    b = np.ascontiguousarray(a.transpose(1, 2, 0)[:, :, ::-1])  # new array (y, x, z) -> axes i=z(flipped), j=x, k=y
    d = np.array(image.GetDirection()).reshape(3, 3)
    s = np.array(image.GetSpacing())
    cols = [-d[:, 2], d[:, 0], d[:, 1]]
    spacing = [s[2], s[0], s[1]]
    size = image.GetSize()
    origin = np.array(image.TransformIndexToPhysicalPoint((0, 0, size[2] - 1)))
    out = sitk.GetImageFromArray(b)
    out.SetSpacing(spacing)
    out.SetDirection(np.stack(cols, axis=1).ravel().tolist())
    out.SetOrigin(origin.tolist())
    return out


@pytest.mark.parametrize("source, modality", [(CT_OBLIQUE, "CT"), (MR_BRAIN, "MR-T1")])
def test_permuted_and_flipped_input_gives_the_transformed_output(model, tmp_path, source, modality):
    image = read(source)
    moved = _flip_permute(image)
    # Same physical image: a voxel's physical position maps to the same intensity.
    assert np.allclose(moved.TransformIndexToPhysicalPoint((0, 0, 0)),
                       image.TransformIndexToPhysicalPoint((0, 0, image.GetSize()[2] - 1)), atol=1e-4)
    moved_path = tmp_path / "moved.nii.gz"
    sitk.WriteImage(moved, str(moved_path))
    tasks = "structseg_thorax" if modality == "CT" else "chaos"
    assert segment(model, [source], tmp_path / "a", "--modality", modality, "--tasks", tasks, "--fast",
                   "--probabilities") == 0
    assert segment(model, [moved_path], tmp_path / "b", "--modality", modality, "--tasks", tasks, "--fast",
                   "--probabilities") == 0
    stem = Path(source.name.replace(".nii.gz", ""))
    for p in sorted((tmp_path / "a" / stem).glob("*_probability.nii.gz")):
        a = sitk.ReadImage(str(p))
        b = sitk.ReadImage(str(tmp_path / "b" / "moved" / p.name))
        assert_same_grid(b, moved)
        expected = sitk.GetArrayFromImage(a).transpose(1, 2, 0)[:, :, ::-1]
        got = sitk.GetArrayFromImage(b)
        assert np.abs(expected - got).max() < 1e-4, p.name
        assert dice(expected >= 0.5, got >= 0.5) > 0.999 or not (expected >= 0.5).any()


def _bad(model, tmp_path, capsys, args, expected):
    out = tmp_path / "out"
    code = main(["segment", *args, "-o", str(out), "--progress", "none"]
                + ([] if "--model" in args else ["--model", str(model)]))
    err = capsys.readouterr().err
    assert code != 0, err
    assert expected in err, err
    assert not out.exists() or not any(p for p in out.rglob("*")), list(out.rglob("*"))


def test_missing_input(model, tmp_path, capsys):
    _bad(model, tmp_path, capsys, [str(tmp_path / "nope.nii.gz")], "nope.nii.gz")


def test_2d_input(model, tmp_path, capsys):
    p = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16), str(p))
    _bad(model, tmp_path, capsys, [str(p), "--modality", "CT"], "2D")


def test_4d_input(model, tmp_path, capsys):
    p = tmp_path / "cine.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 8, 3], sitk.sitkFloat32), str(p))
    _bad(model, tmp_path, capsys, [str(p), "--modality", "CT"], "4D")


def test_multicomponent_input(model, tmp_path, capsys):
    p = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3), str(p))
    _bad(model, tmp_path, capsys, [str(p), "--modality", "CT"], "3 components")


def test_all_nan_input(model, tmp_path, capsys):
    p = tmp_path / "nan.nrrd"  # (the NIfTI reader turns NaN into 0)
    sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 8, 8), np.nan, np.float32)), str(p))
    _bad(model, tmp_path, capsys, [str(p), "--modality", "CT"], "NaN")


def test_unknown_task_and_modality(model, tmp_path, capsys):
    _bad(model, tmp_path, capsys, [str(require(CT_ABDOMEN)), "--modality", "CT", "--tasks", "amos_livr"],
         "unknown task, structure or group 'amos_livr'; did you mean: amos_liver")
    _bad(model, tmp_path, capsys, [str(CT_ABDOMEN), "--modality", "XRAY"],
         "unknown modality 'XRAY'; this model knows: CT, PET, MR-T1, MR-T2, MR-cine, MR")
    _bad(model, tmp_path, capsys, [str(CT_ABDOMEN), "--modality", "CT", "--tasks", "chaos_liver"],
         "task 'chaos_liver' was learned for MR-T1, MR-T2, not CT")


def test_invalid_model_file(model, tmp_path, capsys):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(model.read_bytes()[:4096])
    _bad(model, tmp_path, capsys, [str(CT_ABDOMEN), "--modality", "CT", "--model", str(broken)],
         "not a readable Hermes model file")


def test_unwritable_output(model, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code = main(["segment", str(CT_ABDOMEN), "-o", str(blocker / "out"), "--model", str(model), "--modality", "CT",
                 "--progress", "none"])
    assert code != 0
    assert "is not writable" in capsys.readouterr().err


def test_json_progress_and_sigterm_cancel_leave_no_output(model, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "hermesseg.cli", "segment", str(require(MR_BRAIN)), "-o", str(out),
                             "--model", str(model), "--modality", "MR-T1", "--tasks", "brain_structure", "--progress", "json",
                             "--overlap", "0.9"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stages = []
    for line in proc.stdout:
        event = json.loads(line)
        assert {"stage", "fraction", "message"} <= set(event)
        stages.append(event["stage"])
        if event["stage"] == "inference":
            break
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    code = proc.wait(timeout=30)
    elapsed = time.monotonic() - sent
    assert code == 130, proc.stderr.read()
    assert elapsed < 10, f"took {elapsed:.1f} s to stop"
    assert json.loads(rest.strip().splitlines()[-1])["stage"] == "error"
    assert stages[0] == "load" and "preprocess" in stages
    assert not any(out.rglob("*")), list(out.rglob("*"))


def test_dicom_folder_with_several_series(model, tmp_path, capsys):
    from test_imageio import small_volume, write_dicom_series

    folder = tmp_path / "study"
    write_dicom_series(small_volume((16, 16, 8)), folder, "1.2.826.0.1.3680043.2.1125.1", "axial", "CT")
    write_dicom_series(small_volume((16, 16, 8)), folder, "1.2.826.0.1.3680043.2.1125.2", "coronal", "CT")
    _bad(model, tmp_path, capsys, [str(folder), "--modality", "CT"], "1.2.826.0.1.3680043.2.1125.2")


def test_dicom_series_is_segmented_with_its_modality_detected(model, tmp_path):
    from test_imageio import write_dicom_series

    image = sitk.Cast(read(MR_BRAIN), sitk.sitkInt16)
    folder = tmp_path / "series"
    write_dicom_series(image, folder, "1.2.826.0.1.3680043.2.1125.3", "t1", "CT")
    out = tmp_path / "out"
    assert segment(model, [folder], out, "--tasks", "lits", "--fast", "--nifti") == 0  # DICOM CT -> CT
    from hermesseg.imageio import read_image

    mask = sitk.ReadImage(str(out / "series" / "lits_liver.nii.gz"))
    assert_same_grid(mask, read_image(folder))


def test_official_model_new_pipeline_matches_the_baseline(model):
    """Imported official models (no key-padding mask) keep their exact semantics: the shared encoder, batched
    windows and boxed resampling change nothing beyond rounding."""
    from hermesseg import load_model
    from hermesseg.inference import InferenceOptions, predict
    from hermesseg.inference.input_grid import on_input_grid

    loaded = load_model(model)
    image = read(MR_BRAIN)
    tasks = loaded.resolve_tasks(["chaos", "bcv_liver"], "MR-T1", force=True)
    new = predict(loaded, image, tasks, "MR-T1", InferenceOptions(fast=True, batch_size=2))
    old = predict(loaded, image, tasks, "MR-T1", InferenceOptions.baseline(fast=True))
    assert np.abs(new.probabilities - old.probabilities).max() < 1e-4
    shape = tuple(reversed(image.GetSize()))
    for a, b in zip(on_input_grid(new), on_input_grid(old)):
        assert np.array_equal(a.full_mask(shape), b.full_mask(shape)), a.task.name


def test_not_found_tasks_are_reported_and_a_rerun_replaces_the_outputs(model, tmp_path):
    """An empty structure gets no segment and is listed as not found (JSON done event, stderr); re-running without
    --nifti removes the earlier run's masks instead of leaving them beside the new segmentation."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "hermesseg.cli", "segment", str(require(MR_BRAIN)), "-o", str(out), "--model",
            str(model), "--modality", "MR-T1", "--tasks", "chaos,lits", "--force", "--fast"]
    first = subprocess.run(args + ["--nifti", "--progress", "json"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    events = [json.loads(line) for line in first.stdout.splitlines()]
    record = events[-1]["outputs"][0]
    assert events[-1]["stage"] == "done"
    assert set(record["found"]) | set(record["not_found"]) == set(record["tasks"])
    assert not set(record["found"]) & set(record["not_found"])
    assert {Path(m).name for m in record["masks"]} == {f"{n}.nii.gz" for n in record["found"]}
    for m in record["masks"]:  # a found task has voxels; a never-found one is covered in test_input_grid
        assert sitk.GetArrayViewFromImage(sitk.ReadImage(m)).any(), m
    # base8's kidneys and livers on a brain are unconfident: each not-found task has its reason, in the done event
    # and in the progress message (the Slicer log).
    assert record["not_found"] and set(record["not_found_reasons"]) == set(record["not_found"])
    listed = "; ".join(f"{n} ({record['not_found_reasons'][n]})" for n in record["not_found"])
    assert all(r.startswith(("not confident", "scattered", "the probability")) for r in
               record["not_found_reasons"].values()), record["not_found_reasons"]
    reported = [e["message"] for e in events if "not found in this image" in e["message"]]
    assert any(m.endswith("not found in this image: " + listed) for m in reported)
    import slicerio

    segments = slicerio.read_segmentation(str(out / "brain1_0000.seg.nrrd"))["segments"]
    assert [s["id"] for s in segments] == record["found"]
    assert (out / "brain1_0000").is_dir()
    second = subprocess.run(args + ["--progress", "none"], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "not found in this image:\n  " + listed.replace("; ", "\n  ") in second.stderr
    assert sorted(p.name for p in out.iterdir()) == ["brain1_0000.seg.nrrd"]
