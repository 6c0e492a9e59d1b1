"""What a tick in the structure tree selects: a dataset group ticks only the tasks the search shows, and the count
is what Segment runs. The widget mirrors HermesSegmentationLib.task_selection into Qt items; this is that logic,
on the default model's real task table."""

from __future__ import annotations

import sys

from paths import REPO, SHIPPED_MODEL

sys.path.insert(0, str(REPO / "HermesSegmentation"))
sys.path.insert(0, str(REPO))  # HermesLib

from HermesLib import models  # noqa: E402
from HermesSegmentationLib import task_selection as ts  # noqa: E402

DEFAULT_MODEL = SHIPPED_MODEL


def shown_tasks(groups: dict, text: str) -> set[str]:
    """The widget's filter: a task is shown when every word is in its name, its dataset or its label."""
    words = ts.filterWords(text)
    return {t["name"] for group, tasks in groups.items() for t in tasks
            if ts.matchesFilter(words, t["name"], group, t["name"].replace("_", " "))}


def test_ticking_a_filtered_group_ticks_only_the_shown_tasks():
    groups = models.tasksByGroup(models.readModelInfo(DEFAULT_MODEL), "CT")
    body = [t["name"] for t in groups["ct_body_tsdataset"]]
    shown = shown_tasks(groups, "vertebrae")
    shown_body = {n for n in body if n in shown}
    assert 0 < len(shown_body) < len(body), "the search should hide part of the group"
    assert all("vertebrae" in n for n in shown_body)

    ticked = ts.tickGroup(set(), body, shown, tick=True)
    assert ticked == shown_body  # nothing hidden by the search was ticked
    assert ts.groupState(body, ticked, shown) == ts.CHECKED  # a second click unticks
    assert ts.selectionCounts(ticked, shown) == (len(shown_body), 0)

    # the search is cleared: the same ticks, now a partial group; the count is still what will run
    everything = shown_tasks(groups, "")
    assert ts.groupState(body, ticked, everything) == ts.PARTIAL
    assert ts.selectionCounts(ticked, everything) == (len(shown_body), 0)

    # another search hides the ticked vertebrae: they still run, and the count says how many are hidden
    liver = shown_tasks(groups, "liver")
    count, hidden = ts.selectionCounts(ticked, liver)
    assert count == len(shown_body) and hidden == len(shown_body)

    # unticking the group under the vertebrae search clears only those shown tasks
    ribs = {n for n in body if "rib" in n}
    assert ribs
    ticked_more = ticked | ribs
    after = ts.tickGroup(ticked_more, body, shown, tick=False)
    assert after == ribs


def test_group_state_and_filter_words():
    assert ts.groupState(["a", "b"], set(), {"a", "b"}) == ts.UNCHECKED
    assert ts.groupState(["a", "b"], {"a"}, {"a", "b"}) == ts.PARTIAL
    assert ts.groupState(["a", "b"], {"a"}, {"a"}) == ts.CHECKED
    assert ts.groupState(["a", "b"], {"a", "b"}, set()) == ts.UNCHECKED  # nothing shown
    assert ts.tickGroup({"x"}, ["a", "b"], set(), tick=True) == {"x"}
    assert ts.filterWords("  Lung_upper  LOBE ") == ["lung", "upper", "lobe"]
    assert ts.matchesFilter(["upper", "lung"], "ct_abdomen_ts_lung_upper_lobe_left", "ct_abdomen_ts")
    assert not ts.matchesFilter(["upper", "liver"], "ct_abdomen_ts_lung_upper_lobe_left", "ct_abdomen_ts")
