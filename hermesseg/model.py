"""A loaded Hermes model: the network plus its manifest, and the name-level queries the CLI and Slicer need."""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass

import torch

from .catalogue import catalogue
from .errors import QueryError
from .manifest import Manifest, TaskEntry
from .model_file import read_model_state
from .network import HermesR
from .selection import default_selection, experimental_warning, has_evidence, no_evidence_message

log = logging.getLogger(__name__)


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
        """Task ids, group names or structure display names (case-insensitive) -> task entries (model order).

        None = the modality's tasks with measured evidence (:func:`hermesseg.selection.default_selection`); a
        QueryError says how to proceed when there is none. A display name ("Liver") means the structure's preferred
        task for ``modality``. Experimental tasks that were asked for are logged as a one-line warning. A task never
        learned for ``modality`` is refused unless ``force``.
        """
        mod = self.modality(modality).name
        if not names:
            if not self.tasks_for_modality(mod):
                raise QueryError(f"the model has no task for modality {mod!r}")
            chosen = default_selection(self.manifest.tasks, mod).chosen
            if not chosen:
                raise QueryError(no_evidence_message(self.manifest.name, mod))
            return chosen
        chosen: dict[int, TaskEntry] = {}
        for raw in names:
            for t in self._lookup(raw.strip(), mod, force):
                if mod not in t.modalities and not force:
                    raise QueryError(f"task {t.name!r} was learned for {', '.join(t.modalities)}, not {mod}; "
                                     f"pass --force to run it anyway")
                chosen[t.id] = t
        order = {t.id: i for i, t in enumerate(self.manifest.tasks)}
        tasks = sorted(chosen.values(), key=lambda t: order[t.id])
        experimental = [t for t in tasks if not has_evidence(t)]
        if experimental:
            log.warning(experimental_warning(experimental))
        return tasks

    def _lookup(self, raw: str, modality: str, force: bool) -> list[TaskEntry]:
        """One name of --tasks: a task id, a group, or a structure's display name or catalogue key."""
        key = raw.lower()
        for t in self.manifest.tasks:
            if t.name.lower() == key:
                return [t]
        for g in self.manifest.groups:
            if g.lower() == key:
                tasks = [t for t in self.manifest.tasks if t.group == g and (force or modality in t.modalities)]
                if not tasks:
                    raise QueryError(f"group {g!r} has no task for {modality}; pass --force to run it anyway")
                return tasks
        everywhere = catalogue().choices(self.manifest.tasks)
        here = everywhere if force else catalogue().choices(self.manifest.tasks, modality)
        entry = catalogue().structure(key)  # a catalogue key or alias ("kidney_left", "portal_splenic_vein")

        def matching(choices):
            return [c for c in choices if key in (c.structure.name.lower(), c.structure.key.lower())
                    or (entry is not None and c.structure.key == entry.key)]

        if matching(here):
            return [matching(here)[0].preferred]
        if matching(everywhere):
            choice = matching(everywhere)[0]
            learned = ", ".join(dict.fromkeys(m for t in choice.tasks for m in t.modalities))
            raise QueryError(f"{choice.structure.name!r} was learned for {learned}, not {modality}; "
                             f"pass --force to run it anyway")
        vocabulary = {v.lower(): v for v in [t.name for t in self.manifest.tasks] + self.manifest.groups
                      + [c.structure.name for c in here]}
        close = difflib.get_close_matches(key, list(vocabulary), n=5, cutoff=0.6)
        close += [v for v in vocabulary if key in v and v not in close][:5 - len(close)]
        hint = f"; did you mean: {', '.join(vocabulary[c] for c in close)}?" if close else ""
        raise QueryError(f"unknown task, structure or group {raw!r}{hint} (`hermesseg tasks` lists this model's)")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", verify: bool = True) -> HermesModel:
    """Load and validate a model file; the network is in eval mode on ``device``."""
    manifest, state = read_model_state(path, verify=verify)
    network = HermesR(manifest.config)
    network.load_state_dict(state, strict=True)
    device = torch.device(device)
    network.to(device).eval()
    return HermesModel(network=network, manifest=manifest, device=device)
