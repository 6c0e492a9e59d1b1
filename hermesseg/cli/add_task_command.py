"""`hermesseg add-task BASE --data DIR... -o NEW`: learn new structures, every base task bit-identical."""

from __future__ import annotations

import sys

from ..add_task_options import DEFAULT_SPLIT_GROUP_PATTERN, DEFAULT_STEPS, DEFAULT_TIME_LIMIT_S, MODES
from ..errors import HermesError


def register(sub) -> None:
    p = sub.add_parser("add-task", help="teach a model new structures from a few annotated cases; every task it "
                                        "knew gives exactly the same result as before",
                       description="Incremental learning (spec 4): only the new task rows of every prior table (and "
                                   "a new modality block) are trained; the base model is never modified, every base "
                                   "task is verified bit-identical before the new model is written.")
    p.add_argument("base", metavar="BASE", help="the base model file (.safetensors)")
    p.add_argument("--data", action="append", required=True, metavar="DIR",
                   help="nnU-Net v2 dataset folder (dataset.json, imagesTr, labelsTr); may be repeated")
    p.add_argument("-o", "--output", required=True, help="the new model file to write")
    p.add_argument("--labels", help="comma-separated labels to learn (default: every non-background label)")
    p.add_argument("--group", help="group of the new tasks (default: the dataset's name); task names are "
                                   "<group>_<label>")
    p.add_argument("--modality", help="modality of the images: one the base model knows, or a new one (a modality "
                                      "block is then learned with the tasks); default: dataset.json's")
    p.add_argument("--mode", choices=MODES, default="priors", help="what is learned (default: priors)")
    p.add_argument("--init-from", metavar="TASK", help="start the new rows from this base task (default: the base "
                                                       "task whose prediction overlaps the new label best)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"training steps per phase (default "
                                                                     f"{DEFAULT_STEPS})")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, metavar="SECONDS",
                   help=f"bound on the whole command, held-out check and refit included (default "
                        f"{DEFAULT_TIME_LIMIT_S:g}; 0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-refit", dest="refit", action="store_false",
                   help="keep the model trained without the held-out cases instead of retraining on all cases")
    p.add_argument("--split-group-pattern", default=DEFAULT_SPLIT_GROUP_PATTERN, metavar="REGEX",
                   help="cases whose names give the same first regex group (a patient) are held out together "
                        f"(default {DEFAULT_SPLIT_GROUP_PATTERN!r})")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--cache-dir", help="preprocessing cache folder (default: the training cache)")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="json: one JSON object per line on stdout (for programs such as the Slicer module)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..inference.cancel import cancel_on_signals  # torch and the trainer: only when the command runs
    from ..progress import Progress
    from ..training.add_task import AddTaskRequest, add_task

    progress = Progress(args.progress)
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    request = AddTaskRequest(base=args.base, data=list(args.data), output=args.output, labels=labels,
                             group=args.group, modality=args.modality, mode=args.mode, init_from=args.init_from,
                             steps=args.steps, time_limit=args.time_limit or None, seed=args.seed, refit=args.refit,
                             device=args.device, cache_dir=args.cache_dir,
                             split_group_pattern=args.split_group_pattern)
    try:
        with cancel_on_signals():
            result = add_task(request, progress)
    except HermesError as e:
        progress.error(str(e))
        raise
    held = result.held_out_dice
    summary = ("held-out Dice " + ", ".join(f"{k} {v}" for k, v in held.items()) if held
               else "no held-out figure (fewer than 3 case groups)")
    inits = "; ".join(f"{n} from {i['from']} ({i['reason']}"
                      + (f", soft Dice {i['soft_dice']})" if i["soft_dice"] is not None else ")")
                      for n, i in result.init.items())
    progress.done([{"model": str(result.output), "tasks": result.new_tasks, "held_out_dice": held,
                    "steps": result.steps, "wall_s": round(result.wall_s, 1), "init": result.init}],
                  f"wrote {result.output}")
    if args.progress != "json":
        print(f"wrote {result.output}: {len(result.new_tasks)} new task(s) in {result.steps} steps, "
              f"{result.wall_s:.0f} s; {summary}; rows initialised: {inits}; every base task verified "
              f"bit-identical", file=sys.stderr)
    return 0
