"""How many windows per forward pass, and how many CPU threads: measured once per device and model shape, cached.

On a CPU one window per pass is the slow choice: with batch 1, 39 of the default model's 43 3D convolutions run
through ``aten::slow_conv3d_forward``; with two or more windows all of them use oneDNN (0.66 s against 0.195 s per
48^3 window on two cores). Which batch and thread count is best depends on the machine and its load, so the first
run on a device times a few short forwards of the real network and caches the winner under
``cache_root("calibration")``. A network too large to time in a few seconds on a CPU gets the measured defaults
below without timing (also cached). That decision is taken from the network's size, not from a timing: a first run
on a loaded machine would otherwise skip calibration and cache the defaults for good.
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
# On a CPU, calibration is skipped above this many full-resolution activation elements per window (window voxels x
# base channels): full-size Hermes-R (128^3 x 32 = 67 M) takes about 10 s per window on 2 cores, the default model
# (48^3 x 8 = 0.9 M) 0.2-0.7 s, so its 2 x 3 timed forwards take a few seconds.
_MAX_CALIBRATION_ELEMENTS = 1 << 23
CALIBRATION_VERSION = 2  # 1 skipped by a timing, which a loaded machine could make cache the defaults for good


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
    """Time each batch (and on the CPU each thread count) once after a warm-up; on a CPU, a network above
    ``_MAX_CALIBRATION_ELEMENTS`` per window gets the defaults without timing."""
    cores = torch.get_num_threads()
    default = ExecutionPlan(DEFAULT_BATCH.get(device.type, 2), cores, "default")
    if device.type == "cpu" and math.prod(roi) * network.config.base_channels > _MAX_CALIBRATION_ELEMENTS:
        return default
    small = tuple(min(r, max(32, r // 2)) for r in roi)  # >= 2 voxels at 1/16 for the instance norms
    _seconds_per_window(network, small, 1, device)  # warm-up: first-call set-up is not part of the timing
    thread_options = sorted({1, cores}) if device.type == "cpu" else [cores]
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
