"""How many windows per forward pass, and how many CPU threads: measured once per device and model shape, cached.

On a CPU one window per pass is the slow choice: with batch 1, 39 of the default model's 43 3D convolutions run
through ``aten::slow_conv3d_forward``; with two or more windows all of them use oneDNN (0.66 s against 0.195 s per
48^3 window on two cores). Which batch and thread count is best depends on the machine and its load, so the first
run on a device times a few short forwards of the real network and caches the winner under
``cache_root("calibration")``. A network too slow to time in a few seconds gets the measured defaults below (also
cached: calibration is never repeated for a device and model shape).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass

import torch

from ..atomic import atomic_path
from ..cache_paths import cache_root
from ..network import NULL_TASK, HermesR

log = logging.getLogger(__name__)

BATCHES = (1, 2, 4)
# Measured defaults when calibration is skipped: batch >= 2 switches CPU convolutions to oneDNN.
DEFAULT_BATCH = {"cpu": 2, "cuda": 4, "mps": 2}
# Calibration estimated to take longer than this is skipped (full-size Hermes-R takes ~40 s per 128^3 window on
# 2 cores; the default model ~0.2-0.7 s per 48^3 window).
_MAX_CALIBRATION_SECONDS = 10.0
CALIBRATION_VERSION = 1


@dataclass(frozen=True)
class ExecutionPlan:
    batch_size: int
    threads: int
    source: str  # "calibrated", "cached", "default" or "given"


def _key(network: HermesR, roi: tuple[int, ...], device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type}-{os.cpu_count()}"
    text = json.dumps([CALIBRATION_VERSION, torch.__version__, name, network.config.to_dict(), list(roi)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _seconds_per_window(network: HermesR, roi: tuple[int, ...], batch: int, device: torch.device) -> float:
    x = torch.randn((batch, 1, *roi), device=device)
    tasks = torch.tensor([[0, NULL_TASK]], device=device).expand(batch, -1)
    modality = torch.zeros(batch, dtype=torch.long, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        start = time.perf_counter()
        network(x, tasks, modality)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / batch


def _calibrate(network: HermesR, roi: tuple[int, ...], device: torch.device) -> ExecutionPlan:
    """Time each batch (and on the CPU each thread count) once after a warm-up. When that is estimated (from a
    half-size window) to take over ``_MAX_CALIBRATION_SECONDS``, the defaults are used without timing."""
    cores = torch.get_num_threads()
    small = tuple(min(r, max(32, r // 2)) for r in roi)  # >= 2 voxels at 1/16 for the instance norms
    _seconds_per_window(network, small, 1, device)  # warm-up: first-call set-up is not part of the timing
    estimate = _seconds_per_window(network, small, 1, device) * math.prod(roi) / math.prod(small)
    default = ExecutionPlan(DEFAULT_BATCH.get(device.type, 2), cores, "default")
    thread_options = sorted({1, cores}) if device.type == "cpu" else [cores]
    if estimate * sum(BATCHES) * len(thread_options) > _MAX_CALIBRATION_SECONDS:
        return default
    timings: dict[tuple[int, int], float] = {}
    try:
        for threads in thread_options:
            torch.set_num_threads(threads)
            for batch in BATCHES:
                timings[(batch, threads)] = _seconds_per_window(network, roi, batch, device)
    except torch.OutOfMemoryError:
        pass
    finally:
        torch.set_num_threads(cores)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not timings:
        return default
    (batch, threads), best = min(timings.items(), key=lambda kv: kv[1])
    log.info("calibration on %s: %s -> batch %d, %d threads (%.3f s/window)", device,
             {f"b{b}t{t}": round(s, 3) for (b, t), s in timings.items()}, batch, threads, best)
    return ExecutionPlan(batch, threads, "calibrated")


def choose_execution(network: HermesR, roi: tuple[int, ...], device: torch.device, batch_size: int | None = None,
                     threads: int | None = None, calibrate: bool = True) -> ExecutionPlan:
    """The batch and thread count to run ``network`` with: the ones given, else the cached or freshly measured
    winner for this device and model shape, else the measured defaults."""
    if batch_size is not None and (threads is not None or device.type != "cpu"):
        return ExecutionPlan(batch_size, threads or torch.get_num_threads(), "given")
    path = cache_root("calibration") / f"{_key(network, roi, device)}.json"
    try:
        plan = ExecutionPlan(**{**json.loads(path.read_text()), "source": "cached"})
    except (OSError, ValueError, TypeError):
        if not calibrate:
            plan = ExecutionPlan(DEFAULT_BATCH.get(device.type, 2), torch.get_num_threads(), "default")
        else:
            plan = _calibrate(network, roi, device)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    tmp.write_text(json.dumps(asdict(plan)))
            except OSError as e:  # a read-only cache only costs the next run another calibration
                log.warning("cannot cache the calibration in %s: %s", path, e)
    return ExecutionPlan(batch_size or plan.batch_size, threads or plan.threads,
                         "given" if batch_size or threads else plan.source)
