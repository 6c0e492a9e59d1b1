"""`hermesseg import-official CHECKPOINT -o MODEL`."""

from __future__ import annotations

import sys



def register(sub) -> None:
    p = sub.add_parser("import-official", help="convert an official Hermes-R .pth checkpoint into a model file")
    p.add_argument("checkpoint", help="official Hermes-R checkpoint (.pth)")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    p.add_argument("--name", help="model name stored in the manifest")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..official.importer import import_official

    manifest = import_official(args.checkpoint, args.output, name=args.name)
    print(f"wrote {args.output}: {manifest.name}, {len(manifest.tasks)} tasks, "
          f"weights {manifest.weights_sha256[:12]}", file=sys.stderr)
    return 0
