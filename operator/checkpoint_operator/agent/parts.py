"""Checkpoints written by several workers, each into its own volume (output.volumePerWorker).

The snapshot pod mounts worker i's volume at DIR/worker-<i>. Each part is scanned by the
snapshot rules (agent/scan.py), then:

- union (the default): the directories of the same name become ONE checkpoint whose files are
  the union of the parts' (torch DCP, DeepSpeed ZeRO and Orbax multi-host write one directory
  with every rank's shards). A file at the same path in two parts with the same sha256 (every
  rank writes config.json) is one file; with different bytes it is a conflict: the directory is
  not made into a checkpoint, and a skipped entry names the file and the two workers. So is
  every other way the parts contradict each other, as one volume could not (hostile4 D2, D12):
  a file in one part where another has a directory, names that are one after Unicode
  normalization (the names rule of one volume, protocol/manifest.py paths_clash, run over the
  union), and a path one part provides where another has something the scan skipped (a fifo, a
  link leaving the checkpoint, an unreadable file). Directories whose names are twins after
  normalization across parts are skipped both, as in one volume (hostile4 D7). Format, step and
  completeness are decided over the union (DCP: `.metadata` from rank 0 and every rank's
  shard), reading each file where it lies.
- per worker (output.perWorker, proxiML's mode): each part's checkpoints stay its own, at
  `worker-<i>/<directory>` (the root files: `worker-<i>`).

Besides the scan's fields the result has `sources`: for each checkpoint, the worker each of its
files is read from, in the manifest's file order. The operator's bounded result (`--result`,
`parts_output`) carries instead each worker's share as the few items the volume store mounts
(protocol/parts.py), and writes each checkpoint's full manifest into the manifests directory of
the first worker that provides its files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from checkpoint_operator.protocol.manifest import MANIFESTS_DIR, FileEntry, Manifest, PathsClash, digest_of, paths_clash
from checkpoint_operator.protocol.names import collision_problem, collisions, printable, spelled
from checkpoint_operator.protocol.parts import shares
from checkpoint_operator.agent import formats
from checkpoint_operator.agent.scan import (MAX_ITEMS, MAX_SKIPPED_LISTED, ROOT, Listing, OutputScan, Scanned,
                                            ScanResult, Skipped, StoredManifests, describe_checkpoint,
                                            list_checkpoints, scan_listed, that_fit, too_many_reason)
from checkpoint_operator.agent.tree import DEFAULT_MAX_ENTRIES, EntryBudget

PART_PREFIX = "worker-"
CONFLICTS_SHOWN = 3  # conflicting files quoted in a directory's one skipped entry
# Checkpoints of one result (protocol/results.py MAX_CHECKPOINTS; not imported: pydantic's). Past it,
# as one volume's scan (agent/scan.py, hostile5 L3): the root files and the newest are taken, the
# rest skipped with one reason (the workers' volumes are then kept for them).
MAX_CHECKPOINTS = 10_000


def part_directory(index: int) -> str:
    """Where worker `index`'s volume is mounted, relative to the snapshot's directory."""
    return f"{PART_PREFIX}{index}"


@dataclass
class PartsScan:
    result: ScanResult
    sources: dict[str, list[int]]                       # checkpoint path -> worker of each file
    tops: dict[str, dict[str, str]] = field(default_factory=dict)  # checkpoint path -> file -> its directory


@dataclass
class Assembled:
    """One checkpoint of the parts: a union, or (per worker) one worker's own."""

    manifest: Manifest                # with its files
    sources: list[int]                # the worker each file is read from, in the manifest's order
    tops: dict[str, str]              # file -> the directory it is relative to


def _top(part: str, path: str, layout: str) -> str:
    """The directory a part's checkpoint's file paths are relative to."""
    return part if path == ROOT or layout == "files" else os.path.join(part, *path.split("/"))


def _name(path: str) -> str:
    return "" if path == ROOT else path.rsplit("/", 1)[-1]


