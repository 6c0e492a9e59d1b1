"""The progress protocol: a bar that never leaves text in front of an error line, JSON events for programs."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios

from hermesseg.progress import Progress
from paths import REPO
from segment_helpers import CT_ABDOMEN
from paths import require


def _terminal_lines(raw: str) -> list[str]:
    """What a terminal shows: each carriage return moves back to column 0 and later text overwrites earlier text."""
    shown = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        screen: list[str] = []
        for part in line.split("\r"):
            screen[: len(part)] = list(part)
        shown.append("".join(screen).rstrip())
    return [s for s in shown if s]


def _segment_with_broken_model(tmp_path, stderr_fd):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    cmd = [sys.executable, "-m", "hermesseg.cli", "segment", str(require(CT_ABDOMEN)), "-o", str(tmp_path / "out"),
           "--model", str(broken), "--modality", "CT"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr_fd, env=env,
                          timeout=120)


def test_bar_on_a_terminal_is_cleared_before_the_error_line(tmp_path):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real terminal has a size
    proc = _segment_with_broken_model(tmp_path, follower)
    os.close(follower)
    raw = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        raw += chunk
    os.close(leader)
    text = raw.decode("utf-8", "replace")
    assert proc.returncode != 0
    assert "loading the model" in text  # the bar was drawn on the terminal...
    lines = _terminal_lines(text)
    assert lines[-1].startswith("hermesseg segment: error: "), lines  # ...and nothing of it is left before the error
    assert "not a readable Hermes model file" in lines[-1]


def test_no_bar_text_when_stderr_is_not_a_terminal(tmp_path):
    proc = _segment_with_broken_model(tmp_path, subprocess.PIPE)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("hermesseg segment: error: "), lines
    assert "\r" not in proc.stderr.decode()


def test_json_events_end_with_done_or_error():
    stream = io.StringIO()
    p = Progress("json", stream)
    p.update("load", 0.2, "a")
    p.update("inference", 0.1, "b")  # never goes backwards
    p.done([{"input": "x"}], "finished")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["fraction"] for e in events] == [0.2, 0.2, 1.0]
    assert events[-1] == {"stage": "done", "fraction": 1.0, "message": "finished", "outputs": [{"input": "x"}]}
    stream = io.StringIO()
    p = Progress("json", stream)
    p.update("load", 0.5)
    p.error("bad")
    assert json.loads(stream.getvalue().splitlines()[-1]) == {"stage": "error", "fraction": 0.5, "message": "bad"}
