"""Training checkpoints: written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and primitive containers (dicts, lists, str, int, float, bool, None), so the safe
loader accepts it: model and EMA state dicts, the optimiser's state dict, the schedule (the iteration), the RNG states
(torch, CUDA, numpy's and Python's global generators, converted to tensors/lists), the sampler state (seed, iteration,
world size) and the best-validation record. The write goes to a temporary file next to the target that replaces it
only once complete (``hermesseg.atomic.atomic_path``), so a crash or full disk mid-write leaves the previous
checkpoint as it was.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import HermesError

CHECKPOINT_FORMAT = "hermes-train-checkpoint"
CHECKPOINT_VERSION = 1


class ResumeError(HermesError):
    """A run directory or checkpoint cannot be resumed."""


def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]),
                   "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` (plus format tags) atomically to ``path``."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/IO problem means the file is unusable
        raise ResumeError(f"{path}: not a readable training checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ResumeError(f"{path} is not a Hermes training checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ResumeError(f"{path}: checkpoint version {payload.get('version')!r} is not supported "
                          f"(this hermesseg writes {CHECKPOINT_VERSION})")
    return payload