class PartsStream:
    """The checkpoints of DIR/worker-0 .. DIR/worker-<count-1> (see above), one at a time in path
    order: every part is listed first (names only), then each directory name is walked and hashed
    in every part that has it, assembled, and handed on before the next is walked. So memory
    holds one checkpoint's manifests (its parts' and the union's), not all of them, as one
    volume's streaming scan (hostile: the union held every part's manifest until the end).
    `max_entries` bounds the entries of all parts together (hostile4 D6: it was each part's, so
    N workers could hold N times as many). `skipped` and `skipped_count` are complete once the
    iteration has ended."""

    def __init__(self, directory: str, count: int, layout: str = "auto", per_worker: bool = False,
                 workers: Optional[int] = None, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_checkpoints: Optional[int] = None,
                 only: Optional[str] = None, expect: Optional[dict[int, str]] = None) -> None:
        self.directory, self.count, self.layout, self.per_worker, self.workers = \
            directory, count, layout, per_worker, workers
        self.max_checkpoints = MAX_CHECKPOINTS if max_checkpoints is None else max_checkpoints
        # A live union (output.publish: Continuous): only the directory `only`, assembled only when each
        # worker in `expect` still has the part it sealed (worker -> the digest its sidecar sealed).
        self.only, self.expect = only, expect
        self.budget = EntryBudget(max_entries, what=f"{directory} (all {count} workers' volumes)")
        self.skipped: list[Skipped] = []
        self.skipped_count = 0

    def __iter__(self) -> Iterator[Assembled]:
        parts = [os.path.join(self.directory, part_directory(i)) for i in range(self.count)]
        listings = [list_checkpoints(Path(p), self.layout, self.budget) for p in parts]
        if self.per_worker:
            yield from self._own(parts, listings)
        else:
            yield from self._unions(parts, listings)
        for i, listing in enumerate(listings):
            self.skipped += [Skipped(path=f"{part_directory(i)}/{s.path}", reason=s.reason)
                             for s in listing.skips.items()]
            self.skipped_count += listing.skips.count
        self.skipped.sort(key=lambda s: s.path.encode())

    def _that_fit(self, candidates: dict[str, Optional[int]], roots: set[str]) -> set[str]:
        """The checkpoint paths (with their steps) taken: all, or past max_checkpoints the root files
        and the newest, the rest skipped with one reason (agent/scan.py `that_fit`)."""
        if len(candidates) <= self.max_checkpoints:
            return set(candidates)
        kept = set(that_fit(list(candidates.items()), self.max_checkpoints, roots))
        reason = too_many_reason(len(candidates), self.max_checkpoints)
        for path in candidates:
            if path not in kept:
                self._skip(Skipped(path=spelled(path), reason=reason))
        return kept

    def _own(self, parts: list[str], listings: list[Listing]) -> Iterator[Assembled]:
        def own(i: int, path: str) -> str:
            return part_directory(i) if path == ROOT else f"{part_directory(i)}/{path}"
        kept = self._that_fit({own(i, path): formats.step_from_name(candidate.step_name)
                               for i, listing in enumerate(listings) for path, candidate in listing.candidates.items()},
                              {own(i, ROOT) for i in range(len(parts))})
        for i in sorted(range(len(parts)), key=lambda i: part_directory(i).encode()):
            for path in sorted(listings[i].candidates, key=lambda p: p.encode()):
                if own(i, path) not in kept:
                    continue
                scanned, _ = scan_listed(listings[i], path, self.budget, self.workers)
                if scanned is None:
                    continue
                m = scanned.manifest
                top = _top(parts[i], m.path, self.layout)
                renamed = part_directory(i) if m.path == ROOT else f"{part_directory(i)}/{m.path}"
                yield Assembled(m.model_copy(update={"path": renamed}), [i] * len(m.files),
                                {f.path: top for f in m.files})

    def _unions(self, parts: list[str], listings: list[Listing]) -> Iterator[Assembled]:
        by_path: dict[str, list[int]] = {}
        for i, listing in enumerate(listings):
            for path in listing.candidates:
                by_path.setdefault(path, []).append(i)
        twins = twin_directories(by_path)
        steps = {path: formats.step_from_name(next(listing.candidates[path].step_name for listing in listings
                                                    if path in listing.candidates))
                 for path in by_path if path not in twins}
        kept = self._that_fit(steps, {ROOT})
        if self.only is not None:
            by_path = {self.only: by_path.get(self.only, [])}
        for path in sorted(by_path, key=lambda p: p.encode()):
            if path not in twins and path not in kept:
                continue
            union = Skipped(path=spelled(path), reason=twins[path]) if path in twins else \
                union_of(parts, listings, path, self.layout, self.budget, self.workers, self.expect)
            if isinstance(union, Skipped):
                self._skip(union)
            elif union is not None:
                yield union

    def _skip(self, skipped: Skipped) -> None:
        self.skipped.append(skipped)
        self.skipped_count += 1


