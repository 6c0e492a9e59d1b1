"""Modality detection: the sample catalogue, DICOM attributes (Modality and MR sequence), the model's modality head
(measured here to echo its input on the default model, so it never decides), then intensities.

Real files only: shared CT/MR images, DICOM series written from them with SimpleITK, the published samples."""

from __future__ import annotations

import pytest
import SimpleITK as sitk

from hermesseg import load_model
from hermesseg.cli import main
from hermesseg.default_model import default_model_path
from hermesseg.imageio import read_image, read_input
from hermesseg.inference.modality_guess import detect_modality, modality_head_guess, mr_sequence
from hermesseg.samples import SampleError, fetch_sample
from paths import DATA, require

CT = DATA / "ct_abdomen_ts" / "imagesTr" / "example_ct_sm_0000.nii.gz"
MR_BREAST = DATA / "mr_breast_lesion" / "imagesTr" / "breast1_0000.nii.gz"
MR_T1 = DATA / "mr_brain_structures_colin" / "imagesTr" / "colin27_ch2_0000.nii.gz"


@pytest.fixture(scope="module")
def model():
    return load_model(default_model_path())


def write_dicom_series(image: sitk.Image, folder, tags: dict[str, str]):
    """A real DICOM series of ``image`` (int16 slices) with the given attributes, read back by GDCM."""
    folder.mkdir()
    image = sitk.Cast(sitk.RescaleIntensity(image, 0, 1000) if image.GetPixelID() != sitk.sitkInt16 else image,
                      sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1.42"
    for z in range(image.GetDepth()):
        s = image[:, :, z]
        for key, value in {"0020|000e": series, "0020|0013": str(z + 1), "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
                           "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z)))),
                           "0020|0037": "\\".join(map(str, image.GetDirection()[0::3] + image.GetDirection()[1::3])),
                           **tags}.items():
            s.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{z:04d}.dcm"))
        writer.Execute(s)
    return folder


def test_mr_sequence_from_dicom_attributes():
    assert mr_sequence({"description": "t1_mprage_sag"}) == "T1"
    assert mr_sequence({"description": "T1 SE +C"}) == "T1C"
    assert mr_sequence({"description": "AX T1", "contrast": "Gadovist"}) == "T1C"
    assert mr_sequence({"description": "ax t2 tse"}) == "T2"
    assert mr_sequence({"description": "AX FLAIR"}) == "FLAIR"
    assert mr_sequence({"tr": "500", "te": "12"}) == "T1"
    assert mr_sequence({"tr": "4000", "te": "100"}) == "T2"
    assert mr_sequence({"tr": "9000", "te": "120", "ti": "2500"}) == "FLAIR"
    assert mr_sequence({"description": "localizer"}) is None


def _detect_dicom(model, folder):
    """The guess from what one read of the series gives (voxels and header), as segment makes it."""
    loaded = read_input(folder)
    return detect_modality(model, loaded.image, folder, loaded.info)


def test_dicom_modality_and_sequence_decide(model, tmp_path):
    ct = write_dicom_series(read_image(require(CT)), tmp_path / "ct", {"0008|0060": "CT"})
    guess = _detect_dicom(model, ct)
    assert (guess.modality, guess.confidence) == ("CT", 0.99) and "DICOM Modality CT" in guess.evidence
    colin = read_image(require(MR_T1))[:, :, 60:70]
    t1 = write_dicom_series(colin, tmp_path / "t1", {"0008|0060": "MR", "0008|103e": "T1 MPRAGE"})
    guess = _detect_dicom(model, t1)
    assert guess.modality == "MR-T1" and "sequence T1" in guess.evidence
    t1c = write_dicom_series(colin, tmp_path / "t1c", {"0008|0060": "MR", "0008|103e": "AX T1 POST GAD"})
    assert _detect_dicom(model, t1c).modality == "MR-T1c"
    # MR without sequence attributes: still ambiguous between the model's MR modalities.
    plain = write_dicom_series(colin, tmp_path / "plain", {"0008|0060": "MR"})
    guess = _detect_dicom(model, plain)
    assert guess.modality is None and guess.remaining == ["MR", "MR-T1", "MR-T1c"]


def test_the_default_models_modality_head_echoes_its_input(model):
    """Measured: on real CT and MR, the head names whatever modality id it was given, so it cannot decide."""
    for path in (CT, MR_BREAST):
        assert modality_head_guess(model, read_image(require(path)), ["CT", "MR", "MR-T1", "MR-T1c"]) is None


def test_intensities_tell_ct_and_leave_mr_sequences_open(model, tmp_path, capsys):
    guess = detect_modality(model, read_image(require(CT)), CT)
    assert guess.modality == "CT" and "Hounsfield-unit air present" in guess.evidence
    guess = detect_modality(model, read_image(require(MR_BREAST)), MR_BREAST)
    assert guess.modality is None and guess.remaining == ["MR", "MR-T1", "MR-T1c"]
    out = tmp_path / "out"
    assert main(["segment", str(MR_BREAST), "-o", str(out), "--progress", "none"]) != 0
    err = capsys.readouterr().err
    assert "still possible: MR, MR-T1, MR-T1c; choose one with --modality" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """The published samples: from the user's cache when there, else downloaded once (skipped when offline)."""
    paths = {}
    for name in ("ct-chest", "mr-brain", "mr-breast", "mr-brain-template"):
        try:
            paths[name] = fetch_sample(name, offline=True, progress=None).path
        except SampleError:
            try:
                paths[name] = fetch_sample(name, cache_dir=tmp_path_factory.mktemp("samples"), progress=None).path
            except SampleError as e:
                pytest.skip(f"sample {name} unavailable: {e}")
    return paths


def test_a_sample_path_gets_its_catalogued_modality(model, samples, tmp_path):
    expected = {"ct-chest": "CT", "mr-brain": "MR-T1", "mr-breast": "MR", "mr-brain-template": "MR-T1"}
    for name, path in samples.items():
        guess = detect_modality(model, read_image(path), path)
        assert (guess.modality, guess.confidence) == (expected[name], 1.0), name
        assert guess.evidence == f"sample catalogue: {name}"
    # The same bytes under another name are still the sample; changed bytes are not.
    copy = tmp_path / "renamed.nrrd"
    copy.write_bytes(samples["mr-breast"].read_bytes())
    assert detect_modality(model, read_image(copy), copy).modality == "MR"
    sitk.WriteImage(read_image(copy) + 1, str(copy))
    assert detect_modality(model, read_image(copy), copy).modality is None


def test_readme_main_job_brain_on_the_template_sample(samples, tmp_path):
    """The README's main job: no --model, --modality or --tasks; the sample's modality and the default selection
    give one segment, the brain, with its SNOMED CT code."""
    import slicerio

    out = tmp_path / "out"
    assert main(["segment", str(samples["mr-brain-template"]), "-o", str(out), "--progress", "none"]) == 0
    seg = slicerio.read_segmentation(str(out / "mr-brain-template.seg.nrrd"))
    assert [(s["id"], s["name"]) for s in seg["segments"]] == [("mr_brain_structures_colin_brain", "Brain")]
    assert seg["segments"][0]["terminology"]["type"][1] == "12738006"
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(require(
        DATA / "mr_brain_tissue_mni" / "labelsTr" / "mni152_2009a_sym.nii.gz")))) > 0  # the same image
    mask = seg["voxels"].transpose(2, 1, 0) > 0
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.8


def test_accuracy_benchmark_on_one_image_per_modality(model):
    """benchmarks/modality_accuracy.py on the first image of each shared dataset: CT always right, MR never
    mistaken for CT nor given a wrong sequence (left open for the user when intensities cannot tell)."""
    import importlib.util

    from paths import REPO

    spec = importlib.util.spec_from_file_location("modality_accuracy", REPO / "benchmarks" / "modality_accuracy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.measure(model, list(bench.shared_images(require(DATA), limit=1)))
    assert len(rows) == 13
    assert {r["outcome"] for r in rows if r["truth"] == "CT"} == {"right"}
    assert all(r["outcome"] in ("right", "open") for r in rows), [r for r in rows if r["outcome"] == "wrong"]
    assert all(r["remaining"] == ["MR", "MR-T1", "MR-T1c"] for r in rows if r["truth"] != "CT")
