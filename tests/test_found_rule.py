""""Not found in this image": the default model's own evidence decides, on real images (issue 10).

Measured in benchmarks/not_found_rule.py; here the two ends of it: an absent structure on a real CT is reported not
found with its reason (and a present one on the same image is still drawn), and the one task that transfers, the T1
brain mask, is still found on the MNI template with Dice > 0.8.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch

from hermesseg.inference.found_rule import DEFAULT_RULE, Evidence, task_evidence
from paths import DATA, REPO, require

CT_ABDOMEN = DATA / "ct_abdomen_ts"
MNI = DATA / "mr_brain_tissue_mni"


def _segment(image, out, *args):
    proc = subprocess.run([sys.executable, "-m", "hermesseg.cli", "segment", str(require(image)), "-o", str(out),
                           "--progress", "json", "--threads", "1", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["stage"] == "done"
    return events, events[-1]["outputs"][0]


def test_an_absent_structure_is_not_found_with_its_reason_and_a_present_one_is_drawn(tmp_path):
    """Abdominal CT: the left subclavian artery's mask (the default model draws one; the artery is above this image)
    is unconfident (mean probability 0.51): not found; the liver is there and drawn (Dice 0.75 against the image's
    labels)."""
    image = CT_ABDOMEN / "imagesTr" / "example_ct_sm_0000.nii.gz"
    absent = "ct_body_tsdataset_subclavian_artery_left"
    events, record = _segment(image, tmp_path, "--tasks", f"{absent},ct_abdomen_ts_liver")
    assert record["not_found"] == [absent] and record["found"] == ["ct_abdomen_ts_liver"]
    reason = record["not_found_reasons"][absent]
    assert reason.startswith("not confident: mean probability 0.") and "(needs 0.73)" in reason, reason
    assert any(e["message"] == f"not found in this image: {absent} ({reason})" for e in events)
    seg = slicerio.read_segmentation(record["segmentation"])
    assert [s["id"] for s in seg["segments"]] == ["ct_abdomen_ts_liver"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(CT_ABDOMEN / "labelsTr" / "example_ct_sm.nii.gz")))
    liver = labels.transpose(2, 1, 0) == 5
    drawn = seg["voxels"] > 0
    assert 2 * np.logical_and(drawn, liver).sum() / (drawn.sum() + liver.sum()) > 0.6


def test_the_brain_mask_is_still_found_on_the_mni_template(tmp_path):
    """The default selection on a T1 brain (no --tasks): the brain passes the rule, Dice > 0.8 (grey + white)."""
    _, record = _segment(MNI / "imagesTr" / "mni152_2009a_sym_0000.nii.gz", tmp_path, "--modality", "MR-T1")
    assert record["found"] == ["mr_brain_structures_colin_brain"] and record["not_found"] == []
    seg = slicerio.read_segmentation(record["segmentation"])
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(MNI / "labelsTr" / "mni152_2009a_sym.nii.gz"))) > 0
    drawn = seg["voxels"].transpose(2, 1, 0) > 0
    assert 2 * np.logical_and(drawn, truth).sum() / (drawn.sum() + truth.sum()) > 0.8


def test_evidence_counts_pieces_confidence_and_body_share():
    """Two blobs (64 and 8 voxels) above 0.5, one of them half outside the body."""
    p = torch.zeros((10, 10, 10))
    p[1:5, 1:5, 1:5] = 0.9
    p[7:9, 7:9, 7:9] = 0.6
    p[0, 0, 9] = 0.4  # below the threshold: not part of the mask
    body = np.ones((10, 10, 10), bool)
    body[8:, :, :] = False
    e = task_evidence(p, 0.5, (2.0, 2.0, 2.0), body)
    assert (e.voxels, e.components) == (72, 2)
    assert e.largest_fraction == pytest.approx(64 / 72) and e.inside_body == pytest.approx(68 / 72)
    assert e.mean_probability == pytest.approx((64 * 0.9 + 8 * 0.6) / 72, abs=1e-6)
    assert e.volume_ml == pytest.approx(72 * 8 / 1000) and e.peak == pytest.approx(0.9)
    assert DEFAULT_RULE.reason(e) is None
    scattered = Evidence(peak=1.0, voxels=100, volume_ml=2.7, mean_probability=0.8, components=12,
                         largest_fraction=0.2, inside_body=1.0)
    assert DEFAULT_RULE.reason(scattered) == "scattered: the largest of 12 pieces holds 20% of the mask (needs 45%)"
    assert DEFAULT_RULE.reason(task_evidence(torch.full((4, 4, 4), 0.3), 0.5, (1, 1, 1))) == \
        "the probability never reaches 0.5 (peak 0.30)"
