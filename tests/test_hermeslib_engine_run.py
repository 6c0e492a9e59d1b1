"""HermesLib.engine_run.startEngineCommand, the one way both modules run the engine: real `hermesseg` processes."""

from __future__ import annotations

import json
import sys

from paths import REPO, SHIPPED_MODEL

sys.path.insert(0, str(REPO))  # HermesLib

from HermesLib.engine_run import startEngineCommand  # noqa: E402
from HermesLib.process import pidAlive  # noqa: E402

DEFAULT_MODEL = SHIPPED_MODEL


def test_a_command_without_progress_succeeds_and_logs_its_output():
    finished, logged = [], []
    run = startEngineCommand("info", [str(DEFAULT_MODEL), "--json"], onLog=logged.append,
                             onFinished=finished.append, pollWithQtTimer=False)
    assert run.command[1:4] == ["-m", "hermesseg.cli", "info"]
    run.wait(timeout=300)
    assert finished == [run] and run.succeeded and not run.cancelled and run.errorMessage is None
    assert json.loads("\n".join(logged))["name"] == "hermes-mini"
    assert run.log == logged and not pidAlive(run.pid)


def test_a_hermesseg_folder_in_the_working_folder_does_not_replace_the_engine(tmp_path, monkeypatch):
    """Slicer may run from any folder; one holding a `hermesseg` package (a checkout, a copy) must not shadow the
    engine that `python -m hermesseg.cli` is meant to start."""
    fake = tmp_path / "hermesseg"
    (fake / "cli").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "cli" / "__init__.py").write_text("")
    (fake / "cli" / "__main__.py").write_text("print('the wrong engine')\n")
    monkeypatch.chdir(tmp_path)
    logged = []
    run = startEngineCommand("info", [str(DEFAULT_MODEL), "--json"], onLog=logged.append, pollWithQtTimer=False)
    run.wait(timeout=300)
    assert run.succeeded and "the wrong engine" not in logged
    assert json.loads("\n".join(logged))["name"] == "hermes-mini"


def test_the_engines_error_event_is_the_error_message(tmp_path):
    events, finished = [], []
    missing = tmp_path / "no-such-image.nii.gz"
    run = startEngineCommand("segment", [str(missing), "-o", str(tmp_path / "out"), "--progress", "json"],
                             onProgress=events.append, onFinished=finished.append, pollWithQtTimer=False)
    run.wait(timeout=300)
    assert finished == [run] and not run.succeeded and run.process.returnCode == 2
    assert str(missing) in run.errorMessage
    assert "hermesseg segment: error:" not in run.errorMessage  # the engine's message, without the prefix
    assert not any(e.isError for e in events)  # the error event goes to the log and errorMessage
    assert any(line.startswith("Error: ") for line in run.log)
    assert run.outputs == [] and not (tmp_path / "out").exists()


def test_a_zero_exit_without_the_done_event_is_a_failure(tmp_path):
    """`--progress json` promises a final `done` event; a run that exits 0 without it did not finish its job."""
    script = tmp_path / "fake_python"
    script.write_text("#!/bin/sh\necho '{\"stage\": \"load\", \"fraction\": 0.1}'\nexit 0\n")
    script.chmod(0o755)
    run = startEngineCommand("segment", ["x", "-o", "y", "--progress", "json"], python=str(script),
                             pollWithQtTimer=False)
    run.wait(timeout=60)
    assert not run.succeeded and run.errorMessage == "the engine finished without reporting its outputs"
