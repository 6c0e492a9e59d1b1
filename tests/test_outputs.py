"""The .seg.nrrd writer: overlapping segments go to separate layers and read back voxel for voxel (slicerio)."""

from __future__ import annotations

import numpy as np
import slicerio

from hermesseg.imageio import read_image
from hermesseg.inference.outputs import SegmentationWriter
from hermesseg.manifest import TaskEntry
from paths import DATA, require

LUNG1 = DATA / "ct_lung_tumour" / "imagesTr" / "lung1_0000.nii.gz"


def _task(i):
    return TaskEntry(id=i, name=f"t{i}", group="g", modalities=["CT"], color=(10 * i, 2, 3))


def test_overlapping_segments_round_trip_through_slicerio(tmp_path):
    image = read_image(require(LUNG1))
    shape = tuple(reversed(image.GetSize()))  # (z, y, x)
    rng = np.random.default_rng(1)
    masks = []
    for box in [(slice(5, 30), slice(100, 300), slice(50, 260)),   # t0
                (slice(20, 40), slice(200, 400), slice(200, 400)),  # t1 overlaps t0
                (slice(0, 10), slice(450, 500), slice(450, 500)),   # t2 overlaps neither: shares t0's layer
                (slice(22, 28), slice(250, 260), slice(220, 240))]:  # t3 overlaps t0 and t1: a third layer
        m = np.zeros(shape, dtype=bool)
        m[box] = rng.random(tuple(s.stop - s.start for s in box)) > 0.3
        masks.append(m)
    writer = SegmentationWriter(image)
    for i, m in enumerate(masks):
        writer.add(_task(i), m)
    path = tmp_path / "out.seg.nrrd"
    writer.write(path)

    seg = slicerio.read_segmentation(str(path))
    voxels = seg["voxels"]
    assert voxels.shape == (3, *image.GetSize())  # (layer, i, j, k)
    by_id = {s["id"]: s for s in seg["segments"]}
    assert [by_id[f"t{i}"]["layer"] for i in range(4)] == [0, 1, 0, 2]
    for i, m in enumerate(masks):
        s = by_id[f"t{i}"]
        got = voxels[s["layer"]] == s["labelValue"]
        assert np.array_equal(got, m.transpose(2, 1, 0)), i
    assert np.allclose(seg["ijkToLPS"], writer.ijk_to_lps)
