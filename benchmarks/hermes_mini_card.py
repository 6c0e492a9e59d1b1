"""Measure the embedded default model and write its model card (Resources/Models/hermes-mini.md).

Every figure in the card comes from a run: the per-task held-out quality stored in the model file (measured by
benchmarks/task_quality.py, stored by benchmarks/store_task_quality.py), training-case Dice (for reference, labelled
as such), and timings of `hermesseg segment` on this machine.

    .venv/bin/python benchmarks/hermes_mini_card.py --model Resources/Models/hermes-mini.safetensors \
        --run runs/hermes-mini --data ../shared/data --out Resources/Models/hermes-mini.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from hermesseg import load_model
from hermesseg.evaluation.evaluate import evaluate
from hermesseg.inference import InferenceOptions

def quality_section(manifest) -> list[str]:
    """The per-task measured quality stored in the model file, and the default-selection rule it feeds."""
    from hermesseg.catalogue import catalogue
    from hermesseg.selection import MIN_HELDOUT_CASES, MIN_HELDOUT_DICE, has_evidence

    measured = [t for t in manifest.tasks if t.quality]
    rows = [f"| {catalogue().display_name(t)} | `{t.name}` | {t.quality['heldout_dice']:.3f} | "
            f"{t.quality['heldout_cases']} | {'yes' if has_evidence(t) else 'no'} | {t.quality['source']} |"
            for t in sorted(measured, key=lambda t: -t.quality["heldout_dice"])]
    return [
        "## Measured quality per task (stored in the model file)",
        "Each task's `quality` in the manifest is its mean Dice on images its labels never came from, measured with "
        "`benchmarks/task_quality.py` (which runs `hermesseg evaluate`): the held-out test cases of the training run "
        "(ct_lung_tumour lung1, mr_brain_tumour_t1c brain1), and *another subject*: a task scored on another "
        "subject's image where the same structure is labelled (the skull on the ct_head_bone head CT, whose bone mask "
        "is a HU >= 226 threshold; Colin27's brain mask on the MNI152 template, brain = its grey + white matter; the "
        "brain tumour task also on the four BraTS 2013 T1c cases, whole tumour = union of the sub-regions; "
        "ct_head_bone and BraTS are internal benchmark data that is not shippable). The structures both "
        "TotalSegmentator CT subjects label (spinal cord, autochthon left and right, upper lobe of the left lung) are one task each, "
        "trained on both subjects, so no image is held out for them. "
        f"{len(manifest.tasks) - len(measured)} of {len(manifest.tasks)} tasks have no such image: their quality is "
        "*seen in training only*.",
        "",
        f"Without `--tasks`, `hermesseg segment` runs only tasks with held-out Dice >= {MIN_HELDOUT_DICE} on >= "
        f"{MIN_HELDOUT_CASES} case (column *default*); the others run when asked for, with a warning.",
        "",
        "| structure | task | held-out Dice | cases | default | how measured |", "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def previous_section(manifest, previous: dict, label: str) -> list[str]:
    """Held-out Dice of an earlier build (``benchmarks/task_quality.py`` JSON of that model, measured the same way)
    beside this one's: what rebuilding the model changed."""
    mine = {t.name: t.quality for t in manifest.tasks if t.quality}
    names = sorted(set(previous) | set(mine), key=lambda n: -(mine.get(n) or {}).get("heldout_dice", -1))

    def cell(q):
        return f"{q['heldout_dice']:.3f} ({q['heldout_cases']})" if q else "not measured"

    return [
        f"## Against the previous build ({label})",
        "Held-out Dice (cases) of each task with held-out evidence, both builds measured with the same "
        "`benchmarks/task_quality.py`:",
        "",
        "| task | previous build | this build |", "|---|---|---|",
        *[f"| `{n}` | {cell(previous.get(n))} | {cell(mine.get(n))} |" for n in names],
        "",
    ]


def timed_segment(model: Path, image: str, modality: str, out: Path, *extra: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hermesseg.cli", "segment", image, "-o", str(out), "--model", str(model),
                    "--modality", modality, "--progress", "none", "--device", "cpu", *extra], check=True)
    return time.perf_counter() - start


# sample -> (modality, tasks): the README's main job (the tasks with held-out evidence, chosen by segment itself), and
# every CT task of the model on the chest CT (all experimental for this model, named with --tasks).
TIMED_SAMPLES = {"mr-brain-template": ("MR-T1", None), "ct-chest": ("CT", "every CT task")}


def measure_timings(model: Path, work: Path) -> dict:
    ct_tasks = ",".join(t.name for t in load_model(model).tasks_for_modality("CT"))
    samples = {}
    for name, (modality, tasks) in TIMED_SAMPLES.items():
        path = subprocess.run([sys.executable, "-m", "hermesseg.cli", "sample", name, "-q"], check=True,
                              capture_output=True, text=True).stdout.strip()
        extra = ("--tasks", ct_tasks) if tasks else ()
        load = os.getloadavg()[0]
        samples[name] = {"modality": modality, "tasks": tasks or "default selection",
                         "seconds": timed_segment(model, path, modality, work / name, *extra),
                         "seconds_fast": timed_segment(model, path, modality, work / f"{name}-fast", "--fast", *extra),
                         "load_average": [load, os.getloadavg()[0]]}
    return samples


