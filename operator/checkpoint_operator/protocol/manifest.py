"""The manifest: size and sha256 of every file of a checkpoint, and the digest that names it.

The digest is `sha256:` + sha256 of the text `sha256sum` prints for the files sorted by path
(`<hex>  <path>\\n` each), so anyone can check a checkpoint with coreutils:
`cd CKPT && find . -type f ! -path ./.checkpoint-manifest.json -printf '%P\\n' | LC_ALL=C sort |
xargs -r -d '\\n' sha256sum | sha256sum` (hidden files inside a checkpoint are content; only the
manifest at its root is not). For the root-files checkpoint "." hash just the root files it lists. The command
matches when the checkpoint has no symlinks (`agent scan` takes a link to a file inside as that
file's bytes; `find -type f` skips it). Names `sha256sum` would escape (backslash, newline) are
outside the names rule (protocol/names.py), so no manifest holds one: this is why a push refuses
them rather than storing them (docs/kubectl-ckpt.md, what a push takes).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from typing import IO, Any, ClassVar, Iterable, Optional, Union

from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.names import collision_problem, normalized, path_problem, printable, spelled

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
# Volume store: the full manifests of the checkpoints of an output (or an import claim), beside
# the data at the volume's root and outside every checkpoint directory, so each stays
# byte-identical to what was written. Hidden: the scan of the output skips it.
MANIFESTS_DIR = ".ckpt-manifests"


def stored_manifest_name(digest: str) -> str:
    """The file of a manifest in MANIFESTS_DIR: named by its digest (checkpoints with the same
    bytes share it; a reader checks the digest it holds is the one it expects)."""
    return digest.replace(":", "-", 1) + ".json"


class ManifestInvalid(ValueError):
    """A manifest (or one of its files) that is not what the model allows: one line, field first."""


# Plain dataclasses, not pydantic models: every agent pod starts by importing this module, and
# pydantic's import plus these two models' schemas cost more than the rest of the agent's start
# (docs/performance.md, start-up). They keep the part of pydantic's interface their callers use
# (model_validate, model_dump, model_construct, model_copy, model_fields), and validate as
# strictly: JSON types as declared (no "5" for 5, no true for 1), constraints as before.
@dataclass(eq=True)
class FileEntry:
    path: str  # relative to the checkpoint root, '/'-separated
    size: int  # >= 0
    sha256: str  # 64 lowercase hex digits

    @classmethod
    def model_validate(cls, value: object, where: str = "") -> "FileEntry":
        data = _object(value, where or "file")
        return cls(path=_field(data, "path", str, where), size=_count(data, "size", where),
                   sha256=_sha256(data, where))

    @classmethod
    def model_construct(cls, **values: Any) -> "FileEntry":
        return cls(**values)

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(eq=True)
class Manifest:
    """One checkpoint as `agent scan` reports it and as it is stored beside the data."""

    path: str  # directory relative to the scanned dir, '.' for the root files
    files: list[FileEntry]
    sizeBytes: int
    fileCount: int
    digest: str
    version: int = MANIFEST_VERSION
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
    # s3 store, content-addressed layout (objectstore/blobs.py): the directory of the files' blobs
    # (each stored under its sha256), relative to the checkpoint's prefix. None: each file is
    # stored under the prefix at its path (the older layout, and every other store). Not part
    # of the digest: it says where the bytes are, and they are checked against their sha256.
    blobs: Optional[str] = None

    model_fields: ClassVar[tuple[str, ...]] = ()  # set below: the field names, as pydantic's mapping's keys

    def __post_init__(self) -> None:
        # Built from another manifest's model_dump (files as objects): entries, as pydantic made them.
        if not all(isinstance(f, FileEntry) for f in self.files):
            self.files = [f if isinstance(f, FileEntry) else FileEntry.model_validate(f, f"files[{i}]")
                          for i, f in enumerate(self.files)]

    @classmethod
    def model_validate(cls, value: object) -> "Manifest":
        """A manifest from parsed JSON; ManifestInvalid naming the first wrong field otherwise.
        Unknown fields are ignored (a newer agent's additions)."""
        data = _object(value, "manifest")
        # in the fields' order, so the first wrong one is named (as pydantic did)
        version, path = _field(data, "version", int, "", MANIFEST_VERSION), _field(data, "path", str, "")
        files = data.get("files")
        if "files" not in data:
            raise ManifestInvalid("files: Field required")
        if not isinstance(files, list):
            raise ManifestInvalid("files: a list is required")
        step = data.get("step")
        # A step the status's int64 cannot hold is no step (whoever wrote the manifest).
        if isinstance(step, int) and not isinstance(step, bool) and not 0 <= step <= MAX_STEP:
            step = None
        metrics = _metrics(data.get("metrics"))
        return cls(
            version=version, path=path,
            files=[FileEntry.model_validate(f, f"files[{i}]") for i, f in enumerate(files)],
            sizeBytes=_field(data, "sizeBytes", int, ""), fileCount=_field(data, "fileCount", int, ""),
            digest=_field(data, "digest", str, ""), format=_field(data, "format", str, "", "unknown"),
            step=_optional(step, "step", int), resumable=_field(data, "resumable", bool, "", False),
            complete=_optional(data.get("complete"), "complete", bool),
            completeReason=_optional(data.get("completeReason"), "completeReason", str),
            metrics=metrics, blobs=_blobs(data.get("blobs")))

    @classmethod
    def model_validate_json(cls, text: "str | bytes") -> "Manifest":
        return cls.model_validate(json.loads(text))

    @classmethod
    def model_construct(cls, **values: Any) -> "Manifest":
        return cls(**values)

    def model_copy(self, update: Optional[dict[str, Any]] = None) -> "Manifest":
        return replace(self, **(update or {}))

    def model_dump(self, mode: str = "python", exclude: Optional[set[str]] = None) -> dict[str, Any]:
        """The fields as JSON values (mode is accepted for pydantic's signature: both give JSON types)."""
        data = {name: getattr(self, name) for name in _MANIFEST_FIELDS if not exclude or name not in exclude}
        if "files" in data:
            data["files"] = [f.model_dump() for f in self.files]
        if data.get("metrics") is not None:
            data["metrics"] = dict(data["metrics"])
        if data.get("blobs", "") is None:
            del data["blobs"]  # manifests without blobs stay byte for byte as before
        return data

    def model_dump_json(self) -> str:
        return json.dumps(self.model_dump(), separators=(",", ":"))

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=None, separators=(",", ":"), sort_keys=True)


