"""`hermesseg info [MODEL] [--json]`: what a model file holds (the embedded default model without MODEL)."""

from __future__ import annotations

import json
from pathlib import Path

from ..default_model import require_model_path
from ..model_header import model_summary


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a model file (tasks, modalities, preprocessing, licences, card)")
    p.add_argument("model", nargs="?", help="a Hermes model file (.safetensors; default: the embedded default model)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..compatibility import compatibility_fingerprint
    from ..model_file import read_model_state  # torch: only when the command runs

    path = require_model_path(args.model)
    manifest, state = read_model_state(path)  # the weights are checked too (layout, fingerprint)
    summary = model_summary(path)  # the same summary the Slicer modules read without torch
    summary["compatibility_fingerprint"] = compatibility_fingerprint(state)  # hashes weights: engine only
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{summary['name']} {summary['version']}  (format {summary['format_version']}, "
          f"{summary['num_parameters']:,} parameters, base width {manifest.config.base_channels})")
    print("modalities: " + ", ".join(f"{m['id']}={m['name']}" for m in summary["modalities"]))
    pre = manifest.preprocessing
    print(f"preprocessing: {pre['spacing']} mm, orientation {pre.get('orientation', 'LPS')}")
    print(f"tasks ({len(summary['tasks'])}):")
    for group in summary["groups"]:
        tasks = [t for t in summary["tasks"] if t["group"] == group]
        print(f"  {group} [{', '.join(dict.fromkeys(m for t in tasks for m in t['modalities']))}]: "
              + ", ".join(t["name"] for t in tasks))
    for adapter in summary["adapters"]:
        size = sum(t.numel() for k, t in state.items() if k.startswith(f"adapters.{adapter['group']}."))
        print(f"  adapter {adapter['group']}: {adapter['design']}, width {adapter['width']}, {adapter['levels']} "
              f"levels, {adapter['blocks']} block(s) per level, {size:,} parameters; runs only for "
              f"{', '.join(adapter['tasks'])}")
    print(f"identity: manifest {summary['manifest_sha256'][:12]}, weights {manifest.weights_sha256[:12]}")
    measured = [t for t in manifest.tasks if t.quality]
    print(f"measured quality: {len(measured)} of {len(manifest.tasks)} tasks have held-out Dice, "
          f"{sum(t['default'] for t in summary['tasks'])} run by default; per structure: `hermesseg tasks {path}`")
    print(f"compatibility fingerprint (task packs): {summary['compatibility_fingerprint']}")
    for record in summary["lineage"]:
        print(f"lineage: {record['operation']} {record['created']} parent={str(record['parent'])[:12]} "
              f"datasets={','.join(record['datasets'])}")
        if record["operation"] != "train" and record.get("tasks"):
            print(f"  tasks: {', '.join(record['tasks'])}")
        if record.get("notes") and record["operation"] != "train":
            print(f"  {record['notes']}")
    card = manifest.card or {}
    if card.get("description"):
        print(f"card: {card['description']}")
    for licence in card.get("licences", []) or ["not stated in the model file"]:
        print(f"licence: {licence}")
    card_file = Path(path).with_suffix(".md")
    if card_file.is_file():
        print(f"model card: {card_file}")
    return 0
