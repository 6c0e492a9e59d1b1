"""The command modules register their options without torch (they import engine parts in run()), so `hermesseg
--help` and `--version` answer at once."""

from __future__ import annotations

import subprocess
import sys

from paths import REPO

from hermesseg.cli import COMMAND_MODULES as LIGHT


def test_command_modules_register_without_torch():
    code = ("import sys, importlib, argparse; sub = argparse.ArgumentParser().add_subparsers()\n"
            f"for n in {LIGHT!r}: importlib.import_module('hermesseg.cli.' + n).register(sub)\n"
            "print([m for m in ('torch', 'SimpleITK', 'monai', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": ""}, check=True).stdout
    assert out.strip() == "[]"
    helptext = subprocess.run([sys.executable, "-m", "hermesseg.cli", "--help"], capture_output=True, text=True,
                              timeout=120, env={"PYTHONPATH": str(REPO), "PATH": ""}, check=True).stdout
    assert "tasks" in helptext and "segment" in helptext and "add-task" in helptext
    probe = ("import runpy, sys\nsys.argv = ['hermesseg', '--help']\ntry:\n    runpy.run_module('hermesseg.cli', "
             "run_name='__main__')\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(REPO), "PATH": ""}, check=True).stdout.strip().splitlines()[-1]
    assert loaded == "False"
