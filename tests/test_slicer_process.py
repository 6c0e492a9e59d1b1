"""HermesLib's background-process runner and progress parser, with real child processes (no engine)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "HermesSegmentation"))
sys.path.insert(0, str(REPO))  # HermesLib

from HermesLib.process import (  # noqa: E402
    USER_CANCELLED,
    BackgroundProcess,
    ProcessState,
    pidAlive,
)
from HermesLib.progress import ProgressParser, parseProgressLine  # noqa: E402


def python(code: str) -> list[str]:
    return [sys.executable, "-u", "-c", textwrap.dedent(code)]


# ---------------------------------------------------------------------------------------------- progress parser
def test_progress_lines_and_noise():
    parser = ProgressParser()
    assert parser.feed('{"stage": "load", "fraction": 0.1, "message": "loading"}').fraction == 0.1
    assert parser.feed("WARNING torch: something odd") is None
    assert parser.feed("{not json") is None
    assert parser.feed('["a list", 1]') is None
    assert parser.feed('{"no_stage": 1}') is None
    assert parser.feed('{"stage": "inference", "fraction": "x", "message": 3}').fraction == 0.0
    done = parser.feed(json.dumps({"stage": "done", "fraction": 1.0, "message": "ok",
                                   "outputs": [{"segmentation": "/x.seg.nrrd"}, "junk"]}))
    assert done.isDone and done.outputs == [{"segmentation": "/x.seg.nrrd"}]
    assert parser.fraction == 1.0 and parser.doneEvent is done
    assert list(parser.textTail) == ["WARNING torch: something odd", "{not json", '["a list", 1]', '{"no_stage": 1}']


def test_progress_clamps_and_keeps_error():
    assert parseProgressLine('{"stage": "x", "fraction": 7}').fraction == 1.0
    assert parseProgressLine('{"stage": "x", "fraction": -1}').fraction == 0.0
    assert parseProgressLine('{"stage": "x", "fraction": NaN}').fraction == 0.0
    parser = ProgressParser()
    parser.feed("Traceback (most recent call last):")
    parser.feed("hermesseg segment: error: unknown task or group 'nope'")
    assert parser.failureMessage(2) == "unknown task or group 'nope'"  # the engine's message, without its prefix
    parser.feed('{"stage": "error", "message": "unknown task or group \'nope\'"}')
    assert parser.errorMessage == "unknown task or group 'nope'"
    assert parser.failureMessage(2) == "unknown task or group 'nope'"
    assert ProgressParser().failureMessage(9) == "the engine exited with code 9 without a message"


# ---------------------------------------------------------------------------------------------- BackgroundProcess
def test_lines_are_delivered_in_order_on_the_polling_thread():
    lines, finished = [], []
    process = BackgroundProcess(python("""
        import sys
        for i in range(200):
            print(f"line {i}")
        print("to stderr", file=sys.stderr)
        sys.exit(3)
    """), onOutputLine=lines.append, onFinished=finished.append)
    process.start(useTimer=False)
    assert process.wait(timeout=60) == 3
    assert process.state == ProcessState.FAILED and finished == [process]
    assert lines[:200] == [f"line {i}" for i in range(200)] and "to stderr" in lines
    assert not pidAlive(process.pid)


def test_success_and_manual_polling():
    lines = []
    process = BackgroundProcess(python("print('hello')"), onOutputLine=lines.append).start(useTimer=False)
    deadline = time.monotonic() + 60
    while process.poll():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert process.state == ProcessState.SUCCEEDED and process.returnCode == 0 and lines == ["hello"]
    assert process.poll() is False  # finished stays finished


def test_cancel_kills_the_whole_process_tree(tmp_path):
    """The child starts a grandchild in the same session; cancel must kill both, not only the child."""
    pidFile = tmp_path / "grandchild.pid"
    process = BackgroundProcess(python(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pidFile)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(600)
    """), onOutputLine=lambda line: None)
    finished = []
    process.onFinished = finished.append
    process.start(useTimer=False)
    deadline = time.monotonic() + 60
    while not pidFile.exists() or not pidFile.read_text():
        process.poll()
        assert time.monotonic() < deadline, "the child never started its grandchild"
        time.sleep(0.05)
    grandchild = int(pidFile.read_text())
    assert pidAlive(process.pid) and pidAlive(grandchild)
    start = time.monotonic()
    process.cancel()
    assert time.monotonic() - start < 15
    assert finished == [process] and process.state == ProcessState.CANCELLED
    assert process.returnCode == USER_CANCELLED
    assert not pidAlive(process.pid)
    deadline = time.monotonic() + 10
    while pidAlive(grandchild) and time.monotonic() < deadline:  # reaped by init, may take a moment
        time.sleep(0.05)
    assert not pidAlive(grandchild), "the grandchild survived the cancel"
    process.cancel()  # a second cancel is harmless
    assert finished == [process]


def test_a_failing_callback_stops_the_process():
    def boom(line):
        raise ValueError("bad callback")

    process = BackgroundProcess(python("""
        import time
        print("first", flush=True)
        time.sleep(600)
    """), onOutputLine=boom).start(useTimer=False)
    process.wait(timeout=60)
    assert isinstance(process.callbackError, ValueError)
    assert process.state == ProcessState.FAILED
    assert not pidAlive(process.pid)


@pytest.mark.skipif(os.name != "posix", reason="POSIX process groups")
def test_child_runs_in_its_own_session():
    process = BackgroundProcess(python("import os; print(os.getsid(0))"), onOutputLine=None)
    lines = []
    process.onOutputLine = lines.append
    process.start(useTimer=False).wait(timeout=60)
    assert int(lines[0]) == process.pid != os.getsid(0)
