"""Live sealing (`spec.output.publish: Continuous`), the operator's side, as pure functions.

- `sidecar_parts`: what a training pod gains: the native sidecar `ckpt-live` (an init container
  with `restartPolicy: Always` running `checkpoint-operator agent watch` in the operator's
  image, the output volume at the same path as the training containers), a downwardAPI volume
  of the pod's annotations (the operator -> sidecar channel: which retired directories to
  remove), and CHECKPOINT_RESUME_PATH for the training containers.
- `parse_log`: the sidecar -> operator channel: its log, one typed line per event
  (protocol/results.py LIVE_EVENTS). Lines are checked before use (a path inside the output, a
  digest, an s3 location under this job's own prefix); anything else is ignored, so nothing the
  pod prints can name data outside its job. The log is read a bounded piece at a time from
  where the last read ended (`LogCursor`: `sinceTime` with timestamps), never whole.
- `removal_annotation`: the retired directories whose Checkpoint is gone, for the sidecar.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Optional, Sequence

from checkpoint_operator.api.trainingjob import LiveStatus, TrainingJob
from checkpoint_operator.logic.live_unions import Parts, PartSeals
from checkpoint_operator.logic.security_context import sidecar_context
from checkpoint_operator.logic.workers import WORKER_INDEX_LABEL
from checkpoint_operator.protocol import channel
from checkpoint_operator.protocol.names import path_problem
from checkpoint_operator.protocol.results import (LIVE_EVENTS, ChangedEvent, RemovedEvent, SealedCheckpoint,
                                                  SealedEvent, WarningEvent)

SIDECAR = "ckpt-live"
COMPLETION_INDEX = "JOB_COMPLETION_INDEX"  # the variable the Job controller sets
META_VOLUME = "ckpt-live-meta"
META_MOUNT = "/ckpt-live-meta"
ANNOTATIONS_FILE = "annotations"
REMOVE_ANNOTATION = "ckpt.dev/live-remove"   # agent/live_watch.py reads it
LIVE_DIR = ".ckpt-live"                      # agent/live_sealing.py LIVE_DIR
RESUME_ENV = "CHECKPOINT_RESUME_PATH"
MAX_REMOVALS_ANNOTATED = 100                 # per pod annotation (the rest follow as these are done)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) (.*)$", re.DOTALL)
# Bytes of one pod's sidecar log read per pass: far more than the sidecar writes between two
# passes (a sealed line is under 2 KB), and a bound on what a pass costs whatever the log holds.
LOG_READ_BYTES = 1024 * 1024


def resume_path(output_dir: str) -> str:
    """A symlink the sidecar keeps to the latest sealed checkpoint; absent until one is sealed."""
    return posixpath.join(output_dir, LIVE_DIR, "resume")


def sidecar_parts(tj: TrainingJob, command: list[str], image: str, pull_policy: str, resources: dict[str, Any],
                  env: list[dict[str, Any]], output_volume: str,
                  template_spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the sidecar container, the downwardAPI volume). It runs as the training containers'
    user (runAsUser/runAsGroup of the first container, else the pod's), so that it may remove
    the write bits of their files and the directories retention releases; "restricted" otherwise
    (logic/security_context.py)."""
    container = {"name": SIDECAR, "image": image, "imagePullPolicy": pull_policy, "restartPolicy": "Always",
                 "command": command, "resources": resources,
                 "volumeMounts": [{"name": output_volume, "mountPath": tj.spec.outputDir},
                                  {"name": META_VOLUME, "mountPath": META_MOUNT, "readOnly": True}],
                 "securityContext": sidecar_context(template_spec)}
    if env:
        container["env"] = env
    volume = {"name": META_VOLUME, "downwardAPI": {"items": [
        {"path": ANNOTATIONS_FILE, "fieldRef": {"fieldPath": "metadata.annotations"}}]}}
    return container, volume