# pydantic's order of the fields (what model_dump and the stored JSON list first)
_MANIFEST_FIELDS = ("version", "path", "files", "sizeBytes", "fileCount", "digest", "format", "step", "resumable",
                    "complete", "completeReason", "metrics", "blobs")
Manifest.model_fields = _MANIFEST_FIELDS
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_BLOBS_CHARS = 1024  # the blobs directory's reference (objectstore/blobs.py reads up to this)
_BLOBS_REF = re.compile(r'[ !#-\[\]-~]{1,%d}' % MAX_BLOBS_CHARS)
_JSON_TYPE = {str: "a string", int: "a whole number", bool: "true or false"}


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{where}: an object is required")
    return value


def _typed(value: object, name: str, kind: type) -> Any:
    # bool is an int to Python, not to JSON
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestInvalid(f"{name}: {_JSON_TYPE[kind]} is required")
    return value


_REQUIRED = object()


def _field(data: dict[str, Any], name: str, kind: type, where: str, default: Any = _REQUIRED) -> Any:
    label = f"{where}.{name}" if where else name
    if name not in data:
        if default is _REQUIRED:
            raise ManifestInvalid(f"{label}: Field required")  # pydantic's words, which users saw before
        return default
    return _typed(data[name], label, kind)


def _optional(value: object, name: str, kind: type) -> Any:
    return None if value is None else _typed(value, name, kind)


def _blobs(value: object) -> Optional[str]:
    blobs: Optional[str] = _optional(value, "blobs", str)
    # what the collector's scan of stored manifests reads unescaped (objectstore/blobs.py): printable
    # ASCII without quote or backslash, so no manifest names blobs the collector would not see
    if blobs is not None and not _BLOBS_REF.fullmatch(blobs):
        raise ManifestInvalid(f"blobs: 1 to {MAX_BLOBS_CHARS} printable ASCII characters other than '\"' and "
                              "'\\' are required")
    return blobs


