"""Does the "not found in this image" rule remove false masks without losing true ones? Measured on real images.

For a handful of real images of ``../shared/data``, every task of the image's modality runs once (no rule: a task is
drawn wherever its probability reaches 0.5) and each task gets its model-grid evidence
(``hermesseg.inference.found_rule.Evidence``) and, where the image's labels say, its status and Dice:

- present: the image's label map has the task's structure (catalogue key), Dice of the plain mask against it;
- absent: the dataset labels the structure but this image has no voxel of it. The TotalSegmentator-derived images
  label every TotalSegmentator class (CT: 117 classes merged or predicted as a whole; every CT task of the
  ct_abdomen_ts / ct_body_tsdataset groups is one of them; MR: the ``total_mr`` classes below), so a TotalSegmentator
  structure without voxels there is absent;
- unknown: the dataset does not label the structure (a lung tumour on a TotalSegmentator image, the subcortical
  nuclei on the MNI template): counted, never scored.

Then the rule (``FoundRule``) is applied to the recorded evidence: before = drawn whenever the threshold is reached,
after = drawn only when the rule passes. The table counts false positives (absent structures drawn), present
structures found, and present structures with Dice >= 0.5 kept. ``--rows`` re-evaluates saved rows without
segmenting again.

    PYTHONPATH=$PWD nice -n 15 .venv/bin/python benchmarks/not_found_rule.py --data ../shared/data \
        --out runs/not_found/not_found.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from hermesseg.catalogue import catalogue
from hermesseg.default_model import require_model_path
from hermesseg.evaluation.metrics import dice
from hermesseg.imageio import read_image
from hermesseg.inference import InferenceOptions, predict
from hermesseg.inference.found_rule import DEFAULT_RULE, NO_RULE, Evidence, FoundRule
from hermesseg.inference.input_grid import on_input_grid
from hermesseg.model import load_model

# (dataset, case, modality to run): one prediction each, with every task of that modality.
IMAGES = [
    ("ct_abdomen_ts", "example_ct_sm", "CT"),
    ("ct_body_tsdataset", "s0002", "CT"),
    ("ct_lung_tumour", "lung1", "CT"),
    ("ct_lung_tumour", "lung2", "CT"),
    ("ct_head_bone", "cranium", "CT"),
    ("mr_abdomen_ts", "example_mr_sm", "MR"),
    ("mr_abdomen_ts", "example_mr_sm", "MR-T1"),  # the brain task on an abdomen MR: brain is a total_mr class
    ("mr_brain_structures_colin", "colin27_ch2", "MR-T1"),
    ("mr_brain_tissue_mni", "mni152_2009a_sym", "MR-T1"),
    ("mr_brain_tumour_t1c", "brain1", "MR-T1c"),
]
TOTALSEGMENTATOR = {"ct_abdomen_ts", "ct_body_tsdataset", "mr_abdomen_ts"}
TOTALSEGMENTATOR_CT_GROUPS = ("ct_abdomen_ts", "ct_body_tsdataset")
# TotalSegmentator v2 ``total_mr`` classes (what the mr_abdomen_ts label map was predicted with).
TOTAL_MR = {
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas", "adrenal_gland_right",
    "adrenal_gland_left", "lung_left", "lung_right", "esophagus", "small_bowel", "duodenum", "colon",
    "urinary_bladder", "prostate", "sacrum", "vertebrae", "intervertebral_discs", "spinal_cord", "heart", "aorta",
    "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right",
    "iliac_vena_left", "iliac_vena_right", "humerus_left", "humerus_right", "scapula_left", "scapula_right",
    "clavicula_left", "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right", "gluteus_maximus_left",
    "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right", "gluteus_minimus_left",
    "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right", "brain"}
# Structures a dataset labels as a union of its labels (the MNI template's brain is grey + white matter).
UNIONS = {"mr_brain_tissue_mni": {"brain": ["grey_matter", "white_matter"]}}
GOOD_DICE = 0.5
ELSEWHERE_DICE = 0.1  # a present structure's mask below this Dice is drawn somewhere else


def key(name: str) -> str:
    s = catalogue().structure(name)
    return s.key if s else name


def task_key(task) -> str:
    s = catalogue().structure_of(task)
    return s.key if s else task.name


def truth_masks(dataset: Path, case: str) -> tuple[dict[str, np.ndarray], set[str]]:
    """Structure key -> truth mask (z, y, x, input grid) of every structure this image has, and the keys the
    dataset labels (present or absent)."""
    meta = json.loads((dataset / "dataset.json").read_text())
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "labelsTr" / f"{case}{meta['file_ending']}")))
    values = {name: v for name, v in meta["labels"].items() if name != "background"}
    masks = {key(name): label == v for name, v in values.items()}
    for structure, parts in UNIONS.get(dataset.name, {}).items():
        masks[key(structure)] = np.isin(label, [values[p] for p in parts])
    return {k: m for k, m in masks.items() if m.any()}, set(masks)


def labelled_structures(model, dataset: str, listed: set[str]) -> set[str]:
    if dataset not in TOTALSEGMENTATOR:
        return listed
    if dataset.startswith("mr_"):
        return listed | {key(n) for n in TOTAL_MR}
    return listed | {task_key(t) for t in model.manifest.tasks if t.group in TOTALSEGMENTATOR_CT_GROUPS}


def measure(model, data: Path, threads: int) -> list[dict]:
    rows = []
    options = InferenceOptions(threads=threads, found_rule=NO_RULE)  # every mask that reaches the threshold
    for dataset, case, modality in IMAGES:
        root = data / dataset
        meta = json.loads((root / "dataset.json").read_text())
        image_path = root / "imagesTr" / f"{case}_0000{meta['file_ending']}"
        if not image_path.exists():
            print(f"skipped {dataset}/{case}: not found", file=sys.stderr)
            continue
        start = time.perf_counter()
        image = read_image(image_path)
        present, listed = truth_masks(root, case)
        labelled = labelled_structures(model, dataset, listed)
        tasks = model.tasks_for_modality(modality)
        prediction = predict(model, image, tasks, modality, options)
        shape = tuple(reversed(image.GetSize()))
        for result in on_input_grid(prediction):
            k = task_key(result.task)
            status = "present" if k in present else "absent" if k in labelled else "unknown"
            mask = result.full_mask(shape) if status == "present" else None
            rows.append({"dataset": dataset, "case": case, "modality": modality, "task": result.task.name,
                         "structure": k, "status": status, "drawn": result.found,
                         "dice": round(dice(mask, present[k]), 4) if mask is not None else None,
                         "evidence": result.evidence.as_dict()})
        print(f"{dataset}/{case} [{modality}]: {len(tasks)} tasks, {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    return rows


def counts(rows: list[dict], rule: FoundRule | None) -> dict:
    """False positives, present found, present with Dice >= 0.5 kept, unknown drawn; ``rule`` None = before."""
    def drawn(r):
        return r["drawn"] and (rule is None or rule.reason(Evidence(**r["evidence"])) is None)
    absent = [r for r in rows if r["status"] == "absent"]
    present = [r for r in rows if r["status"] == "present"]
    good = [r for r in present if r["drawn"] and r["dice"] >= GOOD_DICE]
    elsewhere = [r for r in present if r["drawn"] and r["dice"] < ELSEWHERE_DICE]
    unknown = [r for r in rows if r["status"] == "unknown"]
    return {"absent": len(absent), "false_positives": sum(map(drawn, absent)),
            "present": len(present), "present_found": sum(map(drawn, present)),
            "good": len(good), "good_kept": sum(map(drawn, good)),
            "elsewhere": len(elsewhere), "elsewhere_drawn": sum(map(drawn, elsewhere)),
            "unknown": len(unknown), "unknown_drawn": sum(map(drawn, unknown))}


def table(rows: list[dict], rule: FoundRule) -> str:
    lines = ["| images | rule | false positives (absent drawn) | present found | Dice>=0.5 kept | "
             "present drawn elsewhere (Dice<0.1) | unknown drawn |", "|---|---|---|---|---|---|---|"]
    groups = {"CT": [r for r in rows if r["modality"] == "CT"], "MR": [r for r in rows if r["modality"] != "CT"],
              "all": rows}
    for name, group in groups.items():
        for label, c in (("before", counts(group, None)), ("after", counts(group, rule))):
            lines.append(f"| {name} | {label} | {c['false_positives']}/{c['absent']} | "
                         f"{c['present_found']}/{c['present']} | {c['good_kept']}/{c['good']} | "
                         f"{c['elsewhere_drawn']}/{c['elsewhere']} | {c['unknown_drawn']}/{c['unknown']} |")
    return "\n".join(lines)


def sweep(rows: list[dict]) -> list[str]:
    """Each test of the rule alone, at a few thresholds: how many false positives it removes and what it costs."""
    out = []
    for field, values in (("min_mean_probability", (0.6, 0.7, 0.8, 0.85, 0.9, 0.95)),
                          ("min_largest_fraction", (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)),
                          ("min_inside_body", (0.5, 0.8, 0.9, 0.95, 0.99)),
                          ("max_components", (1, 2, 3, 5, 10, 20))):
        for v in values:
            c = counts(rows, replace(FoundRule(), **{field: v}))
            out.append(f"{field}={v}: false positives {c['false_positives']}/{c['absent']}, present found "
                       f"{c['present_found']}/{c['present']}, Dice>=0.5 kept {c['good_kept']}/{c['good']}")
    return out


def choose(rows: list[dict]) -> FoundRule:
    """The (mean probability, largest piece) thresholds that keep the most Dice >= 0.5 masks, then draw the fewest
    absent structures, then are the lowest."""
    grid = [FoundRule(min_mean_probability=round(float(m), 2), min_largest_fraction=round(float(f), 2))
            for m in np.arange(0.60, 0.86, 0.01) for f in np.arange(0.0, 0.65, 0.05)]

    def merit(rule):
        c = counts(rows, rule)
        return c["good_kept"], -c["false_positives"], -rule.min_mean_probability, -rule.min_largest_fraction
    return max(grid, key=merit)


def left_out(rows: list[dict]) -> dict:
    """Thresholds chosen without each image, scored on that image: what to expect on images the choice never saw."""
    images = sorted({(r["dataset"], r["case"], r["modality"]) for r in rows})
    total = {"good": 0, "good_kept": 0, "absent": 0, "false_positives": 0}
    for image in images:
        inside = [r for r in rows if (r["dataset"], r["case"], r["modality"]) == image]
        c = counts(inside, choose([r for r in rows if (r["dataset"], r["case"], r["modality"]) != image]))
        for k in total:
            total[k] += c[k]
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model file (default: the embedded default model)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="JSON with every row, the counts and the table")
    p.add_argument("--rows", type=Path, help="re-evaluate the rows of an earlier --out instead of segmenting")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.rows:
        rows = json.loads(args.rows.read_text())["rows"]
    else:
        rows = measure(load_model(require_model_path(args.model)), args.data, args.threads)
    rule = DEFAULT_RULE
    text = table(rows, rule)
    print(text)
    print("\n".join(sweep(rows)))
    best, held = choose(rows), left_out(rows)
    print(f"best on these images: {best}")
    print(f"chosen with each image left out, on the left-out image: Dice>=0.5 kept {held['good_kept']}/{held['good']}, "
          f"false positives {held['false_positives']}/{held['absent']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rule": rule.__dict__, "before": counts(rows, None), "after": counts(rows, rule),
                                    "best": best.__dict__, "left_out": held, "table": text, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