def annotations_file() -> str:
    return posixpath.join(META_MOUNT, ANNOTATIONS_FILE)


# --- the sidecar's log ----------------------------------------------------------------------------

@dataclass
class LogEvents:
    sealed: list[SealedCheckpoint] = field(default_factory=list)  # their summaries: never their files
    reasons: dict[str, str] = field(default_factory=dict)    # path -> why it was sealed then
    not_read_only: dict[str, str] = field(default_factory=dict)
    removed: set[tuple[str, str]] = field(default_factory=set)
    changed: dict[str, ChangedEvent] = field(default_factory=dict)   # path -> the event
    synced: set[tuple[str, str]] = field(default_factory=set)  # (path, digest) whose sealed line says "syncfs"
    warnings: list[str] = field(default_factory=list)
    not_removed: dict[tuple[str, str], str] = field(default_factory=dict)  # asked to remove, could not: why
    last_timestamp: Optional[str] = None
    refused: int = 0  # event lines the protocol refused (a newer version, an invalid field)

    @property
    def uris(self) -> dict[str, str]:
        """s3 store: path -> where the sealed copy is."""
        return {m.path: m.uri for m in self.sealed if m.uri}


def _valid_path(path: Any) -> bool:
    """A checkpoint directory of the output: one component, or a container's step (two)."""
    return isinstance(path, str) and path not in ("", ".") and path.count("/") <= 1 and not path_problem(path) \
        and not path.startswith(".")


def _sealed(checkpoint: SealedCheckpoint, sealed_prefix: Optional[str]) -> bool:
    """Believed only for a directory of the output and, on the s3 store, a copy under this job's
    own prefix, named by the digest."""
    if not _valid_path(checkpoint.path):
        return False
    if sealed_prefix is not None:
        return checkpoint.uri == f"{sealed_prefix}{checkpoint.path}/{checkpoint.digest.split(':', 1)[1]}/"
    return True


def parse_log(text: str, *, sealed_prefix: Optional[str] = None, into: Optional[LogEvents] = None) -> LogEvents:
    """The events in (a piece of) a sidecar's log, with or without the API's `timestamps=true`
    prefixes, added to `into`. `sealed_prefix`: the s3 store's `<job prefix>sealed/`; a
    location elsewhere is refused."""
    events = into if into is not None else LogEvents()
    prefixes = tuple(f'{channel.LINE_START}{m.model_fields["kind"].default}"' for m in LIVE_EVENTS)
    for raw in text.splitlines():
        stamped = _TIMESTAMP.match(raw)
        if stamped:
            events.last_timestamp, raw = _stamp_text(stamped), stamped.group(4)
        raw = raw.strip()
        if not raw.startswith(prefixes):
            continue
        try:
            event = channel.decode(raw, LIVE_EVENTS)
        except channel.ResultError:
            events.refused += 1
            continue
        if isinstance(event, SealedEvent):
            sealed = event.checkpoint
            if not _sealed(sealed, sealed_prefix):
                continue
            if sealed.announced and sealed.path in {m.path for m in events.sealed}:
                continue
            events.sealed = [m for m in events.sealed if m.path != sealed.path] + [sealed]
            events.reasons[sealed.path] = sealed.sealReason[:300]
            if sealed.readOnlyProblem:
                events.not_read_only[sealed.path] = sealed.readOnlyProblem[:300]
            if sealed.synced == "syncfs":
                events.synced.add((sealed.path, sealed.digest))
        elif isinstance(event, RemovedEvent) and _valid_path(event.path):
            events.removed.add((event.path, event.digest))
            events.sealed = [m for m in events.sealed if (m.path, m.digest) not in events.removed]
        elif isinstance(event, ChangedEvent) and _valid_path(event.path):
            events.changed[event.path] = event
        elif isinstance(event, WarningEvent) and event.notRemoved is not None:
            if _valid_path(event.notRemoved.path):  # counted, and said in one warning (not_removed_message)
                events.not_removed[(event.notRemoved.path, event.notRemoved.digest)] = event.message[:500]
        elif isinstance(event, WarningEvent):
            events.warnings.append(event.message[:500])
    return events


