"""Teaching the shipped default model structures it never saw, in modalities it never saw, from k annotated volumes.

For each dataset and k, a temporary nnU-Net dataset folder holds only the k training patients' volumes (symlinks);
the held-out patients are fixed for the dataset (patients, never frames: ACDC cases ``patientNNN_frame01/02`` of one
patient are always on the same side) and scored with the engine's evaluation on their original grid. Methods:

- ``priors``: ``hermesseg add-task --mode priors`` (only the new rows and modality block train),
- ``adapter``: ``hermesseg add-task --mode adapter``,
- ``finetune``: ``hermesseg finetune`` (every weight trains),
- ``unet``: a MONAI U-Net trained from scratch here on the same volumes, the same model grid, normalisation and patch
  sampler as the engine's training, for the wall time of the longest Hermes run at the same k (or ``--time-limit``);
  its wall time counts preprocessing and training, as add-task's does, not the scoring.

Hermes Dice is scored twice: as ``segment`` draws it (the found rule on: a mask it rejects counts as 0) and with
every mask that reaches 0.5 (the rule off, as the U-Net is scored); both keep only the largest piece of the tasks
whose held-out check chose it. The U-Net is also scored with the largest piece of every structure kept
(``dice_largest_piece``), so the piece choice is not counted as an advantage of Hermes alone. Also measured: wall
time, trained parameters (elements new or changed against the base), pack size (``export-task``) and forgetting
(maximum absolute logit change of every base task, queried in its own group, on a held-out image). Methods the
installed ``hermesseg`` does not offer are reported as "not available". The table is printed with the load average
and the Dice ratio against the U-Net of the same run, and written as JSON. ``--seed 0,1`` runs every setting on each
of those patient splits (seeded draws of training and held-out patients) and adds the mean and range over them.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_add_task.py --datasets acdc --k 1,2,5 --methods priors,unet \
        --json runs/bench_add_task.json
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
BASE_MODEL = REPO / "Resources" / "Models" / "hermes-mini.safetensors"
METHODS = ("priors", "adapter", "finetune", "unet")
KS = (1, 2, 5, 10)


@dataclass(frozen=True)
class BenchDataset:
    key: str
    root: Path
    patient_pattern: str | None  # regex whose group 1 is the patient of a case; None: one case per patient


DATASETS = {
    "acdc": BenchDataset("acdc", DATA / "mr_cine_heart_acdc", r"^(patient\d+)_frame\d+$"),
    "la": BenchDataset("la", DATA / "mr_left_atrium", None),
}


# ------------------------------------------------------------------------------------------------ data
def patient_of(case: str, pattern: str | None) -> str:
    if pattern is None:
        return case
    match = re.match(pattern, case)
    if not match:
        raise ValueError(f"case {case!r} does not match the patient pattern {pattern!r}")
    return match.group(1)


def split_patients(cases: list[str], pattern: str | None, pool_size: int, seed: int,
                   max_heldout: int | None = None) -> tuple[list[str], list[str]]:
    """Seeded patient order: the first ``pool_size`` patients are the training pool (k = 1, 2, ... take its first k,
    so smaller sets are nested in larger ones), the rest are held out for every k."""
    patients = sorted({patient_of(c, pattern) for c in cases})
    if pool_size >= len(patients):
        raise ValueError(f"{len(patients)} patients cannot give {pool_size} training patients and a held-out set")
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    pool, heldout = order[:pool_size], sorted(order[pool_size:])
    return pool, heldout[:max_heldout] if max_heldout else heldout


def cases_of(patients: list[str], cases: list[str], pattern: str | None) -> list[str]:
    wanted = set(patients)
    return [c for c in sorted(cases) if patient_of(c, pattern) in wanted]


def build_subset(source: Path, cases: list[str], target: Path) -> Path:
    """An nnU-Net dataset folder holding only ``cases``: symlinks to the source files, dataset.json copied with
    ``numTraining`` updated (same dataset name, so the tasks and group add-task makes are named as for the source)."""
    meta = json.loads((source / "dataset.json").read_text())
    ending = meta["file_ending"]
    if target.exists():
        shutil.rmtree(target)
    (target / "imagesTr").mkdir(parents=True)
    (target / "labelsTr").mkdir()
    for case in cases:
        (target / "imagesTr" / f"{case}_0000{ending}").symlink_to(source / "imagesTr" / f"{case}_0000{ending}")
        (target / "labelsTr" / f"{case}{ending}").symlink_to(source / "labelsTr" / f"{case}{ending}")
    (target / "dataset.json").write_text(json.dumps({**meta, "numTraining": len(cases)}, indent=1))
    return target


def dataset_cases(root: Path) -> list[str]:
    from hermesseg.nnunet import read_dataset

    return [c.name for c in read_dataset(root)[1]]


# ------------------------------------------------------------------------------------------------ methods
@functools.lru_cache(maxsize=1)
def _cli_parser() -> argparse.ArgumentParser:
    from hermesseg.cli import build_parser

    return build_parser()


def cli_offers(command: str, mode: str | None = None) -> bool:
    """Whether this hermesseg has the sub-command (and, for add-task, the --mode value)."""
    sub = next(a for a in _cli_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if command not in sub.choices:
        return False
    if mode is None:
        return True
    action = next((a for a in sub.choices[command]._actions if a.dest == "mode"), None)
    return action is not None and mode in (action.choices or ())


def hermesseg(*args: str, threads: int, timeout: float | None = None) -> tuple[int, str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hermesseg.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    return proc.returncode, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "", \
        time.perf_counter() - start


def teach(method: str, base: Path, data: Path, out: Path, seed: int, args) -> dict:
    """Run add-task or finetune; returns wall time and the final progress object (or an error)."""
    length = (["--steps", str(args.steps)] if args.steps else []) + \
             (["--time-limit", str(args.time_limit)] if args.time_limit else [])
    if method == "finetune":
        argv = ["finetune", str(base), "--data", str(data), "-o", str(out)]
    else:
        argv = ["add-task", str(base), "--data", str(data), "-o", str(out), "--mode", method]
    code, last, wall = hermesseg(*argv, *length, "--seed", str(seed), threads=args.threads)
    return {"status": "ok" if code == 0 and out.is_file() else f"failed (exit {code}): {last}", "wall_s": wall}


def trained_parameters(base_state: dict, new_state: dict) -> int:
    """Elements that are new (appended rows, blocks, adapters) or differ from the base."""
    count = 0
    for name, tensor in new_state.items():
        old = base_state.get(name)
        if old is None:
            count += tensor.numel()
        elif old.shape != tensor.shape:
            count += tensor.numel() - old.numel() + int((tensor[:old.shape[0]] != old).sum())
        else:
            count += int((tensor != old).sum())
    return count


def held_out_patch(image_path: Path, spacing, norm, size=(32, 48, 48)) -> torch.Tensor:
    """A centred crop of a held-out image on the model grid, normalised: (1, 1, *size)."""
    from hermesseg.preprocessing import normalize_intensity, to_model_grid
    from hermesseg.training.sampling import crop

    array = normalize_intensity(sitk.GetArrayFromImage(to_model_grid(sitk.ReadImage(str(image_path)), spacing)),
                                norm)
    start = [(s - p) // 2 for s, p in zip(array.shape, size)]
    return torch.from_numpy(crop(array.astype(np.float32), start, size, 0.0))[None, None]


@torch.no_grad()
def forgetting(base_model, new_model, patch: torch.Tensor) -> float:
    """Max |logit change| of every base task, each group queried alone as segment queries it."""
    from hermesseg.inference.query_plan import plan_queries

    worst = 0.0
    for group in base_model.manifest.groups:
        tasks = [t for t in base_model.manifest.tasks if t.group == group]
        modality = tasks[0].modalities[0]
        (query,) = plan_queries(base_model.manifest, tasks, modality)
        ids, mod = torch.tensor([query.task_ids]), torch.tensor([base_model.manifest.modality(modality).id])
        before, _ = base_model.network(patch, ids, mod)
        after, _ = new_model.network(patch, ids, mod)
        worst = max(worst, float((after[:, :len(tasks)] - before[:, :len(tasks)]).abs().max()))
    return worst


def new_task_map(base_manifest, new_manifest, dataset: str, labels: list[str]) -> dict[str, str]:
    """dataset/label -> the new task whose name is the label or ends with _<label>."""
    base_names = {t.name for t in base_manifest.tasks}
    new = [t.name for t in new_manifest.tasks if t.name not in base_names]
    out = {}
    for label in labels:
        match = [n for n in new if n == label or n.endswith(f"_{label}")]
        if match:
            out[f"{dataset}/{label}"] = match[0]
    return out


def score_hermes(model_path: Path, heldout: Path, base, patch, args) -> dict:
    """Dice per structure on the held-out cases (engine evaluation), trained parameters, forgetting, pack size."""
    from hermesseg.evaluation.evaluate import evaluate
    from hermesseg.inference import InferenceOptions
    from hermesseg.inference.found_rule import NO_RULE
    from hermesseg.model import load_model
    from hermesseg.model_file import read_model_state

    model = load_model(model_path)
    meta = json.loads((heldout / "dataset.json").read_text())
    labels = [k for k, v in meta["labels"].items() if int(v) != 0]
    task_map = new_task_map(base.manifest, model.manifest, meta["name"], labels)

    def dice_per_label(options) -> dict[str, float]:
        per_task = evaluate(model, [heldout], task_map=task_map, options=options).summary("task")
        return {label: per_task[task_map[f"{meta['name']}/{label}"]]["dice_mean"] for label in labels
                if f"{meta['name']}/{label}" in task_map}

    dice = dice_per_label(InferenceOptions())  # what `segment` draws: a mask the found rule rejects scores 0
    dice_all = dice_per_label(InferenceOptions(found_rule=NO_RULE))  # every mask that reaches 0.5, as the U-Net's
    new_state = read_model_state(model_path)[1]
    base_state = {k: v for k, v in base.network.state_dict().items()}
    result = {"dice": dice, "dice_without_found_rule": dice_all,
              "mean_dice_without_found_rule": float(np.mean(list(dice_all.values()))) if dice_all else None,
              "trained_parameters": trained_parameters(base_state, new_state),
              "forgetting": forgetting(base, model, patch), "output_bytes": model_path.stat().st_size,
              "steps": model.manifest.lineage[-1].details.get("steps"),
              # how segment draws each new task, as add-task chose it on its held-out cases (postprocessing.py)
              "drawing": {label: {"threshold": model.manifest.task(task).threshold,
                                  "largest_piece": model.manifest.task(task).keep_largest_component}
                          for label, task in ((k.split("/", 1)[1], v) for k, v in task_map.items())}}
    groups = list(dict.fromkeys(model.manifest.task(t).group for t in task_map.values()))
    pack = model_path.with_suffix(".pack.safetensors")
    code, last, _ = hermesseg("export-task", str(model_path), *groups, "-o", str(pack), threads=args.threads)
    result["pack_bytes"] = pack.stat().st_size if code == 0 else f"export failed: {last}"
    return result


# ------------------------------------------------------------------------------------------------ U-Net baseline
def unet_data(train_dir: Path, cache_root: Path, spacing, seed: int, patch):
    """The engine's cache and patch sampler over the training folder, with the default normalisation of its
    modality; returns (sampler, datasets, plan, norm)."""
    from hermesseg.modalities import default_intensity
    from hermesseg.nnunet import dataset_modality_string, load_datasets, plan_tasks, read_dataset
    from hermesseg.preprocessing import IntensityNorm
    from hermesseg.training.cache import build_cache
    from hermesseg.training.config import DEFAULTS
    from hermesseg.training.sampling import PatchSampler, Source

    modality = dataset_modality_string(read_dataset(train_dir)[0])
    datasets = load_datasets([train_dir], [modality], {})
    plan = plan_tasks(datasets, {})
    norm = IntensityNorm.from_dict(default_intensity(modality))
    cache = build_cache(datasets, plan.per_dataset, spacing, {modality: norm}, cache_root)
    ds = datasets[0]
    source = Source(ds.name, 1.0, list(range(len(plan.per_dataset[ds.name].task_names))), 0, list(cache.values()))
    sampler = PatchSampler([source], patch, DEFAULTS["batch_size"], DEFAULTS["foreground_probability"],
                           DEFAULTS["augmentation"], seed)
    return sampler, ds, plan.per_dataset[ds.name], norm


def train_unet(train_dir: Path, cache_root: Path, spacing, patch, seconds: float, seed: int):
    """MONAI U-Net (softmax over background + the dataset's labels, Dice + CE) trained for ``seconds``."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    sampler, ds, tasks, norm = unet_data(train_dir, cache_root, spacing, seed, patch)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=len(tasks.task_names) + 1,
               channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm="instance")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
    start, steps = time.perf_counter(), 0
    net.train()
    while time.perf_counter() - start < seconds:
        batch = sampler.sample(steps)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(batch["image"]), batch["label"][:, None].long())
        loss.backward()
        opt.step()
        steps += 1
    return net.eval(), ds, tasks, norm, {"steps": steps, "train_s": time.perf_counter() - start,
                                         "trained_parameters": sum(p.numel() for p in net.parameters())}


