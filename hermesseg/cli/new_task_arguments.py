"""The command-line options add-task and finetune share, and the way both run: JSON progress, cancel on signals.

Kept free of torch so that `hermesseg --help` stays fast.
"""

from __future__ import annotations

from ..add_task_options import DEFAULT_SPLIT_GROUP_PATTERN, DEFAULT_TIME_LIMIT_S, DEFAULT_TOTAL_STEPS
from ..errors import HermesError


def add_data_arguments(p) -> None:
    """BASE, --data, -o, --labels, --group, --modality."""
    p.add_argument("base", metavar="BASE", help="the base model file (.safetensors)")
    p.add_argument("--data", action="append", required=True, metavar="DIR",
                   help="nnU-Net v2 dataset folder (dataset.json, imagesTr, labelsTr); may be repeated")
    p.add_argument("-o", "--output", required=True, help="the new model file to write")
    p.add_argument("--labels", help="comma-separated labels to learn (default: every non-background label)")
    p.add_argument("--group", help="group of the new tasks (default: the dataset's name); task names are "
                                   "<group>_<label>")
    p.add_argument("--modality", help="modality of the images: one the base model knows, or a new one (a modality "
                                      "block is then learned with the tasks); default: dataset.json's")


def add_run_arguments(p) -> None:
    """--steps, --time-limit, --seed, --no-refit, --split-group-pattern, --device, --cache-dir, --progress."""
    p.add_argument("--steps", type=int, help=f"training steps per phase (default: {DEFAULT_TOTAL_STEPS} shared by the "
                                              f"phases, half each for the held-out training and the refit)")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, metavar="SECONDS",
                   help=f"bound on the whole command, held-out check and refit included (default "
                        f"{DEFAULT_TIME_LIMIT_S:g}; 0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-refit", dest="refit", action="store_false",
                   help="keep the model trained without the held-out cases instead of training it on, on all cases")
    p.add_argument("--split-group-pattern", default=DEFAULT_SPLIT_GROUP_PATTERN, metavar="REGEX",
                   help="cases whose names give the same first regex group (a patient) are held out together "
                        f"(default {DEFAULT_SPLIT_GROUP_PATTERN!r})")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--cache-dir", help="preprocessing cache folder (default: the training cache)")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="json: one JSON object per line on stdout (for programs such as the Slicer module)")


def request_fields(args) -> dict:
    """The ``NewTaskRequest`` fields of parsed arguments."""
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    return dict(base=args.base, data=list(args.data), output=args.output, labels=labels, group=args.group,
                modality=args.modality, steps=args.steps, time_limit=args.time_limit or None, seed=args.seed,
                refit=args.refit, device=args.device, cache_dir=args.cache_dir,
                split_group_pattern=args.split_group_pattern)


def run_cancellable(progress, work):
    """``work(progress)`` with SIGINT/SIGTERM raising ``Cancelled`` (exit 130); an error also ends the JSON stream."""
    from ..inference.cancel import cancel_on_signals  # torch: only when the command runs

    try:
        with cancel_on_signals():
            return work(progress)
    except HermesError as e:
        progress.error(str(e))
        raise