def merge(into: LogEvents, more: LogEvents) -> LogEvents:
    for manifest in more.sealed:
        into.sealed = [m for m in into.sealed if m.path != manifest.path] + [manifest]
    into.reasons.update(more.reasons)
    into.not_read_only.update(more.not_read_only)
    into.synced |= more.synced
    into.removed |= more.removed
    # Removed is final, whichever pod's log said it (a retried pod announces what an earlier sealed).
    into.sealed = [m for m in into.sealed if (m.path, m.digest) not in into.removed]
    into.changed.update(more.changed)
    into.warnings += more.warnings
    into.not_removed.update(more.not_removed)
    into.refused += more.refused
    return into


# --- reading the log a piece at a time ------------------------------------------------------------

Stamp = tuple[int, int]  # (whole seconds since the epoch, nanoseconds)


def _stamp_text(match: re.Match[str]) -> str:
    return f"{match.group(1)}{'.' + match.group(2) if match.group(2) else ''}{match.group(3)}"


def _stamp(match: re.Match[str]) -> Stamp:
    moment = datetime.fromisoformat(match.group(1) + ("+00:00" if match.group(3) == "Z" else match.group(3)))
    return int(moment.timestamp()), int((match.group(2) or "0").ljust(9, "0"))


def _rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class LogCursor:
    """Where the reads of one pod's sidecar log have got to: the timestamp of the last line
    taken and how many lines of exactly that timestamp were taken (the API server passes
    `sinceTime` to the kubelet in whole seconds, so a read starts at most a second back and
    the lines already taken are skipped)."""

    stamp: Optional[Stamp] = None
    taken_at_stamp: int = 0

    def since_time(self) -> Optional[str]:
        return _rfc3339(self.stamp[0]) if self.stamp is not None else None


@dataclass
class LogPiece:
    text: str                 # the new lines, timestamps removed
    cursor: LogCursor         # where the next read starts
    warning: Optional[str] = None


def new_lines(text: str, cursor: LogCursor, *, limit_bytes: int, what: str = "the sidecar's log") -> LogPiece:
    """The lines of a read (`timestamps=true`, `sinceTime=cursor.since_time()`, at most
    `limit_bytes`) that the cursor has not taken yet, and the cursor after them. A last line
    the byte limit cut is left for the next read; a read that could not move the cursor (more
    than `limit_bytes` of lines within one second) moves it to the next second, with a warning:
    the lines skipped are what the end-of-job snapshot finds again."""
    lines = text.split("\n")
    tail = lines.pop()
    cut = len(text.encode("utf-8", "replace")) >= limit_bytes
    if tail and not cut:
        lines.append(tail)
    taken: list[str] = []
    stamp, same = cursor.stamp, cursor.taken_at_stamp
    seen_at_old = 0
    for line in lines:
        match = _TIMESTAMP.match(line)
        if match is None:
            taken.append(line)  # a line without a timestamp cannot be placed: taken as it comes
            continue
        line_stamp = _stamp(match)
        if cursor.stamp is not None and line_stamp < cursor.stamp:
            continue
        if cursor.stamp is not None and line_stamp == cursor.stamp:
            seen_at_old += 1
            if seen_at_old <= cursor.taken_at_stamp:
                continue
        if line_stamp == stamp:
            same += 1
        else:
            stamp, same = line_stamp, 1
        taken.append(match.group(4))
    if cut and not taken:
        first = _TIMESTAMP.match(text.split("\n", 1)[0] + " ")  # the stamp of a line the limit cut
        stuck = cursor.stamp or (_stamp(first) if first else None)
        if stuck is not None:
            return LogPiece("", LogCursor((stuck[0] + 1, 0), 0),
                            f"{what}: more than {limit_bytes} bytes were written within one second at "
                            f"{_rfc3339(stuck[0])}; those lines are skipped (the end-of-job snapshot finds the "
                            f"checkpoints they announced)")
    return LogPiece("\n".join(taken), LogCursor(stamp, same))