@torch.no_grad()
def score_unet(net, ds, tasks, norm, heldout: Path, spacing, patch) -> dict:
    """Dice per structure on the held-out cases' original grids: softmax on the model grid, resampled back (linear,
    as the engine does), argmax there."""
    from monai.inferers import sliding_window_inference

    from hermesseg.evaluation.metrics import dice
    from hermesseg.imageio import read_image
    from hermesseg.masks import largest_component
    from hermesseg.nnunet import read_dataset
    from hermesseg.preprocessing import normalize_intensity, resample_to_input, to_model_grid

    meta, cases = read_dataset(heldout)
    labels = {k: int(v) for k, v in meta["labels"].items() if int(v) != 0}
    scores: dict[str, list[float]] = {k: [] for k in labels}
    largest: dict[str, list[float]] = {k: [] for k in labels}
    for case in cases:
        image = read_image(case.image)
        grid = to_model_grid(image, spacing)
        array = normalize_intensity(sitk.GetArrayFromImage(grid), norm).astype(np.float32)
        logits = sliding_window_inference(torch.from_numpy(array)[None, None], tuple(patch), 1, net, overlap=0.5,
                                          mode="gaussian")
        probs = torch.softmax(logits, dim=1)[0].numpy()
        labels_on_input = resample_to_input(probs, grid, image).argmax(axis=0)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
        for label, value in labels.items():
            mask, gt = labels_on_input == tasks.value_to_slot[value], truth == value
            scores[label].append(dice(mask, gt))
            largest[label].append(dice(largest_component(mask), gt))
    largest_mean = {k: float(np.mean(v)) for k, v in largest.items()}
    return {"dice": {k: float(np.mean(v)) for k, v in scores.items()}, "dice_largest_piece": largest_mean,
            "mean_dice_largest_piece": float(np.mean(list(largest_mean.values())))}


