"""Deterministic, valid names: the same inputs always give the same names (idempotent snapshots)."""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 253       # DNS-1123 subdomain: Checkpoints, PVCs, Pods
MAX_LABEL_NAME = 63  # DNS-1123 label: Jobs (their name becomes a pod label value)
ROOT_DIRECTORY = "."
NAME_HASH_LENGTH = 10  # hex digits (40 bits) telling apart directories whose names are not clean
CLEAN_DIRECTORY = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # a DNS label: named as it is


def short_hash(text: str, length: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def sanitize(text: str) -> str:
    """Lower-case and replace every run of characters not allowed in a DNS-1123 label by '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def bounded_name(base: str, limit: int, salt: str = "") -> str:
    """`base` if it fits, else truncated with a hash of the whole (plus salt) to stay unique."""
    if len(base) <= limit and not salt:
        return base
    suffix = short_hash(base + salt)
    return f"{base[:limit - len(suffix) - 1].rstrip('-.')}-{suffix}"


# The components of agent pods, the last part of every agent pod's name (agent_pod_name): the chart's
# exec fence (charts/checkpoint-operator/templates/exec-fence.yaml) recognizes them by it, since a
# pods/exec request carries the pod's name but not its labels.
AGENT_POD_COMPONENTS = ("snapshot", "scan", "import", "copy", "upload", "verify", "pull", "resume", "union")


def agent_pod_name(parent: str, component: str) -> str:
    """`<parent>-<component>`; a long parent is cut and hashed before the suffix, never the suffix
    itself, so the name always ends with `-<component>` (what the exec fence matches)."""
    assert component in AGENT_POD_COMPONENTS, component
    suffix = f"-{component}"
    if len(parent) + len(suffix) <= MAX_NAME:
        return parent + suffix
    return bounded_name(parent, MAX_NAME - len(suffix), salt=suffix) + suffix


def child_name(parent: str, suffix: str, limit: int = MAX_NAME) -> str:
    """Name of an object the operator creates for `parent` (e.g. `job-output`), within `limit`."""
    return bounded_name(f"{parent}-{suffix}", limit)


# The extension of a file checkpoint's name (`.pt`, `.safetensors`, `.mdl`): it has a letter,
# so `step-1.5` keeps its `.5`.
_EXTENSION = re.compile(r"\.[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*$")


def without_extension(file_name: str) -> str:
    """`tfiles-step-100.pt` -> `tfiles-step-100`: a `layout: files` entry is named without its suffix."""
    stem = _EXTENSION.sub("", file_name)
    return stem or file_name


def checkpoint_name(prefix: str, directory: str, is_file: bool = False) -> str:
    """The name of the Checkpoint of one output entry: an injective function of (prefix,
    directory) that depends on nothing else (not on what exists, not on timing), so a name means
    the same data in every run. `prefix` is the job's namePrefix or name: a DNS label, never a '.'.

    - the root's files: `<prefix>` (no '.');
    - a directory already in clean DNS-label form (`step-100`): `<prefix>.<directory>` (one '.');
    - anything else (`Step_1`, `model.v2`, a file's name, too long): `<prefix>.<readable>.<hash>`
      (two '.'), the hash over the prefix and the directory, the readable part sanitized (a
      file's without its extension) and cut so the name fits 253 characters.

    The number of dots tells the three forms apart, and within each form the prefix and the
    directory can be read back (or are hashed), so no two (prefix, directory) share a name.
    `is_file` only shapes the readable part (a `layout: files` entry)."""
    if directory == ROOT_DIRECTORY:
        return prefix
    if CLEAN_DIRECTORY.fullmatch(directory) and len(prefix) + 1 + len(directory) <= MAX_NAME:
        return f"{prefix}.{directory}"
    readable = sanitize(without_extension(directory) if is_file else directory) or "x"
    digest = short_hash(f"{prefix}\0{directory}", NAME_HASH_LENGTH)
    room = MAX_NAME - len(digest) - 2  # for prefix, readable and their '.'
    readable = readable[:max(1, room - len(prefix) - 1)].rstrip("-") or "x"
    head = prefix[:room - len(readable) - 1].rstrip("-") or "x"
    return f"{head}.{readable}.{digest}"


WORKER_PART = re.compile(r"worker-(0|[1-9][0-9]*)(?:/(.+))?")  # agent/parts.py: worker-<i>[/<entry>]


def per_worker_checkpoint_name(prefix: str, directory: str, is_file: bool = False) -> str:
    """output.perWorker: worker i's entry `worker-<i>/<entry>` is named by the rule above with the
    prefix `<prefix>-worker-<i>`: `<prefix>-worker-<i>.<entry>`, its root files `<prefix>-worker-<i>`.
    Anything else (never reported in that mode) is named as it is."""
    match = WORKER_PART.fullmatch(directory)
    if match is None:
        return checkpoint_name(prefix, directory, is_file)
    return checkpoint_name(f"{prefix}-worker-{match.group(1)}", match.group(2) or ROOT_DIRECTORY, is_file)