@dataclass
class LiveMemory:
    """What the operator remembers of a running job between passes (in memory only: lost on a
    restart, which costs a re-read of the sidecars' logs, a repeated warning or annotation, never
    a duplicate Checkpoint)."""

    cursors: dict[str, LogCursor] = field(default_factory=dict)  # pod -> where its log was read to
    pending: LogEvents = field(default_factory=LogEvents)        # read, not yet acted on
    annotated: dict[str, str] = field(default_factory=dict)       # pod -> the removal annotation it has
    reported: set[tuple[Optional[str], ...]] = field(default_factory=set)  # warnings already posted as events
    snapshot_next_look: dict[str, float] = field(default_factory=dict)  # VolumeSnapshot -> when to read it again
    # A volume per worker (logic/live_unions.py): the workers' sealed parts, and the unions assembled
    parts: PartSeals = field(default_factory=PartSeals)
    tried: set[tuple[str, Parts]] = field(default_factory=set)
    # directories a union was published for by this operator (their Checkpoint created, or being created:
    # the index may not have it yet); the resume step leaves their parts sealed (logic/group_resume.py)
    publishing: set[str] = field(default_factory=set)
    # retired (directory, digest) -> how many times a sidecar said it could not remove it (removal_annotation)
    removal_failures: dict[tuple[str, str], int] = field(default_factory=dict)

    def creating(self, directory: str) -> None:
        """Before a union's Checkpoint is created: the resume step keeps its parts sealed from here on."""
        self.publishing.add(directory)

    def created(self, directory: str, body: Optional[Any]) -> None:
        """After the create: `body` None (the name was taken meanwhile: nothing was created) forgets it, so a
        resume step gives its parts back as those of any step never published (H9-3) instead of leaving
        them read-only for a restarted trainer that writes the step again."""
        if body is None:
            self.publishing.discard(directory)


# --- status.live.retired, bounded ---------------------------------------------------------------------

def bounded_retired(current: list[tuple[str, str]], add: Iterable[tuple[str, str]],
                    deleting: Iterable[tuple[str, str]], limit: int) -> tuple[list[tuple[str, str]], int]:
    """The retired list after `add` (oldest first, no duplicates), at most `limit` long (the CRD's
    maxItems: a longer list is refused, 422, and with it every status write of the job); and how
    many were dropped.

    An entry leaves the list when the sidecar has removed its directory; one it never can (a root
    trainer's files, the part of a worker whose pod has ended) stays for good, so without a bound a
    long job reaches the limit and retention and deletions stall. What is dropped is the oldest
    entries whose Checkpoint is gone (not `deleting`: a Checkpoint still being deleted waits for its
    entry, which `_publish` would only add again): they have waited longest, so are the likeliest
    never to be removed. Dropping one loses no Checkpoint and no bytes: its directory merely stays on
    the volume (not removed), and its name goes to status.live.retiredPaths (remember_retired_paths), so
    it is still never published again."""
    merged = list(dict.fromkeys([*current, *add]))
    over = len(merged) - limit
    if over <= 0:
        return merged, 0
    waiting = set(deleting)
    dropped: set[int] = set()
    for i, entry in enumerate(merged):  # oldest first, none still being deleted
        if len(dropped) == over:
            break
        if entry not in waiting:
            dropped.add(i)
    for i in range(len(merged)):  # more still being deleted than the limit: the oldest of them too
        if len(dropped) == over:
            break
        dropped.add(i)
    return [e for i, e in enumerate(merged) if i not in dropped], over


