"""Which tasks run when the user names none: only those with measured evidence (spec 7.14).

A task qualifies when its stored quality (``TaskEntry.quality``) shows a held-out Dice of at least
:data:`MIN_HELDOUT_DICE` on at least :data:`MIN_HELDOUT_CASES` case(s) its labels never came from. Dice 0.5 is where
a mask overlaps the truth more than it errs (overlap = half of the two volumes together): below it a user sees a
mask that is mostly in the wrong place. On the default model the threshold separates cleanly: the one transferring
task (brain mask, 0.83 on the MNI template) against at most 0.17 for every other measured task.

Other tasks stay available by name; they are *experimental*. This module is torch-free so the Slicer module can
use the same rule through ``hermesseg info --json`` (each task's ``default`` flag).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalogue import catalogue
from .manifest import DEFAULT_THRESHOLD

MIN_HELDOUT_DICE = 0.5
MIN_HELDOUT_CASES = 1


def has_evidence(task) -> bool:
    """True when the task's measured held-out quality reaches the documented threshold."""
    q = getattr(task, "quality", None)
    return bool(q) and q["heldout_cases"] >= MIN_HELDOUT_CASES and q["heldout_dice"] >= MIN_HELDOUT_DICE


def quality_text(task) -> str:
    """``Dice 0.83 on 1 held-out case`` (``, largest piece only`` when the task keeps only its largest piece,
    ``, drawn at probability 0.3`` at a threshold other than 0.5) or ``seen in training only``."""
    q = getattr(task, "quality", None)
    if not q:
        return "seen in training only"
    cases = q["heldout_cases"]
    piece = ", largest piece only" if getattr(task, "keep_largest_component", False) else ""
    threshold = getattr(task, "threshold", DEFAULT_THRESHOLD)
    drawn = f", drawn at probability {threshold:g}" if threshold != DEFAULT_THRESHOLD else ""
    return f"Dice {q['heldout_dice']:.2f} on {cases} held-out case{'s' if cases != 1 else ''}{piece}{drawn}"


@dataclass
class Selection:
    """The default tasks of one modality (one per structure, the preferred task) and the experimental rest."""

    chosen: list = field(default_factory=list)
    experimental: list = field(default_factory=list)


def default_selection(tasks, modality: str) -> Selection:
    """Split a model's tasks for ``modality``: the preferred task of each structure with evidence runs by default."""
    selection = Selection()
    for choice in catalogue().choices(tasks, modality):
        for task in choice.tasks:
            if task is choice.preferred and has_evidence(task):
                selection.chosen.append(task)
            else:
                selection.experimental.append(task)
    order = {id(t): i for i, t in enumerate(tasks)}
    selection.chosen.sort(key=lambda t: order[id(t)])
    selection.experimental.sort(key=lambda t: order[id(t)])
    return selection


def no_evidence_message(model_name: str, modality: str) -> str:
    """What to say when no task of ``modality`` qualifies, and how to proceed."""
    return (f"model {model_name!r} has no task with measured evidence for {modality} (held-out Dice >= "
            f"{MIN_HELDOUT_DICE} on >= {MIN_HELDOUT_CASES} case); to go on: pass --tasks NAME to run an experimental "
            f"task anyway (`hermesseg tasks` lists them), import the official Hermes-R weights with "
            f"`hermesseg import-official`, or teach your own structures with `hermesseg add-task`")


def experimental_warning(tasks) -> str:
    """The one-line warning printed when experimental tasks are run on request."""
    names = ", ".join(f"{catalogue().display_name(t)} ({t.name})" for t in tasks)
    return f"experimental: no measured evidence for {names}"
