"""`hermesseg add-task BASE --data DIR... -o NEW`: learn new structures, every base task bit-identical."""

from __future__ import annotations

import sys

from ..add_task_options import DEFAULT_MODE, MODES
from .new_task_arguments import add_data_arguments, add_run_arguments, request_fields, run_cancellable


def register(sub) -> None:
    p = sub.add_parser("add-task", help="teach a model new structures from a few annotated cases; every task it "
                                        "knew gives exactly the same result as before",
                       description="Incremental learning (spec 4): the new task rows of every prior table (and a "
                                   "new modality block) are trained, with --mode adapter (the default) also a small "
                                   "adapter that only the new group's queries run through; the base model is never "
                                   "modified, every base task is verified bit-identical before the new model is "
                                   "written.")
    add_data_arguments(p)
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                   help="what is learned: adapter = the new prior rows and a group adapter (more capacity, still "
                        "zero forgetting), priors = the new prior rows only (default: %(default)s)")
    p.add_argument("--init-from", metavar="TASK", help="start the new rows from this base task (default: the base "
                                                       "task whose prediction overlaps the new label best)")
    add_run_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..progress import Progress
    from ..training.add_task import AddTaskRequest, add_task  # torch and the trainer: only when the command runs
    from ..training.new_task_cases import held_out_note

    progress = Progress(args.progress)
    request = AddTaskRequest(**request_fields(args), mode=args.mode, init_from=args.init_from)
    result = run_cancellable(progress, lambda p: add_task(request, p))
    held = result.held_out_dice
    summary = held_out_note(held, result.largest_piece_only, result.thresholds)
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