def retired_dropped_message(dropped: int, limit: int) -> str:
    return (f"status.live.retired holds at most {limit} directories waiting for removal: the {dropped} oldest "
            "(their Checkpoints already deleted; the sealing sidecar could not remove them, e.g. files of a root "
            "trainer, or the part of a worker whose pod has ended) are no longer tracked: they stay on the output "
            "volume, their names in status.live.retiredPaths (never published again)")


# --- status.live.retiredPaths: the names never published again, bounded -------------------------------

def never_again(live: Optional[LiveStatus]) -> list[tuple[str, str]]:
    """(directory, digest) of every directory the job never publishes again: `retired` (its Checkpoint
    deleted, its directory not removed yet) and `retiredPaths` (removed, or dropped from `retired`), these
    with the digest "" (no bytes are theirs: whatever is found under the name is "found again").
    What the publishing decisions take as `retired` (plan_snapshot, retired_found_again, without_retired);
    never what removals are asked for (removal_annotation takes `retired` alone)."""
    if live is None:
        return []
    listed = [(r.path, r.digest) for r in live.retired or []]
    paths = {q for q, _ in listed}  # once, not per name (hostile13 H13-3: quadratic at the bounds)
    return listed + [(p, "") for p in live.retiredPaths or [] if p not in paths]


def remember_retired_paths(current: Sequence[str], add: Iterable[str], *, max_items: int,
                           max_bytes: int) -> tuple[list[str], int]:
    """status.live.retiredPaths after `add` (oldest first, no duplicates, one that is added again moves
    to the end), and how many were dropped: at most `max_items` names (the CRD's maxItems: a longer list
    is refused, 422, and with it every status write of the job) and `max_bytes` of them together (a
    TrainingJob is one etcd object). The oldest go first: the lowest steps, the least likely to be
    written again (a trainer resumes from its latest checkpoint). A dropped name is forgotten: a
    directory written again under it would be published under the deleted Checkpoint's name
    (retired_paths_dropped_message says so, once)."""
    adding = list(dict.fromkeys(add))
    merged = [p for p in current if p not in set(adding)] + adding
    merged = list(dict.fromkeys(merged))
    start, size = 0, sum(len(p.encode()) for p in merged)
    while len(merged) - start > max_items or (size > max_bytes and start < len(merged)):
        size -= len(merged[start].encode())
        start += 1
    return merged[start:], start


def retired_paths_dropped_message(dropped: int, limit: int, limit_bytes: int) -> str:
    return (f"status.live.retiredPaths remembers at most {limit} directories whose Checkpoint was deleted "
            f"({limit_bytes // 1024} KiB of names): the {dropped} oldest are forgotten, so a directory written "
            "again under one of those names would be published under the deleted Checkpoint's name")


# --- operator -> sidecar ----------------------------------------------------------------------------

MAX_REMOVAL_FAILURES = 3  # a retired directory a sidecar could not remove this many times is asked no more


def removal_annotation(retired: Iterable[tuple[str, str]],
                       still_there: Iterable[tuple[Optional[str], Optional[str]]],
                       failures: Mapping[tuple[str, str], int] | None = None) -> str:
    """The annotation value that asks the sidecar to remove the retired directories whose
    Checkpoint is gone (`still_there`: those whose Checkpoint still exists, maybe held by a user),
    at most MAX_REMOVALS_ANNOTATED of them, oldest first. `failures`: how many times a sidecar said it
    could not remove each (a root trainer's files: EACCES). One that failed goes behind every one that
    has not (fewest failures first), and one that failed MAX_REMOVAL_FAILURES times is not asked
    again: the oldest 100 never removable would otherwise hold the newer ones out of the annotation
    for good. (It stays in status.live.retired, so it is never published again; bounded_retired drops
    it, the oldest, when the list is full.)"""
    holding = set(still_there)
    failed = failures or {}
    wanted = [(p, d) for p, d in dict.fromkeys(retired) if (p, d) not in holding
              and failed.get((p, d), 0) < MAX_REMOVAL_FAILURES]
    wanted.sort(key=lambda e: failed.get(e, 0))  # stable: oldest first among the same count
    return json.dumps([{"path": p, "digest": d} for p, d in wanted[:MAX_REMOVALS_ANNOTATED]],
                      separators=(",", ":"), sort_keys=True)


