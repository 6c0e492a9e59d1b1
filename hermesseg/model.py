"""A loaded Hermes model: the network plus its manifest, and the name-level queries the CLI and Slicer need."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import QueryError
from .manifest import Manifest, TaskEntry
from .model_file import read_model_state
from .network import HermesR


@dataclass
class HermesModel:
    network: HermesR
    manifest: Manifest
    device: torch.device

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    def modality(self, name: str):
        try:
            return self.manifest.modality(name)
        except KeyError:
            valid = ", ".join(m.name for m in self.manifest.modalities)
            raise QueryError(f"unknown modality {name!r}; this model knows: {valid}") from None

    def tasks_for_modality(self, modality: str) -> list[TaskEntry]:
        mod = self.modality(modality).name
        return [t for t in self.manifest.tasks if mod in t.modalities]

    def resolve_tasks(self, names: list[str] | None, modality: str, force: bool = False) -> list[TaskEntry]:
        """Task names or group names -> task entries (model order). None = every task of the modality.

        A task never learned for ``modality`` is refused unless ``force``.
        """
        mod = self.modality(modality).name
        if not names:
            tasks = self.tasks_for_modality(mod)
            if not tasks:
                raise QueryError(f"the model has no task for modality {mod!r}")
            return tasks
        by_name = {t.name.lower(): t for t in self.manifest.tasks}
        groups = {g.lower(): g for g in self.manifest.groups}
        chosen: dict[int, TaskEntry] = {}
        for raw in names:
            key = raw.strip().lower()
            if key in by_name:
                entries = [by_name[key]]
            elif key in groups:
                entries = [t for t in self.manifest.tasks if t.group == groups[key] and (force or mod in t.modalities)]
            else:
                raise QueryError(f"unknown task or group {raw!r}; see `hermesseg info MODEL` for the task list")
            for t in entries:
                if mod not in t.modalities and not force:
                    raise QueryError(f"task {t.name!r} was learned for {', '.join(t.modalities)}, not {mod}; "
                                     f"pass --force to run it anyway")
                chosen[t.id] = t
        order = {t.id: i for i, t in enumerate(self.manifest.tasks)}
        return sorted(chosen.values(), key=lambda t: order[t.id])


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", verify: bool = True) -> HermesModel:
    """Load and validate a model file; the network is in eval mode on ``device``."""
    manifest, state = read_model_state(path, verify=verify)
    network = HermesR(manifest.config)
    network.load_state_dict(state, strict=True)
    device = torch.device(device)
    network.to(device).eval()
    return HermesModel(network=network, manifest=manifest, device=device)
