"""Measure the embedded default model and write its model card (Resources/Models/hermes-mini.md).

Every figure in the card comes from this script's run: held-out Dice (cases no task was trained on), cross-subject
Dice (tasks evaluated on another subject's image), training-case Dice (for reference, labelled as such), and timings
of `hermesseg segment` on this machine.

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

HERE = Path(__file__).resolve().parent


def table(report, only: set[str] | None = None) -> tuple[list[str], float]:
    rows = []
    dices = []
    for s in report.scores:
        if only is not None and s.task not in only:
            continue
        hd = "n/a" if s.hd95 != s.hd95 else f"{s.hd95:.1f}"
        rows.append(f"| {s.dataset} | {s.case} | {s.task} | {s.dice:.3f} | {hd} | {s.truth_voxels} |")
        dices.append(s.dice)
    return rows, (sum(dices) / len(dices) if dices else float("nan"))


def timed_segment(model: Path, image: str, modality: str, out: Path, *extra: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hermesseg.cli", "segment", image, "-o", str(out), "--model", str(model),
                    "--modality", modality, "--progress", "none", "--device", "cpu", *extra], check=True)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True, help="the training run directory (splits.json, config.json)")
    p.add_argument("--data", type=Path, required=True, help="the shared data folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("runs/card"))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    manifest = model.manifest
    splits = json.loads((args.run / "splits.json").read_text())["datasets"]
    options = InferenceOptions()

    held_out = [d for d, e in splits.items() if e["held_out"]]
    test_report = evaluate(model, [args.data / d for d in held_out], "test",
                           {d: splits[d] for d in held_out}, options=options)
    task_map = json.loads((HERE / "cross_subject_task_map.json").read_text())
    cross_report = evaluate(model, [args.data / "ct_body_tsdataset"], "all", task_map=task_map, options=options)
    trained = sorted(splits)
    train_report = evaluate(model, [args.data / d for d in trained], "train", splits, options=options)

    samples = {}
    for name, modality in (("ct-chest", "CT"), ("mr-brain", "MR-T1c")):
        path = subprocess.run([sys.executable, "-m", "hermesseg.cli", "sample", name, "-q"], check=True,
                              capture_output=True, text=True).stdout.strip()
        samples[name] = {"modality": modality,
                         "seconds": timed_segment(args.model, path, modality, args.work / name),
                         "seconds_fast": timed_segment(args.model, path, modality, args.work / f"{name}-fast",
                                                       "--fast")}

    test_rows, test_mean = table(test_report)
    cross_rows, cross_mean = table(cross_report, set(task_map.values()))
    per_dataset = train_report.summary("dataset")
    header = "| dataset | case | task | Dice | HD95 mm | truth voxels |\n|---|---|---|---|---|---|"
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
        "## Held-out cases (no task was trained on these images)",
        header, *test_rows, f"\nMean Dice: {test_mean:.3f}",
        "",
        "## Another subject (ct_abdomen_ts tasks on the ct_body_tsdataset image)",
        "Tasks learned from the abdomen CT, scored on a different patient's head-neck-thorax CT (that image was seen in "
        "training, but only with its own dataset's tasks).",
        "",
        header, *cross_rows, f"\nMean Dice: {cross_mean:.3f}",
        "",
        "## Training cases (for reference only: these images were trained on)",
        "| dataset | mean Dice over its tasks | tasks x cases |", "|---|---|---|",
        *[f"| {d} | {s['dice_mean']:.3f} | {s['cases']} |" for d, s in per_dataset.items()],
        "",
        "The 15 best tasks on their training case (what this model can do at all):",
        "",
        "| task | Dice |", "|---|---|",
        *[f"| {x.task} | {x.dice:.3f} |" for x in sorted(train_report.scores, key=lambda x: -x.dice)[:15]],
        "",
        "## Timings (`hermesseg segment`, whole command incl. start-up, CPU)",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads. No GPU was available for these measurements. "
        "The model already works at 3 mm, so `--fast` changes nothing for it; the chest CT's time is mostly "
        "resampling its 73 CT tasks back onto the 512x512x48 input and writing them.",
        "",
        "| sample | modality | default spacing | --fast |", "|---|---|---|---|",
        *[f"| {n} | {s['modality']} | {s['seconds']:.1f} s | {s['seconds_fast']:.1f} s |" for n, s in samples.items()],
        "",
    ]
    args.out.write_text("\n".join(lines))
    (args.work / "card.json").write_text(json.dumps({
        "test": test_report.to_dict(), "cross_subject": cross_report.to_dict(), "train": train_report.to_dict(),
        "samples": samples}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
