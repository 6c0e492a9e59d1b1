"""hermesseg.preprocessing on real CT and MR: geometry into the model grid and back, body mask, normalisation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from hermesseg import preprocessing as pp
from hermesseg.imageio import read_image

from paths import DATA  # ../shared/data next to the repository, never copied into it

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test images not found at {DATA}")

SPACING = (1.5, 1.5, 1.5)
CT_NORM = pp.IntensityNorm(pp.CT_CLIP_ZSCORE)
MR_NORM = pp.IntensityNorm(pp.PERCENTILE_CLIP_ZSCORE)
# (dataset, case, label value of a large structure)
CASES = {
    "ct_lung1": ("ct_lung_tumour", "lung1", 1),  # 0.57 x 0.57 x 5 mm, identity direction
    "mr_brain1": ("mr_brain_tumour_t1c", "brain1", 1),  # 0.78 x 0.78 x 6.5 mm, y axis flipped, 25 slices
    "mr_abdomen": ("mr_abdomen_ts", "example_mr_sm", 5),  # 3 mm, liver
}


def case_paths(name: str) -> tuple[Path, Path]:
    dataset, case, _ = CASES[name]
    return DATA / dataset / "imagesTr" / f"{case}_0000.nii.gz", DATA / dataset / "labelsTr" / f"{case}.nii.gz"


@pytest.fixture(scope="module")
def real():
    """Images and labels read once per module: {name: (image, label)}."""
    if not DATA.is_dir():
        pytest.skip(f"real test images not found at {DATA}")
    cache: dict[str, tuple[sitk.Image, sitk.Image]] = {}

    def load(name: str) -> tuple[sitk.Image, sitk.Image]:
        if name not in cache:
            image_path, label_path = case_paths(name)
            cache[name] = read_image(image_path), sitk.ReadImage(str(label_path))
        return cache[name]
    return load


@pytest.fixture(scope="module")
def lung1_model_grid(real):
    return pp.to_model_grid(real("ct_lung1")[0], SPACING)


# --- helpers -------------------------------------------------------------------------------------------------------

def physical_coordinates(image: sitk.Image) -> list[np.ndarray]:
    """x, y, z physical coordinates of every voxel centre, each shaped (z, y, x), as float32."""
    size = image.GetSize()
    idx = [np.arange(n, dtype=np.float64) * s for n, s in zip(size, image.GetSpacing())]
    shapes = [(1, 1, size[0]), (1, size[1], 1), (size[2], 1, 1)]
    d = np.array(image.GetDirection()).reshape(3, 3)
    return [(image.GetOrigin()[r] + sum(d[r, a] * idx[a].reshape(shapes[a]) for a in range(3))).astype(np.float32)
            for r in range(3)]


def smooth(image: sitk.Image) -> np.ndarray:
    """A smooth function of physical position (max gradient about 0.04 per mm) sampled on ``image``'s grid."""
    x, y, z = physical_coordinates(image)
    return (np.sin(x / 37.0) + np.cos(y / 53.0) + z / 91.0).astype(np.float32)


def within_voxel_centres(grid: sitk.Image, image: sitk.Image) -> np.ndarray:
    """Voxels of ``image`` inside the hull of an identity-direction ``grid``'s voxel centres (where linear
    interpolation interpolates instead of extending the edge)."""
    inside = np.ones(tuple(reversed(image.GetSize())), dtype=bool)
    for coordinate, origin, spacing, size in zip(physical_coordinates(image), grid.GetOrigin(), grid.GetSpacing(),
                                                 grid.GetSize()):
        inside &= (coordinate >= origin - 1e-3) & (coordinate <= origin + (size - 1) * spacing + 1e-3)
    return inside


def assert_matches_smooth(back: np.ndarray, grid: sitk.Image, image: sitk.Image) -> None:
    """Linear interpolation of ``smooth`` is accurate to 2e-3 inside the grid; in the outer half model voxel, where the
    edge value is extended, the error is at most the gradient (0.057 per mm summed over axes) x 0.75 mm."""
    error = np.abs(back - smooth(image))
    inside = within_voxel_centres(grid, image)
    assert inside.mean() > 0.9
    assert error[inside].max() < 2e-3, error[inside].max()
    assert error.max() < 0.057 * 0.75, error.max()


