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
    # no choice made: add-task runs in the engine's default mode (adapter), not in a mode the widget assumes
    assert "--mode" not in arguments(tmp_path, mode="add")[1]
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
    own option list (hermesseg.add_task_options, imported without torch), its default first."""
    import hermesseg.add_task_options as options

    assert availableModes() == ["add", "finetune", "train"]
    default = getattr(options, "DEFAULT_MODE", "priors")
    assert availableAddModes()[0] == default and set(availableAddModes()) == set(options.MODES) & {"priors", "adapter"}
    assert "priors" in availableAddModes()


# ---------------------------------------------------------------------------------------------- a real fine-tune
def test_finetune_from_the_logic_registers_a_model_with_its_forgetting_report(tmp_path, monkeypatch):
    """A real ``hermesseg finetune`` of the default model in a background process: brain tissue (grey + white
    matter as one segment) of the MNI152 T1 template is taught from a scene pair, with the template's own dataset
    replayed. The base model was trained on that dataset (its grey and white matter tasks score 0.84 on it: model
    card), so its Dice before is high; the forgetting report in the module is the card's record, figure for figure."""
    import slicer
    from paths import require
    from test_slicer_training_run import DEFAULT_MODEL, MNI, brain_pairs

    from hermesseg.compatibility import compatibility_fingerprint
    from hermesseg.model_file import read_model_state
    from HermesLib.engine_job import JobState
    from HermesTrainingLib.packs import PackError

    require(DEFAULT_MODEL)
    monkeypatch.setenv("HERMESSEG_MODELS_DIR", str(tmp_path / "models"))
    assert "finetune" in availableModes()
    scene = slicer.vtkMRMLScene()
    logic = HermesTrainingLogic(scene)
    pairs = brain_pairs(scene, logic, tmp_path)
    job = logic.train(pairs, ["Brain tissue"], DEFAULT_MODEL, "MR-T1", mode="finetune", steps=3, seed=0,
                      device="cpu", replay=[MNI], waitForCompletion=True)

    assert job.state == JobState.SUCCEEDED, job.errorMessage
    assert job.modelPath.parent == tmp_path / "models" and job.modelPath.is_file()
    assert job.command[3:5] == ["finetune", str(DEFAULT_MODEL)]
    assert job.command[job.command.index("--replay") + 1] == str(MNI)
    info = logic.modelInfo(job.modelPath)
    assert logic.newTaskNames(job) == ["my_brain_tissue_brain_tissue"]
    assert "my_brain_tissue_brain_tissue" in {t["name"] for t in info["tasks"]}
    assert info["lineage"][-1]["operation"] == "finetune"

    card_record = info["card"]["fine_tuned"][-1]["forgetting"]
    assert job.result["outputs"][0]["forgetting"] == card_record  # the done event and the card agree
    report = logic.forgettingReport(job)
    assert report.measured and report.cases == ["mr_brain_tissue_mni/mni152_2009a_sym"]
    figures = {r.task: (r.before, r.after) for r in report.rows}
    assert figures == {name: (d["before"], d["after"]) for name, d in card_record["tasks"].items()}
    assert set(figures) == {"mr_brain_tissue_mni_grey_matter", "mr_brain_tissue_mni_white_matter"}
    for task, (before, after) in figures.items():
        assert before > 0.6, (task, before)  # the base on its own training image (see the docstring)
        assert 0.0 <= after <= 1.0, (task, after)
    summary = logic.resultSummary(job)
    assert "Forgetting check on 1 case(s) (mr_brain_tissue_mni/mni152_2009a_sym)" in summary
    grey_before, grey_after = figures["mr_brain_tissue_mni_grey_matter"]
    assert f"mr_brain_tissue_mni_grey_matter: {grey_before:.3f} -> {grey_after:.3f}" in summary
    print("forgetting after 3 fine-tune steps: " + ", ".join(f"{k} {b:.3f}->{a:.3f}" for k, (b, a) in figures.items()))

    # the fine-tune changed shared weights: a pack of its new structure is refused by the base, naming both
    pack = tmp_path / "tuned-brain.safetensors"
    logic.exportTaskPack(job.modelPath, logic.newTaskNames(job), pack, waitForCompletion=True)
    with pytest.raises(PackError) as refused:
        logic.importTaskPack(DEFAULT_MODEL, pack, output=tmp_path / "never.safetensors", waitForCompletion=True)
    tuned, base = (compatibility_fingerprint(read_model_state(p)[1]) for p in (job.modelPath, DEFAULT_MODEL))
    assert tuned != base and tuned in str(refused.value) and base in str(refused.value)
    assert not (tmp_path / "never.safetensors").exists()


def test_a_mode_the_engine_lacks_is_refused_before_anything_runs(tmp_path):
    """Scripts can ask for any mode; one the installed engine has not is refused with what it has."""
    from hermesseg.add_task_options import MODES as ENGINE_ADD_MODES

    request = TrainingRequest([], ["Liver"], BASE, "MR-T1", mode="add", addMode="adapter")
    if "adapter" in ENGINE_ADD_MODES:
        HermesTrainingLogic.requireEngineSupport(request)
    else:
        with pytest.raises(TrainingInputError,
                           match=r"this engine's add-task has no 'adapter' mode \(it has: priors\)"):
            HermesTrainingLogic.requireEngineSupport(request)
    HermesTrainingLogic.requireEngineSupport(TrainingRequest([], ["Liver"], BASE, "MR-T1", mode="finetune"))
