"""`hermesseg export-task MODEL TASK_OR_GROUP... -o PACK`: share learned tasks without sharing images."""

from __future__ import annotations

import sys
from pathlib import Path



def register(sub) -> None:
    p = sub.add_parser("export-task", help="write a task pack: the prior rows of some task groups, their modality "
                                           "blocks and manifest entries, for `import-task`")
    p.add_argument("model", help="model file holding the tasks")
    p.add_argument("names", nargs="+", metavar="TASK_OR_GROUP",
                   help="groups to export (a task name selects its group; it must be the group's only task)")
    p.add_argument("-o", "--output", required=True, help="task pack to write (.safetensors)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..task_pack import export_tasks  # torch: only when the command runs

    pack = export_tasks(args.model, args.names, args.output)
    groups = ", ".join(dict.fromkeys(t.group for t in pack.tasks))
    print(f"wrote {args.output}: {len(pack.tasks)} task(s) of {groups}, modalities "
          f"{', '.join(m.entry.name for m in pack.modalities)}, {Path(args.output).stat().st_size:,} bytes, "
          f"base fingerprint {pack.base_fingerprint[:12]}", file=sys.stderr)
    return 0
