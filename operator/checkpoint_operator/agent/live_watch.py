"""`checkpoint-operator agent watch OUTPUT_DIR`: seal checkpoints while training writes them.

Runs as a native sidecar of a TrainingJob's pods (`spec.output.publish: Continuous`). Every
`--interval` seconds it lists the output (agent/live_sealing.py: the checkpoint directories the
scan would find, with their files' sizes and mtimes; sealed ones are not walked again) and
seals each directory the rules find complete:

- its manifest is computed by the scan's own code (format, step, resumable, complete, metrics);
  files that change while they are hashed abort the seal (it is tried again at a later tick);
- on the volume store its files and directories lose their write bits (`chmod a-w`), so a
  non-root training container can no longer change or delete them (root ignores the bits:
  changes are then found by the checks below);
- on the s3 store it is uploaded at once to `UPLOAD_TO/sealed/<path>/<digest hex>/` (one
  checkpoint at a time, `--upload-concurrency` parallel transfers, so training I/O keeps most
  of the bandwidth); the upload verifies every byte against the manifest;
- on the volume store its full manifest goes to `--manifests-dir` (`.ckpt-manifests/` at the
  output's root, outside every checkpoint directory), where verify and pull read it;
- one line goes to stdout, typed (protocol/results.py SealedEvent: `{"kind":"sealed",
  "version":1,"checkpoint":{...}}`, the checkpoint's summary, never its files). The operator
  reads this container's log (the pod's service account needs no API permission at all).

Other lines: `removed` (a directory the operator asked to remove, because retention deleted its
Checkpoint: the pod annotation `ckpt.dev/live-remove`, read from a downwardAPI file), `changed`
(a sealed directory whose bytes differ from its digest: found by a cheap stat check of a few
sealed directories per tick and of all of them at the end, then confirmed by hashing) and
`warning`.

State lives in `OUTPUT_DIR/.ckpt-live/` (`sealed.json`), so a restarted sidecar or a retried
pod knows what is sealed and announces it again (the operator creates nothing twice);
`.ckpt-live/resume` is a symlink to the latest sealed checkpoint (with optimizer state, when
one has it): a retried pod's CHECKPOINT_RESUME_PATH.

SIGTERM means the training containers have exited (a native sidecar is stopped after them, in
a normal end as in a preemption): one last pass seals what is there, every sealed directory is
checked, and it exits 0. In an Indexed Job of several pods only index 0 watches (the others
idle), and the exit rule is off (`--shared`): other pods may still be writing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import signal
import stat
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from checkpoint_operator.agent import fstree, live_sealing
from checkpoint_operator.agent.durability import sync_filesystem
from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.agent.hashing import FileChanged
from checkpoint_operator.protocol import channel, results
from checkpoint_operator.protocol.manifest import Manifest, stored_manifest_name
from checkpoint_operator.agent.safe_read import Unreadable, parse_json, read_capped
from checkpoint_operator.agent.scan import scan_directory
from checkpoint_operator.agent.tree import EntryBudget, TooManyEntries, entry_limit

REMOVE_ANNOTATION = "ckpt.dev/live-remove"
STATE_FILE = "sealed.json"
CHECKS_PER_TICK = 4      # sealed directories stat-checked per tick (all of them at the end)
SHARED_FINAL_LOOKS = 2  # looks after SIGTERM in a pod of several: a listing that holds still for one look seals
MIN_INTERVAL = 0.05
RENAME_MEMORY = 20       # ticks an inode listed under an unfinished name is remembered


MAX_STATE_BYTES = 256 * 1024 * 1024  # the watcher's state: a few stats per sealed file
_SEALED_TYPES: dict[str, type | tuple[type, ...]] = {"path": str, "digest": str, "step": (int, type(None)), "complete": (bool, type(None)),
                 "resumable": bool, "stats": list, "uri": (str, type(None)), "changed": bool, "summary": dict,
                 "modes": dict}


def _is_sealed_record(record: Any) -> bool:
    """A record of the state file with the fields of `Sealed`, each of its type."""
    return isinstance(record, dict) and all(isinstance(record.get(k), t) for k, t in _SEALED_TYPES.items()
                                            if k in record or k in ("path", "digest", "resumable"))


@dataclass
class Sealed:
    """A sealed checkpoint as the watcher remembers it."""

    path: str
    digest: str
    step: Optional[int]
    complete: Optional[bool]
    resumable: bool
    stats: list = field(default_factory=list)   # [rel, size, mtime_ns, ctime_ns, ino] of each file
    uri: Optional[str] = None
    changed: bool = False
    summary: dict = field(default_factory=dict)  # the sealed line's checkpoint (announced again at a restart)
    # A worker's part (--part): the modes its files and directories had before the seal took their write
    # bits (path inside it -> mode, "." the directory itself), so the resume step can give a part sealed
    # for a union never published back to the restarted trainer as it was (agent/resume_parts.py).
    modes: dict = field(default_factory=dict)

    def change(self, directory: str) -> Optional[live_sealing.Change]:
        """What differs from when it was sealed (cheap: no hashing), or None."""
        return live_sealing.sealed_change([tuple(r) for r in self.stats], observe(directory, self.stats))


def _not_removable(directory: str) -> str:
    """Why a directory could not be removed, as far as its owner tells (the usual cause: another user's files)."""
    try:
        owner = os.lstat(directory).st_uid
    except OSError as exc:
        return exc.strerror or str(exc)
    if owner != os.geteuid():
        return (f"its files belong to uid {owner}, this sidecar runs as uid {os.geteuid()} (run it as the training "
                f"container's user)")
    return "check the permissions of the output"


def observe(directory: str, recorded: list) -> live_sealing.Observed:
    """Stat each recorded file and list every file of a sealed directory. A directory that cannot
    be listed stops the walk and is reported: it is never taken for an empty one."""
    stats: dict[str, Optional[live_sealing.StatNow]] = {}
    for rel, *_ in recorded:
        try:
            st = os.stat(os.path.join(directory, rel))
            stats[rel] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        except OSError:
            stats[rel] = None
    listed: set[str] = set()

    def stop(exc: OSError) -> None:
        raise exc
    try:
        for root, _, names in fstree.walk(directory, onerror=stop):
            listed.update(os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/") for name in names)
    except OSError as exc:
        where = os.path.relpath(exc.filename, directory).replace(os.sep, "/") if isinstance(exc.filename, str) else "."
        what = "its directory" if where == "." else where
        return live_sealing.Observed(stats, frozenset(listed), f"{what} cannot be listed ({exc.strerror or exc})")
    return live_sealing.Observed(stats, frozenset(listed))


def _file_stats(directory: str, manifest: Manifest) -> list:
    out = []
    for entry in manifest.files:
        st = os.stat(os.path.join(directory, entry.path))
        out.append([entry.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return out


# The key segment of the output's root files (path "."): a key segment "." is refused by S3
# stores (SeaweedFS and MinIO answer 400) or normalized away by clients. No checkpoint directory
# can be named so: a name starting with "." is never a checkpoint (the scan and `list_output` pass
# over hidden directories; the operator refuses such a path in a sealed line).
ROOT_SEGMENT = ".root"


def sealed_uri(upload_to: str, path: str, digest: str) -> str:
    """Where a sealed checkpoint goes on the s3 store: named by its digest, so nothing written
    later (a changed directory, the end-of-job snapshot) can ever replace its bytes."""
    prefix = upload_to if upload_to.endswith("/") else upload_to + "/"
    return f"{prefix}sealed/{ROOT_SEGMENT if path == '.' else path}/{digest.split(':', 1)[-1]}/"


def read_annotation_file(path: str) -> dict[str, str]:
    """A downwardAPI `metadata.annotations` file: `key="value"` lines, values quoted as Go's %q."""
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        try:
            parsed = parse_json(value.encode("utf-8", "surrogatepass"))  # %q of printable text is a JSON string
        except Unreadable:
            continue
        if isinstance(parsed, str):
            out[key] = parsed
    return out


class Watcher:
    def __init__(self, root: str, *, store: str = "volume", upload_to: Optional[str] = None,
                 annotations_file: Optional[str] = None, shared: bool = False, max_entries: Optional[int] = None,
                 upload_concurrency: int = 2, endpoint_url: Optional[str] = None,
                 manifests_dir: Optional[str] = None,
                 emit: Optional[Callable[[results.Report], None]] = None, sync: bool = False,
                 part: Optional[int] = None) -> None:
        self.root = root
        # output.volumePerWorker: this is worker `part`'s volume, and each directory it seals is that
        # worker's part of a checkpoint the operator assembles over every worker's parts.
        self.part = part
        self.sync = sync  # syncfs before announcing a sealed directory (a volume snapshot of it follows)
        self.store = store
        self.upload_to = upload_to
        self.annotations_file = annotations_file
        self.shared = shared
        self.max_entries = entry_limit(max_entries)
        self.upload_concurrency = upload_concurrency
        self.endpoint_url = endpoint_url
        self._emit = emit or _print_line
        self.manifests_dir = manifests_dir
        self._lock = threading.Lock()
        self.sealed: dict[str, Sealed] = {}
        self.uploading: set[str] = set()
        self.previous: Optional[live_sealing.Listing] = None
        self.holds: dict[str, str] = {}   # path -> why it is not sealed yet (for tests and logs)
        self._annotations_mtime: Optional[int] = None
        self._check_cursor = 0
        self._ticks = 0
        self.unfinished_seen: dict[tuple[int, int], tuple[str, int]] = {}  # inode -> (path, tick last listed)
        # path -> (inode, the ctime rule's verdict) at the first look that listed it (live_sealing.py, rule 2)
        self.first_looks: dict[str, tuple[tuple[int, int], bool]] = {}
        self.given_back: dict[str, int] = {}  # the resume step's give-back: path -> inode (no rename sign)
        self._uploads = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="upload") if store == "s3" else None
        self.state_dir = os.path.join(root, live_sealing.LIVE_DIR)
        self._load_state()

    # --- output -----------------------------------------------------------------------------
    def emit(self, event: results.Report) -> None:
        with self._lock:
            self._emit(event)

    def warn(self, message: str) -> None:
        self.emit(results.WarningEvent(message=results.cut(message)))

    # --- state ------------------------------------------------------------------------------
    def _load_state(self) -> None:
        # The state is in the output volume, which the training containers can write: read it as
        # any tenant-written file (bounded size and depth), and take only well-typed records.
        try:
            self.given_back = live_sealing.given_back_inodes(parse_json(read_capped(
                os.path.join(self.state_dir, live_sealing.GIVEN_BACK_FILE), MAX_STATE_BYTES)))
        except Unreadable:
            self.given_back = {}
        try:
            records = parse_json(read_capped(os.path.join(self.state_dir, STATE_FILE), MAX_STATE_BYTES))
        except Unreadable:
            return
        for record in records if isinstance(records, list) else []:
            if not _is_sealed_record(record):
                continue
            try:
                sealed = Sealed(**record)
            except TypeError:
                continue
            if live_sealing.record_path_problem(sealed.path) is None and \
                    os.path.isdir(os.path.join(self.root, sealed.path)):
                self.sealed[sealed.path] = sealed

    def _save_state(self) -> None:
        try:
            fstree.make_dirs(self.state_dir)
            tmp = os.path.join(self.state_dir, STATE_FILE + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump([asdict(s) for s in self.sealed.values()], f)
            os.replace(tmp, os.path.join(self.state_dir, STATE_FILE))
            self._update_resume_link()
        except OSError as exc:
            self.warn(f"cannot keep state in {self.state_dir}: {exc.strerror} (a retried pod will not find "
                      f"CHECKPOINT_RESUME_PATH; run the training container and this sidecar as the same user)")

    def resume_target(self) -> Optional[Sealed]:
        """The latest sealed checkpoint found complete (or, when none was, not checked; never one
        found incomplete), with optimizer state when one has it: as `select: latest` decides."""
        unchanged = [s for s in self.sealed.values() if not s.changed]
        usable = [s for s in unchanged if s.complete is True] or [s for s in unchanged if s.complete is None]
        resumable = [s for s in usable if s.resumable] or usable
        return max(resumable, key=lambda s: (s.step is not None, s.step or -1, s.path)) if resumable else None

    def _update_resume_link(self) -> None:
        if self.part is not None:  # a part is not a checkpoint to resume from (the operator's resume step is)
            return
        link = os.path.join(self.state_dir, live_sealing.RESUME_LINK)
        target = self.resume_target()
        if target is None:
            if os.path.lexists(link):
                os.unlink(link)
            return
        tmp = link + ".tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.path.join("..", target.path), tmp)
        os.replace(tmp, link)

    def announce(self) -> None:
        """At start: the checkpoints an earlier run of this watcher sealed (the operator may have
        missed their lines: it creates nothing twice). The state file is on the output volume,
        which the training containers can write, so nothing in it decides a digest: a record
        only says which directory to look at and the digest it was sealed with. Each is sealed
        again as any directory is (read-only, hashed whole under the scan's budgets; on the s3
        store its copy checked or sent again) and announced only when its bytes still have that
        digest; other bytes are a change of the recorded digest, and a directory that cannot be
        read is left to the ticks (sealed anew, if ever) and to the end-of-job snapshot."""
        # The resume link's choice first (the order only: every record is hashed again), so the
        # link, rewritten after each one, never points back while the training code may read it.
        recorded = sorted(self.sealed.values(), key=lambda s: (s.complete is True, s.complete is None, s.resumable,
                                                               s.step is not None, s.step or -1, s.path), reverse=True)
        self.sealed = {s.path: s for s in recorded if s.changed}  # reported already: nothing to announce
        for record in recorded:
            if record.changed:
                continue
            try:
                listed = live_sealing.list_one(self.root, record.path, EntryBudget(self.max_entries, what=record.path))
            except (OSError, AgentError) as exc:
                self.warn(f"{record.path}: cannot be read again at start ({exc}); it is sealed anew when it can be")
                continue
            if listed is not None and listed.files:
                self.seal(listed, "sealed by an earlier run of this sidecar, hashed again at its start",
                          expected=record)
        self._update_resume_link_quietly()

    def _update_resume_link_quietly(self) -> None:
        try:
            self._update_resume_link()
        except OSError:
            pass

    # --- one tick ---------------------------------------------------------------------------
    def tick(self, writers_done: bool = False) -> None:
        budget = EntryBudget(self.max_entries, what=self.root)
        try:
            listing = live_sealing.list_output(self.root, budget, skip=set(self.sealed) | self.uploading)
        except TooManyEntries as exc:
            self.warn(f"{exc}; sealing paused until the output shrinks")
            return
        except OSError as exc:
            self.warn(f"cannot list {self.root}: {exc.strerror}")
            self.check_some(CHECKS_PER_TICK)  # sealed directories are checked whatever the listing
            return
        for path, sealed in list(self.sealed.items()):  # sealed, and now unlistable: a change, reported at once
            if any(path == u or path.startswith(u + "/") for u in listing.unreadable):
                self._check(sealed)
        previous = self.previous or live_sealing.Listing()
        self._ticks += 1
        for inode, path in listing.unfinished.items():
            self.unfinished_seen[inode] = (path, self._ticks)
        # An unfinished name listed in the last few ticks is what a rename seen now came from.
        self.unfinished_seen = {k: v for k, v in self.unfinished_seen.items() if v[1] >= self._ticks - RENAME_MEMORY}
        unfinished = {k: v[0] for k, v in self.unfinished_seen.items()}
        self.first_looks = {p: v for p, v in self.first_looks.items()
                            if p in listing.checkpoints and v[0] == listing.checkpoints[p].inode}
        for path, listed in listing.checkpoints.items():
            found = live_sealing.evidence(listed)
            first_look = self.first_looks.setdefault(
                path, (listed.inode, live_sealing.renamed_at_first_look(listed, self.given_back)))
            decision = live_sealing.decide(listed, previous.checkpoints.get(path), found,
                                      renamed=live_sealing.renamed_into_place(listed, unfinished,
                                                                         renamed_at_first_look=first_look[1]),
                                      newer=live_sealing.newer_step(listed, listing),
                                      writers_done=writers_done and not self.shared,
                                      part=self.part is not None)
            if isinstance(decision, live_sealing.Hold):
                self.holds[path] = decision.reason
                continue
            self.holds.pop(path, None)
            self.seal(listed, decision.reason)
        for gone in set(self.holds) - set(listing.checkpoints):
            del self.holds[gone]  # removed before it was sealed (a framework's own rotation)
        self.previous = listing
        self.process_removals()
        self.check_some(CHECKS_PER_TICK)

    def seal(self, listed: live_sealing.Listed, reason: str, *, expected: Optional[Sealed] = None) -> Optional[Sealed]:
        """Seal a directory; `expected`: an earlier run's record of it (announce), whose digest its
        bytes must still have."""
        directory = listed.directory
        modes = self._freeze(directory) if self.store == "volume" else None
        try:
            result = scan_directory(Path(directory), single=True)
        except (OSError, AgentError) as exc:
            self._thaw(modes)
            self.holds[listed.path] = f"could not be read: {exc}"
            return None
        changed = [s for s in result.skipped if "changed while being read" in s.reason]
        if changed or not result.checkpoints:
            self._thaw(modes)
            self.holds[listed.path] = "changed while it was hashed" if changed else "no readable files"
            return None
        manifest = result.checkpoints[0]
        manifest.path = listed.path
        if expected is not None and manifest.digest != expected.digest:
            self._thaw(modes)
            self._report_changed(expected, manifest.digest, "its bytes no longer have the digest it was sealed "
                                                            "with: found when this sidecar started")
            return None
        if {f.path for f in manifest.files} != {rel for rel, _, _ in listed.files} and not changed:
            self._thaw(modes)
            self.holds[listed.path] = "its files changed between the listing and the hashing"
            return None
        try:
            stats = _file_stats(directory, manifest)
        except OSError:
            self._thaw(modes)
            self.holds[listed.path] = "a file went away while it was sealed"
            return None
        read_only = modes is not None and modes.get("ok", False)
        sealed = Sealed(manifest.path, manifest.digest, manifest.step, manifest.complete, manifest.resumable, stats)
        if self.part is not None and modes is not None:
            # sealed again at a restart: its write bits are gone already, the earlier record has them
            sealed.modes = {**(expected.modes if expected is not None else {}),
                            **{os.path.relpath(p, directory).replace(os.sep, "/"): m for p, m in modes["paths"].items()}}
        extra = {"sealReason": results.cut(reason), "skipped": result.skippedCount, "readOnly": read_only,
                 "sealedAt": round(time.time(), 3), "part": self.part}
        if expected is not None:
            extra["announced"] = True
        if self.sync:
            try:
                extra["synced"] = sync_filesystem(directory)
            except OSError as exc:  # announced without it: the operator leaves it to the end-of-job snapshot
                self.warn(f"{listed.path}: {exc}; sealed, but its bytes may not be on the disk yet")
        if modes is not None and not read_only:
            extra["readOnlyProblem"] = results.cut(str(modes.get("problem")))
        if self.store == "s3":
            self.uploading.add(listed.path)
            assert self._uploads is not None
            self._uploads.submit(self._upload, directory, manifest, sealed, extra)
            return sealed
        self._record(sealed, manifest, extra)
        return sealed

    def _record(self, sealed: Sealed, manifest: Manifest, extra: dict) -> None:
        summary = results.CheckpointSummary.of(manifest, uri=sealed.uri, manifest_stored=self._store_manifest(manifest))
        checkpoint = results.SealedCheckpoint.model_validate({**summary.model_dump(), **extra})
        sealed.summary = checkpoint.model_dump(mode="json", exclude_none=True)
        self.sealed[sealed.path] = sealed
        self._save_state()
        self.emit(results.SealedEvent(checkpoint=checkpoint))

    def _store_manifest(self, manifest: Manifest) -> bool:
        """Volume store: the full manifest beside the data (never inside a checkpoint directory)."""
        if not self.manifests_dir:
            return False
        final = os.path.join(self.manifests_dir, stored_manifest_name(manifest.digest))
        tmp = os.path.join(self.manifests_dir, f".tmp-{os.getpid()}-{time.monotonic_ns()}.json")
        from checkpoint_operator.agent.scan import create_exclusive, manifests_directory
        try:
            manifests_directory(self.manifests_dir)
            with create_exclusive(tmp) as out:
                out.write(manifest.model_copy(update={"path": "."}).to_json().encode())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
            return True
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self.warn(f"cannot store the manifest of {manifest.path} in {self.manifests_dir}: {exc.strerror} "
                      f"(verify and pull then read its files again)")
            return False

    def _upload(self, directory: str, manifest: Manifest, sealed: Sealed, extra: dict) -> None:
        from checkpoint_operator.agent.upload import upload_dir
        uri = sealed_uri(self.upload_to or "", manifest.path, manifest.digest)
        try:
            from checkpoint_operator.objectstore.blobs import blob_root_of
            upload_dir(directory, uri, manifest=manifest, concurrency=self.upload_concurrency,
                       endpoint_url=self.endpoint_url, blobs=blob_root_of(self.upload_to or ""), log=lambda m: None)
        except (AgentError, OSError) as exc:
            self.warn(f"upload of {manifest.path} failed: {exc}; it is sealed again at a later tick")
            with self._lock:
                self.uploading.discard(manifest.path)
            return
        except BaseException as exc:  # noqa: BLE001 - a thread's failure must not end it silently
            self.warn(f"upload of {manifest.path} failed: {type(exc).__name__}: {exc}")
            with self._lock:
                self.uploading.discard(manifest.path)
            return
        sealed.uri = uri
        with self._lock:
            self.uploading.discard(manifest.path)
        self._record(sealed, manifest, extra)

    # --- read-only ----------------------------------------------------------------------------
    def _freeze(self, directory: str) -> dict:
        """chmod a-w every file and directory under it (files first); the old modes, to undo."""
        modes: dict[str, Any] = {"paths": {}, "ok": True}
        entries = []
        for root, dirs, files in fstree.walk(directory):
            entries += [os.path.join(root, f) for f in files]
            entries += [os.path.join(root, d) for d in dirs]
        entries.append(directory)
        dirs_last = sorted(entries, key=lambda p: (os.path.isdir(p) and not os.path.islink(p), -len(p)))
        for path in dirs_last:
            try:
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    continue
                mode = stat.S_IMODE(st.st_mode)
                if mode & 0o222:
                    os.chmod(path, mode & ~0o222)
                    modes["paths"][path] = mode
            except OSError as exc:
                modes["ok"] = False
                modes["problem"] = (f"cannot remove the write bits of {os.path.relpath(path, self.root)}: "
                                    f"{exc.strerror} (run this sidecar as the training container's user)")
        return modes

    @staticmethod
    def _thaw(modes: Optional[dict]) -> None:
        for path, mode in (modes or {}).get("paths", {}).items():
            try:
                os.chmod(path, mode)
            except OSError:
                pass

    # --- removals (retention) -------------------------------------------------------------
    def process_removals(self) -> None:
        if not self.annotations_file:
            return
        try:
            mtime = os.stat(self.annotations_file).st_mtime_ns
        except OSError:
            return
        if mtime == self._annotations_mtime:
            return
        self._annotations_mtime = mtime
        raw = read_annotation_file(self.annotations_file).get(REMOVE_ANNOTATION)
        try:
            requests = parse_json(raw.encode("utf-8", "surrogatepass")) if raw else []
        except Unreadable as exc:
            self.warn(f"annotation {REMOVE_ANNOTATION} is not JSON that can be read safely ({exc}); ignored")
            return
        for request in requests if isinstance(requests, list) else []:
            if isinstance(request, dict):
                self.remove(str(request.get("path", "")), str(request.get("digest", "")))

    def remove(self, path: str, digest: str) -> None:
        directory = os.path.join(self.root, path)
        if not path or not _inside(self.root, directory):
            return
        if not os.path.lexists(directory):
            self.sealed.pop(path, None)
            self.emit(results.RemovedEvent(path=path, digest=digest))
            return
        sealed = self.sealed.get(path)
        # Not removed, and said with the directory it names (notRemoved): the operator counts it and asks
        # no more after a few (logic/live_sealing.removal_annotation), so it never keeps its place at the
        # head of the annotation. (What is there is never published again either: it is retired.)
        if sealed is None:  # sealed by an earlier pod whose state was lost: the bytes decide
            try:
                result = scan_directory(Path(directory), single=True)
            except (OSError, AgentError) as exc:
                self._not_removed(path, digest, f"it cannot be read ({exc})")
                return
            if not result.checkpoints or result.checkpoints[0].digest != digest:
                self._not_removed(path, digest, "it holds other bytes than the retired ones (left as they are)")
                return
        elif sealed.digest != digest:  # not ours to remove: other data now lives under that name
            self._not_removed(path, digest, f"it holds other bytes than the retired ones (sealed again as "
                                            f"{sealed.digest}; left as they are)")
            return
        fstree.remove_tree(directory, ignore_errors=True, make_writable=True)
        if os.path.lexists(directory):
            self.emit(results.WarningEvent(
                message=results.cut(f"could not remove {path} (retention released it): {_not_removable(directory)}"),
                notRemoved=results.NotRemoved(path=path, digest=digest)))
            return
        self.sealed.pop(path, None)
        self._save_state()
        self.emit(results.RemovedEvent(path=path, digest=digest))

    def _not_removed(self, path: str, digest: str, why: str) -> None:
        self.emit(results.WarningEvent(message=results.cut(f"did not remove {path} (retention released it): {why}"),
                                       notRemoved=results.NotRemoved(path=path, digest=digest)))

    # --- checks of sealed directories -----------------------------------------------------------
    def check_some(self, count: int) -> None:
        paths = sorted(self.sealed)
        if not paths:
            return
        for i in range(min(count, len(paths))):
            self._check(self.sealed[paths[(self._check_cursor + i) % len(paths)]])
        self._check_cursor = (self._check_cursor + count) % len(paths)

    def check_all(self) -> None:
        for sealed in list(self.sealed.values()):
            self._check(sealed)

    def _check(self, sealed: Sealed) -> None:
        if sealed.changed:
            return
        directory = os.path.join(self.root, sealed.path)
        change = sealed.change(directory)
        if change is None:
            return
        found = None
        if not change.final and os.path.isdir(directory):
            try:
                result = scan_directory(Path(directory), single=True)
                found = result.checkpoints[0].digest if result.checkpoints else None
                if found == sealed.digest and not result.skipped:
                    sealed.stats = _file_stats(directory, result.checkpoints[0])  # touched, not changed
                    self._save_state()
                    return
            except (OSError, AgentError, FileChanged):
                found = None
        self._report_changed(sealed, found, change.message)

    def _report_changed(self, sealed: Sealed, found: Optional[str], problem: str) -> None:
        sealed.changed = True
        self.sealed[sealed.path] = sealed
        self._save_state()
        self.emit(results.ChangedEvent(path=sealed.path, digest=sealed.digest, found=found,
                                       message=results.cut(f"{sealed.path} changed after it was sealed ({problem})")))

    # --- the whole run ------------------------------------------------------------------------------
    def finish(self, interval: float = 0.0) -> None:
        """The training containers are done: seal what is there, wait for uploads, check everything.
        Shared (several pods): other pods may still write, so the exit rule is off; a few more looks
        still seal what a completion marker or a rename finished in the grace period (a preempted or
        stopped group's emergency checkpoint), so the next attempt's resume link finds it."""
        self.tick(writers_done=True)
        for _ in range(SHARED_FINAL_LOOKS if self.shared else 0):
            time.sleep(interval)
            self.tick()
        if self._uploads is not None:
            self._uploads.shutdown(wait=True)
        self.check_all()


def _inside(root: str, path: str) -> bool:
    root_real, path_real = fstree.real_path(root), fstree.real_path(path)
    return root_real is not None and path_real is not None and path_real.startswith(root_real.rstrip("/") + "/")


def _print_line(event: results.Report) -> None:
    channel.write(event)


def is_passive() -> bool:
    """Indexed Jobs: only the pod of completion index 0 watches (they share one volume)."""
    return os.environ.get("JOB_COMPLETION_INDEX", "0") not in ("", "0")


def part_index() -> Optional[int]:
    """With a volume per worker, the worker whose volume this is (each worker's pod has its index as
    JOB_COMPLETION_INDEX: logic/workload.py worker_template)."""
    value = os.environ.get("JOB_COMPLETION_INDEX", "")
    return int(value) if value.isdigit() and len(value) <= 4 else None


def main(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.dir):
        raise AgentError(f"{args.dir}: not a directory (watch takes the output directory)")
    # Set on SIGTERM (agent/cli.py installs the handler before this module is imported: a
    # SIGTERM that comes during start-up still means "the training containers have exited").
    stop: threading.Event = getattr(args, "stop", None) or threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    part = getattr(args, "part", False)
    worker = part_index() if part else None
    if part and worker is None:
        raise AgentError("--part: JOB_COMPLETION_INDEX must be the worker's index (the operator sets it)")
    if not part and is_passive():
        stop.wait()
        return 0
    watcher = Watcher(args.dir, store="s3" if args.upload_to else "volume", upload_to=args.upload_to,
                      annotations_file=args.annotations_file, shared=args.shared, max_entries=args.max_entries,
                      upload_concurrency=args.upload_concurrency, endpoint_url=args.endpoint_url,
                      manifests_dir=getattr(args, "manifests_dir", None), sync=getattr(args, "sync", False),
                      part=worker)
    watcher.announce()
    interval = max(MIN_INTERVAL, args.interval)
    while not stop.is_set():
        started = time.monotonic()
        watcher.tick()
        # Bounded CPU: never busier than a third of one core, however big the output.
        stop.wait(max(interval, 2 * (time.monotonic() - started)))
    watcher.finish(interval)
    return 0

