"""hermesseg.imageio: every bad input gets a clear InputImageError; good inputs keep their geometry."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from hermesseg import imageio
from hermesseg.errors import InputImageError, OutputError

from paths import DATA  # ../shared/data next to the repository, never copied into it

BRAIN1 = DATA / "mr_brain_tumour_t1c" / "imagesTr" / "brain1_0000.nii.gz"
MR_ABDOMEN = DATA / "mr_abdomen_ts" / "imagesTr" / "example_mr_sm_0000.nii.gz"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test images not found at {DATA}")

STUDY_UID = "1.2.826.0.1.3680043.2.1125.1"


def small_volume(size=(6, 5, 4), pixel=sitk.sitkInt16) -> sitk.Image:
    """A volume with a ramp and non-trivial geometry."""
    array = np.arange(np.prod(size), dtype=np.float64).reshape(size[::-1])
    image = sitk.Cast(sitk.GetImageFromArray(array), pixel)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-10.0, 20.0, 5.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str, description: str, modality: str,
                       extra: dict[str, str] | None = None) -> None:
    """One .dcm file per slice, with the tags GDCM uses to group and sort a series."""
    folder.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        tags = {
            "0020|000d": STUDY_UID, "0020|000e": series_uid, "0008|0018": f"{series_uid}.{k + 1}",
            "0008|0060": modality, "0008|103e": description, "0020|0013": str(k + 1),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0018|0050": str(image.GetSpacing()[2]), **(extra or {}),
        }
        for key, value in tags.items():
            slice_image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{series_uid[-4:]}_{k:03d}.dcm"))
        writer.Execute(slice_image)


def assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)


# --- good inputs -------------------------------------------------------------------------------------------------

@needs_data
def test_reads_real_nifti_as_float32_with_geometry_untouched():
    source = sitk.ReadImage(str(MR_ABDOMEN))
    image = imageio.read_image(MR_ABDOMEN)
    assert image.GetPixelID() == sitk.sitkFloat32 and image.GetDimension() == 3
    assert_same_geometry(image, source)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(source))


def test_trailing_size_one_fourth_axis_is_read_as_3d(tmp_path):
    volume = small_volume()
    path = tmp_path / "t1.mha"
    sitk.WriteImage(sitk.JoinSeries([volume]), str(path))
    assert sitk.ReadImage(str(path)).GetDimension() == 4
    image = imageio.read_image(path)
    assert image.GetSize() == volume.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(volume))


def test_partial_nan_is_set_to_the_image_minimum(tmp_path, caplog):
    array = np.arange(60, dtype=np.float32).reshape(3, 4, 5) + 7.0
    array[1, 2, 3] = np.nan
    path = tmp_path / "some_nan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    out = sitk.GetArrayFromImage(imageio.read_image(path))
    assert np.isfinite(out).all()
    assert out[1, 2, 3] == 7.0
    assert "1 voxels are NaN" in caplog.text


@needs_data
def test_dicom_series_round_trips_geometry_and_voxels(tmp_path):
    # A crop of a real MR, stored right-handed (DICOM slice normals are row x column) and not axis-identity.
    source = sitk.DICOMOrient(sitk.ReadImage(str(BRAIN1))[100:140, 90:150, 8:14], "LAI")
    write_dicom_series(source, tmp_path / "t1c", "1.2.826.0.1.3680043.2.1125.2", "T1 post", "MR",
                       {"0018|0020": "GR", "0018|0080": "8.1", "0018|0081": "3.7", "0018|0010": "Gadovist"})
    loaded = imageio.read_input(tmp_path / "t1c")
    image = loaded.image
    assert_same_geometry(image, source)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(source))
    assert loaded.info.dicom_modality == "MR"
    assert loaded.info.series_description == "T1 post"
    assert loaded.info.mr_attributes == {"ScanningSequence": "GR", "RepetitionTime": "8.1", "EchoTime": "3.7",
                                         "ContrastBolusAgent": "Gadovist"}


def test_image_files_carry_no_dicom_information(tmp_path):
    path = tmp_path / "a.nii.gz"
    sitk.WriteImage(small_volume(), str(path))
    assert imageio.read_input(path).info == imageio.ImageInfo()


# --- bad inputs: one test per case, each checks the message ---------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(InputImageError, match="no such file or folder") as err:
        imageio.read_image(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(err.value)


def test_garbage_file_cannot_be_read(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(InputImageError, match="cannot read") as err:
        imageio.read_image(path)
    assert str(path) in str(err.value) and "Exception thrown" not in str(err.value)


@pytest.mark.parametrize("name, truncate", [
    ("cut_stream.nii.gz", lambda data: data[: len(data) // 2]),
    ("short_data.nii.gz", lambda data: gzip.compress(gzip.decompress(data)[:-1000])),
    ("short_data.nii", lambda data: data[:-1000]),
    ("cut.nrrd", lambda data: data[: len(data) // 2]),
    ("cut.mha", lambda data: data[: len(data) // 2]),
])
def test_truncated_file_cannot_be_read(tmp_path, name, truncate):
    # ITK's NIfTI reader would fill the missing voxels with zeros; imageio checks the size the header announces.
    path = tmp_path / name
    sitk.WriteImage(small_volume((40, 40, 40)), str(path), useCompression=True)
    path.write_bytes(truncate(path.read_bytes()))
    with pytest.raises(InputImageError, match="cannot read") as err:
        imageio.read_image(path)
    assert str(path) in str(err.value)


def test_2d_image_is_rejected(tmp_path):
    path = tmp_path / "photo.png"
    sitk.WriteImage(sitk.Image([64, 48], sitk.sitkUInt8), str(path))
    with pytest.raises(InputImageError, match=r"is 2D \(64x48\); Hermes needs a 3D volume"):
        imageio.read_image(path)


def test_single_dicom_file_is_rejected_with_a_hint_to_pass_the_folder(tmp_path):
    write_dicom_series(small_volume(), tmp_path, "1.2.826.0.1.3680043.2.1125.41", "one", "CT")
    with pytest.raises(InputImageError, match="pass the folder that holds the whole series"):
        imageio.read_image(sorted(tmp_path.iterdir())[0])


def test_4d_image_is_rejected_with_its_size(tmp_path):
    path = tmp_path / "dynamic.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([small_volume()] * 3), str(path))
    with pytest.raises(InputImageError, match=r"is 4D \(6x5x4x3\)"):
        imageio.read_image(path)


def test_rgb_image_is_rejected_with_its_component_count(tmp_path):
    path = tmp_path / "colour.nrrd"
    sitk.WriteImage(sitk.Image([6, 5, 4], sitk.sitkVectorUInt8, 3), str(path))
    with pytest.raises(InputImageError, match=r"has 3 components per voxel \(RGB\?\)"):
        imageio.read_image(path)


def test_zero_size_image_is_rejected(tmp_path):
    path = tmp_path / "empty.mha"
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 0 0 0\nElementType = MET_FLOAT\n"
                    "ElementDataFile = LOCAL\n")
    with pytest.raises(InputImageError, match=r"is empty \(size 0x0x0\)"):
        imageio.read_image(path)


def test_single_slice_volume_is_rejected(tmp_path):
    path = tmp_path / "one_slice.nii.gz"
    sitk.WriteImage(small_volume((6, 5, 1)), str(path))
    with pytest.raises(InputImageError, match=r"single slice \(6x5x1\)"):
        imageio.read_image(path)


def test_all_nan_volume_is_rejected(tmp_path):
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), np.nan, dtype=np.float32)), str(path))
    with pytest.raises(InputImageError, match="every voxel is NaN"):
        imageio.read_image(path)


def test_dicom_folder_with_two_series_lists_them(tmp_path):
    folder = tmp_path / "study"
    write_dicom_series(small_volume(), folder, "1.2.826.0.1.3680043.2.1125.11", "T1 axial", "MR")
    write_dicom_series(small_volume((6, 5, 3)), folder, "1.2.826.0.1.3680043.2.1125.12", "T2 axial", "MR")
    for call in (imageio.read_input, lambda p: imageio.expand_inputs([p])):
        with pytest.raises(InputImageError) as err:
            call(folder)
        message = str(err.value)
        assert "holds 2 DICOM series" in message and "folder of one series" in message
        assert "1.2.826.0.1.3680043.2.1125.11 ('T1 axial', 4 files)" in message
        assert "1.2.826.0.1.3680043.2.1125.12 ('T2 axial', 3 files)" in message


def test_folder_without_dicom_or_images_is_rejected(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing to see")
    with pytest.raises(InputImageError, match="no DICOM series and no image files"):
        imageio.read_image(tmp_path)
    with pytest.raises(InputImageError, match="no DICOM series and no image files"):
        imageio.expand_inputs([tmp_path])


# --- expand_inputs, input_stem, write_image_atomic -------------------------------------------------------------------

def test_expand_inputs_folder_of_images_is_sorted_and_skips_other_files(tmp_path):
    for name in ("b.nrrd", "a.nii.gz", "c.mha", "a.seg.nrrd", "readme.txt"):
        (tmp_path / name).write_bytes(b"x")
    single = tmp_path / "single.nii"
    single.write_bytes(b"x")
    assert imageio.expand_inputs([tmp_path]) == [tmp_path / n for n in ("a.nii.gz", "b.nrrd", "c.mha", "single.nii")]
    assert imageio.expand_inputs([single]) == [single]


def test_expand_inputs_single_series_folder_is_one_input(tmp_path):
    write_dicom_series(small_volume(), tmp_path / "ct", "1.2.826.0.1.3680043.2.1125.21", "abdomen", "CT")
    assert imageio.expand_inputs([tmp_path / "ct"]) == [tmp_path / "ct"]
    assert imageio.read_input(tmp_path / "ct").info.dicom_modality == "CT"


def test_expand_inputs_missing_path(tmp_path):
    with pytest.raises(InputImageError, match="missing.nrrd: no such file or folder"):
        imageio.expand_inputs([tmp_path / "missing.nrrd"])


def test_expand_inputs_rejects_a_folder_mixing_dicom_and_image_files(tmp_path):
    write_dicom_series(small_volume(), tmp_path, "1.2.826.0.1.3680043.2.1125.31", "x", "CT")
    sitk.WriteImage(small_volume(), str(tmp_path / "extra.nii.gz"))
    with pytest.raises(InputImageError, match="both DICOM files and 1 image files"):
        imageio.expand_inputs([tmp_path])


@pytest.mark.parametrize("name, stem", [
    ("case_0000.nii.gz", "case_0000"), ("CASE.NII.GZ", "CASE"), ("liver.seg.nrrd", "liver"), ("a.nrrd", "a"),
    ("b.nii", "b"), ("c.mha", "c"), ("d.mhd", "d"), ("e.nhdr", "e"), ("scan.v2.nrrd", "scan.v2"),
])
def test_input_stem_strips_image_extensions(name, stem):
    assert imageio.input_stem(Path("/somewhere") / name) == stem


def test_input_stem_of_a_dicom_folder_is_its_name(tmp_path):
    folder = tmp_path / "series.1"
    folder.mkdir()
    assert imageio.input_stem(folder) == "series.1"


def test_write_image_atomic_round_trips_and_leaves_no_temporary_file(tmp_path):
    image = small_volume()
    target = tmp_path / "out" / "result.seg.nrrd"
    imageio.write_image_atomic(image, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.seg.nrrd"]
    back = sitk.ReadImage(str(target))
    assert_same_geometry(back, image)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))


def test_write_image_atomic_refuses_detached_headers(tmp_path):
    with pytest.raises(OutputError, match="cannot be written atomically"):
        imageio.write_image_atomic(small_volume(), tmp_path / "out.mhd")