def union_of(parts: list[str], listings: list[Listing], path: str, layout: str, budget: EntryBudget,
             workers: Optional[int] = None, expect: Optional[dict[int, str]] = None) -> "Assembled | Skipped | None":
    """The checkpoint `path` of the listed parts, walked and hashed in each part that has it and
    assembled; Skipped for a conflict; None when it has no file in any part (each part's listing
    says so). `expect`: worker -> the digest of the part its sidecar sealed; a part with other
    bytes now (or gone), or a part of a worker not in it, makes it Skipped, named: a live union is
    of the sealed parts only (hostile9 H9-4: another worker's files, never sealed nor hashed by its
    sidecar and still writable, were taken as they were). The directory is then left to the
    end-of-job snapshot, which reads every part as it is."""
    pieces: list[tuple[int, Manifest]] = []
    lost: list[tuple[int, str, str]] = []
    for i in range(len(parts)):
        scanned, part_lost = scan_listed(listings[i], path, budget, workers)
        if scanned is not None:
            pieces.append((i, scanned.manifest))
        lost += [(i, rel, why) for rel, why in part_lost.items()]
    changed = _unlike_sealed(pieces, lost, expect) if expect is not None else None
    if changed:
        return Skipped(path=path, reason=changed)
    if not pieces:
        return None
    union = _union(path, pieces, [_top(parts[i], path, layout) for i, _ in pieces], lost)
    return union if isinstance(union, Skipped) else Assembled(*union)


def _unlike_sealed(pieces: list[tuple[int, Manifest]], lost: list[tuple[int, str, str]],
                   expect: dict[int, str]) -> Optional[str]:
    """Why the parts found are not the parts the workers' sidecars sealed, or None: an expected
    part changed or gone, or a part (files, or entries its scan skipped) of a worker not expected."""
    found = {i: m.digest for i, m in pieces}
    unexpected = sorted({i for i in found if i not in expect} | {i for i, _, _ in lost if i not in expect})
    if unexpected:
        return (f"worker {unexpected[0]} has a part of it that its sidecar has not sealed (a live union is of "
                f"sealed parts only)")
    for worker, digest in sorted(expect.items()):
        now = found.get(worker)
        if now != digest:
            what = "is gone" if now is None else f"now has {now[:19]}..."
            return f"worker {worker}'s part changed after it was sealed (sealed as {digest[:19]}..., {what})"
    return None


def scan_parts(directory: str, count: int, layout: str = "auto", per_worker: bool = False,
               workers: Optional[int] = None, max_entries: int = DEFAULT_MAX_ENTRIES) -> PartsScan:
    """Every checkpoint of the parts with its files (`agent scan --parts --json`, which prints them
    all): PartsStream held whole, about 0.9 KB per file listed (docs/performance.md)."""
    stream = PartsStream(directory, count, layout, per_worker, workers, max_entries)
    manifests: list[Manifest] = []
    sources: dict[str, list[int]] = {}
    tops: dict[str, dict[str, str]] = {}
    for assembled in stream:
        manifests.append(assembled.manifest)
        sources[assembled.manifest.path] = assembled.sources
        tops[assembled.manifest.path] = assembled.tops
    manifests.sort(key=lambda m: m.path.encode())
    result = ScanResult(checkpoints=manifests, skipped=stream.skipped[:MAX_SKIPPED_LISTED],
                        skippedCount=stream.skipped_count)
    return PartsScan(result, sources, tops)


