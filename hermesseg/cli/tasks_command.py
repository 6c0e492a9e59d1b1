"""`hermesseg tasks [MODEL] [--modality M] [--json]`: the structures a model segments, with measured quality."""

from __future__ import annotations

import json

HELP = "list the structures a model segments, per modality, with their measured quality (default model if no MODEL)"


def register(sub) -> None:
    p = sub.add_parser("tasks", help=HELP, description=HELP + ". Structures that several datasets annotate are "
                       "one row; the task used for them is the best-measured one. Only tasks marked 'default' run "
                       "without --tasks (held-out evidence); the others are experimental.")
    p.add_argument("model", nargs="?", help="a Hermes model file (default: the embedded default model)")
    p.add_argument("--modality", help="only this modality")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=run)


def structure_rows(manifest, modality: str | None = None) -> list[dict]:
    """One row per (modality, structure): display name, preferred task, other tasks, quality, default flag."""
    from ..catalogue import catalogue
    from ..selection import default_selection, quality_text

    rows = []
    for mod in [m.name for m in manifest.modalities if modality is None or m.name.lower() == modality.lower()]:
        chosen = {id(t) for t in default_selection(manifest.tasks, mod).chosen}
        for choice in catalogue().choices(manifest.tasks, mod):
            task = choice.preferred
            rows.append({"structure": choice.structure.name, "modality": mod, "task": task.name,
                         "group": task.group, "quality": task.quality, "quality_text": quality_text(task),
                         "default": id(task) in chosen, "note": catalogue().note(task),
                         "other_tasks": [t.name for t in choice.tasks[1:]]})
    return rows


def run(args) -> int:
    from ..default_model import require_model_path
    from ..errors import QueryError
    from ..model_file import read_manifest

    manifest = read_manifest(require_model_path(args.model))
    if args.modality and not any(m.name.lower() == args.modality.lower() for m in manifest.modalities):
        raise QueryError(f"unknown modality {args.modality!r}; this model knows: "
                         + ", ".join(m.name for m in manifest.modalities))
    rows = structure_rows(manifest, args.modality)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{manifest.name} {manifest.version}: {len(rows)} structure(s); 'default' = runs without --tasks "
          f"(held-out evidence), else experimental")
    width = max((len(r["structure"]) for r in rows), default=10)
    for mod in dict.fromkeys(r["modality"] for r in rows):
        print(f"\n{mod}:")
        for r in (r for r in rows if r["modality"] == mod):
            mark = "default     " if r["default"] else "experimental"
            extra = f"  (also: {', '.join(r['other_tasks'])})" if r["other_tasks"] else ""
            note = f"  [{r['note']}]" if r["note"] else ""
            print(f"  {r['structure']:<{width}}  {mark}  {r['quality_text']:<32}  {r['task']}{extra}{note}")
    return 0
