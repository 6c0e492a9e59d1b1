"""What a tick in the structure tree selects (GUI-free: the widget only mirrors these decisions into Qt items).

The tree lists the model's tasks of the current modality grouped by dataset, and the search box hides the tasks that
do not match. Ticking a dataset group ticks only the tasks that are shown, never one hidden by the search; unticking
it unticks the shown ones. A group's tick box reflects its shown tasks (so clicking it again undoes the click). What
Segment runs is every ticked task of the tree, shown or hidden, and that is the count the widget displays.
"""

from __future__ import annotations

from typing import Iterable

CHECKED, PARTIAL, UNCHECKED = "checked", "partial", "unchecked"


def filterWords(text: str | None) -> list[str]:
    return (text or "").lower().replace("_", " ").split()


def matchesFilter(words: list[str], *texts: str) -> bool:
    """True when every search word occurs in one of ``texts`` (task name, dataset, shown label; '_' = ' ')."""
    haystack = " ".join(texts).lower().replace("_", " ")
    return all(w in haystack for w in words)


def tickGroup(ticked: Iterable[str], groupTasks: Iterable[str], shown: Iterable[str], tick: bool) -> set[str]:
    """The ticked tasks after the user ticks (or unticks) a group: only its shown tasks change."""
    shownInGroup = set(groupTasks) & set(shown)
    return (set(ticked) | shownInGroup) if tick else (set(ticked) - shownInGroup)


def groupState(groupTasks: Iterable[str], ticked: Iterable[str], shown: Iterable[str]) -> str:
    """The group's tick box: CHECKED when all its shown tasks are ticked, UNCHECKED when none is, else PARTIAL."""
    shownInGroup = set(groupTasks) & set(shown)
    count = len(shownInGroup & set(ticked))
    if not shownInGroup or count == 0:
        return UNCHECKED
    return CHECKED if count == len(shownInGroup) else PARTIAL


def selectionCounts(ticked: Iterable[str], shown: Iterable[str]) -> tuple[int, int]:
    """(tasks Segment will run, how many of them the search hides)."""
    ticked = set(ticked)
    return len(ticked), len(ticked - set(shown))
