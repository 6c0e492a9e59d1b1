"""Choosing the compute device: auto picks CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import HermesError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cuda", "cpu", "mps")


def resolve_device(name: str = "auto") -> "torch.device":
    import torch  # here, not at import: the CLI's --help must not load torch
    if name not in DEVICES:
        raise HermesError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise HermesError("--device cuda was asked for, but this torch build sees no CUDA GPU "
                          f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise HermesError("--device mps was asked for, but Apple MPS is not available here")
    return torch.device(name)
