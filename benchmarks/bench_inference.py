"""Inference speed and memory: our pipeline against a reference-style baseline, on the same real volume and model.

Baseline (written here as the reference implementation infers, spec 3.1): one 128^3 window per forward pass, 50%
overlap with floor(D/64) windows per axis (the last shifted to end at the border), uniform averaging of sigmoid
probabilities, float32, the whole probability volume kept on the device.
Ours: the inference stage of `hermesseg.inference.predict` (grouped queries, MONAI Gaussian sliding window, several
windows per pass, bf16 on CUDA, stitching on the device with host fallback). Both get the same preprocessed input
(preprocessing is outside the timer); masks are compared with Dice on the model grid (target > 0.99).
Each method runs in its own process so peak host memory (ru_maxrss) is measured separately.

    .venv/bin/python benchmarks/bench_inference.py --model MODEL --image IMAGE --modality CT [--tasks amos]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def _prepared(args):
    import SimpleITK as sitk
    import torch

    from hermesseg import load_model
    from hermesseg.device import resolve_device
    from hermesseg.imageio import read_image
    from hermesseg.preprocessing import Preprocessing, normalize_intensity, to_model_grid

    model = load_model(args.model, device=resolve_device(args.device))
    tasks = model.resolve_tasks(args.tasks.split(",") if args.tasks else None, args.modality)
    image = read_image(args.image)
    pre = Preprocessing.from_dict(model.manifest.preprocessing)
    grid = to_model_grid(image, pre.spacing)
    array = normalize_intensity(sitk.GetArrayFromImage(grid), pre.norm_for(args.modality))
    return model, tasks, image, torch.from_numpy(array), pre


def baseline_probabilities(model, tasks, x, modality_id: int, roi: int = 128):
    import torch

    device = model.device
    ids = torch.tensor([[t.id for t in tasks] + [-1]], device=device)
    mod = torch.tensor([modality_id], device=device)
    shape = x.shape
    padded = [max(s, roi) for s in shape]
    xp = torch.zeros(padded)
    xp[: shape[0], : shape[1], : shape[2]] = x
    xp = xp.to(device)
    out = torch.zeros((ids.shape[1], *padded), device=device)
    count = torch.zeros(padded, device=device)

    def starts(size):
        n = max(size // (roi // 2), 1)
        return sorted({min(i * (roi // 2), size - roi) for i in range(n)})

    with torch.no_grad():
        for z in starts(padded[0]):
            for y in starts(padded[1]):
                for x0 in starts(padded[2]):
                    window = xp[z:z + roi, y:y + roi, x0:x0 + roi][None, None]
                    logits, _ = model.network(window, ids, mod)
                    out[:, z:z + roi, y:y + roi, x0:x0 + roi] += torch.sigmoid(logits[0])
                    count[z:z + roi, y:y + roi, x0:x0 + roi] += 1
    probs = (out / count)[: len(tasks), : shape[0], : shape[1], : shape[2]]
    return probs.float().cpu().numpy()


def run_method(args) -> dict:
    import torch

    from hermesseg.inference.query_plan import plan_queries
    from hermesseg.inference.sliding_window import sliding_window_probabilities

    model, tasks, image, x, pre = _prepared(args)
    modality_id = model.modality(args.modality).id
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    if args.method == "baseline":
        probs = baseline_probabilities(model, tasks, x, modality_id, pre.patch_size[0])
    else:  # the same stage of `predict`: grouped queries through the Gaussian sliding window
        batch = args.batch_size or (4 if model.device.type == "cuda" else 1)
        chunks = []
        for query in plan_queries(model.manifest, tasks, model.modality(args.modality).name):
            p = sliding_window_probabilities(model.network, x, list(query.task_ids), modality_id, pre.patch_size,
                                             0.5, batch, model.device)
            chunks.append(p[list(query.selected)].numpy())
        probs = np.concatenate(chunks)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    np.save(args.save, (probs >= 0.5))
    return {"method": args.method, "seconds": seconds, "windows_shape": list(x.shape), "tasks": len(tasks),
            "host_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if model.device.type == "cuda" else None,
            "device": str(model.device)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--modality", default="CT")
    p.add_argument("--tasks")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--method", choices=("baseline", "ours"))
    p.add_argument("--save")
    args = p.parse_args()
    if args.method:
        print(json.dumps(run_method(args)))
        return 0
    import tempfile
    from pathlib import Path

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("baseline", "ours"):
            save = str(Path(tmp) / f"{method}.npy")
            cmd = [sys.executable, __file__, "--model", args.model, "--image", args.image, "--modality",
                   args.modality, "--device", args.device, "--method", method, "--save", save]
            cmd += ["--tasks", args.tasks] if args.tasks else []
            cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[method] = json.loads(out.strip().splitlines()[-1])
        a, b = np.load(Path(tmp) / "baseline.npy"), np.load(Path(tmp) / "ours.npy")
    inter = np.logical_and(a, b).sum(axis=(1, 2, 3))
    sums = a.sum(axis=(1, 2, 3)) + b.sum(axis=(1, 2, 3))
    dices = np.where(sums == 0, 1.0, 2 * inter / np.maximum(sums, 1))
    base, ours = results["baseline"], results["ours"]
    print(f"device: {ours['device']}; model grid {ours['windows_shape']}; {ours['tasks']} tasks")
    for r in (base, ours):
        dev = f", device peak {r['device_peak_mb']:.0f} MB" if r["device_peak_mb"] is not None else ""
        print(f"  {r['method']:8s}: {r['seconds']:7.1f} s, host peak {r['host_peak_mb']:.0f} MB{dev}")
    print(f"  speed-up ours vs baseline: {base['seconds'] / ours['seconds']:.2f}x")
    print(f"  mask agreement (Dice per task): min {dices.min():.4f}, mean {dices.mean():.4f}")
    return 0 if dices.min() > 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
