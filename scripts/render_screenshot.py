"""Render Screenshot01.png (the extension catalogue's screenshot): slices of a real image with the segments the
default model produced, drawn as Slicer draws them (fill and outline in each task's colour, radiological view).

It is a rendering of the module's result, not a capture of the Slicer window (no Slicer application on the machine
that made it). Reproduce it::

    IMAGE=../shared/data/mr_brain_tissue_mni/imagesTr/mni152_2009a_sym_0000.nii.gz
    hermesseg segment $IMAGE -o out --modality MR-T1 --nifti --tasks mr_brain_structures_colin_brain
    python scripts/render_screenshot.py $IMAGE out/mni152_2009a_sym_0000 Screenshot01.png

The brain mask task was learned on the Colin27 brain only, so on the MNI152 template it meets an image it never saw
(the default model's other brain tasks, e.g. the deep grey nuclei, are wrong there and are not shown).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from hermesseg.default_model import default_model_path  # noqa: E402
from hermesseg.model_header import model_summary  # noqa: E402


def lps_array(path: Path) -> np.ndarray:
    """Array [S, P, L] of the image in LPS orientation: an axial slice shows the patient's right on the left and
    anterior at the top, as Slicer's red view does."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS"))


def views(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    k, j, i = centre
    return [volume[k], volume[::-1, j, :], volume[::-1, :, i][:, ::-1]]  # axial, coronal, sagittal (anterior left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("masks", type=Path, help="folder of <task>.nii.gz masks (hermesseg segment --nifti)")
    parser.add_argument("output", type=Path)
    parser.add_argument("--model", default=None, help="model whose task colours are used (default model)")
    args = parser.parse_args()

    info = model_summary(args.model or default_model_path())
    colours = {t["name"]: np.array(t["color"]) / 255.0 for t in info["tasks"]}
    shown = {t["name"]: t["display_name"] for t in info["tasks"]}  # the name Slicer shows
    image = lps_array(Path(args.image)).astype(np.float32)
    lo, hi = np.percentile(image[image > 0], (1, 99.5))
    masks = {p.name.removesuffix(".nii.gz"): lps_array(p) > 0 for p in sorted(args.masks.glob("*.nii.gz"))}
    brain = np.any(list(masks.values()), axis=0)
    centre = tuple(int(round(c)) for c in np.argwhere(brain).mean(axis=0))

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), facecolor="black")
    order = sorted(masks, key=lambda n: -masks[n].sum())  # largest first, so smaller structures stay visible
    for axis, picture in zip(axes, views(image, centre)):
        axis.imshow(picture, cmap="gray", vmin=lo, vmax=hi, interpolation="bilinear")
        axis.set_axis_off()
    for name in order:
        for axis, mask in zip(axes, views(masks[name].astype(np.uint8), centre)):
            overlay = np.zeros(mask.shape + (4,))
            overlay[mask > 0] = (*colours[name], 0.35)
            axis.imshow(overlay, interpolation="nearest")
            axis.contour(mask, levels=[0.5], colors=[colours[name]], linewidths=1.5)
    handles = [Patch(color=colours[n], label=shown[n]) for n in order]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, labelcolor="white")
    fig.suptitle(f"Hermes Segmentation: {info['name']} {info['version']} on a T1 brain MR (rendered slices)",
                 color="white")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.1, wspace=0.02)
    fig.savefig(args.output, dpi=100, facecolor="black")


if __name__ == "__main__":
    main()
