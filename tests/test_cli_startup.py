"""`hermesseg --help` and `--version` start without torch (the command modules import it in run())."""

from __future__ import annotations

import subprocess
import sys

from paths import REPO


def test_help_and_version_do_not_import_torch():
    code = ("import sys; from hermesseg.cli import build_parser; p = build_parser(); p.format_help(); "
            "heavy = [m for m in ('torch', 'SimpleITK', 'monai', 'numpy') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": ""}, check=True).stdout
    assert out.strip() == "[]"
    version = subprocess.run([sys.executable, "-m", "hermesseg.cli", "--version"], capture_output=True, text=True,
                             timeout=120, env={"PYTHONPATH": str(REPO), "PATH": ""}, check=True)
    assert version.stdout.startswith("hermesseg ")
    helptext = subprocess.run([sys.executable, "-m", "hermesseg.cli", "--help"], capture_output=True, text=True,
                              timeout=120, env={"PYTHONPATH": str(REPO), "PATH": ""}, check=True).stdout
    assert "tasks" in helptext and "segment" in helptext
