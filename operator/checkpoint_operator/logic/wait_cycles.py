"""TrainingJobs that wait on each other's output (issue 18 item 6): found, not waited on forever.

A job that has not started waits on each TrainingJob it takes `fromTrainingJob` until that job
has finished (or publishes what it asks for). When those waits form a cycle (a waits on b, b
on a), every job of it stays Pending forever: none can start before another finishes. Only jobs
that have not started wait, so a cycle is made of Pending jobs only, and it ends only when one
of them is changed or deleted: the jobs report Stalled, naming the cycle.

Pure: `waits_on(name)` answers from the operator's index (no API request); the search visits
each job at most once, and at most `MAX_VISITED` of them, whatever the namespace holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Optional

MAX_VISITED = 10_000


@dataclass(frozen=True)
class WaitCycle:
    path: tuple[str, ...]   # from the job asked about to the cycle's first job (that job alone when on the cycle)
    cycle: tuple[str, ...]  # the cycle, its first job repeated at its end: ("a", "b", "a")

    @property
    def includes_start(self) -> bool:
        return len(self.path) == 1

    def arrows(self) -> str:
        return " -> ".join(self.cycle)

    def message(self) -> str:
        if self.includes_start:
            return (f"TrainingJobs {self.arrows()} wait on each other's output: none of them can start; "
                    "delete one of them or change its spec.checkpoints")
        via = " -> ".join(self.path)
        return (f"it waits on a cycle of TrainingJobs that never ends ({via}, then {self.arrows()}); "
                "delete one of them or change its spec.checkpoints")


def find_wait_cycle(start: str, waits_on: Callable[[str], Iterable[str]]) -> Optional[WaitCycle]:
    """A cycle through `start` (the shortest), else one that `start` waits on through others,
    else None."""
    through = _cycle_through(start, waits_on)
    if through is not None:
        return WaitCycle((start,), through)
    return _cycle_reached(start, waits_on)


def _successors(name: str, waits_on: Callable[[str], Iterable[str]]) -> list[str]:
    return sorted(set(waits_on(name)))


def _cycle_through(start: str, waits_on: Callable[[str], Iterable[str]]) -> Optional[tuple[str, ...]]:
    """Breadth first from `start` back to itself: the shortest cycle through it."""
    parent: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue and len(seen) <= MAX_VISITED:
        node = queue.popleft()
        for succ in _successors(node, waits_on):
            if succ == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return (*reversed(path), start)
            if succ not in seen:
                seen.add(succ)
                parent[succ] = node
                queue.append(succ)
    return None


def _cycle_reached(start: str, waits_on: Callable[[str], Iterable[str]]) -> Optional[WaitCycle]:
    """Depth first, with an explicit stack: the first cycle found below `start`."""
    stack: list[tuple[str, list[str]]] = [(start, _successors(start, waits_on))]
    on_stack = {start}
    done: set[str] = set()
    while stack and len(done) + len(on_stack) <= MAX_VISITED:
        node, todo = stack[-1]
        if not todo:
            stack.pop()
            on_stack.discard(node)
            done.add(node)
            continue
        succ = todo.pop(0)
        if succ in on_stack:
            names = [n for n, _ in stack]
            first = names.index(succ)
            return WaitCycle(tuple(names[:first + 1]), (*names[first:], succ))
        if succ not in done:
            stack.append((succ, _successors(succ, waits_on)))
            on_stack.add(succ)
    return None
