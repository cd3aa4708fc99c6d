"""A checkpoint assembled across workers' volumes (output.volumePerWorker): which worker's volume
provides which of its files, as few mounts as can show them side by side in one directory.

Pure and standard-library only: the agent computes each worker's share when it scans the parts
(agent/parts.py) and reports it in the scan's result (protocol/results.py, PartSummary); the
volume store turns the shares into volume locations (logic/parts.py).
"""

from __future__ import annotations

from typing import Optional


def grouped_items(files: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """(item, worker) covering `files` ((path, worker) each): a directory whose files all come
    from one worker is one item, else its entries are looked at one level down."""
    groups: dict[str, list[tuple[str, int]]] = {}
    direct: dict[str, int] = {}
    for path, worker in files:
        head, _, rest = path.partition("/")
        if rest:
            groups.setdefault(head, []).append((rest, worker))
        else:
            direct[head] = worker
    items = [(name, worker) for name, worker in direct.items()]
    for head, inside in groups.items():
        workers = {w for _, w in inside}
        if len(workers) == 1 and head not in direct:
            items.append((head, inside[0][1]))
        else:
            items += [(f"{head}/{rel}", w) for rel, w in grouped_items(inside)]
    return sorted(items, key=lambda i: i[0].encode())


def shares(files: list[tuple[str, int]], whole_directory: bool) -> list[tuple[int, Optional[list[str]]]]:
    """(worker, items) per worker that provides files, by worker: items None when one worker
    provides them all and the checkpoint is a whole directory of its volume (`whole_directory`:
    not the root files, not the `files` layout), then the directory is mounted as it is."""
    by_worker: dict[int, list[str]] = {}
    for item, worker in grouped_items(files):
        by_worker.setdefault(worker, []).append(item)
    if len(by_worker) == 1 and whole_directory:
        return [(next(iter(by_worker)), None)]
    return [(worker, by_worker[worker]) for worker in sorted(by_worker)]
