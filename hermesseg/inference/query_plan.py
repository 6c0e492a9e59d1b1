"""Which forward queries answer a selection of tasks (spec 1.7, 3.2).

The voxel stream attends to every token in the query, so a task's output depends on its query companions. Each
selected task is therefore run inside the task group it was trained with (all of the group's tasks for this modality,
plus one null token), and the wanted channels are selected afterwards: a task's mask never depends on which other
tasks the user happened to pick.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..manifest import Manifest, TaskEntry
from ..network import NULL_TASK


@dataclass(frozen=True)
class GroupQuery:
    group: str
    task_ids: tuple[int, ...]  # the query, null token last
    selected: tuple[int, ...]  # positions in task_ids of the tasks the user asked for, in selection order


def plan_queries(manifest: Manifest, selected: list[TaskEntry], modality: str) -> list[GroupQuery]:
    queries: list[GroupQuery] = []
    for group in dict.fromkeys(t.group for t in selected):
        wanted = [t for t in selected if t.group == group]
        members = [t for t in manifest.tasks if t.group == group and (modality in t.modalities or t in wanted)]
        ids = tuple(t.id for t in members) + (NULL_TASK,)
        queries.append(GroupQuery(group, ids, tuple(ids.index(t.id) for t in wanted)))
    return queries
