"""Live sealing (`spec.output.publish: Continuous`), the operator's side, as pure functions.

- `sidecar_parts`: what a training pod gains: the native sidecar `ckpt-live` (an init container
  with `restartPolicy: Always` running `checkpoint-operator agent watch` in the operator's
  image, the output volume at the same path as the training containers), a downwardAPI volume
  of the pod's annotations (the operator -> sidecar channel: which retired directories to
  remove), and CHECKPOINT_RESUME_PATH for the training containers.
- `parse_log`: the sidecar -> operator channel: its log, one JSON line per event. Lines are
  checked before use (a path inside the output, a digest, an s3 location under this job's own
  prefix); anything else is ignored, so nothing the pod prints can name data outside its job.
- `removal_annotation`: the retired directories whose Checkpoint is gone, for the sidecar.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from checkpoint_operator.agent.manifest import Manifest
from checkpoint_operator.agent.names import path_problem
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.logic.security_context import sidecar_context

SIDECAR = "ckpt-live"
META_VOLUME = "ckpt-live-meta"
META_MOUNT = "/ckpt-live-meta"
ANNOTATIONS_FILE = "annotations"
REMOVE_ANNOTATION = "ckpt.dev/live-remove"   # agent/live_watch.py reads it
LIVE_DIR = ".ckpt-live"                      # agent/live_sealing.py LIVE_DIR
RESUME_ENV = "CHECKPOINT_RESUME_PATH"
MAX_REMOVALS_ANNOTATED = 100                 # per pod annotation (the rest follow as these are done)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z) (.*)$")


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
class LiveMemory:
    """What the operator remembers of a running job between passes (in memory only: lost on a
    restart, which costs a repeated warning or annotation, never a duplicate Checkpoint)."""

    annotated: dict[str, str] = field(default_factory=dict)       # pod -> the removal annotation it has
    reported: set[tuple[Optional[str], ...]] = field(default_factory=set)  # warnings already posted as events
    snapshot_next_look: dict[str, float] = field(default_factory=dict)  # VolumeSnapshot -> when to read it again


@dataclass
class LogEvents:
    sealed: list[Manifest] = field(default_factory=list)    # files left out: the Checkpoint needs only the totals
    uris: dict[str, str] = field(default_factory=dict)       # s3 store: path -> where the sealed copy is
    reasons: dict[str, str] = field(default_factory=dict)    # path -> why it was sealed then
    not_read_only: dict[str, str] = field(default_factory=dict)
    removed: set[tuple[str, str]] = field(default_factory=set)
    changed: dict[str, dict[str, Any]] = field(default_factory=dict)   # path -> the line
    synced: set[tuple[str, str]] = field(default_factory=set)  # (path, digest) whose sealed line says "syncfs"
    warnings: list[str] = field(default_factory=list)
    last_timestamp: Optional[str] = None


def _valid_path(path: Any) -> bool:
    """A checkpoint directory of the output: one component, or a container's step (two)."""
    return isinstance(path, str) and path not in ("", ".") and path.count("/") <= 1 and not path_problem(path) \
        and not path.startswith(".")


def _sealed(line: dict[str, Any]) -> Optional[Manifest]:
    checkpoint = line.get("checkpoint")
    if not isinstance(checkpoint, dict) or not _valid_path(checkpoint.get("path")) \
            or not _DIGEST.match(str(checkpoint.get("digest", ""))):
        return None
    try:
        return Manifest.model_validate({**{k: v for k, v in checkpoint.items() if k in Manifest.model_fields},
                                        "files": []})
    except ValueError:
        return None


def parse_log(text: str, *, sealed_prefix: Optional[str] = None) -> LogEvents:
    """The events in a sidecar's log (with or without the API's `timestamps=true` prefixes).
    `sealed_prefix`: the s3 store's `<job prefix>sealed/`; a location elsewhere is refused."""
    events = LogEvents()
    for raw in text.splitlines():
        match = _TIMESTAMP.match(raw)
        if match:
            events.last_timestamp, raw = match.group(1), match.group(3)
        raw = raw.strip()
        if not raw.startswith("{"):
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(line, dict):
            continue
        kind = line.get("event")
        if kind == "sealed":
            manifest = _sealed(line)
            if manifest is None:
                continue
            if manifest.sizeBytes is None or manifest.fileCount is None:
                continue
            uri = line["checkpoint"].get("uri")
            if sealed_prefix is not None:
                expected = f"{sealed_prefix}{manifest.path}/{manifest.digest.split(':', 1)[1]}/"
                if uri != expected:
                    continue
                events.uris[manifest.path] = uri
            if line["checkpoint"].get("announced") and manifest.path in {m.path for m in events.sealed}:
                continue
            events.sealed = [m for m in events.sealed if m.path != manifest.path] + [manifest]
            events.reasons[manifest.path] = str(line["checkpoint"].get("sealReason") or "")[:300]
            problem = line["checkpoint"].get("readOnlyProblem")
            if problem:
                events.not_read_only[manifest.path] = str(problem)[:300]
            if line["checkpoint"].get("synced") == "syncfs":
                events.synced.add((manifest.path, manifest.digest))
        elif kind == "removed" and _valid_path(line.get("path")):
            events.removed.add((line["path"], str(line.get("digest", ""))))
            events.sealed = [m for m in events.sealed if (m.path, m.digest) not in events.removed]
        elif kind == "changed" and _valid_path(line.get("path")):
            events.changed[line["path"]] = line
        elif kind == "warning":
            events.warnings.append(str(line.get("message", ""))[:500])
    return events


def merge(into: LogEvents, more: LogEvents) -> LogEvents:
    for manifest in more.sealed:
        into.sealed = [m for m in into.sealed if m.path != manifest.path] + [manifest]
    into.uris.update(more.uris)
    into.reasons.update(more.reasons)
    into.not_read_only.update(more.not_read_only)
    into.synced |= more.synced
    into.removed |= more.removed
    # Removed is final, whichever pod's log said it (a retried pod announces what an earlier sealed).
    into.sealed = [m for m in into.sealed if (m.path, m.digest) not in into.removed]
    into.changed.update(more.changed)
    into.warnings += more.warnings
    return into


# --- operator -> sidecar ----------------------------------------------------------------------------

def removal_annotation(retired: Iterable[tuple[str, str]],
                       still_there: Iterable[tuple[Optional[str], Optional[str]]]) -> str:
    """The annotation value that asks the sidecar to remove the retired directories whose
    Checkpoint is gone (`still_there`: those whose Checkpoint still exists, maybe held by a user)."""
    holding = set(still_there)
    wanted = [{"path": p, "digest": d} for p, d in retired if (p, d) not in holding]
    return json.dumps(wanted[:MAX_REMOVALS_ANNOTATED], separators=(",", ":"), sort_keys=True)
