"""What every source shares: the options and limits it is given, what it returns, and the checks
it makes on a listing before any byte moves and on each stream while bytes move."""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from checkpoint_operator.agent.errors import AgentError
from checkpoint_operator.agent.manifest import paths_problem
from checkpoint_operator.agent.names import component_problem, printable
from checkpoint_operator.agent.redact import quoted
from checkpoint_operator.agent.urls import shown

COPY_CHUNK = 8 * 1024 * 1024
# A Secret mounted as files (username, password), for the sources whose login is not a
# standard environment variable (Git, FTP). The operator mounts it and sets this variable.
SECRET_DIR_ENV = "CKPT_SOURCE_SECRET_DIR"


@dataclass(frozen=True)
class Limits:
    max_size: int
    max_files: int


@dataclass(frozen=True)
class Options:
    """The flags of `agent import` that some sources read (the others ignore them)."""

    include: tuple[str, ...] = ()  # huggingFace: allow_patterns
    exclude: tuple[str, ...] = ()  # huggingFace: ignore_patterns
    lfs: bool = False  # git: fetch LFS files
    ca_file: Optional[str] = None  # git, ftps, https: the CA bundle to trust instead of the system's
    endpoint_url: Optional[str] = None  # huggingFace (a mirror), gcs (the XML API), azure (the blob endpoint)


@dataclass
class Fetched:
    """What a source fetched. `file`: the one file it wrote into `downloads` (named `name`), or
    None when it wrote a tree. `provenance`: the source as fetched, for status.source."""

    provenance: dict = field(default_factory=dict)
    file: Optional[str] = None
    name: Optional[str] = None


class Source(ABC):
    """One URI of one scheme. The constructor parses and checks it (AgentError naming the URI
    and what is expected); `fetch` does the transfer."""

    uri: str  # as given (it never holds credentials), for messages and provenance

    @abstractmethod
    def fetch(self, tree: str, downloads: str, limits: Limits) -> Fetched: ...


def http_error(label: str, exc) -> AgentError:
    """An HTTP error answer (urllib's HTTPError) as one line. urllib gives up on a redirect loop
    (more than 10 redirects, or the same URL twice) with a reason of three lines, and refuses a
    redirect to another scheme (file://) with an HTTPError of the redirect's code."""
    reason = str(exc.reason)
    if "infinite loop" in reason:
        return AgentError(f"{label}: too many redirects (a redirect loop: urllib follows at most "
                          f"{urllib.request.HTTPRedirectHandler.max_redirections} and never the same URL twice; last "
                          f"answer HTTP {exc.code})")
    if 300 <= exc.code < 400 and "not allowed" in reason:
        return AgentError(f"{label}: redirected to '{shown(str(exc.filename))}': only http(s) redirects are "
                          f"followed")
    return AgentError(f"{label}: HTTP {exc.code} {quoted(reason.strip(), 200)}")


def over_limit(label: str, size: int, limits: Limits, how: str = "") -> AgentError:
    return AgentError(f"{label}: {size} bytes{how}, past the size limit of {limits.max_size} (see --max-size)")


def check_count(label: str, count: int, limits: Limits) -> None:
    if count > limits.max_files:
        raise AgentError(f"{label}: more than the limit of {limits.max_files} files (see --max-files)")


def check_listing(label: str, entries: Iterable[tuple[str, int]], limits: Limits) -> int:
    """Refuse, before any byte moves, a listing of (path, size) whose names break the names rule
    or whose totals pass the limits. Returns the total size."""
    entries = list(entries)
    if not entries:
        raise AgentError(f"{label}: nothing to import (no files)")
    check_count(label, len(entries), limits)
    problem = paths_problem(rel for rel, _ in entries)
    if problem:
        raise AgentError(f"{label}: {problem}; refusing to import it")
    total = sum(size for _, size in entries)
    if total > limits.max_size:
        raise over_limit(label, total, limits, f" in {len(entries)} files")
    return total


