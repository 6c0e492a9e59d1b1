"""The command modules register their options without torch (they import engine parts in run()).

Not yet true for add_task_command, which takes its defaults from hermesseg.training.add_task at import time; until
that moves, `hermesseg --help` still loads torch through it (see the issue notes)."""

from __future__ import annotations

import subprocess
import sys

from paths import REPO

LIGHT = ("info_command", "tasks_command", "import_command", "sample_command", "segment_command", "train_command",
         "evaluate_command")


def test_command_modules_register_without_torch():
    code = ("import sys, importlib, argparse; sub = argparse.ArgumentParser().add_subparsers()\n"
            f"for n in {LIGHT!r}: importlib.import_module('hermesseg.cli.' + n).register(sub)\n"
            "print([m for m in ('torch', 'SimpleITK', 'monai', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": ""}, check=True).stdout
    assert out.strip() == "[]"
    helptext = subprocess.run([sys.executable, "-m", "hermesseg.cli", "--help"], capture_output=True, text=True,
                              timeout=120, env={"PYTHONPATH": str(REPO), "PATH": ""}, check=True).stdout
    assert "tasks" in helptext and "segment" in helptext