def corner_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Physical axis-aligned bounding box of the voxel corners."""
    size = np.array(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(np.where(b, size - 0.5, -0.5).tolist())
                        for b in np.ndindex(2, 2, 2)])
    return corners.min(axis=0), corners.max(axis=0)


def restore_axes(image: sitk.Image, order: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> sitk.Image:
    """The same physical image with its index axes stored differently: new axis a is old axis order[a], reversed
    where flips[a] (array, spacing, direction and origin all change; the voxel at each physical point does not)."""
    xyz = sitk.GetArrayFromImage(image).transpose(2, 1, 0).transpose(order)
    direction = np.array(image.GetDirection()).reshape(3, 3)[:, order]
    spacing = np.array(image.GetSpacing())[list(order)]
    origin = np.array(image.GetOrigin())
    for a, flip in enumerate(flips):
        if flip:
            xyz = np.flip(xyz, a)
            origin = origin + (xyz.shape[a] - 1) * spacing[a] * direction[:, a]
            direction[:, a] *= -1
    out = sitk.GetImageFromArray(np.ascontiguousarray(xyz.transpose(2, 1, 0)))
    out.SetSpacing(spacing.tolist())
    out.SetOrigin(origin.tolist())
    out.SetDirection(direction.ravel().tolist())
    return out


def rotated(image: sitk.Image, degrees: float, axis=(1.0, 2.0, 3.0)) -> sitk.Image:
    """``image`` with its direction rotated about ``axis`` through its origin (an oblique acquisition)."""
    rotation = sitk.VersorTransform(tuple(np.array(axis) / np.linalg.norm(axis)), math.radians(degrees))
    out = sitk.Image(image)
    out.SetDirection((np.array(rotation.GetMatrix()).reshape(3, 3)
                      @ np.array(image.GetDirection()).reshape(3, 3)).ravel().tolist())
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


# --- manifest dataclasses ------------------------------------------------------------------------------------------

OFFICIAL_DICT = {  # the shape official models store (spec 5): partial norms, lists for tuples
    "spacing": [1.5, 1.5, 1.5], "orientation": "LPS", "patch_size": [128, 128, 128],
    "intensity": {"CT": {"scheme": "ct_clip_zscore", "clip": [-991.0, 500.0], "stats_region": "body"},
                  "MR-T1": {"scheme": "percentile_clip_zscore", "percentiles": [2.0, 98.0], "stats_region": "body"}},
}


def test_preprocessing_from_official_dict_round_trips():
    prep = pp.Preprocessing.from_dict(OFFICIAL_DICT)
    assert prep.spacing == (1.5, 1.5, 1.5) and prep.patch_size == (128, 128, 128)
    assert prep.norm_for("CT") == CT_NORM
    assert prep.norm_for("MR-T1") == MR_NORM
    assert pp.Preprocessing.from_dict(prep.to_dict()) == prep
    assert pp.IntensityNorm.from_dict(CT_NORM.to_dict()) == CT_NORM


def test_norm_for_unknown_modality_names_the_valid_ones():
    with pytest.raises(KeyError, match="'PET'.*valid: CT, MR-T1"):
        pp.Preprocessing.from_dict(OFFICIAL_DICT).norm_for("PET")


@pytest.mark.parametrize("bad, key", [
    ({**OFFICIAL_DICT, "flip": True}, "'flip'"),
    ({**OFFICIAL_DICT, "intensity": {"CT": {"scheme": "ct_clip_zscore", "window": [0, 1]}}}, "'window'"),
    ({**OFFICIAL_DICT, "intensity": {"CT": {"scheme": "minmax"}}}, "'minmax'"),
    ({**OFFICIAL_DICT, "intensity": {"CT": {"scheme": "ct_clip_zscore", "stats_region": "roi"}}}, "'roi'"),
    ({**OFFICIAL_DICT, "intensity": {"CT": {"clip": [0, 1]}}}, "'scheme'"),
    ({**OFFICIAL_DICT, "orientation": "RAS"}, "'RAS'"),
    ({**OFFICIAL_DICT, "spacing": [1.5, 1.5]}, "spacing"),
])
def test_from_dict_rejects_unknown_keys_and_values(bad, key):
    with pytest.raises(ValueError, match=key):
        pp.Preprocessing.from_dict(bad)


# --- geometry ------------------------------------------------------------------------------------------------------

@needs_data
@pytest.mark.parametrize("name", ["ct_lung1", "mr_brain1", "mr_abdomen"])
def test_model_grid_has_target_spacing_identity_direction_and_same_extent(real, name):
    image = real(name)[0]
    grid = pp.to_model_grid(image, SPACING)
    assert grid.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(grid.GetSpacing(), SPACING)
    np.testing.assert_array_equal(grid.GetDirection(), np.eye(3).ravel())
    (lo_in, hi_in), (lo, hi) = corner_box(image), corner_box(grid)
    assert np.all(np.abs(lo - lo_in) <= 0.5 * np.array(SPACING)), (lo, lo_in)
    assert np.all(np.abs(hi - hi_in) <= 0.5 * np.array(SPACING)), (hi, hi_in)


@needs_data
def test_real_oblique_ct_keeps_its_physical_box():
    # s0002 has a ~2 degree oblique direction (orthonormalised from its source affine).
    image = read_image(DATA / "ct_body_tsdataset" / "imagesTr" / "s0002_0000.nii.gz")
    grid = pp.to_model_grid(image, SPACING)
    np.testing.assert_array_equal(grid.GetDirection(), np.eye(3).ravel())
    (lo_in, hi_in), (lo, hi) = corner_box(image), corner_box(grid)
    np.testing.assert_allclose(lo, lo_in, atol=0.75)
    np.testing.assert_allclose(hi, hi_in, atol=0.75)


@needs_data
@pytest.mark.parametrize("name", ["ct_lung1", "mr_brain1", "mr_abdomen"])
def test_smooth_function_on_model_grid_resamples_onto_the_input_grid(real, name):
    image = real(name)[0]
    grid = pp.to_model_grid(image, SPACING)
    back = pp.resample_to_input(smooth(grid)[None], grid, image)
    assert back.shape == (1, *reversed(image.GetSize())) and back.dtype == np.float32
    assert_matches_smooth(back[0], grid, image)


@needs_data
@pytest.mark.parametrize("name", ["ct_lung1", "mr_brain1", "mr_abdomen"])
def test_label_round_trip_keeps_a_large_structure(real, name):
    image, label = real(name)
    value = CASES[name][2]
    grid = pp.to_model_grid(image, SPACING)
    on_grid = pp.resample_label_to_grid(label, grid)
    assert on_grid.GetPixelID() == label.GetPixelID()
    assert set(np.unique(sitk.GetArrayViewFromImage(on_grid))) <= set(np.unique(sitk.GetArrayViewFromImage(label)))
    one_hot = (sitk.GetArrayViewFromImage(on_grid) == value).astype(np.float32)[None]
    back = pp.resample_to_input(one_hot, grid, image)[0] > 0.5
    assert dice(back, sitk.GetArrayViewFromImage(label) == value) > 0.9


@needs_data
@pytest.mark.parametrize("order, flips", [
    ((0, 1, 2), (False, True, False)),
    ((1, 0, 2), (False, False, False)),
    ((2, 0, 1), (True, False, True)),
])
def test_flipped_and_permuted_storage_gives_the_identical_model_grid(real, lung1_model_grid, order, flips):
    restored = restore_axes(real("ct_lung1")[0], order, flips)
    grid = pp.to_model_grid(restored, SPACING)
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(grid, get)() == getattr(lung1_model_grid, get)(), get
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(grid), sitk.GetArrayViewFromImage(lung1_model_grid))


@needs_data
def test_oblique_direction_runs_and_preserves_geometry(real):
    image = rotated(real("mr_brain1")[0], 15.0)
    grid = pp.to_model_grid(image, SPACING)
    np.testing.assert_array_equal(grid.GetDirection(), np.eye(3).ravel())
    (lo_in, hi_in), (lo, hi) = corner_box(image), corner_box(grid)
    np.testing.assert_allclose(lo, lo_in, atol=0.75)
    np.testing.assert_allclose(hi, hi_in, atol=0.75)
    fill = float(sitk.GetArrayViewFromImage(image).min())
    assert sitk.GetArrayViewFromImage(grid)[0, 0, 0] == fill  # a corner of the box lies outside the rotated volume
    assert_matches_smooth(pp.resample_to_input(smooth(grid)[None], grid, image)[0], grid, image)


def test_synthetic_odd_anisotropic_permuted_image_round_trips():
    image = sitk.Image([7, 13, 5], sitk.sitkFloat32)
    image.SetSpacing((2.3, 0.7, 4.1))
    image.SetOrigin((12.5, -3.25, 40.0))
    image.SetDirection((0, 0, -1, 1, 0, 0, 0, -1, 0))
    image = rotated(image, 7.0)
    grid = pp.to_model_grid(image, (1.1, 0.9, 1.7))
    np.testing.assert_allclose(grid.GetSpacing(), (1.1, 0.9, 1.7))
    assert_matches_smooth(pp.resample_to_input(smooth(grid)[None], grid, image)[0], grid, image)


def test_matching_spacing_and_axis_aligned_only_reorients():
    array = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 1.5))
    image = restore_axes(image, (2, 0, 1), (True, False, True))
    grid = pp.to_model_grid(image, (1.5, 1.5, 1.5 * (1 + 5e-4)))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(grid), array)  # exact: no interpolation
    assert grid.GetOrigin() == (0.0, 0.0, 0.0)


def test_resample_to_input_rejects_probabilities_off_the_model_grid():
    grid = sitk.Image([4, 5, 6], sitk.sitkFloat32)
    with pytest.raises(ValueError, match=r"expected \(T, 6, 5, 4\)"):
        pp.resample_to_input(np.zeros((2, 4, 5, 6), np.float32), grid, grid)


# --- body mask and normalisation -----------------------------------------------------------------------------------

@needs_data
def test_ct_body_mask_excludes_the_air_and_keeps_the_lungs(lung1_model_grid):
    hu = sitk.GetArrayFromImage(lung1_model_grid)
    body = pp.body_mask(hu, CT_NORM)
    assert 0.2 < body.mean() < 0.9
    assert np.median(hu[~body]) < -900  # what is left out is the air around the patient
    assert not body[:, 0, 0].any() and not body[:, -1, -1].any()  # the axial corners
    assert np.mean(hu[body] < -500) > 0.1  # the lungs (enclosed air) are body


@needs_data
def test_ct_z_score_inside_the_body_ignores_extra_air(lung1_model_grid):
    hu = sitk.GetArrayFromImage(lung1_model_grid)
    body = pp.body_mask(hu, CT_NORM)
    normalized = pp.normalize_intensity(hu, CT_NORM)
    assert normalized.dtype == np.float32 and normalized.shape == hu.shape
    assert abs(float(normalized[body].mean())) < 1e-3 and abs(float(normalized[body].std()) - 1) < 1e-3
    assert normalized.min() == pytest.approx((-991 - hu[body].clip(-991, 500).mean()) / hu[body].clip(-991, 500).std(),
                                             rel=1e-4)
    # A wider field of view (more air) must not change the normalised body: spec 5 point 5.
    padded = np.pad(hu, ((0, 0), (25, 25), (25, 25)), constant_values=-1024.0)
    np.testing.assert_allclose(pp.normalize_intensity(padded, CT_NORM)[:, 25:-25, 25:-25][body], normalized[body],
                               atol=1e-5)


@needs_data
@pytest.mark.parametrize("region", ["body", "all"])
def test_mr_percentile_clip_and_z_score(real, region):
    norm = pp.IntensityNorm(pp.PERCENTILE_CLIP_ZSCORE, percentiles=(2.0, 98.0), stats_region=region)
    values = sitk.GetArrayFromImage(pp.to_model_grid(real("mr_brain1")[0], SPACING))
    mask = pp.body_mask(values, norm) if region == "body" else np.ones(values.shape, bool)
    lo, hi = np.percentile(values[mask], [2.0, 98.0])
    clipped = np.clip(values, lo, hi)
    expected = (clipped - clipped[mask].mean()) / clipped[mask].std()
    normalized = pp.normalize_intensity(values, norm)
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(normalized, expected, atol=1e-4)
    assert np.mean(normalized[mask] >= normalized.max() - 1e-6) == pytest.approx(0.02, abs=0.005)


@needs_data
def test_mr_body_mask_covers_the_head_not_the_background(real):
    values = sitk.GetArrayFromImage(pp.to_model_grid(real("mr_brain1")[0], SPACING))
    body = pp.body_mask(values, MR_NORM)
    assert 0.2 < body.mean() < 0.9
    assert values[body].mean() > 5 * values[~body].mean()


def test_body_mask_falls_back_to_all_voxels_when_tiny():
    values = np.zeros((10, 20, 20), np.float32)
    values[5, 10, 10] = 100.0
    assert pp.body_mask(values, MR_NORM).all()
    assert pp.body_mask(np.full((10, 20, 20), -1000.0, np.float32), CT_NORM).all()


@pytest.mark.parametrize("norm", [CT_NORM, MR_NORM])
def test_constant_image_normalises_to_zeros_without_dividing_by_zero(norm):
    with np.errstate(all="raise"):
        out = pp.normalize_intensity(np.full((4, 5, 6), 40.0, np.float32), norm)
    np.testing.assert_array_equal(out, 0.0)