def _metrics(value: object) -> Optional[dict[str, float]]:
    """`metrics` as floats; ManifestInvalid naming the first metric that is not a number a float
    holds (10**400 is a JSON number, not a float: no traceback, hostile4 D1 and D15)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ManifestInvalid("metrics: an object of numbers is required")
    metrics: dict[str, float] = {}
    for name, number in value.items():
        if not isinstance(name, str):  # JSON's keys are; a dict handed in may not be
            raise ManifestInvalid("metrics: an object of numbers is required")
        label = f"metrics.{printable(name)}"
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            raise ManifestInvalid(f"{label}: a number is required")
        try:
            metrics[name] = float(number)
        except OverflowError:
            raise ManifestInvalid(f"{label}: a number within float range is required") from None
    return metrics


def _count(data: dict[str, Any], name: str, where: str) -> int:
    value: int = _field(data, name, int, where)
    if value < 0:
        raise ManifestInvalid(f"{where}.{name}: must be 0 or more")
    return value


def _sha256(data: dict[str, Any], where: str) -> str:
    value: str = _field(data, "sha256", str, where)
    if not _SHA256.fullmatch(value):
        raise ManifestInvalid(f"{where}.sha256: 64 lowercase hex digits are required")
    return value


def sha256sum_text(files: list[FileEntry]) -> str:
    """The text `sha256sum` prints for these files, sorted by path (byte order, as LC_ALL=C sort)."""
    ordered = sorted(files, key=lambda f: f.path.encode())
    return "".join(f"{f.sha256}  {f.path}\n" for f in ordered)


def digest_of(files: list[FileEntry]) -> str:
    return "sha256:" + hashlib.sha256(sha256sum_text(files).encode()).hexdigest()


@dataclass(frozen=True)
class PathsClash:
    """Why some paths cannot be the files of one checkpoint: `problem` (one line), the path it is
    about and, when two paths clash, the other one (both as listed: a caller that knows where each
    came from, e.g. agent/parts.py's workers, can say so)."""

    problem: str
    path: str
    other: Optional[str] = None


def paths_problem(paths: Iterable[str]) -> Optional[str]:
    """Why these paths cannot be the files of one checkpoint, or None (see paths_clash)."""
    clash = paths_clash(paths)
    return clash.problem if clash else None


def paths_clash(paths: Iterable[str]) -> Optional[PathsClash]:
    """The first reason these paths cannot be the files of one checkpoint, or None: each valid
    (protocol/names.py) and not reserved, none twice, no two (nor two directories on their way)
    the same after Unicode normalization, none both a file and a directory.

    Linear in the paths' total length, whatever their depth (hostile4 D5: a prefix-by-prefix
    walk cost depth² per path), plus two sorts; memory: one sort key per path. Both pair rules
    look only at neighbours in an order where what they compare is adjacent: with '/' sorted
    before every other character (as NUL, which no valid name holds), the paths under `d/` come
    right after `d`, and paths sharing a normalized prefix are contiguous."""
    listed: list[str] = []
    seen: set[str] = set()
    for path in paths:
        problem = path_problem(path)
        if problem:
            return PathsClash(f"file name '{printable(path)}' {problem}", path)
        if path in RESERVED_ROOT_NAMES:
            return PathsClash(f"file name {path!r} is reserved for the agent's own use", path)
        if path in seen:
            return PathsClash(f"file {path!r} is listed twice", path)
        seen.add(path)
        listed.append(path)
    del seen
    if not all(path.isascii() for path in listed):  # ASCII names are their own normal form: no twins
        twins = sorted(listed, key=lambda p: _component_order(normalized(p)))  # stable: ties in listed order
        for first, second in zip(twins, twins[1:]):
            if first.isascii() and second.isascii():
                continue
            pair = _twin_prefixes(first, second)
            if pair:
                return PathsClash(f"file name '{spelled(pair[1])}' {collision_problem(pair[0])}", second, first)
    ordered = sorted(listed, key=_component_order)
    for first, second in zip(ordered, ordered[1:]):
        if second.startswith(first) and second[len(first):len(first) + 1] == "/":
            return PathsClash(f"'{printable(first)}' is both a file and a directory ('{printable(second)}')",
                              first, second)
    return None


def _component_order(path: str) -> str:
    return path.replace("/", "\0")


def _first_difference(a: str, b: str) -> int:
    """The index of the first character where `a` and `b` differ (the shorter's length when one
    starts the other): halving, comparing only the slice still in doubt (O(length) copies)."""
    low, high = 0, min(len(a), len(b))
    if a[:high] == b[:high]:
        return high
    while high - low > 1:  # a[:low] == b[:low], a[:high] != b[:high]
        middle = (low + high) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle
    return low


def _twin_prefixes(a: str, b: str) -> Optional[tuple[str, str]]:
    """(a's prefix, b's prefix) when the first component where `a` and `b` differ is the same
    name after normalization (NFC works component by component: '/' composes with nothing)."""
    at = _first_difference(a, b)
    if at == min(len(a), len(b)):
        return None  # one is the other's prefix: not twins (a file and a directory, if anything)
    start = a.rfind("/", 0, at) + 1
    end_a, end_b = a.find("/", at), b.find("/", at)
    end_a, end_b = len(a) if end_a < 0 else end_a, len(b) if end_b < 0 else end_b
    if normalized(a[start:end_a]) == normalized(b[start:end_b]):
        return a[:end_a], b[:end_b]
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


def parse_manifest(body: Union[bytes, bytearray, str, dict[str, Any]], where: str) -> Manifest:
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
    except ManifestInvalid as exc:
        raise AgentError(f"invalid manifest at {where}: {exc}") from None
    problem = manifest_problem(manifest)
    if problem:
        raise AgentError(f"invalid manifest at {where}: {problem}")
    return manifest


class ManifestBuilder:
    """A checkpoint's manifest built file by file, as the files are hashed, in canonical order
    (by the bytes of their paths: the order the digest hashes them in, checked on each add).

    The digest and totals grow line by line; the entries go to `spool` (a binary file: written
    out by `write`, memory stays flat however many files), or are kept (`keep`: for callers
    that use the files), or nowhere (only the digest and totals are wanted)."""

    def __init__(self, path: str, *, spool: Optional[IO[bytes]] = None, keep: bool = False) -> None:
        self.path = path
        self.spool = spool
        self.kept: Optional[list[FileEntry]] = [] if keep else None
        self.file_count = 0
        self.size_bytes = 0
        self._sha256sum = hashlib.sha256()
        self._last: Optional[bytes] = None

    def add(self, rel: str, size: int, sha256: str) -> None:
        key = rel.encode("utf-8")
        if self._last is not None and key <= self._last:
            raise ValueError(f"manifest of {self.path!r}: '{printable(rel)}' comes after "
                             f"'{printable(self._last.decode())}' (files must be added in path order, once)")
        self._last = key
        self._sha256sum.update(f"{sha256}  {rel}\n".encode("utf-8"))
        self.file_count += 1
        self.size_bytes += size
        if self.spool is not None:
            entry = f'{{"path":{json.dumps(rel)},"sha256":"{sha256}","size":{size}}}'
            self.spool.write((entry if self.file_count == 1 else "," + entry).encode("ascii"))
        if self.kept is not None:
            self.kept.append(FileEntry.model_construct(path=rel, size=size, sha256=sha256))

    @property
    def digest(self) -> str:
        return "sha256:" + self._sha256sum.hexdigest()

    def manifest(self, **info: Any) -> Manifest:
        """The manifest (its files when kept, else none) with `info` (format, step, ...)."""
        fields: dict[str, Any] = {
            "version": MANIFEST_VERSION, "path": self.path, "files": self.kept if self.kept is not None else [],
            "sizeBytes": self.size_bytes, "fileCount": self.file_count, "digest": self.digest, "format": "unknown",
            "step": None, "resumable": False, "complete": None, "completeReason": None, "metrics": None,
            "blobs": None, **info}
        return Manifest.model_construct(**fields)

    def write(self, out: IO[bytes], manifest: Manifest) -> None:
        """The stored form of `manifest` (Manifest.to_json, byte for byte) with the spooled files."""
        if self.spool is None:
            out.write(manifest.to_json().encode("utf-8"))
            return
        head, sep, tail = manifest.model_copy(update={"files": []}).to_json().partition('"files":[]')
        assert sep, "a manifest's JSON has its files"
        out.write(head.encode("utf-8") + b'"files":[')
        self.spool.flush()
        self.spool.seek(0)
        while chunk := self.spool.read(1 << 20):
            out.write(chunk)
        out.write(b"]" + tail.encode("utf-8"))
