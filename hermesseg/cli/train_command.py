"""`hermesseg train --data DIR... -o MODEL [--config FILE] [--init MODEL] [--resume RUN_DIR] ...`."""

from __future__ import annotations

import json
import os

from ..errors import HermesError
from ..progress import Progress


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model (or fine-tune one with --init) on nnU-Net v2 dataset folders",
                       description="Train Hermes-R on one or more nnU-Net v2 dataset folders. Every dataset and case "
                                   "is validated before training starts. Run it under torchrun for data-parallel "
                                   "training (gloo on CPU, nccl on CUDA).")
    p.add_argument("--data", nargs="+", default=[], metavar="DIR", help="dataset folders (dataset.json, imagesTr, "
                                                                         "labelsTr); optional with --resume")
    p.add_argument("-o", "--output", help="model file to write (.safetensors); required unless --resume")
    p.add_argument("--config", help="JSON training configuration (see --print-defaults)")
    p.add_argument("--init", metavar="MODEL", help="start from this model: keep its tasks, rows and modalities; "
                                                   "new tasks are appended")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--run-dir", help="where config, splits, metrics, curves and checkpoints go "
                                     "(default: next to -o, MODEL.run)")
    p.add_argument("--iterations", type=int, help="number of iterations (overrides the config)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--cache-dir", help="preprocessing cache folder (default $HERMESSEG_CACHE/training or "
                                       "~/.cache/hermesseg/training)")
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes (overrides the config)")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="none",
                   help="json: one JSON object per logged iteration on stdout (stage, fraction, message, step, "
                        "total, loss, eta_s; the last names the model file), as `segment --progress json`")
    p.add_argument("--print-defaults", action="store_true", help="print the default configuration and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..training import DEFAULTS, TrainRequest, train  # torch: not at import, so --help stays fast

    if args.print_defaults:
        print(json.dumps(DEFAULTS, indent=1))
        return 0
    request = TrainRequest(data=list(args.data), output=args.output, config=args.config, init=args.init,
                           resume=args.resume, run_dir=args.run_dir, iterations=args.iterations, device=args.device,
                           cache_dir=args.cache_dir, num_workers=args.num_workers)
    progress = Progress(args.progress if int(os.environ.get("RANK", "0")) == 0 else "none")  # rank 0 reports
    try:
        result = train(request, progress=progress)
    except HermesError as e:
        progress.error(str(e))
        raise
    progress.done([{"model": str(result.output), "run_dir": str(result.run_dir), "iterations": result.iterations,
                    "selected": result.selected, "validation_dice": result.validation_dice}],
                  f"wrote {result.output}")
    return 0