def twin_directories(by_path: dict[str, list[int]]) -> dict[str, str]:
    """The checkpoint paths to skip because their directory's name is another's twin after
    Unicode normalization in another worker's part (one part's twins its scan skipped already),
    each with the reason one volume's scan gives (agent/scan.py), and the workers."""
    def workers(path: str) -> str:
        return ", ".join(str(w) for w in by_path[path])
    reasons: dict[str, str] = {}
    tops: dict[str, list[str]] = {}
    for path in by_path:
        if path != ROOT:
            tops.setdefault(path.split("/", 1)[0], []).append(path)
    for name, other in collisions(list(tops)).items():  # top-level names (a container's twin too)
        for path in tops[name]:
            reasons[path] = (f"name {collision_problem(other)} (worker {workers(tops[name][0])} has "
                             f"'{spelled(name)}', worker {workers(tops[other][0])} the other)")
    for path, other in collisions([p for p in by_path if p not in reasons]).items():  # children of containers
        reasons[path] = (f"name {collision_problem(other)} (worker {workers(path)} has '{spelled(path)}', "
                         f"worker {workers(other)} the other)")
    return reasons


def _union(path: str, pieces: list[tuple[int, Manifest]], part_tops: list[str],
           lost: Optional[list[tuple[int, str, str]]] = None) -> "tuple[Manifest, list[int], dict[str, str]] | Skipped":
    """One checkpoint from the parts of one directory, or why it is not made (a conflict).
    `lost`: (worker, path, why) of the entries of that directory each part's scan skipped."""
    chosen: dict[str, tuple[FileEntry, int, str]] = {}
    conflicts: list[str] = []
    for (worker, manifest), top in zip(pieces, part_tops):
        for entry in manifest.files:
            first = chosen.get(entry.path)
            if first is None:
                chosen[entry.path] = (entry, worker, top)
            elif first[0].sha256 != entry.sha256:
                conflicts.append(f"{entry.path!r} differs between worker {first[1]} (sha256 {first[0].sha256[:12]}) "
                                 f"and worker {worker} (sha256 {entry.sha256[:12]})")
    conflicts += _skipped_elsewhere({p: c[1] for p, c in chosen.items()}, lost or [])
    if not conflicts:  # one volume's names rule over the union (each part passed it alone)
        clash = paths_clash(chosen)
        if clash is not None:
            conflicts.append(_clash_line(clash, {p: c[1] for p, c in chosen.items()}))
    if conflicts:
        more = f"; and {len(conflicts) - CONFLICTS_SHOWN} more" if len(conflicts) > CONFLICTS_SHOWN else ""
        return Skipped(path=path, reason=f"conflicting parts, not made into a Checkpoint: "
                                         f"{'; '.join(conflicts[:CONFLICTS_SHOWN])}{more}")
    ordered = sorted(chosen, key=lambda p: p.encode())
    entries = [chosen[p][0] for p in ordered]
    file_tops = {p: chosen[p][2] for p in ordered}
    description = describe_checkpoint(part_tops[0], ordered, _name(path), {e.path: e.size for e in entries},
                                      tops=file_tops)
    manifest = Manifest(path=path, files=entries, sizeBytes=sum(e.size for e in entries), fileCount=len(entries),
                        digest=digest_of(entries), **description)
    return manifest, [chosen[p][1] for p in ordered], file_tops


def _clash_line(clash: PathsClash, worker_of: dict[str, int]) -> str:
    """The names rule's finding over a union, with the worker each path comes from."""
    if clash.other is None:
        return clash.problem
    first, second = worker_of[clash.path], worker_of[clash.other]
    if clash.other.startswith(clash.path + "/"):
        return (f"'{printable(clash.path)}' is a file in worker {first} and a directory in worker {second} "
                f"('{printable(clash.other)}')")
    return f"{clash.problem} ('{spelled(clash.path)}' is worker {first}'s, '{spelled(clash.other)}' worker {second}'s)"


