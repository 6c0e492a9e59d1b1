"""`hermesseg import-task BASE PACK -o NEW`: add a task pack's groups to the base model it was made for."""

from __future__ import annotations

import sys



def register(sub) -> None:
    p = sub.add_parser("import-task", help="add the tasks of a task pack to the base model it was exported for")
    p.add_argument("base", help="model file to add the tasks to (never modified)")
    p.add_argument("pack", help="task pack written by `hermesseg export-task`")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..task_pack import import_pack  # torch: only when the command runs

    manifest = import_pack(args.base, args.pack, args.output)
    added = manifest.lineage[-1].tasks
    print(f"wrote {args.output}: {len(manifest.tasks)} tasks ({len(added)} imported: {', '.join(added)}), "
          f"weights {manifest.weights_sha256[:12]}", file=sys.stderr)
    return 0
