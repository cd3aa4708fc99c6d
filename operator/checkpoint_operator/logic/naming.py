"""Deterministic, valid names: the same inputs always give the same names (idempotent snapshots)."""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 253       # DNS-1123 subdomain: Checkpoints, PVCs, Pods
MAX_LABEL_NAME = 63  # DNS-1123 label: Jobs (their name becomes a pod label value)
ROOT_DIRECTORY = "."
ROOT_SUFFIX = "final"  # the files at the root of the output: Transformers' final/best model


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


def checkpoint_name(prefix: str, directory: str, force_hash: bool = False, is_file: bool = False) -> str:
    """`<prefix>-<directory>` lower-cased into a valid name (a file entry without its extension).
    A short hash of the directory is added only where needed: when the name would be too long
    or empty, or when `force_hash` (another entry of the same output, or a foreign object,
    already has the plain name)."""
    part = ROOT_SUFFIX if directory == ROOT_DIRECTORY else sanitize(without_extension(directory) if is_file else directory)
    plain = f"{prefix}-{part}" if part else prefix
    if not (force_hash or not part or len(plain) > MAX_NAME):
        return plain
    suffix = short_hash(directory)
    head = plain[:MAX_NAME - len(suffix) - 1].rstrip("-.")
    return f"{head}-{suffix}"


def assign_checkpoint_names(prefix: str, directories: list[str], taken_by_others: set[str],
                            files: bool = False) -> dict[str, str]:
    """Names for all entries of one output, deterministic and unique. `files`: the entries are
    files (`layout: files`), named without their extension.

    Entries whose sanitized names clash are told apart by a hash, except the one whose
    directory is already the clean form (so `step-1` keeps its name beside `Step_1`)."""
    plain = {d: checkpoint_name(prefix, d, is_file=files) for d in directories}
    clashes: dict[str, list[str]] = {}
    for directory, name in plain.items():
        clashes.setdefault(name, []).append(directory)
    names = {}
    for name, group in clashes.items():
        for directory in group:
            is_clean = directory == name[len(prefix) + 1:] or (directory == ROOT_DIRECTORY and len(group) == 1)
            unique_in_output = len(group) == 1 or is_clean
            names[directory] = name if unique_in_output and name not in taken_by_others else \
                checkpoint_name(prefix, directory, force_hash=True, is_file=files)
    return names
