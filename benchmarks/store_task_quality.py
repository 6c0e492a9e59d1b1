"""Write measured per-task quality (the JSON of benchmarks/task_quality.py) into a model file's manifest.

Only the manifest changes: the weights, and so the weights fingerprint, stay as they are (checked). Tasks without a
measurement get ``quality: None`` ("seen in training only"). Colours and terminology are refreshed from the structure
catalogue, so the file agrees with what `hermesseg segment` writes.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/store_task_quality.py Resources/Models/hermes-mini.safetensors \
        runs/quality/quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hermesseg import load_model
from hermesseg.catalogue import catalogue
from hermesseg.model_file import save_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("quality", type=Path)
    args = p.parse_args()
    measured = json.loads(args.quality.read_text())
    model = load_model(args.model)
    manifest = model.manifest
    fingerprint = manifest.weights_sha256
    unknown = set(measured) - {t.name for t in manifest.tasks}
    if unknown:
        raise SystemExit(f"quality for tasks the model does not have: {sorted(unknown)}")
    for task in manifest.tasks:
        q = measured.get(task.name)
        task.quality = None if q is None else {"heldout_dice": float(q["heldout_dice"]),
                                               "heldout_cases": int(q["heldout_cases"]), "source": q["source"]}
        task.color = catalogue().color(task)
        task.terminology = catalogue().terminology(task)
    saved = save_model(args.model, model.network, manifest)
    if saved.weights_sha256 != fingerprint:
        raise SystemExit("the weights fingerprint changed; refusing")  # cannot happen: same tensors
    print(f"{args.model}: quality stored for {len(measured)} of {len(manifest.tasks)} tasks; "
          f"weights fingerprint {fingerprint[:12]} unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
