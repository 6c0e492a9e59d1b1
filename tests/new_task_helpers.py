"""What the add-task and finetune tests share: small dataset folders cut from real ones, the refusal check, and a
run cancelled by SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


from hermesseg.cli import main

from paths import REPO


def dataset_subset(src: Path, dst: Path, cases: list[str], **meta_changes) -> Path:
    """A dataset folder holding only ``cases`` of ``src`` (symlinked files; dataset.json copied and edited)."""
    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    for case in cases:
        (dst / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(src / "imagesTr" / f"{case}_0000.nii.gz")
        (dst / "labelsTr" / f"{case}.nii.gz").symlink_to(src / "labelsTr" / f"{case}.nii.gz")
    meta = json.loads((src / "dataset.json").read_text())
    meta.update(numTraining=len(cases), **meta_changes)
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


def assert_refused(command: str, base: Path, tmp_path: Path, capsys, args: list[str], pattern: str) -> str:
    """``hermesseg COMMAND BASE ARGS`` (``args[0]`` empty: ``base``) fails with one matching line and no output."""
    out = tmp_path / "new.safetensors"
    argv = [command, args[0] or str(base), *args[1:]]
    if "-o" not in argv:
        argv += ["-o", str(out)]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert err.startswith(f"hermesseg {command}: error: "), err
    assert re.search(pattern, err), err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".new")]
    return err


def command_env(cache: Path) -> dict:
    """The environment of a `hermesseg` process: this checkout, one thread, its own training cache."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HERMESSEG_CACHE": str(cache)}


def run_json(argv: list[str], cache: Path) -> list[dict]:
    """``hermesseg ARGV --progress json`` in a process that must succeed; its events."""
    proc = subprocess.run([sys.executable, "-m", "hermesseg.cli", *argv, "--progress", "json"],
                          env=command_env(cache), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def assert_sigterm_cancels(argv: list[str], out: Path, tmp_path: Path) -> dict:
    """``hermesseg ARGV --progress json`` in a process, SIGTERM after its second step: exit 130 within seconds, and
    neither ``out`` nor a temporary file left in ``tmp_path``. Returns the step event the signal followed."""
    proc = subprocess.Popen([sys.executable, "-m", "hermesseg.cli", *argv, "--progress", "json"],
                            env=command_env(tmp_path / "c"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("step", 0) >= 2:
                break
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        waited = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130 and waited < 10
    assert "cancelled" in proc.stderr.read()
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    return event
