"""Going back to the input grid inside each task's box gives the masks of whole-volume resampling, voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from hermesseg.imageio import read_image
from hermesseg.inference.found_rule import NO_RULE
from hermesseg.inference.input_grid import on_input_grid
from hermesseg.inference.pipeline import InferenceOptions, ModelSpacePrediction
from hermesseg.manifest import TaskEntry
from hermesseg.preprocessing import InputGridSampler, resample_to_input, to_model_grid
from paths import DATA, require

IMAGES = {"lung1": DATA / "ct_lung_tumour" / "imagesTr" / "lung1_0000.nii.gz",  # 0.57 x 0.57 x 5 mm
          "s0002": DATA / "ct_body_tsdataset" / "imagesTr" / "s0002_0000.nii.gz"}  # slightly oblique


def _blobs(shape, centres, radius):
    """Smooth probability blobs (0..1) on the model grid, one channel per centre."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return np.stack([np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * radius ** 2))
                     for c in centres]).astype(np.float32)


def _task(i):
    return TaskEntry(id=i, name=f"t{i}", group="g", modalities=["CT"], color=(1, 2, 3))


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_boxed_masks_equal_whole_volume_masks(name):
    image = read_image(require(IMAGES[name]))
    grid = to_model_grid(image, (3.0, 3.0, 3.0))
    shape = tuple(reversed(grid.GetSize()))
    centres = [tuple(n // 2 for n in shape), (2, 3, shape[2] - 2), (shape[0] // 2, 5, 7)]  # middle, corner, edge
    probs = _blobs(shape, centres, 3.0)
    probs = np.concatenate([probs, np.full((1, *shape), 0.3, np.float32)])  # a task that is never found
    tasks = [_task(i) for i in range(len(probs))]
    whole = resample_to_input(probs, grid, image) >= 0.5
    # Smooth blobs are not confident masks: draw every mask that reaches the threshold (the rule: test_found_rule.py).
    prediction = ModelSpacePrediction(tasks, torch.from_numpy(probs), grid, image, InferenceOptions(found_rule=NO_RULE))
    results = list(on_input_grid(prediction))
    for t, result in enumerate(results[:3]):
        assert result.found and whole[t].any()
        assert np.array_equal(result.full_mask(whole.shape[1:]), whole[t]), t
        assert result.mask.size < whole[t].size / 20  # the work follows the structure, not the input
    assert not results[3].found and not whole[3].any()


def test_a_task_that_keeps_its_largest_piece_draws_only_that_piece():
    """A big and a small blob in one channel: the task flagged ``keep_largest_component`` (as add-task flags it when
    held-out cases say so) draws the big blob's mask, voxel for voxel, and the unflagged task draws both."""
    image = read_image(require(IMAGES["lung1"]))
    grid = to_model_grid(image, (3.0, 3.0, 3.0))
    shape = tuple(reversed(grid.GetSize()))
    middle = tuple(n // 2 for n in shape)
    big, small = _blobs(shape, [middle, (middle[0], middle[1], 8)], 3.0)
    one = np.maximum(big, 0.75 * small)[None]  # the small blob reaches the threshold on fewer voxels
    probs = torch.from_numpy(np.concatenate([one, one]))
    tasks = [_task(0), TaskEntry(id=1, name="t1", group="g", modalities=["CT"], keep_largest_component=True)]
    results = list(on_input_grid(ModelSpacePrediction(tasks, probs, grid, image, InferenceOptions(found_rule=NO_RULE))))
    both = resample_to_input(one, grid, image)[0] >= 0.5
    big_only = resample_to_input(big[None], grid, image)[0] >= 0.5
    assert np.array_equal(results[0].full_mask(both.shape), both) and results[0].evidence.components == 2
    assert np.array_equal(results[1].full_mask(both.shape), big_only) and results[1].evidence.components == 1
    assert 0 < big_only.sum() < both.sum()


def test_a_task_is_drawn_at_its_own_threshold():
    """The same smooth blob for two tasks on a real CT's grid: the task whose entry says 0.3 (as add-task sets it when
    held-out cases say so) draws exactly the input-grid voxels where the resampled probability reaches 0.3, a larger
    mask than the task drawn at 0.5, whose mask is the usual one; whether it is found is judged at 0.5 for both (the
    found rule's evidence, where the rule was calibrated), so both get the same evidence."""
    image = read_image(require(IMAGES["lung1"]))
    grid = to_model_grid(image, (3.0, 3.0, 3.0))
    shape = tuple(reversed(grid.GetSize()))
    blob = _blobs(shape, [tuple(n // 2 for n in shape)], 4.0)[0][None]
    probs = torch.from_numpy(np.concatenate([blob, blob]))
    tasks = [_task(0), TaskEntry(id=1, name="t1", group="g", modalities=["CT"], threshold=0.3)]
    results = list(on_input_grid(ModelSpacePrediction(tasks, probs, grid, image, InferenceOptions(found_rule=NO_RULE))))
    on_input = resample_to_input(blob, grid, image)[0]
    at_half, at_03 = on_input >= 0.5, on_input >= 0.3
    assert np.array_equal(results[0].full_mask(on_input.shape), at_half)
    assert np.array_equal(results[1].full_mask(on_input.shape), at_03)
    assert 0 < at_half.sum() < at_03.sum()
    assert results[1].evidence == results[0].evidence
    assert results[0].evidence.voxels == int((blob[0] >= 0.5).sum())


def _permuted_flipped(image):
    return sitk.Flip(sitk.PermuteAxes(image, [2, 0, 1]), [True, False, True])


@pytest.mark.parametrize("name, variant, separable", [("s0002", None, False), ("lung1", None, True),
                                                      ("lung1", _permuted_flipped, True)])
def test_whole_volume_sampling_matches_simpleitk_linear_resampling(name, variant, separable):
    """The torch sampler reproduces ITK: linear, edge extended by one model voxel, for an oblique input (grid_sample)
    and for axis-aligned ones, stored as they come or permuted and flipped (three 1-D interpolations)."""
    image = read_image(require(IMAGES[name]))
    image = variant(image) if variant else image
    grid = to_model_grid(image, (3.0, 3.0, 3.0))
    channel = np.random.default_rng(0).random(tuple(reversed(grid.GetSize()))).astype(np.float32)
    on_model = sitk.GetImageFromArray(channel)
    on_model.CopyInformation(grid)
    padded = sitk.ZeroFluxNeumannPad(on_model, [1, 1, 1], [1, 1, 1])
    expected = sitk.GetArrayFromImage(sitk.Resample(padded, image, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                    sitk.sitkFloat32))
    sampler = InputGridSampler(grid, image)
    assert sampler.separable == separable
    got = sampler.sample(torch.from_numpy(channel)).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4
