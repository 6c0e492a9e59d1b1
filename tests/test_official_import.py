"""Official Hermes-R checkpoint import: reproduces the reference logits; refuses bad checkpoints cleanly."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from hermesseg import load_model
from hermesseg.cli import main
from paths import CONFORMANCE, require

CHECKPOINT = CONFORMANCE / "hermes_r_base8_checkpoint.pth"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("official") / "base8.safetensors"
    assert main(["import-official", str(require(CHECKPOINT)), "-o", str(out)]) == 0
    return out


def test_reproduces_reference_logits(imported):
    model = load_model(imported)
    cases = np.load(require(CONFORMANCE / "hermes_r_base8_cases.npz"))
    names = sorted({k.split("__")[0] for k in cases.files})
    assert len(names) == 5
    with torch.no_grad():
        for name in names:
            seg, mod = model.network(torch.from_numpy(cases[f"{name}__input"]),
                                     torch.from_numpy(cases[f"{name}__task_ids"]),
                                     torch.from_numpy(cases[f"{name}__modality_ids"]))
            ref_seg, ref_mod = cases[f"{name}__seg_logits"], cases[f"{name}__modality_logits"]
            assert seg.shape == ref_seg.shape, name
            assert np.abs(seg.numpy() - ref_seg).max() < 1e-3, name
            assert np.abs(mod.numpy() - ref_mod).max() < 1e-4, name


def test_ema_weights_are_preferred(imported, tmp_path):
    """The conformance file's model_state_dict differs in the task head: importing it must give other logits."""
    ckpt = torch.load(CHECKPOINT, weights_only=True)
    plain = tmp_path / "plain.pth"
    torch.save({"model_state_dict": ckpt["model_state_dict"]}, plain)
    other = tmp_path / "plain.safetensors"
    assert main(["import-official", str(plain), "-o", str(other)]) == 0
    a, b = load_model(imported).network, load_model(other).network
    assert torch.equal(a.task_head.norm.weight, ckpt["ema_model_state_dict"]["out.norm.weight"])
    assert not torch.equal(a.task_head.norm.weight, b.task_head.norm.weight)


def test_module_prefixes_are_stripped(tmp_path):
    sd = torch.load(CHECKPOINT, weights_only=True)["ema_model_state_dict"]
    wrapped = tmp_path / "ddp.pth"
    torch.save({"ema_model_state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}}, wrapped)
    out = tmp_path / "ddp.safetensors"
    assert main(["import-official", str(wrapped), "-o", str(out)]) == 0
    assert load_model(out).num_parameters == 3_806_790


def test_full_size_checkpoint_reports_official_parameter_count(tmp_path, capsys):
    keys = json.loads(require(CONFORMANCE / "hermes_r_full_keys.json").read_text())
    gen = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=gen) * 0.02 for name, shape in keys["tensors"].items()}
    ckpt = tmp_path / "full.pth"
    torch.save({"epoch": 1, "ema_model_state_dict": state}, ckpt)
    del state
    out = tmp_path / "full.safetensors"
    assert main(["import-official", str(ckpt), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_parameters"] == 60_884_998 == keys["num_params"]
    assert len(info["tasks"]) == 71
    assert info["format_version"] == 1
    assert {t["name"] for t in info["tasks"]} >= {"amos_liver", "lits_liver_tumour", "autopet_fdg_avid_lesion"}
    assert [m["name"] for m in info["modalities"]] == ["CT", "PET", "MR-T1", "MR-T2", "MR-cine", "MR"]


class NeedsCode:
    """Pickled by reference: loading it would need this module's code."""


def _refused(tmp_path, checkpoint, expected: str, capsys):
    out = tmp_path / "out" / "model.safetensors"
    code = main(["import-official", str(checkpoint), "-o", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert expected in err, err
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir()), "temporary files left behind"
    return err


def test_refuses_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bad = tmp_path / "notes.pth"
    bad.write_text("this is not a checkpoint\n")
    _refused(tmp_path, bad, "is not a PyTorch checkpoint", capsys)


def test_refuses_a_truncated_checkpoint(tmp_path, capsys):
    data = CHECKPOINT.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    _refused(tmp_path, bad, "truncated or damaged", capsys)


def test_refuses_a_pickle_that_needs_code(tmp_path, capsys):
    bad = tmp_path / "code.pth"
    torch.save({"ema_model_state_dict": {"inc.conv1.weight": torch.zeros(1)}, "extra": NeedsCode()}, bad)
    _refused(tmp_path, bad, "need code to load; refusing to unpickle", capsys)


def test_refuses_a_plain_pickle(tmp_path, capsys):
    bad = tmp_path / "legacy.pth"
    bad.write_bytes(pickle.dumps({"a": 1}))
    _refused(tmp_path, bad, "checkpoint", capsys)


@pytest.mark.parametrize("edit, expected", [
    ("missing", "checkpoint: tensor 'up4.conv.1.conv2.conv.weight' is missing"),
    ("unexpected", "checkpoint: unexpected tensor 'up4.conv.9.extra.weight'"),
    ("misshaped", "tensor 'out.classifier_pred.1.fc2.weight' has shape (8, 4), expected (8, 8)"),
])
def test_refuses_mismatched_tensors(tmp_path, capsys, edit, expected):
    sd = dict(torch.load(CHECKPOINT, weights_only=True)["ema_model_state_dict"])
    if edit == "missing":
        del sd["up4.conv.1.conv2.conv.weight"]
    elif edit == "unexpected":
        sd["up4.conv.9.extra.weight"] = torch.zeros(3)
    else:
        sd["out.classifier_pred.1.fc2.weight"] = torch.zeros(8, 4)
    bad = tmp_path / f"{edit}.pth"
    torch.save({"ema_model_state_dict": sd}, bad)
    _refused(tmp_path, bad, expected, capsys)


def test_refuses_hermes_m(tmp_path, capsys):
    sd = dict(torch.load(CHECKPOINT, weights_only=True)["ema_model_state_dict"])
    sd = {k: v for k, v in sd.items() if not k.startswith("down2.")}
    sd["down2.conv.0.reduction.weight"] = torch.zeros(4)  # PatchMerging
    sd["down2.map_gen.value.weight"] = torch.zeros(4)  # semantic map
    bad = tmp_path / "hermes_m.pth"
    torch.save({"ema_model_state_dict": sd}, bad)
    _refused(tmp_path, bad, "Hermes-M (MedFormer backbone) checkpoint; only Hermes-R", capsys)


def test_cli_process_exit_code_and_message(tmp_path):
    out = tmp_path / "m.safetensors"
    proc = subprocess.run([sys.executable, "-m", "hermesseg.cli", "import-official", str(tmp_path / "nope.pth"),
                           "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
