"""Hermes Training's fine-tune mode and add-task's adapter choice: the engine command lines the Logic builds, the
forgetting report read from the engine's record (card first, then the ``done`` event), and the modes the installed
engine offers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "HermesTraining"))

from HermesTrainingLib.cases import TrainingInputError  # noqa: E402
from HermesTrainingLib.dataset_export import ExportedDataset  # noqa: E402
from HermesTrainingLib.forgetting import forgettingRecord, parseForgetting  # noqa: E402
from HermesTrainingLib.logic import (  # noqa: E402
    HermesTrainingLogic,
    TrainingRequest,
    availableAddModes,
    availableModes,
    metricsRecord,
)

BASE = "/models/base.safetensors"


def arguments(tmp_path, **request):
    dataset = ExportedDataset(tmp_path / "Dataset001_my", {"liver": 1}, {"Liver": "liver"}, ["c1"], {})
    return HermesTrainingLogic.engineArguments(TrainingRequest([], ["Liver"], BASE, "MR-T1", **request), dataset,
                                               tmp_path / "new.safetensors")


def test_finetune_and_adapter_command_lines(tmp_path):
    data, out = str(tmp_path / "Dataset001_my"), str(tmp_path / "new.safetensors")
    assert arguments(tmp_path, mode="finetune", steps=5, timeLimit=30, seed=0, device="gpu",
                     replay=["/data/a", "/data/b"]) == (
        "finetune", [BASE, "--data", data, "-o", out, "--progress", "json", "--modality", "MR-T1", "--replay",
                     "/data/a", "--replay", "/data/b", "--steps", "5", "--time-limit", "30", "--seed", "0",
                     "--device", "cuda"])
    with pytest.raises(TrainingInputError, match="replay datasets are for Fine-tune only"):
        arguments(tmp_path, mode="add", replay=["/data/a"])
    assert arguments(tmp_path, mode="add", addMode="adapter", device="cpu") == (
        "add-task", [BASE, "--data", data, "-o", out, "--progress", "json", "--modality", "MR-T1", "--mode",
                     "adapter", "--device", "cpu"])
    # fine-tune has no learning-mode choice: addMode is not passed to it
    assert "--mode" not in arguments(tmp_path, mode="finetune", addMode="adapter")[1]
    # train: no base, the engine's own name for steps, no modality (dataset.json's)
    assert arguments(tmp_path, mode="train", steps=7) == (
        "train", ["--data", data, "-o", out, "--progress", "json", "--iterations", "7"])


MEASURED = {"measured_on": ["amos_0001", "amos_0004"],
            "tasks": {"amos_liver": {"before": 0.912, "after": 0.871}, "amos_spleen": {"before": 0.8, "after": 0.8}}}


def test_forgetting_report_rows_and_text():
    report = parseForgetting(MEASURED)
    assert report.measured and report.cases == ["amos_0001", "amos_0004"]
    assert [(r.task, r.before, r.after) for r in report.rows] == [("amos_liver", 0.912, 0.871),
                                                                  ("amos_spleen", 0.8, 0.8)]
    assert report.rows[0].change == pytest.approx(-0.041)
    assert report.lines() == ["Forgetting check on 2 case(s) (amos_0001, amos_0004): Dice before -> after",
                              "  amos_liver: 0.912 -> 0.871 (-0.041)",
                              "  amos_spleen: 0.800 -> 0.800 (+0.000)"]
    not_measured = parseForgetting({"not_measured": "no replay data for the base tasks"})
    assert not not_measured.measured and not_measured.rows == []
    assert not_measured.lines() == ["Forgetting check: not measured: no replay data for the base tasks"]
    # a record that is missing or malformed is reported as not measured, never as figures
    assert parseForgetting(None).notMeasured == "the engine wrote no forgetting record"
    assert parseForgetting({"tasks": {}}).notMeasured == "the engine's forgetting record has no tasks"
    odd = parseForgetting({"tasks": {"t": {"before": "high", "after": True}}})
    assert [(r.before, r.after, r.change) for r in odd.rows] == [(None, None, None)]
    assert odd.lines()[1] == "  t: n/a -> n/a" and odd.rows[0].cells() == ("t", "n/a", "n/a", "n/a")
    assert report.rows[0].cells() == ("amos_liver", "0.912", "0.871", "-0.041")


def test_forgetting_record_comes_from_the_card_first():
    event = [{"model": "m", "forgetting": {"not_measured": "from the event"}}]
    card = {"fine_tuned": [{"forgetting": {"not_measured": "older"}}, {"forgetting": MEASURED}]}
    assert forgettingRecord(card, event) is MEASURED  # the last fine-tune of the card
    assert forgettingRecord({"fine_tuned": []}, event) == {"not_measured": "from the event"}
    assert forgettingRecord(None, [{"model": "m"}]) is None


def test_progress_figures_reach_the_chart_as_numbers():
    """add-task and finetune send held_out_dice per new task and eta_s; the chart gets their mean, the status the
    ETA; a record without loss or Dice is not a chart point."""
    record = metricsRecord({"stage": "held-out", "step": 40, "total": 80, "eta_s": 12.5,
                            "held_out_dice": {"my_liver": 0.8, "my_spleen": 0.6, "my_kidney": None}})
    assert record == {"step": 40, "total": 80, "dice": pytest.approx(0.7), "eta": 12.5}
    assert metricsRecord({"stage": "load", "step": 0, "eta_s": None}) == {}
    assert metricsRecord({"step": 3, "loss": 0.25, "held_out_dice": {"a": None}}) == {"step": 3, "loss": 0.25}


def test_offered_modes_are_the_installed_engines():
    """The widget offers a mode only when the engine has its command file, and add-task's modes from the engine's
    own option list (hermesseg.add_task_options, imported without torch)."""
    from hermesseg.add_task_options import MODES as ENGINE_ADD_MODES

    cli = REPO / "hermesseg" / "cli"
    assert {"add", "train"} <= set(availableModes())
    assert ("finetune" in availableModes()) == (cli / "finetune_command.py").is_file()
    assert availableAddModes() == [m for m in ("priors", "adapter") if m in ENGINE_ADD_MODES]
    assert "priors" in availableAddModes()
