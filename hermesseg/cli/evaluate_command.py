"""`hermesseg evaluate MODEL --data DIR... [--split test] [--json OUT]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..atomic import refuse_folder
from ..device import DEVICES, resolve_device
from ..errors import HermesError


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="Dice and HD95 per task and case on nnU-Net datasets")
    p.add_argument("model")
    p.add_argument("--data", nargs="+", required=True, type=Path, help="dataset folders (nnU-Net v2 layout)")
    p.add_argument("--split", default="all", help="all, or a split of --splits (train, validation, test)")
    p.add_argument("--splits", type=Path, help="splits.json of a training run")
    p.add_argument("--task-map", type=Path, help="JSON {\"dataset/label\": \"task name\"} for labels named otherwise")
    p.add_argument("--json", type=Path, help="write the full report here (and a markdown table beside it)")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.set_defaults(func=run)


def _read_json(path: Path | None, what: str):
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HermesError(f"cannot read the {what} {path}: {e}") from None
    if not isinstance(data, dict):
        raise HermesError(f"the {what} {path} must be a JSON object, not {type(data).__name__}")
    return data


def run(args) -> int:
    from ..evaluation.evaluate import evaluate, write_report
    from ..inference.pipeline import InferenceOptions
    from ..model import load_model

    if not 0.0 <= args.overlap < 1.0:
        raise HermesError(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.json is not None:
        refuse_folder(args.json)  # before minutes of inference, not after
    model = load_model(args.model, device=resolve_device(args.device))
    report = evaluate(model, args.data, args.split, _read_json(args.splits, "splits file"),
                      _read_json(args.task_map, "task map"), InferenceOptions(fast=args.fast, overlap=args.overlap),
                      progress=lambda m: print(f"evaluating {m}", file=sys.stderr))
    write_report(report, args.json)
    print(report.markdown())
    return 0
