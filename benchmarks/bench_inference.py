"""Inference speed, memory and mask agreement: the baseline pipeline against the current one, in one run.

Both are `hermesseg segment`'s own code (``segment_inputs``) on the same inputs, model and window placement
(MONAI Gaussian sliding window, same overlap): the baseline is ``InferenceOptions.baseline()``, the behaviour before
the speed work (one window per forward pass, a full network pass per task group, whole-volume resampling back), the
current one is the default (windows per pass and threads from calibration, one encoder pass per window for all
groups, resampling only inside each task's box, empty tasks skipped). ``--fast`` is measured against the default.
Each run is its own process (peak host memory = ru_maxrss); stage seconds come from the progress events; the
1-minute load average is read before and after each run, since other work on the machine changes every figure.

Per task, the Dice between the two pipelines' masks (on the input grid, from the written .seg.nrrd) must be > 0.99
where only numerics differ; a task found by one pipeline only counts 0, one found by neither is left out.

    .venv/bin/python benchmarks/bench_inference.py --data ../shared/data --out runs/bench.json
        [--cases s0002,lung1,brain] [--full-size] [--deepbet-path DIR]

``--deepbet-path``: a folder with the ``deepbet`` package (PyPI, MIT, ships its weights) and its dependencies
(``pip install --target DIR deepbet nibabel pandas fill_voids connected-components-3d``), for the brain comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
DEFAULT_MODEL = HERE.parents[1] / "Resources" / "Models" / "hermes-mini.safetensors"
BRAIN_TASK = "mr_brain_structures_colin_brain"
BRAIN_IMAGES = ("mr_brain_tumour_t1c/imagesTr/brain1_0000.nii.gz", "mr_brain_tumour_t1c/imagesTr/brain2_0000.nii.gz",
                "mr_brain_structures_colin/imagesTr/colin27_ch2_0000.nii.gz",
                "mr_brain_tissue_mni/imagesTr/mni152_2009a_sym_0000.nii.gz")
# name -> (images relative to --data, modality, tasks (None = every task of the modality, named explicitly: without
# --tasks, segment runs only the tasks with held-out evidence))
CASES = {
    "s0002": (("ct_body_tsdataset/imagesTr/s0002_0000.nii.gz",), "CT", None),
    "lung1": (("ct_lung_tumour/imagesTr/lung1_0000.nii.gz",), "CT", None),
    "lung1-3tasks": (("ct_lung_tumour/imagesTr/lung1_0000.nii.gz",), "CT",
                     "ct_body_tsdataset_thyroid_gland,ct_body_tsdataset_esophagus,ct_body_tsdataset_trachea"),
    "brain": (BRAIN_IMAGES, "MR-T1", BRAIN_TASK),
    "abdomen-small": (("ct_abdomen_ts/imagesTr/example_ct_sm_0000.nii.gz",), "CT", None),
}


class StageClock:
    """A Progress stand-in that records when each stage starts (stages: load, preprocess, inference, resample,
    write), summed over inputs."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._stage, self._since = None, time.perf_counter()

    def update(self, stage: str, fraction: float, message: str = "") -> None:
        if stage != self._stage:
            self._lap()
            self._stage = stage

    def _lap(self) -> None:
        now = time.perf_counter()
        if self._stage is not None:
            self.seconds[self._stage] = self.seconds.get(self._stage, 0.0) + now - self._since
        self._since = now

    def done(self, outputs, message: str = "") -> None:
        self._lap()
        self._stage = None

    error = done

    def close(self) -> None:
        pass


def full_size_model(device):
    """Full-size Hermes-R (spec 1.1: base 32, 128^3 windows at 1.5 mm) with random weights and the default model's
    task and modality tables: for timing only."""
    import torch

    from hermesseg import load_model
    from hermesseg.manifest import architecture_dict
    from hermesseg.model import HermesModel
    from hermesseg.network import HermesR, HermesRConfig

    mini = load_model(DEFAULT_MODEL)
    config = HermesRConfig(num_task_rows=mini.manifest.config.num_task_rows,
                           num_modalities=mini.manifest.config.num_modalities)
    torch.manual_seed(0)
    manifest = dataclasses.replace(mini.manifest, architecture=architecture_dict(config),
                                   preprocessing={**mini.manifest.preprocessing, "spacing": [1.5, 1.5, 1.5],
                                                  "patch_size": [128, 128, 128]})
    return HermesModel(HermesR(config).to(device).eval(), manifest, device)


