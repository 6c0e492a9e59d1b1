"""Measure the default model's per-task quality on images its task was not trained on; write it as JSON.

Two kinds of evidence, both "held out" for the task being scored (that task's labels never came from the image):
- held-out cases: the test split of a training dataset (ct_lung_tumour lung1, mr_brain_tumour_t1c brain1; see the
  model card's training data);
- another subject: a task scored on a different subject's image where the same structure is labelled (the skull on
  the ct_head_bone head CT, whose bone mask is a HU >= 226 threshold of the skull; Colin27's brain mask on the MNI152
  template, whose brain is grey + white matter; the brain tumour task on the BraTS T1c cases, whose whole tumour is
  the union of the four sub-regions; ct_head_bone and BraTS are not shippable and serve here as internal benchmark
  data only). The four structures both TotalSegmentator CT subjects label (spinal cord, autochthon left and right,
  upper lobe of the left lung) are one task each, trained on both subjects, so no image is held out for them.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/task_quality.py --model Resources/Models/hermes-mini.safetensors \
        --data ../shared/data --out runs/quality/quality.json

The output maps task name -> {"heldout_dice", "heldout_cases", "source", "scores": [...]}; write it into the model
file with benchmarks/store_task_quality.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from hermesseg import load_model
from hermesseg.evaluation.evaluate import evaluate
from hermesseg.inference import InferenceOptions

# Test split of the default model's training run (the model card lists them as held-out cases).
HELD_OUT = {"ct_lung_tumour": ["lung1"], "mr_brain_tumour_t1c": ["brain1"]}

# Another subject's image: dataset -> {dataset/label: task}, and how it was measured.
OTHER_SUBJECT = {
    "ct_head_bone": ({"ct_head_bone/bone": "ct_body_tsdataset_skull"},
                     "another subject: the ct_head_bone head CT (skull base to vertex), whose bone mask (HU >= 226, "
                     "a weak label) is the skull there; internal benchmark data, not shippable"),
}

# Derived datasets: (new name, source dataset, new label name, task scored, source description).
UNION_DATASETS = [
    ("mni152_brain", "mr_brain_tissue_mni", "brain", "mr_brain_structures_colin_brain",
     "Colin27 brain mask scored on the MNI152 2009a template (brain = grey + white matter labels)"),
    ("brats_t1c_whole_tumour", "mr_brain_tumour_t1c_brats", "whole_tumour", "mr_brain_tumour_t1c_brain_tumour",
     "BraTS 2013 T1c whole tumour (union of the four sub-regions; internal benchmark data, not shippable)"),
]


def union_dataset(source: Path, name: str, label: str, work: Path) -> Path:
    """A copy of ``source`` in nnU-Net layout whose only label is the union of all its labels (value 1)."""
    meta = json.loads((source / "dataset.json").read_text())
    root = work / name
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for image in sorted((source / "imagesTr").glob("*_0000" + meta["file_ending"])):
        case = image.name[: -len("_0000" + meta["file_ending"])]
        link = root / "imagesTr" / image.name
        if not link.exists():
            link.symlink_to(image.resolve())
        gt = sitk.ReadImage(str(source / "labelsTr" / (case + meta["file_ending"])))
        union = sitk.Cast(gt > 0, sitk.sitkUInt8)
        union.CopyInformation(gt)
        sitk.WriteImage(union, str(root / "labelsTr" / (case + meta["file_ending"])))
    (root / "dataset.json").write_text(json.dumps({**meta, "name": name, "labels": {"background": 0, label: 1}}))
    return root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    options = InferenceOptions()
    work = args.out.parent
    work.mkdir(parents=True, exist_ok=True)
    scores: dict[str, list[dict]] = {}
    sources: dict[str, list[str]] = {}

    def collect(report, source: str, only: set[str] | None = None) -> None:
        for s in report.scores:
            if only is not None and s.task not in only:
                continue  # evaluate also scores a dataset's own tasks on its (training) image
            scores.setdefault(s.task, []).append({"dataset": s.dataset, "case": s.case, "dice": s.dice,
                                                  "truth_voxels": s.truth_voxels, "predicted_voxels": s.predicted_voxels})
            if source not in sources.setdefault(s.task, []):
                sources[s.task].append(source)

    for dataset, cases in HELD_OUT.items():
        print(f"held-out {dataset} {cases}", file=sys.stderr)
        collect(evaluate(model, [args.data / dataset], "test", {dataset: {"test": cases}}, options=options),
                f"held-out test case(s) of {dataset} ({', '.join(cases)})")
    for dataset, (task_map, description) in OTHER_SUBJECT.items():
        print(f"another subject {dataset}", file=sys.stderr)
        collect(evaluate(model, [args.data / dataset], "all", task_map=task_map, options=options), description,
                set(task_map.values()))
    for name, source, label, task, description in UNION_DATASETS:
        print(f"derived {name}", file=sys.stderr)
        root = union_dataset(args.data / source, name, label, work / "derived")
        collect(evaluate(model, [root], "all", task_map={f"{name}/{label}": task}, options=options), description)

    out = {}
    for task, rows in scores.items():
        out[task] = {"heldout_dice": round(float(np.mean([r["dice"] for r in rows])), 4),
                     "heldout_cases": len(rows), "source": "; ".join(sources[task]), "scores": rows}
    args.out.write_text(json.dumps(out, indent=1))
    for task, q in out.items():
        print(f"{task}: Dice {q['heldout_dice']:.3f} on {q['heldout_cases']} case(s) [{q['source']}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
