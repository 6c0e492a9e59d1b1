"""The `hermesseg` command line: one sub-command per module in this package, registered below."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .. import __version__
from ..errors import HermesError, os_error_message
from ..parent_watch import watch_parent_from_environment

# Sub-command modules; each exposes register(subparsers) and sets func=run(args) -> exit code.
COMMAND_MODULES = (
    "info_command",
    "tasks_command",
    "import_command",
    "sample_command",
    "segment_command",
    "train_command",
    "add_task_command",
    "finetune_command",
    "evaluate_command",
    "export_task_command",
    "import_task_command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hermesseg", description="Hermes universal medical image segmentation.")
    parser.add_argument("--version", action="version", version=f"hermesseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue  # a command that is not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    watch_parent_from_environment()  # a parent that dies (Slicer crashed) stops the command as SIGTERM does
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe must surface here, not in the interpreter's final flush
        return code
    except HermesError as e:
        print(f"hermesseg {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"hermesseg {args.command}: cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hermesseg info MODEL | head -1`: the reader left; say nothing more
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a process killed by a broken pipe
    except OSError as e:  # full disk, permissions, a folder where a file should be...: one line, no traceback
        if args.verbose:
            logging.exception("operating-system error")
        print(f"hermesseg {args.command}: error: {os_error_message(e)}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"hermesseg {args.command}: error: out of memory (try --fast, fewer --tasks or a smaller image)",
              file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not report the broken pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