def child(spec: dict) -> dict:
    """One pipeline on one case, in this process."""
    import torch

    from hermesseg import load_model
    from hermesseg.device import resolve_device
    from hermesseg.inference import InferenceOptions
    from hermesseg.inference.segment_job import SegmentRequest, segment_inputs

    device = resolve_device(spec["device"])
    start = time.perf_counter()
    model = full_size_model(device) if spec["model"] == "full-size" else load_model(DEFAULT_MODEL, device=device)
    load_seconds = time.perf_counter() - start
    options = (InferenceOptions.baseline if spec["pipeline"] == "baseline" else InferenceOptions)(fast=spec["fast"])
    names = (spec["tasks"].split(",") if spec["tasks"]
             else [t.name for t in model.tasks_for_modality(spec["modality"])])
    request = SegmentRequest([Path(p) for p in spec["images"]], Path(spec["out"]), names, spec["modality"],
                             force=True, options=options)
    clock = StageClock()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    outputs = segment_inputs(model, request, clock)
    clock.done(outputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "model_load_seconds": load_seconds, "stages": clock.seconds,
            "per_volume": seconds / len(spec["images"]), "load_average": [load_before, os.getloadavg()[0]],
            "host_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
            "tasks": sum(len(o["tasks"]) for o in outputs), "not_found": sum(len(o["not_found"]) for o in outputs),
            "segmentations": [o["segmentation"] for o in outputs], "device": str(device)}


def deepbet_child(spec: dict) -> dict:
    """deepbet's brain extraction on the same brain MRs (its weights ship with the package)."""
    from deepbet.bet import BrainExtraction

    start = time.perf_counter()
    Path(spec["out"]).mkdir(parents=True, exist_ok=True)
    bet = BrainExtraction(no_gpu=spec["device"] == "cpu")
    load_seconds = time.perf_counter() - start
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    for i, image in enumerate(spec["images"]):
        bet.run(image, mask_path=str(Path(spec["out"]) / f"mask{i}.nii.gz"))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "model_load_seconds": load_seconds, "per_volume": seconds / len(spec["images"]),
            "load_average": [load_before, os.getloadavg()[0]], "stages": {},
            "host_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def segment_masks(path: str) -> dict[str, np.ndarray]:
    import slicerio

    seg = slicerio.read_segmentation(path)
    voxels = seg["voxels"]
    return {s["id"]: (voxels if voxels.ndim == 3 else voxels[s["layer"]]) == s["labelValue"]
            for s in seg["segments"]}


def agreement(a_paths: list[str], b_paths: list[str]) -> dict[str, float]:
    """Dice per task between two runs' segmentations (found by one only: 0; by neither: left out)."""
    dices = {}
    for pa, pb in zip(a_paths, b_paths):
        a, b = segment_masks(pa), segment_masks(pb)
        for name in set(a) | set(b):
            x, y = a.get(name), b.get(name)
            if x is None or y is None:
                dices[f"{Path(pa).name}:{name}"] = 0.0
                continue
            dices[f"{Path(pa).name}:{name}"] = float(2 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))
    return dices


def run(spec: dict, extra_path: str | None = None) -> dict:
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), extra_path]))
    cmd = [sys.executable, str(HERE), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(label: str, r: dict, reference: dict | None = None) -> str:
    if "error" in r:
        return f"| {label} | failed: {r['error']} |"
    stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items())
    ratio = f"{reference['seconds'] / r['seconds']:.2f}x" if reference and "seconds" in reference else ""
    dev = f", GPU {r['device_peak_mb']:.0f} MB" if r.get("device_peak_mb") else ""
    return (f"| {label} | {r['seconds']:.1f} s ({r['per_volume']:.1f}/vol) | {ratio} | {stages} | "
            f"{r['host_peak_mb']:.0f} MB{dev} | {r['load_average'][0]:.1f}-{r['load_average'][1]:.1f} |")


