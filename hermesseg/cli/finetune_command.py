"""`hermesseg finetune BASE --data DIR... -o NEW`: learn new structures with every weight trainable; forgetting of
the base model's tasks is measured and recorded."""

from __future__ import annotations

import sys

from ..finetune_options import DEFAULT_BACKBONE_LR_SCALE, DEFAULT_LR, NEW_ROWS_LR_SCALE
from .new_task_arguments import add_data_arguments, add_run_arguments, request_fields, run_cancellable


def register(sub) -> None:
    p = sub.add_parser("finetune", help="teach a model new structures with every weight trainable (transfer "
                                        "learning); measures how much the tasks it knew change",
                       description="Transfer learning (spec 4): new tasks as in add-task, then every weight trains, "
                                   "the backbone at a lower learning rate; cases of the parent's own datasets can be "
                                   "replayed. Dice of the base model's tasks before and after is measured on the "
                                   "replay cases (or on given cases that label them) and written into the model "
                                   "card. The base model file is never modified.")
    add_data_arguments(p)
    p.add_argument("--replay", action="append", default=[], metavar="DIR",
                   help="nnU-Net v2 dataset of the base model's own tasks (label L of dataset D is its task D_L), "
                        "mixed into the batches to limit forgetting; forgetting is measured on its cases; may be "
                        "repeated")
    p.add_argument("--lr", type=float, default=DEFAULT_LR,
                   help=f"learning rate of the decoder, fusion layers and heads (default {DEFAULT_LR:g}); the new "
                        f"task rows train at {NEW_ROWS_LR_SCALE:g}x")
    p.add_argument("--backbone-lr-scale", type=float, default=DEFAULT_BACKBONE_LR_SCALE, metavar="SCALE",
                   help=f"the backbone's (stem and encoder stages) learning rate as a fraction of --lr, in (0, 1] "
                        f"(default {DEFAULT_BACKBONE_LR_SCALE:g})")
    add_run_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..progress import Progress
    from ..training.finetune import FinetuneRequest, finetune  # torch and the trainer: only when the command runs
    from ..training.forgetting_dice import forgetting_note
    from ..training.new_task_cases import held_out_note

    progress = Progress(args.progress)
    request = FinetuneRequest(**request_fields(args), replay=list(args.replay), lr=args.lr,
                              backbone_lr_scale=args.backbone_lr_scale)
    result = run_cancellable(progress, lambda p: finetune(request, p))
    progress.done([{"model": str(result.output), "tasks": result.new_tasks, "held_out_dice": result.held_out_dice,
                    "steps": result.steps, "wall_s": round(result.wall_s, 1), "forgetting": result.forgetting}],
                  f"wrote {result.output}")
    if args.progress != "json":
        held = held_out_note(result.held_out_dice, result.largest_piece_only, result.thresholds)
        print(f"wrote {result.output}: {len(result.new_tasks)} new task(s) in {result.steps} steps, "
              f"{result.wall_s:.0f} s; {held}; {forgetting_note(result.forgetting)}", file=sys.stderr)
    return 0
