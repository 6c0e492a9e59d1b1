"""The embedded default model: found without --model, trained only on shippable data, and segments real anatomy."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from hermesseg.cli import main
from hermesseg.default_model import default_model_path
from hermesseg.model_file import read_manifest
from paths import DATA, require
from segment_helpers import assert_same_grid, dice

COLIN = DATA / "mr_brain_structures_colin"
MIN_BRAIN_DICE = 0.85


def test_default_model_is_found_and_shippable():
    path = default_model_path()
    assert path is not None and path.name == "hermes-mini.safetensors"
    assert path.stat().st_size <= 25 * 2**20
    manifest = read_manifest(path)
    assert manifest.name == "hermes-mini"
    assert manifest.card["shippable"] is True
    assert all(d["shippable"] is True for d in manifest.card["datasets"])
    assert (path.parent / "hermes-mini.md").read_text().startswith("# Model card: hermes-mini")


def test_segment_without_model_uses_the_default_and_finds_the_brain(tmp_path):
    """Without --model and --tasks: the default model runs only its MR-T1 task with held-out evidence (the brain
    mask, Dice 0.90 on the MNI template), not the 14 unmeasured deep-structure and tissue tasks."""
    image = require(COLIN / "imagesTr" / "colin27_ch2_0000.nii.gz")
    out = tmp_path / "out"
    assert main(["segment", str(image), "-o", str(out), "--modality", "MR-T1", "--nifti", "--progress", "none"]) == 0
    assert sorted(p.name for p in (out / "colin27_ch2_0000").iterdir()) == ["mr_brain_structures_colin_brain.nii.gz"]
    mask = sitk.ReadImage(str(out / "colin27_ch2_0000" / "mr_brain_structures_colin_brain.nii.gz"))
    truth = sitk.ReadImage(str(COLIN / "labelsTr" / "colin27_ch2.nii.gz"))
    assert_same_grid(mask, truth)
    # The label map's 'brain' (value 1) excludes the deep structures drawn over it; the task learned that too.
    score = dice(sitk.GetArrayFromImage(mask) > 0, sitk.GetArrayFromImage(truth) == 1)
    assert score > MIN_BRAIN_DICE, score

