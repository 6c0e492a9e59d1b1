"""Group adapters (add-task --mode adapter) in the network, the model file, task packs and `hermesseg info`, on the
shipped default model and a real cine-MR image.

The adapter model here is built by hand the way add-task builds it (new rows, one adapter for the new group), with
random adapter weights so that it visibly changes its group's logits; the trained case is
tests/test_add_task_adapter.py.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hermesseg.cli import main
from hermesseg.manifest import LineageRecord, ModalityEntry, TaskEntry, manifest_digest
from hermesseg.model import load_model
from hermesseg.model_file import MANIFEST_DIGEST_KEY, MANIFEST_KEY, read_manifest, read_model_state, save_model
from hermesseg.network.config import ADAPTER_DESIGNS, AdapterConfig
from hermesseg.network.group_adapter import DESIGNS
from hermesseg.task_pack import read_pack
from hermesseg.training.forgetting import group_queries

from cine_window import CINE, cine_window
from paths import ACDC, require, SHIPPED_MODEL
from threads import one_torch_thread  # noqa: F401 (autouse fixture)

BASE = SHIPPED_MODEL
N = len(read_manifest(BASE).tasks)  # the base model's tasks: the heart group's rows are N, N + 1, N + 2
GROUP = "heart"
TASKS = ["heart_right_ventricle", "heart_myocardium", "heart_left_ventricle"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The base, and the base + three MR-cine tasks (rows copied from base tasks) with a random group adapter."""
    root = tmp_path_factory.mktemp("adapter")
    base = load_model(require(BASE))
    net = base.network
    first = net.num_task_rows
    net.add_new_rows([0, 1, 2], [1])
    net.fold_new_rows()
    # the first adapter design, which add-task no longer writes: its files still load and run
    adapter = net.add_adapter(AdapterConfig(GROUP, (first, first + 1, first + 2), design="residual-unet"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    m = base.manifest
    tasks = [TaskEntry(first + i, n, GROUP, ["MR-cine"]) for i, n in enumerate(TASKS)]
    manifest = replace(m, tasks=m.tasks + tasks, modalities=m.modalities + [ModalityEntry(4, "MR-cine", "", ["MR"])],
                       preprocessing={**m.preprocessing, "intensity": {**m.preprocessing["intensity"],
                                                                       "MR-cine": CINE}},
                       lineage=m.lineage + [LineageRecord("add-task", parent=m.weights_sha256, datasets=[GROUP],
                                                          tasks=TASKS)])
    taught = root / "taught.safetensors"
    save_model(taught, net, manifest)
    return root, taught


@pytest.fixture(scope="module")
def cine():
    """A real ACDC image on the model grid, normalised as MR-cine: (2, 1, 16, 48, 48) (the same window twice)."""
    return cine_window()[0].repeat(2, 1, 1, 1, 1)


def _logits(model, queries: list[list[int]], modalities: list[int], image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.network(image[: len(queries)], torch.tensor(queries), torch.tensor(modalities))[0]


def test_adapter_tensors_are_named_by_the_group_and_described_in_the_manifest(work):
    _, taught = work
    manifest, state = read_model_state(taught)
    base_state = read_model_state(BASE)[1]
    adapter = sorted(k for k in state if k.startswith("adapters."))
    assert adapter and all(k.startswith("adapters.heart.") for k in adapter)
    assert set(state) - set(adapter) == set(base_state)
    assert manifest.architecture["adapters"] == [{"group": "heart", "task_ids": [N, N + 1, N + 2],
                                                  "design": "residual-unet", "width": 8, "levels": 3, "blocks": 1}]
    assert "adapters" not in read_model_state(BASE)[0].architecture  # models without adapters keep their manifest


def test_the_adapter_runs_only_for_its_group(work, cine):
    """Only queries holding the group's rows change; a base group batched with the adapter group (as segment
    decodes several groups of one window together) keeps its exact logits."""
    _, taught = work
    base, child = load_model(BASE), load_model(taught)
    new = [N, N + 1, N + 2, -1]
    abdomen = [t.id for t in base.manifest.tasks if t.group == "mr_abdomen_ts"] + [-1]
    for _, ids, modality in group_queries(base.manifest):
        assert torch.equal(_logits(base, [ids], [modality], cine), _logits(child, [ids], [modality], cine))
    padded = new + [-1] * (len(abdomen) - len(new))
    mixed = _logits(child, [abdomen, padded], [1, 4], cine)
    assert torch.equal(mixed[0], _logits(base, [abdomen, abdomen], [1, 1], cine)[0])
    # the group's own channels do change, by the adapter alone (same rows, adapter removed)
    plain = load_model(taught)
    del plain.network.adapters._modules[GROUP]
    with_adapter, without = _logits(child, [new], [4], cine)[0, :3], _logits(plain, [new], [4], cine)[0, :3]
    assert float((with_adapter - without).abs().max()) > 0.1
    # the mixed batch gives the group's item the same correction (up to the rounding of another batch size)
    assert torch.allclose(mixed[1, :3], _logits(child, [padded, padded], [4, 4], cine)[1, :3], atol=1e-4)


@pytest.mark.parametrize("design, head_kernel", [("half-resolution-unet", 3), ("half-resolution-pointwise", 1),
                                                 ("image-pointwise", 1)])
def test_the_half_resolution_adapters_start_as_the_identity_and_correct_on_the_full_grid(cine, design, head_kernel):
    """add-task's designs: zero output at first (the group's logits are the rows' alone), then a correction of the
    window's exact size, also for sizes that do not halve evenly."""
    net = load_model(BASE).network
    first = net.num_task_rows
    net.add_new_rows([0, 1, 2], [1])
    net.fold_new_rows()
    query, modality = torch.tensor([[first, first + 1, first + 2, -1]]), torch.tensor([4])
    window = cine[:1, :, :, :45, :47]  # (1, 1, 16, 45, 47)
    with torch.no_grad():
        before = net(window, query, modality)[0]
        adapter = net.add_adapter(AdapterConfig(GROUP, (first, first + 1, first + 2), design=design, width=16))
        assert adapter.out[2].kernel_size == (head_kernel,) * 3
        assert torch.equal(net(window, query, modality)[0], before)
        delta = adapter(torch.randn(1, 8, 16, 45, 47), torch.randn(1, 8, 16, 45, 47), window)
        assert delta.shape == (1, 3, 16, 45, 47) and float(delta.abs().max()) == 0.0
        gen = torch.Generator().manual_seed(0)
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        after = net(window, query, modality)[0]
    assert after.shape == before.shape
    assert float((after[:, :3] - before[:, :3]).abs().max()) > 0.1
    assert torch.equal(after[:, 3], before[:, 3])  # the padded slot is not the adapter's


@pytest.mark.parametrize("design, reads_image", [("residual-unet", False), ("half-resolution-unet", False),
                                                 ("half-resolution-pointwise", False), ("image-pointwise", True)])
def test_only_the_image_pointwise_design_reads_the_image(cine, design, reads_image):
    """add-task's design corrects from the image as well as from d0 and f0; the older designs read what they read
    before (so their files give the same logits as when they were written): another image under the same d0 and f0
    changes the correction of image-pointwise alone."""
    adapter = DESIGNS[design](AdapterConfig(GROUP, (0, 1, 2), design=design, width=8), feature_channels=8)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        d0, f0 = torch.randn(1, 8, 16, 48, 48, generator=gen), torch.randn(1, 8, 16, 48, 48, generator=gen)
        image = cine[:1]
        other = adapter(d0, f0, image.flip(-1)) - adapter(d0, f0, image)
    assert (float(other.abs().max()) > 0.1) == reads_image


def test_a_task_pack_carries_the_adapter_and_round_trips_to_identical_logits(work, cine, capsys):
    root, taught = work
    pack, fresh, imported = root / "heart.pack", root / "fresh.safetensors", root / "imported.safetensors"
    assert main(["export-task", str(taught), GROUP, "-o", str(pack)]) == 0
    p = read_pack(pack)
    assert [a.group for a in p.adapters] == [GROUP] and p.adapters[0].task_ids == (0, 1, 2)
    state = read_model_state(taught)[1]
    adapter = {k: v for k, v in state.items() if k.startswith("adapters.")}
    assert set(adapter) <= set(p.tensors) and all(torch.equal(p.tensors[k], v) for k, v in adapter.items())
    n = sum(v.numel() for v in adapter.values())
    assert 4 * n < pack.stat().st_size < 4 * n + 30_000  # the adapter is most of the pack
    shutil.copyfile(BASE, fresh)
    assert main(["import-task", str(fresh), str(pack), "-o", str(imported)]) == 0
    assert fresh.read_bytes() == BASE.read_bytes()
    a, b = load_model(taught), load_model(imported)
    assert b.manifest.config.adapters == a.manifest.config.adapters
    new = [[N, N + 1, N + 2, -1]]
    assert torch.equal(_logits(b, new, [4], cine), _logits(a, new, [4], cine))
    capsys.readouterr()
    assert main(["info", str(imported)]) == 0
    text = capsys.readouterr().out
    assert re.search(rf"adapter {GROUP}: residual-unet, width 8, 3 levels, 1 block\(s\) per level, {n:,} parameters; "
                     rf"runs only for {', '.join(TASKS)}", text), text


def _rewrite(src: Path, dst: Path, edit=None, drop: str | None = None) -> Path:
    """A copy of a model file with its manifest edited (digest recomputed, so only the edit is wrong) or one tensor
    left out."""
    manifest, state = read_model_state(src)
    d = manifest.to_dict()
    if edit:
        edit(d["architecture"])
    text = json.dumps(d)
    save_file({k: v for k, v in state.items() if k != drop}, str(dst),
              metadata={MANIFEST_KEY: text, MANIFEST_DIGEST_KEY: manifest_digest(text)})
    return dst


def _set(key, value):
    return lambda arch: arch["adapters"][0].__setitem__(key, value)


def test_every_design_the_config_accepts_has_a_module():
    assert set(DESIGNS) == set(ADAPTER_DESIGNS)


@pytest.mark.parametrize("edit, drop, message", [
    (_set("width", "8"), None, r"adapter heart: width must be an integer in 1\.\.256, got '8'"),
    (_set("group", "heart.1"), None, r"adapter group 'heart\.1' is not a name"),
    (_set("task_ids", [0, N + 1]), None, r"adapter 'heart' names task row 0, which is not a task of group 'heart'"),
    (_set("task_ids", [N, N, N + 2]), None, r"task_ids name a row twice"),
    (_set("task_ids", [N, N + 1, 900]), None, r"adapter task row 900 is outside the task table"),
    (_set("colour", 1), None, r"unknown adapter keys: \['colour'\]"),
    (lambda arch: arch.__setitem__("adapters", {"group": "heart"}), None, r"adapters must be a list"),
    (_set("levels", 2), None, r"unexpected tensor 'adapters\.heart\.down\.1\."),
    (_set("levels", 5), None, r"adapter heart: levels must be an integer in 1\.\.4, got 5"),
    (_set("design", "lora"), None, r"adapter heart: unknown design 'lora'"),
    (_set("design", "half-resolution-unet"), None, r"tensor 'adapters\.heart\.reduce\.weight' is missing"),
    (None, "adapters.heart.out.2.bias", r"tensor 'adapters\.heart\.out\.2\.bias' is missing"),
])
def test_a_model_file_with_a_malformed_adapter_entry_is_refused_with_one_line(work, capsys, edit, drop, message):
    root, taught = work
    bad = _rewrite(taught, root / "bad.safetensors", edit, drop)
    capsys.readouterr()
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and err.startswith("hermesseg info: error: "), err
    assert re.search(message, err), err
    never = root / "never"
    assert main(["segment", str(ACDC / "imagesTr" / "patient001_frame01_0000.nii.gz"), "-o", str(never),
                 "--model", str(bad), "--modality", "MR-cine", "--progress", "none"]) == 2
    assert not never.exists() or not any(never.iterdir())


def test_a_pack_whose_adapter_names_another_groups_task_is_refused(work, capsys):
    from hermesseg.task_pack import PACK_KEY
    from safetensors import safe_open

    root, taught = work
    pack = root / "ok.pack"
    assert main(["export-task", str(taught), GROUP, "-o", str(pack)]) == 0
    with safe_open(str(pack), "pt") as f:
        meta = json.loads(f.metadata()[PACK_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["adapters"][0]["task_ids"] = [0, 1, 5]
    bad = root / "bad.pack"
    save_file(tensors, str(bad), metadata={PACK_KEY: json.dumps(meta)})
    capsys.readouterr()
    assert main(["import-task", str(BASE), str(bad), "-o", str(root / "never.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"hermesseg import-task: error: pack adapter 0 \(heart\): task position 5 is not a task of "
                        r"its group", err), err
    assert not (root / "never.safetensors").exists()