def timings_section(samples: dict) -> list[str]:
    loads = [v for s in samples.values() for v in s["load_average"]]
    return [
        "## Timings (`hermesseg segment`, whole command incl. start-up, CPU)",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}; windows per forward pass and threads as calibrated on the first run. No GPU was "
        f"available for these measurements. 1-minute load average during the runs: {min(loads):.1f}-{max(loads):.1f} "
        f"on {os.cpu_count()} cores (other jobs shared the machine at a lower priority; on an idle one the times "
        "are lower). The model already works at 3 mm, so `--fast` only lowers the window overlap to 0.25 for it.",
        "",
        "| sample | modality | tasks | default | --fast |", "|---|---|---|---|---|",
        *[f"| {n} | {s['modality']} | {s['tasks']} | {s['seconds']:.1f} s | {s['seconds_fast']:.1f} s |"
          for n, s in samples.items()],
        "",
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--run", type=Path, help="the training run directory (splits.json, config.json)")
    p.add_argument("--data", type=Path, help="the shared data folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("runs/card"))
    p.add_argument("--previous", type=Path, help="task_quality.py JSON of the previous build, to compare with")
    p.add_argument("--previous-label", default="previous build", help="how the card names the previous build")
    p.add_argument("--timings-only", action="store_true",
                   help="re-measure only the timings and replace that section of the existing card --out")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.timings_only:
        text = args.out.read_text()
        head = text[: text.index("## Timings")]
        args.out.write_text(head + "\n".join(timings_section(measure_timings(args.model, args.work))))
        print(args.out.read_text()[len(head):])
        return 0
    if args.run is None or args.data is None:
        p.error("--run and --data are needed unless --timings-only")
    model = load_model(args.model)
    manifest = model.manifest
    splits = json.loads((args.run / "splits.json").read_text())["datasets"]
    options = InferenceOptions()

    trained = sorted(splits)
    train_report = evaluate(model, [args.data / d for d in trained], "train", splits, options=options)

    samples = measure_timings(args.model, args.work)

    per_dataset = train_report.summary("dataset")
    licences = "\n".join(f"- `{d['name']}` ({d['modality']}, trained as {d['trained_as']}; cases "
                         f"{d['cases']['train']} train / {d['cases']['test']} test): {d['license']} "
                         f"(shippable: {d['shippable']})" for d in manifest.card.get("datasets", []))
    lines = [
        f"# Model card: {manifest.name} {manifest.version}",
        "",
        "The embedded default model of HermesExtension: a small Hermes-R (base width "
        f"{manifest.config.base_channels}, {model.num_parameters:,} parameters, {len(manifest.tasks)} tasks, "
        f"modalities {', '.join(m.name for m in manifest.modalities)}) trained on CPU at "
        f"{manifest.preprocessing['spacing'][0]:g} mm for {manifest.card['training']['iterations']} iterations "
        f"(batch {manifest.card['training']['batch_size']}, patch {manifest.card['training']['patch_size']}) on the "
        "datasets below, whose licences allow redistribution and derived models.",
        "",
        "## Intended use",
        "A demonstration and a starting point: it makes `hermesseg segment` and the Slicer module work out of the box "
        "and it is the parent for learning new structures. **Not for clinical use.** Most training datasets have a "
        "single case, so it has seen very little anatomy: large structures on images like its training images work, "
        "small structures mostly do not (see the numbers). For real work import the official Hermes-R weights or "
        "train on your data.",
        "",
        "## Training data and licences",
        licences,
        "",
        "Weights fingerprint (sha256 of the tensors): `" + str(manifest.weights_sha256) + "`.",
        "",
        *quality_section(manifest),
        *(previous_section(manifest, json.loads(args.previous.read_text()), args.previous_label)
          if args.previous else []),
        "## Training cases (for reference only: these images were trained on)",
        "| dataset | mean Dice over its tasks | tasks x cases |", "|---|---|---|",
        *[f"| {d} | {s['dice_mean']:.3f} | {s['cases']} |" for d, s in per_dataset.items()],
        "",
        "The 15 best tasks on their training case (what this model can do at all):",
        "",
        "| task | Dice |", "|---|---|",
        *[f"| {x.task} | {x.dice:.3f} |" for x in sorted(train_report.scores, key=lambda x: -x.dice)[:15]],
        "",
        *timings_section(samples),
    ]
    args.out.write_text("\n".join(lines))
    (args.work / "card.json").write_text(json.dumps({
        "train": train_report.to_dict(),
        "samples": samples}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