def dice_summary(d: dict[str, float]) -> str:
    if not d:
        return "no task found by either"
    worst = min(d, key=d.get)
    return f"min {d[worst]:.4f} ({worst}), mean {np.mean(list(d.values())):.4f}, {len(d)} tasks"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parents[2] / "shared" / "data")
    p.add_argument("--cases", default="s0002,lung1,lung1-3tasks,brain", help=f"from {', '.join(CASES)}")
    p.add_argument("--no-fast", action="store_true", help="skip the --fast runs")
    p.add_argument("--full-size", action="store_true",
                   help="also time the full-size Hermes-R (random weights) on the small abdomen CT, --fast only")
    p.add_argument("--deepbet-path", help="folder holding the deepbet package and its dependencies")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, help="write every figure as JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(deepbet_child(spec) if spec["pipeline"] == "deepbet" else child(spec)))
        return 0

    plan = [(case, "default", fast) for case in args.cases.split(",") for fast in (False, True)
            if not (fast and args.no_fast)]
    if args.full_size:
        plan.append(("abdomen-small", "full-size", True))
    results = {}
    lines = ["| run | end to end | speed-up | stage seconds | host peak | load avg |", "|---|---|---|---|---|---|"]
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, model, fast in plan:
            images, modality, tasks = CASES[case]
            paths = [str(args.data / i) for i in images]
            key = f"{case} {model}{' --fast' if fast else ''}"
            pipelines = ("current",) if case.endswith("3tasks") else ("baseline", "current")
            if fast and model == "default":
                pipelines = ("current",)  # --fast is compared with the default mode, not with the baseline
            runs = {}
            for pipeline in pipelines:
                spec = {"images": paths, "modality": modality, "tasks": tasks, "model": model, "fast": fast,
                        "pipeline": pipeline, "device": args.device, "out": str(Path(tmp) / key / pipeline)}
                runs[pipeline] = run(spec)
                print(f"{key} {pipeline}: {runs[pipeline].get('seconds', runs[pipeline])}", file=sys.stderr,
                      flush=True)
            results[key] = runs
            if args.out:  # after every run, so a long benchmark that is stopped keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1))
            if "baseline" in runs:
                lines.append(row(f"{key} baseline", runs["baseline"]))
            lines.append(row(f"{key} current", runs["current"], runs.get("baseline")))
            if "baseline" in runs and "seconds" in runs["baseline"] and "seconds" in runs["current"]:
                d = agreement(runs["baseline"]["segmentations"], runs["current"]["segmentations"])
                runs["dice_baseline_vs_current"] = d
                notes.append(f"- {key}: Dice baseline vs current: {dice_summary(d)}")
            normal = results.get(f"{case} {model}", {}).get("current")
            if fast and normal and "seconds" in normal and "seconds" in runs["current"]:
                d = agreement(normal["segmentations"], runs["current"]["segmentations"])
                runs["dice_default_vs_fast"] = d
                notes.append(f"- {key}: Dice default vs --fast: {dice_summary(d)}; "
                             f"{normal['seconds'] / runs['current']['seconds']:.2f}x faster")
            if case == "brain" and not fast and args.deepbet_path:
                runs["deepbet"] = run({"images": paths, "pipeline": "deepbet", "device": args.device,
                                       "out": str(Path(tmp) / key / "deepbet")}, args.deepbet_path)
                lines.append(row("brain deepbet", runs["deepbet"]))
    three, everything = results.get("lung1-3tasks default", {}), results.get("lung1 default", {})
    if "seconds" in three.get("current", {}) and "seconds" in everything.get("current", {}):
        notes.append(f"- lung1, 3 tasks of one group / all CT tasks: "
                     f"{three['current']['seconds'] / everything['current']['seconds']:.2f} of the time")
    print("\n".join(lines + [""] + notes))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