def _skipped_elsewhere(worker_of: dict[str, int], lost: list[tuple[int, str, str]]) -> list[str]:
    """The union's files that one worker provides where another's scan skipped that path, or a
    directory on its way, or something under it (a fifo, a link leaving the checkpoint, an
    unreadable file): the other worker put something else there, so taking the file would fill
    the place silently (hostile4 D12). In the order where what is under a path follows it (as
    paths_clash), each entry is compared with the chain of entries above it, which holds at
    most one provided file and one skipped entry per worker: a part's scan looks under none of
    its skipped entries."""
    marks = sorted([(p.replace("/", "\0"), p, w, "") for p, w in worker_of.items()] +
                   [(p.replace("/", "\0"), p, w, why) for w, p, why in lost])
    found: list[str] = []
    chain: list[tuple[str, int, str]] = []
    for _, path, worker, why in marks:
        while chain and not (path == chain[-1][0] or path.startswith(chain[-1][0] + "/")):
            chain.pop()
        for above, above_worker, above_why in chain:
            if above_worker != worker and bool(above_why) != bool(why):
                (given, giver), (gone, loser, reason) = ((above, above_worker), (path, worker, why)) if why \
                    else ((path, worker), (above, above_worker, above_why))
                where = "" if gone == given else f" ('{printable(gone)}')"
                found.append(f"'{printable(given)}' is provided by worker {giver} and skipped in worker {loser}{where} "
                             f"({reason})")
                break
        chain.append((path, worker, why))
    return found


MAX_PART_ITEM = 255  # an item's length in the result and the status (protocol/results.py MAX_ITEM)


def parts_output(stream: PartsStream, directory: str, layout: str, per_worker: bool = False,
                 manifests: bool = False, mounts: bool = True,
                 each: Optional[Callable[[Assembled], Manifest]] = None) -> OutputScan:
    """The scan of the parts as the operator's result takes it (agent/scan.py report_of): each
    checkpoint's share per worker, and (`manifests`) its full manifest stored in MANIFESTS_DIR of
    the first providing worker's directory (the root of that worker's volume). A checkpoint whose
    share cannot be mounted within the bounds is skipped with the reason. `mounts` False (the s3
    store, which uploaded each union as one checkpoint): no shares. `each`: called with each
    checkpoint as it comes (the s3 store uploads it), returning the manifest to go on with. Only
    the checkpoint at hand keeps its files: the result lists none."""
    stores: dict[int, StoredManifests] = {}
    found: list[Scanned] = []
    skipped: list[Skipped] = []
    problem: Optional[str] = None
    for assembled in stream:  # at most its max_checkpoints (the rest skipped by the stream)
        manifest = each(assembled) if each is not None else assembled.manifest
        if not mounts:
            found.append(Scanned(manifest.model_copy(update={"files": []})))
            continue
        files = list(zip((f.path for f in manifest.files), assembled.sources))
        # the checkpoint's directory inside a worker's volume (per worker: without worker-<i>/)
        inside = (manifest.path.partition("/")[2] or ROOT) if per_worker else manifest.path
        share = shares(files, whole_directory=inside != ROOT and layout != "files")
        too_many = [w for w, items in share if items is not None and
                    (len(items) > MAX_ITEMS or any(len(i) > MAX_PART_ITEM for i in items))]
        if too_many:
            skipped.append(Skipped(path=manifest.path, reason=(
                f"worker {too_many[0]} provides more than {MAX_ITEMS} separate files and directories of it, or one "
                f"named by a path of more than {MAX_PART_ITEM} characters: a volume location mounts each one; write "
                f"each worker's files into its own subdirectory")))
            continue
        stored = False
        if manifests:
            first = share[0][0]
            if first not in stores:
                stores[first] = StoredManifests(os.path.join(directory, part_directory(first), MANIFESTS_DIR))
            stored = stores[first].store_whole(manifest)
            problem = problem or stores[first].problem
        found.append(Scanned(manifest.model_copy(update={"files": []}), stored=stored, parts=share))
    skipped_count = stream.skipped_count + len(skipped)
    skipped = sorted(stream.skipped + skipped, key=lambda s: s.path.encode())
    found.sort(key=lambda s: s.manifest.path.encode())
    return OutputScan(found, skipped[:MAX_SKIPPED_LISTED], skipped_count, problem)