# ------------------------------------------------------------------------------------------------ the run
def run(args) -> dict:
    from hermesseg.model import load_model
    from hermesseg.preprocessing import IntensityNorm
    from hermesseg.modalities import default_intensity

    torch.set_num_threads(args.threads)
    base = load_model(args.base)
    spacing = tuple(base.manifest.preprocessing["spacing"])
    patch = tuple(base.manifest.preprocessing["patch_size"])
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_add_task."))
    available = {"priors": cli_offers("add-task", "priors"), "adapter": cli_offers("add-task", "adapter"),
                 "finetune": cli_offers("finetune"), "unet": True}
    rows = []
    result = {"base": str(args.base), "threads": args.threads, "seeds": args.seed, "steps": args.steps,
              "time_limit": args.time_limit, "load_average_start": os.getloadavg(), "rows": rows,
              "available": available, "cpu_count": os.cpu_count(), "torch": torch.__version__}
    for seed, key in itertools.product(args.seed, args.datasets):
        spec = DATASETS[key]
        cases = dataset_cases(spec.root)
        pool, heldout_patients = split_patients(cases, spec.patient_pattern, max(KS), seed, args.max_heldout)
        heldout_cases = cases_of(heldout_patients, cases, spec.patient_pattern)
        key_dir = f"{key}_seed{seed}"
        heldout = build_subset(spec.root, heldout_cases, work / f"{key_dir}_heldout")
        meta = json.loads((spec.root / "dataset.json").read_text())
        patch_image = held_out_patch(heldout / "imagesTr" / f"{heldout_cases[0]}_0000{meta['file_ending']}",
                                     spacing, IntensityNorm.from_dict(default_intensity(meta["modality"])))
        for k in args.k:
            train_cases = cases_of(pool[:k], cases, spec.patient_pattern)
            train_dir = build_subset(spec.root, train_cases, work / f"{key_dir}_k{k}")
            hermes_wall = None  # the longest Hermes run at this k: the U-Net's budget
            for method in args.methods:
                row = {"dataset": key, "seed": seed, "k": k, "volumes": len(train_cases),
                       "heldout_cases": len(heldout_cases),
                       "train_patients": pool[:k], "method": method}
                rows.append(row)
                if not available[method]:
                    row["status"] = "not available"
                    continue
                if method == "unet":
                    seconds = args.unet_seconds or hermes_wall or args.time_limit or 600.0
                    start = time.perf_counter()
                    net, ds, tasks, norm, info = train_unet(train_dir, work / "cache", spacing, patch, seconds,
                                                            seed)
                    row.update(status="ok", budget_s=seconds, wall_s=time.perf_counter() - start, **info)
                    row.update(score_unet(net, ds, tasks, norm, heldout, spacing, patch))
                else:
                    out = work / f"{key_dir}_k{k}_{method}.safetensors"
                    row.update(teach(method, Path(args.base), train_dir, out, seed, args))
                    if row["status"] == "ok":
                        hermes_wall = max(hermes_wall or 0.0, row["wall_s"])
                        row.update(score_hermes(out, heldout, base, patch_image, args))
                if row.get("dice"):
                    row["mean_dice"] = float(np.mean(list(row["dice"].values())))
                row["load_average"] = os.getloadavg()
                print(format_row(row), flush=True)
    add_ratios(rows)
    result["summary"] = split_summary(rows)
    result["load_average_end"] = os.getloadavg()
    return result