def file_name(label: str, path: str) -> str:
    """The last component of a '/'-separated path, as the name of a one-file import."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    problem = component_problem(name) if name else "is empty"
    if problem:
        raise AgentError(f"{label}: cannot tell a file name from the path ('{printable(name)}' {problem})")
    return name


def target_path(tree: str, rel: str) -> str:
    """Where the checked relative path `rel` lands in `tree` (parents made)."""
    target = os.path.join(tree, *rel.split("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    return target


class Cancelled(Exception):
    """Another transfer of the same import failed (or the import was stopped): this one stops."""


def run_parallel(fn: Callable, items: list, workers: int, stop: threading.Event) -> None:
    """`fn(item)` for every item on `workers` threads; the first failure is raised once the
    others have stopped (`stop` is set: each transfer checks it between chunks). The main
    thread waits in short slices, so a SIGTERM delivered to a worker thread is acted on at
    once (Python runs signal handlers in the main thread only, when it next runs)."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    def guarded(item) -> None:
        try:
            fn(item)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max(1, min(workers, len(items)))) as pool:
        try:
            pending = {pool.submit(guarded, item) for item in items}
            failures: list[BaseException] = []
            while pending and not failures:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                failures += [exc for f in done if (exc := f.exception()) and not isinstance(exc, Cancelled)]
            if failures:
                raise failures[0]
        except BaseException:  # a failure, or SIGTERM: the other transfers stop at their next chunk
            stop.set()
            raise


def copy_stream(read: Callable[[int], bytes], target: str, *, label: str, expected: Optional[int], limit: int,
                progress=None, hasher: Optional["hashlib._Hash"] = None,
                cancelled: Optional[threading.Event] = None, framed: bool = False) -> int:
    """Write what `read(n)` yields to `target`, refusing more than `expected` bytes (when the size
    is known) or `limit` (when it is not) as they arrive, and fewer than `expected` at the end.
    `framed`: the stream goes on after the object (git cat-file): read exactly `expected` bytes."""
    cap = expected if expected is not None else limit
    written = 0
    with open(target, "wb") as out:
        while True:
            if cancelled is not None and cancelled.is_set():
                raise Cancelled()
            if framed and written == cap:
                break
            chunk = read(min(COPY_CHUNK, cap - written + (0 if framed else 1)))
            if not chunk:
                break
            written += len(chunk)
            if written > cap:
                if expected is not None:
                    raise AgentError(f"{label}: the server sent more than the {expected} bytes it listed; refused")
                raise AgentError(f"{label}: larger than the size limit of {limit} (see --max-size): stopped "
                                 f"reading after {written} bytes")
            out.write(chunk)
            if hasher is not None:
                hasher.update(chunk)
            if progress is not None:
                progress.add(len(chunk))
    if expected is not None and written != expected:
        raise AgentError(f"{label}: connection closed after {written} of {expected} bytes")
    return written


def git_blob_hasher(size: int) -> "hashlib._Hash":
    """sha1 of a git blob of `size` bytes once its content is fed: a file's id in a git tree."""
    hasher = hashlib.sha1()
    hasher.update(b"blob %d\0" % size)
    return hasher


def read_secret_dir(label: str) -> Optional[tuple[str, str]]:
    """(username, password) from the mounted Secret named by CKPT_SOURCE_SECRET_DIR, or None."""
    directory = os.environ.get(SECRET_DIR_ENV)
    if not directory:
        return None
    values: dict[str, Optional[str]] = {}
    for key in ("username", "password"):
        path = os.path.join(directory, key)
        try:
            with open(path, encoding="utf-8") as f:
                values[key] = f.read().strip("\r\n")
        except FileNotFoundError:
            values[key] = None
    if values["password"] is None:
        raise AgentError(f"{label}: {SECRET_DIR_ENV}={directory} must hold the file password (and username), as a "
                         f"kubernetes.io/basic-auth Secret mounts them")
    return values["username"] or "", values["password"]


def ssl_context(ca_file: Optional[str], label: str):
    """TLS that verifies the server: against `ca_file` alone when given, else the system's CAs."""
    import ssl
    try:
        return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise AgentError(f"{label}: cannot read the CA bundle {ca_file}: {getattr(exc, 'strerror', None) or exc}") from None
