"""The manifest: size and sha256 of every file of a checkpoint, and the digest that names it.

The digest is `sha256:` + sha256 of the text `sha256sum` prints for the files sorted by path
(`<hex>  <path>\\n` each), so anyone can check a checkpoint with coreutils:
`cd CKPT && find . -type f ! -path ./.checkpoint-manifest.json -printf '%P\\n' | LC_ALL=C sort |
xargs -r -d '\\n' sha256sum | sha256sum` (hidden files inside a checkpoint are content; only the
manifest at its root is not). For the root-files checkpoint "." hash just the root files it lists. The command
matches when the checkpoint has no symlinks (`agent scan` takes a link to a file inside as that
file's bytes; `find -type f` skips it). Names `sha256sum` would escape (backslash, newline) are
outside the names rule (agent/names.py), so no manifest holds one: this is why a push refuses
them rather than storing them (docs/kubectl-ckpt.md, what a push takes).
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable, Optional

from pydantic import BaseModel, Field, ValidationError, field_validator

from checkpoint_operator.agent.errors import AgentError
from checkpoint_operator.agent.names import NameSpace, collision_problem, path_problem, printable, spelled

MANIFEST_VERSION = 1
# Object name of the manifest next to the data in object storage. Hidden, so a scan of a
# downloaded checkpoint never mistakes it for checkpoint content; written last = commit marker.
MANIFEST_NAME = ".checkpoint-manifest.json"
# Beside the data during an upload: sha256 of multipart objects (see upload.py).
UPLOAD_JOURNAL_NAME = ".checkpoint-upload-journal.json"
# Names at a checkpoint's root that the agent writes itself: never files of a checkpoint.
RESERVED_ROOT_NAMES = (MANIFEST_NAME, UPLOAD_JOURNAL_NAME)
MAX_STEP = 2**63 - 1  # int64, the status schema's
# A manifest bigger than this is refused unread (a million files take ~150 MB).
MAX_MANIFEST_BYTES = 512 * 1024 * 1024


class FileEntry(BaseModel):
    path: str = Field(description="path relative to the checkpoint root, '/'-separated")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    """One checkpoint as `agent scan` reports it and as it is stored beside the data."""

    version: int = MANIFEST_VERSION
    path: str = Field(description="directory relative to the scanned dir, '.' for the root files")
    files: list[FileEntry]
    sizeBytes: int
    fileCount: int
    digest: str
    format: str = "unknown"
    step: Optional[int] = None
    resumable: bool = False
    # True: checked, and the files are what their format says; False: a check failed; None: nothing
    # could be checked (never counted as complete). The reason is one line a user reads: what
    # decided it, and what was ignored (agent/completeness.py).
    complete: Optional[bool] = None
    completeReason: Optional[str] = None
    # A few named numbers the checkpoint records about itself (agent/metrics_files.py), for
    # retention.keepBest and select: best. Not part of the digest.
    metrics: Optional[dict[str, float]] = None

    @field_validator("step", mode="before")
    @classmethod
    def _step_within_int64(cls, value: object) -> object:
        # A step the status's int64 cannot hold is no step (whoever wrote the manifest).
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_STEP:
            return None
        return value

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=None, separators=(",", ":"), sort_keys=True)


def sha256sum_text(files: list[FileEntry]) -> str:
    """The text `sha256sum` prints for these files, sorted by path (byte order, as LC_ALL=C sort)."""
    ordered = sorted(files, key=lambda f: f.path.encode())
    return "".join(f"{f.sha256}  {f.path}\n" for f in ordered)


def digest_of(files: list[FileEntry]) -> str:
    return "sha256:" + hashlib.sha256(sha256sum_text(files).encode()).hexdigest()


def paths_problem(paths: Iterable[str]) -> Optional[str]:
    """Why these paths cannot be the files of one checkpoint, or None: each valid
    (agent/names.py) and not reserved, none twice, none both a file and a directory, no two
    (nor two directories on their way) the same after Unicode normalization."""
    seen: set[str] = set()
    space = NameSpace()
    for path in paths:
        problem = path_problem(path)
        if problem:
            return f"file name '{printable(path)}' {problem}"
        if path in RESERVED_ROOT_NAMES:
            return f"file name {path!r} is reserved for the agent's own use"
        if path in seen:
            return f"file {path!r} is listed twice"
        seen.add(path)
        clash = space.add(path)
        if clash:
            return f"file name '{spelled(clash[0])}' {collision_problem(clash[1])}"
    for path in seen:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in seen:
                return f"'{printable(parent)}' is both a file and a directory ('{printable(path)}')"
    return None


def manifest_problem(manifest: Manifest) -> Optional[str]:
    """Why a manifest contradicts itself, or None: its paths (paths_problem); fileCount,
    sizeBytes and digest as computed from the files."""
    if manifest.version > MANIFEST_VERSION:
        return f"version {manifest.version} is newer than this agent understands ({MANIFEST_VERSION})"
    if manifest.path != "." and path_problem(manifest.path):
        return f"path '{printable(manifest.path)}' {path_problem(manifest.path)}"
    problem = paths_problem(e.path for e in manifest.files)
    if problem:
        return problem
    if manifest.fileCount != len(manifest.files):
        return f"fileCount {manifest.fileCount} but {len(manifest.files)} files are listed"
    total = sum(e.size for e in manifest.files)
    if manifest.sizeBytes != total:
        return f"sizeBytes {manifest.sizeBytes} but the files' sizes sum to {total}"
    computed = digest_of(manifest.files)
    if manifest.digest != computed:
        return f"digest {manifest.digest} but its files give {computed}"
    return None


def _first_validation_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ""
    for part in err.get("loc", ()):
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    count = exc.error_count()
    more = f" (and {count - 1} more)" if count > 1 else ""
    return f"{where or 'manifest'}: {err.get('msg', 'invalid')}{more}"


def parse_manifest(body, where: str) -> Manifest:
    """A manifest from its JSON text (or already parsed JSON), checked for consistency;
    AgentError (one line naming `where`) otherwise."""
    if isinstance(body, (bytes, bytearray, str)):
        try:
            body = json.loads(body)
        except ValueError as exc:
            raise AgentError(f"invalid manifest at {where}: not JSON ({exc})") from None
        except RecursionError:  # the JSON decoder recurses once per level of nesting
            raise AgentError(f"invalid manifest at {where}: nested too deeply to be a manifest") from None
    if not isinstance(body, dict):
        raise AgentError(f"invalid manifest at {where}: not a JSON object")
    try:
        manifest = Manifest.model_validate(body)
    except ValidationError as exc:
        raise AgentError(f"invalid manifest at {where}: {_first_validation_error(exc)}") from None
    problem = manifest_problem(manifest)
    if problem:
        raise AgentError(f"invalid manifest at {where}: {problem}")
    return manifest