def add_ratios(rows: list[dict]) -> None:
    """Dice against the U-Net of the same split, dataset and k, and against the same method's k = 10 result on the
    same split."""
    by = {(r["seed"], r["dataset"], r["k"], r["method"]): r for r in rows}
    for r in rows:
        if r.get("mean_dice") is None:
            continue
        unet = by.get((r["seed"], r["dataset"], r["k"], "unet"), {}).get("mean_dice")
        ten = by.get((r["seed"], r["dataset"], 10, r["method"]), {}).get("mean_dice")
        r["vs_unet"] = r["mean_dice"] / unet if unet and r["method"] != "unet" else None
        r["vs_k10"] = r["mean_dice"] / ten if ten else None


def split_summary(rows: list[dict]) -> list[dict]:
    """Per dataset, k and method, the mean Dice and the ratios over the splits (``--seed 0,1,...``) that scored,
    with their range: which patients are drawn moves a k = 5 figure more than most settings do, so a setting is
    judged on its mean over several splits and on whether it wins on each."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("mean_dice") is not None:
            groups.setdefault((r["dataset"], r["k"], r["method"]), []).append(r)
    out = []
    for (dataset, k, method), scored in groups.items():
        entry = {"dataset": dataset, "k": k, "method": method, "seeds": [r["seed"] for r in scored]}
        for name in ("mean_dice", "vs_unet", "vs_k10"):
            values = [r[name] for r in scored if r.get(name) is not None]
            entry[name] = float(np.mean(values)) if values else None
            entry[f"{name}_range"] = [float(min(values)), float(max(values))] if values else None
        out.append(entry)
    return out


def format_summary(entry: dict) -> str:
    def cell(name: str, spec: str) -> str:
        span = entry[f"{name}_range"]
        return "-" if span is None else f"{entry[name]:{spec}} ({span[0]:{spec}}-{span[1]:{spec}})"
    return (f"| {entry['dataset']} | {entry['k']} | {entry['method']} | {','.join(map(str, entry['seeds']))} | "
            f"{cell('mean_dice', '.3f')} | {cell('vs_unet', '.2f')} | {cell('vs_k10', '.2f')} |")


SUMMARY_HEADER = ("| dataset | k patients | method | splits (seeds) | mean Dice (range) | vs U-Net (range) | "
                  "vs k=10 (range) |\n|" + "---|" * 7)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def format_row(r: dict) -> str:
    dice = " ".join(f"{k}={v:.3f}" for k, v in (r.get("dice") or {}).items())
    if r.get("mean_dice_largest_piece") is not None:
        dice += f" (largest piece of each: mean {r['mean_dice_largest_piece']:.3f})"
    return (f"| {r['dataset']} | {r['seed']} | {r['k']} ({r['volumes']} vol) | {r['method']} | {r.get('status')} | "
            f"{_fmt(r.get('mean_dice'), '.3f')} | {_fmt(r.get('mean_dice_without_found_rule'), '.3f')} | "
            f"{dice or '-'} | {_fmt(r.get('wall_s'), '.0f')} | {_fmt(r.get('steps'), ',')} | "
            f"{_fmt(r.get('trained_parameters'), ',')} | {_fmt(r.get('pack_bytes'), ',')} | "
            f"{_fmt(r.get('forgetting'), '.3g')} | {_fmt(r.get('vs_unet'), '.2f')} | {_fmt(r.get('vs_k10'), '.2f')} | "
            f"{' '.join(f'{x:.1f}' for x in r.get('load_average', ()))} |")


HEADER = ("| dataset | split (seed) | k patients | method | status | mean Dice | without found rule | Dice per "
          "structure | wall s | steps | trained params | pack bytes | forgetting | vs U-Net | vs k=10 | load avg |\n|"
          + "---|" * 16)


def int_list(text: str) -> list[int]:
    """``--k`` and ``--seed``: comma separated integers."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma separated integers, got {text!r}") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", type=lambda s: s.split(","), default=list(DATASETS), help="acdc,la")
    p.add_argument("--k", type=int_list, default=list(KS),
                   help="training patients per run (comma separated, each at most 10)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS), help=",".join(METHODS))
    p.add_argument("--base", default=str(BASE_MODEL))
    p.add_argument("--steps", type=int, help="add-task/finetune --steps (default: the command's own default)")
    p.add_argument("--time-limit", type=float, help="add-task/finetune --time-limit in seconds (default: theirs)")
    p.add_argument("--unet-seconds", type=float,
                   help="U-Net training time (default: the longest Hermes run's wall time at the same k)")
    p.add_argument("--max-heldout", type=int, help="score at most this many held-out patients")
    p.add_argument("--seed", type=int_list, default=[0],
                   help="patient splits to run (comma separated seeds); with several, a summary over them follows")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", help="working folder (default: a new temporary folder)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    for name, values, known in (("datasets", args.datasets, DATASETS), ("methods", args.methods, METHODS)):
        unknown = [v for v in values if v not in known]
        if unknown:
            p.error(f"unknown {name}: {', '.join(unknown)}; known: {', '.join(known)}")
    if any(not 1 <= k <= max(KS) for k in args.k):
        p.error(f"--k values must be in 1..{max(KS)}")
    if "unet" in args.methods:  # the U-Net gets the longest Hermes run's wall time, so it runs last
        args.methods = [m for m in args.methods if m != "unet"] + ["unet"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; threads {args.threads}")
    print(HEADER)
    result = run(args)
    print("\n" + HEADER)
    for r in result["rows"]:
        print(format_row(r))
    if len(args.seed) > 1:
        print("\nover the splits\n" + SUMMARY_HEADER)
        for entry in result["summary"]:
            print(format_summary(entry))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in result['load_average_end'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
