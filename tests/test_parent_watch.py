"""The engine stops when its parent dies (Slicer crashing mid-run): real processes, a real `hermesseg segment`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hermesseg.parent_watch import PARENT_PID_ENV, process_alive, watch_parent_from_environment
from paths import DATA, REPO, require

IMAGE = DATA / "mr_brain_tissue_mni" / "imagesTr" / "mni152_2009a_sym_0000.nii.gz"


def test_process_alive_tells_running_exited_and_zombie_processes_apart():
    assert process_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # exited but not reaped: a zombie
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.02)
    assert not process_alive(child.pid)
    child.wait()
    assert not process_alive(child.pid)


def test_no_or_bad_parent_id_starts_no_watch():
    assert watch_parent_from_environment({}) is None
    assert watch_parent_from_environment({PARENT_PID_ENV: "not-a-pid"}) is None
    assert watch_parent_from_environment({PARENT_PID_ENV: str(os.getpid())}) is None  # ourselves


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals and /proc")
def test_engine_stops_and_writes_nothing_when_its_parent_is_killed(tmp_path):
    """A stand-in for Slicer starts `hermesseg segment` as the module does (parent id in the environment, own
    session) and is killed with SIGKILL once the engine has started; the engine must exit within seconds, through
    its SIGTERM path (a cancellation message), leaving nothing in its output folder."""
    image = require(IMAGE)
    out, log = tmp_path / "out", tmp_path / "engine.log"
    parent_code = textwrap.dedent(f"""
        import os, subprocess, sys
        env = dict(os.environ, {PARENT_PID_ENV}=str(os.getpid()), PYTHONPATH={str(REPO)!r})
        with open({str(log)!r}, "w") as log:
            child = subprocess.Popen([sys.executable, "-m", "hermesseg.cli", "segment", {str(image)!r}, "-o",
                                      {str(out)!r}, "--progress", "json", "--device", "cpu",
                                      "--modality", "MR-T1"],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        print(child.pid, flush=True)
        child.wait()
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    engine_pid = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 120
        while '"stage": "preprocess"' not in log.read_text():
            assert process_alive(engine_pid), log.read_text()
            assert time.monotonic() < deadline, "the engine never started"
            time.sleep(0.05)
        parent.kill()
        parent.wait()
        killed = time.monotonic()
        while process_alive(engine_pid):
            assert time.monotonic() - killed < 20, "the engine kept running after its parent died"
            time.sleep(0.05)
        stopped_after = time.monotonic() - killed
    finally:
        if process_alive(engine_pid):
            os.killpg(engine_pid, signal.SIGKILL)
    text = log.read_text()
    assert "cancelled by SIGTERM" in text, text
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())
    print(f"engine stopped {stopped_after:.2f} s after its parent was killed")