def count_removal_failures(failures: Mapping[tuple[str, str], int], failed: Iterable[tuple[str, str]],
                           retired: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The failure counts after a sidecar said it could not remove `failed`, kept only for entries still
    retired (bounded by status.live.retired: an entry removed or dropped from it is forgotten)."""
    still = set(retired)
    counts = {k: v for k, v in failures.items() if k in still}
    for key in failed:
        if key in still:
            counts[key] = counts.get(key, 0) + 1
    return counts


def not_removed_message(counts: Mapping[tuple[str, str], int], reason: str) -> str:
    """ONE warning for every retired directory a sidecar could not remove (not one per directory)."""
    given_up = sum(1 for n in counts.values() if n >= MAX_REMOVAL_FAILURES)
    return (f"{len(counts)} retired director{'y' if len(counts) == 1 else 'ies'} could not be removed by the sealing "
            f"sidecar (the latest: {reason}); they stay on the output volume and are never published again; newer "
            f"ones are asked first, and {given_up} that failed {MAX_REMOVAL_FAILURES} times are asked no more")


def retired_found_again(found: Iterable[tuple[str, str]], retired: Iterable[tuple[str, str]]) -> list[str]:
    """The directories `found` (path, digest) under a retired directory's name with other bytes than the
    retired ones: what a removal that failed in part left, or a directory written again under that name.
    Never published (a new Checkpoint would take the deleted one's name): said, sorted, once each."""
    listed = set(retired)
    paths = {p for p, _ in listed}
    return sorted({p for p, d in found if p in paths and (p, d) not in listed})


def found_again_message(paths: Sequence[str], shown: int = 5) -> str:
    """ONE warning for every retired directory found again with other bytes (not one per directory)."""
    names = ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")
    return (f"{len(paths)} director{'y' if len(paths) == 1 else 'ies'} whose Checkpoint was deleted (retired) "
            f"hold{'s' if len(paths) == 1 else ''} other bytes now ({names}): what a removal left, or a checkpoint "
            f"written again under a retired name; never published again (the name meant the deleted Checkpoint's bytes): "
            f"write it under a new directory name to publish it")


# --- whose log is the sidecar's (hostile8 F1) -------------------------------------------------------

# What a cluster's mutating admission adds to every container of a pod, the sidecar included: the
# Job controller's index, cloud workload identity (EKS IRSA and Pod Identity, Azure Workload Identity)
# and observability agents' variables, and their token mounts under /var/run/secrets/. None of them
# changes what the sidecar seals; anything else that differs from the template does (hostile9 H9-6).
ADMISSION_ENV = frozenset({
    COMPLETION_INDEX, "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"})
ADMISSION_ENV_PREFIXES = ("DD_", "OTEL_")
TOKEN_MOUNTS = "/var/run/secrets/"
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def _admission_added(var: Any) -> bool:
    name = str(var.get("name")) if isinstance(var, Mapping) else ""
    return name in ADMISSION_ENV or name.startswith(ADMISSION_ENV_PREFIXES)


def _image(image: Any) -> Any:
    """`repo:tag@sha256:...` as `repo:tag`: a policy engine (Kyverno's verifyImages) pins the tag
    the template names to its digest; a reference by digest alone stays as it is."""
    if isinstance(image, str) and _DIGEST.search(image):
        named = _DIGEST.sub("", image)
        if ":" in named.rsplit("/", 1)[-1]:
            return named
    return image


def sidecar_identity(pod_spec: Mapping[str, Any]) -> Optional[str]:
    """What makes a pod's sealing sidecar the one the operator built: its image, command, arguments,
    working directory, hooks and environment, and every volume it mounts where (a claim by name, any
    other volume by its whole source: a nested mount over the output or over the agent's code is not
    the sidecar built, hostile9 H9-5); None when the pod has no single `ckpt-live` container, or
    shares its processes (another container could write into the sidecar's output). A pod's owner
    references and labels are whatever its creator wrote, so a pod of anyone's with the job's Job as
    controller and a container named ckpt-live is not proof: its log is believed only when its
    sidecar's identity is one of the workload's templates' (which the operator built). What admission
    adds to every container (ADMISSION_ENV, token mounts under /var/run/secrets/, a tag pinned to its
    digest) does not count."""
    if pod_spec.get("shareProcessNamespace") or pod_spec.get("hostPID"):
        return None
    found = [c for c in [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]
             if isinstance(c, Mapping) and c.get("name") == SIDECAR]
    if len(found) != 1:
        return None
    container = found[0]
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or [] if isinstance(v, Mapping)}

    def source(name: Any) -> Any:
        volume = volumes.get(name) or {}
        claim = volume.get("persistentVolumeClaim")
        if isinstance(claim, Mapping):
            return {"claimName": claim.get("claimName")}
        return {k: v for k, v in volume.items() if k != "name"}
    mounts = sorted(json.dumps([str(m.get("mountPath")), bool(m.get("readOnly")), str(m.get("subPath") or ""),
                                str(m.get("subPathExpr") or ""), str(m.get("mountPropagation") or ""),
                                source(m.get("name"))], sort_keys=True)
                    for m in container.get("volumeMounts") or []
                    if isinstance(m, Mapping) and not str(m.get("mountPath") or "").startswith(TOKEN_MOUNTS))
    env = [v for v in container.get("env") or [] if not _admission_added(v)]
    body = {"image": _image(container.get("image")), "command": container.get("command"),
            "args": container.get("args"), "workingDir": container.get("workingDir"),
            "lifecycle": container.get("lifecycle"), "env": env, "envFrom": container.get("envFrom"),
            "mounts": mounts}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def pod_templates(workload: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The pod templates of a Job, or of each of a JobSet's replicated jobs."""
    spec = workload.get("spec") or {}
    if "replicatedJobs" in spec:
        return [(((r.get("template") or {}).get("spec") or {}).get("template") or {})
                for r in spec.get("replicatedJobs") or [] if isinstance(r, Mapping)]
    return [spec.get("template") or {}]


def template_pod_specs(workload: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The pod specs of a Job's template or of each of a JobSet's replicated jobs' templates."""
    return [t.get("spec") or {} for t in pod_templates(workload)]


def built_sidecar_workers(workloads: Iterable[Mapping[str, Any]]) -> dict[str, Optional[int]]:
    """The identity of each sidecar the operator built into these workloads' templates -> the worker
    whose volume it watches (a volume per worker: the template's worker-index label, which the operator
    wrote; a pod's own label is anyone's to patch: hostile8 F4), else None."""
    built: dict[str, Optional[int]] = {}
    for w in workloads:
        for template in pod_templates(w):
            identity = sidecar_identity(template.get("spec") or {})
            if identity is None:
                continue
            label = ((template.get("metadata") or {}).get("labels") or {}).get(WORKER_INDEX_LABEL)
            built[identity] = int(label) if isinstance(label, str) and label.isdigit() else None
    return built


def built_sidecars(workloads: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The identities of the sidecars the operator built into these workloads' templates."""
    return frozenset(built_sidecar_workers(workloads))


def not_its_sidecar(pod_name: str) -> str:
    return (f"pod {pod_name}: its container {SIDECAR} is not the sealing sidecar the operator built for this job "
            f"(image, command, environment or output claim differ, or it shares its processes): its log is not read")
