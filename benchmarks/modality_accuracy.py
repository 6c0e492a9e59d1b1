"""How often does modality detection get it right? Every image of ``../shared/data`` and every published sample.

For each image the dataset (or sample catalogue) says its modality; ``detect_modality`` runs as ``segment`` would
without ``--modality``. An outcome is one of:

- right: the guess is the image's modality, or, for a modality the model lacks (MR-FLAIR, MR-cine, MR-LGE), one of
  the model's MR modalities;
- open: no guess, and the modalities it leaves open include the right ones (the user is asked to choose: honest);
- wrong: a guess that is not right, or open without the right answer among what remains.

NIfTI files carry no DICOM attributes, so for the shared images only intensities (and the model's head, which the
default model echoes) can decide: CT versus MR is expected right, MR sequences open. The samples are recognised by
their catalogue entry.

    PYTHONPATH=$PWD nice -n 15 .venv/bin/python benchmarks/modality_accuracy.py --data ../shared/data \
        --out runs/modality/modality.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

from hermesseg.default_model import require_model_path
from hermesseg.imageio import read_image
from hermesseg.inference.modality_guess import detect_modality
from hermesseg.model import load_model
from hermesseg.samples import SAMPLES, SampleError, fetch_sample


def shared_images(data: Path, limit: int | None = None):
    """(label, path, modality) of every image listed in ``data/index.json``; ``limit`` images per dataset."""
    index = json.loads((data / "index.json").read_text())
    for d in index["datasets"]:
        meta = json.loads((data / d["name"] / "dataset.json").read_text())
        for case in d["cases"][:limit]:
            yield f"{d['name']}/{case}", data / d["name"] / "imagesTr" / f"{case}_0000{meta['file_ending']}", \
                d["modality"]


def cached_samples():
    """(label, path, modality) of the published samples already in the user's cache (none is downloaded here)."""
    for name, entry in SAMPLES.items():
        try:
            yield f"sample {name}", fetch_sample(name, offline=True, progress=None).path, entry.modality
        except SampleError:
            print(f"sample {name}: not in the cache, skipped (hermesseg sample {name} fetches it)", file=sys.stderr)


def outcome(model_modalities: list[str], truth: str, guess) -> str:
    right = {truth} if truth in model_modalities else {m for m in model_modalities if m.startswith("MR")} \
        if truth.startswith("MR") else set()
    if guess.modality is not None:
        return "right" if guess.modality in right else "wrong"
    return "open" if right & set(guess.remaining) else "wrong"


def measure(model, images) -> list[dict]:
    names = [m.name for m in model.manifest.modalities]
    rows = []
    for label, path, truth in images:
        guess = detect_modality(model, read_image(path), path)
        rows.append({"image": label, "truth": truth, "guess": guess.modality, "confidence": round(guess.confidence, 3),
                     "evidence": guess.evidence, "remaining": guess.remaining,
                     "outcome": outcome(names, truth, guess)})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model file (default: the embedded default model)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--limit", type=int, help="at most this many images per dataset")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_model(require_model_path(args.model))
    rows = measure(model, [*shared_images(args.data, args.limit), *cached_samples()])
    for r in rows:
        print(f"{r['image']}: {r['truth']} -> {r['guess'] or 'open: ' + ', '.join(r['remaining'])} [{r['outcome']}]")
    total = Counter(r["outcome"] for r in rows)
    print(f"{len(rows)} images: " + ", ".join(f"{k} {total[k]}" for k in ("right", "open", "wrong")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"counts": dict(total), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
