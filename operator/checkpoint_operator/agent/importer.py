"""`agent import SOURCE DEST`: bring a checkpoint in from s3://, http(s):// or a source of agent/sources/.

SOURCE is an S3 object, an S3 prefix ending in `/` (copied as a tree; verified against its
manifest when it has one), an http(s) URL, or a URI of agent/sources/ (hf://, git+https://,
git://, gs://, az://, ftp(s)://). Archives are extracted safely (see archive.py);
any other single file lands as DEST/<its name>. `--max-size` bounds the bytes fetched and the
bytes extracted, `--max-files` the files: checked before any byte moves where the size is known
(Content-Length, S3 HEAD, the manifest's or the listing's totals) and while bytes move
otherwise. Everything is staged in a hidden directory beside DEST (inside it, when DEST is an
existing empty directory such as a mount point; same filesystem) and moved into place only on
success: a failed, refused or interrupted (SIGTERM) import leaves DEST as it was, and one
killed outright leaves a staging directory that the next import into DEST removes.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import http.client
import os
import signal
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Optional

from checkpoint_operator.agent import fstree
from checkpoint_operator.agent.archive import DEFAULT_MAX_MEMBERS, DEFAULT_MAX_SIZE, archive_kind, extract_archive
from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.manifest import RESERVED_ROOT_NAMES, paths_problem
from checkpoint_operator.protocol.names import component_problem, printable
from checkpoint_operator.agent.progress import Progress, human_bytes
from checkpoint_operator.agent.redact import quoted
from checkpoint_operator.objectstore.s3 import (
    describe_error, list_objects, make_client, manifest_exists, parse_s3_uri, parse_size, resolve_endpoint,
)
from checkpoint_operator.agent.sources import Limits, Options, Source, open_source
from checkpoint_operator.agent.sources.base import http_error
from checkpoint_operator.agent.tree import check_written_tree
from checkpoint_operator.protocol import channel, results
from checkpoint_operator.protocol.urls import check_url, scheme_of, shown

COPY_CHUNK = 8 * 1024 * 1024
HTTP_TIMEOUT = 60
STAGING_PREFIX = ".ckpt-import-"
# Beside a DEST an import created and filled (never inside it): what `replace_earlier_import`
# takes as proof that DEST holds an import's output and nothing of anyone else's.
IMPORTED_PREFIX = ".ckpt-imported-"
_LOCK = "lock"


@contextmanager
def _no_sigterm():
    """Hold SIGTERM back for a few renames, so that DEST is never left half committed."""
    blocked = hasattr(signal, "pthread_sigmask")
    if blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


class Staging:
    """A hidden directory on DEST's filesystem; `commit()` puts its content at DEST.

    Its name, `.ckpt-import-<hash of DEST's name>-<random>`, fits whatever DEST is called. The
    import holds a lock on a file inside it while it lives: a staging directory of this DEST
    whose lock can be taken was left by a killed import and is removed before a new one starts.
    """

    def __init__(self, dest: str) -> None:
        self.dest = os.path.abspath(dest)
        tag = hashlib.sha256(os.fsencode(os.path.basename(self.dest))).hexdigest()[:16]
        self.prefix = f"{STAGING_PREFIX}{tag}-"
        if os.path.lexists(self.dest):
            if not os.path.isdir(self.dest) or os.path.islink(self.dest):
                raise AgentError(f"{dest}: exists and is not a directory")
            # An existing empty DEST may be a mount point: stage inside it, on its filesystem.
            self.into_existing = True
            base = self.dest
            self._remove_stale(base)
            if os.listdir(self.dest):
                raise AgentError(f"{dest}: exists and is not empty; import into a new or empty directory")
        else:
            self.into_existing = False
            base = os.path.dirname(self.dest)
        self.root = ""
        self._lock_fd = -1
        try:
            if not self.into_existing:
                fstree.make_dirs(base)
                self._remove_stale(base)
            self.root = tempfile.mkdtemp(prefix=self.prefix, dir=base)
            self._lock_fd = os.open(os.path.join(self.root, _LOCK), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self.tree = os.path.join(self.root, "tree")  # what becomes DEST
            os.mkdir(self.tree)
            self.downloads = os.path.join(self.root, "download")  # archives before extraction
            os.mkdir(self.downloads)
        except OSError as exc:  # the staging directory's own (random) name says nothing to the user
            if self.root:
                self.discard()
            raise AgentError(f"{dest}: cannot import there: {exc.strerror or exc} (creating the import's staging "
                             f"directory in {base})") from None

    def _remove_stale(self, base: str) -> None:
        for name in os.listdir(base):
            if not name.startswith(self.prefix):
                continue
            path = os.path.join(base, name)
            if os.path.islink(path) or not os.path.isdir(path):
                continue
            try:
                fd = os.open(os.path.join(path, _LOCK), os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = -1  # killed before it took its lock
            try:
                if fd >= 0:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    continue  # a live import holds it
                raise
            fstree.remove_tree(path, ignore_errors=True)
            if fd >= 0:
                os.close(fd)
            print(f"import: removed {path}, left by an interrupted import", file=sys.stderr)

    def commit(self) -> None:
        fstree.remove_tree(self.downloads, ignore_errors=True)
        with _no_sigterm():
            if not self.into_existing:  # marked first: a DEST this import made is never unmarked
                _write_marker(imported_marker(self.dest))
            if self.into_existing:
                for name in os.listdir(self.tree):
                    os.rename(os.path.join(self.tree, name), os.path.join(self.dest, name))
            else:
                os.rename(self.tree, self.dest)
        self.discard()

    def scrub(self, text: str) -> str:
        """`text` without the staging directory's paths: a path inside the tree becomes the
        file's path inside the checkpoint (what the user knows), any other the staging area."""
        for base in (self.tree, self.downloads):
            text = text.replace(base + os.sep, "").replace(base, ".")
        return text.replace(self.root, "(the import's staging directory)")

    def failure(self, exc: BaseException, source: str) -> BaseException:
        """What a failed import raises: the same failure with no staging path in its message
        (an AgentError keeps its type), an OSError as one AgentError line naming the source."""
        if isinstance(exc, AgentError):
            text = self.scrub(str(exc))
            return exc if text == str(exc) else type(exc)(text)
        if isinstance(exc, OSError):
            where = f" ('{printable(self.scrub(os.fsdecode(exc.filename)))}')" if exc.filename else ""
            return AgentError(f"{source}: cannot write the imported files: {exc.strerror or exc}{where}")
        return exc

    def discard(self) -> None:
        fstree.remove_tree(self.root, ignore_errors=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _name_from_url(url: str) -> str:
    path = urllib.parse.urlparse(url).path
    name = urllib.parse.unquote(path.rstrip("/").rsplit("/", 1)[-1])
    if not name or "/" in name or component_problem(name):
        raise AgentError(f"{url}: cannot tell a file name from the URL path"
                         + (f" ('{printable(name)}' {component_problem(name)})" if name and "/" not in name else ""))
    return name


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if scheme_of(newurl) not in ("http", "https"):
            raise AgentError(f"{shown(req.full_url)}: redirected to '{shown(newurl)}': only http(s) redirects are "
                             "followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _over_limit(source: str, size: int, max_size: int, how: str) -> AgentError:
    return AgentError(f"{source}: {size} bytes{how}, past the size limit of {max_size} (see --max-size)")


def fetch_http(url: str, target: str, max_size: int = DEFAULT_MAX_SIZE, ca_file: Optional[str] = None) -> int:
    """Stream an http(s) URL to a file, refusing more than `max_size` bytes: from the
    Content-Length before reading the body when there is one, while reading otherwise.
    `ca_file`: the CAs to trust for https instead of the system's."""
    request = urllib.request.Request(url, headers={"User-Agent": "checkpoint-operator-agent"})
    handlers: list = [_HttpOnlyRedirects]
    if ca_file:
        from checkpoint_operator.agent.sources.base import ssl_context
        handlers.append(urllib.request.HTTPSHandler(context=ssl_context(ca_file, url)))
    opener = urllib.request.build_opener(*handlers)
    size = 0
    try:
        with opener.open(request, timeout=HTTP_TIMEOUT) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
            if total is not None and total > max_size:
                raise _over_limit(url, total, max_size, " (its Content-Length)")
            with Progress("import", total or 0) as progress, open(target, "wb") as out:
                while chunk := resp.read(min(COPY_CHUNK, max_size - size + 1)):
                    size += len(chunk)
                    if size > max_size:
                        raise AgentError(f"{url}: larger than the size limit of {max_size} (see --max-size): "
                                         f"stopped reading after {size} bytes")
                    out.write(chunk)
                    progress.add(len(chunk))
            if total is not None and size != total:
                raise AgentError(f"{url}: connection closed after {size} of {total} bytes")
            return size
    except urllib.error.HTTPError as exc:
        raise http_error(url, exc) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, AgentError):
            raise exc.reason from None
        raise AgentError(f"{url}: cannot fetch: {quoted(str(exc.reason))}") from None
    except http.client.IncompleteRead as exc:
        raise AgentError(f"{url}: connection closed mid-transfer, after {size + len(exc.partial)} bytes") from None
    except (http.client.BadStatusLine, http.client.LineTooLong, http.client.HTTPException) as exc:
        if isinstance(exc, ConnectionError):  # RemoteDisconnected: closed before any answer
            raise AgentError(f"{url}: connection closed without an answer") from None
        raise AgentError(f"{url}: not a valid HTTP response ({type(exc).__name__}: "
                         f"{quoted(str(exc), 200)})") from None
    except (ConnectionError, TimeoutError) as exc:
        raise AgentError(f"{url}: connection closed mid-transfer, after {size} bytes ({exc})") from None
    except OSError as exc:
        raise AgentError(f"{url}: transfer failed: {exc}") from None


def fetch_s3_object(uri: str, target: str, *, max_size: int = DEFAULT_MAX_SIZE,
                    endpoint_url: Optional[str] = None) -> int:
    """One object, refused from its HEAD when it is bigger than `max_size`."""
    loc = parse_s3_uri(uri)
    endpoint = resolve_endpoint(endpoint_url)
    client = make_client(endpoint)
    try:
        from boto3.s3.transfer import S3Transfer, TransferConfig
        size = client.head_object(Bucket=loc.bucket, Key=loc.key)["ContentLength"]
        if size > max_size:
            raise _over_limit(uri, size, max_size, "")
        with Progress("import", size) as progress:
            S3Transfer(client, TransferConfig(multipart_chunksize=32 * 1024 * 1024, max_concurrency=8)).download_file(
                loc.bucket, loc.key, target, callback=progress.add)
    except Exception as exc:  # noqa: BLE001
        raise describe_error(exc, uri, endpoint) from exc
    got = os.path.getsize(target)
    if got > max_size:  # replaced by a bigger object since the HEAD
        raise _over_limit(uri, got, max_size, "")
    return got


def _tree_objects(client, prefix, uri: str, max_members: int) -> list[tuple[str, dict]]:
    """(path inside the tree, object) for every object under the prefix, listing at most
    `max_members` + 1 of them."""
    objects: list[tuple[str, dict]] = []
    for obj in list_objects(client, prefix):
        rel = obj["Key"][len(prefix.key):]
        if obj["Key"].endswith("/") or rel in RESERVED_ROOT_NAMES:
            continue  # directory markers; what the agent writes beside the data
        objects.append((rel, obj))
        if len(objects) > max_members:
            raise AgentError(f"{uri}: more than the limit of {max_members} files (see --max-files)")
    return objects


def fetch_s3_tree(uri: str, tree: str, *, max_size: int = DEFAULT_MAX_SIZE, max_members: int = DEFAULT_MAX_MEMBERS,
                  endpoint_url: Optional[str] = None) -> int:
    """Copy every object under the prefix. With a manifest there, the copy is verified. The
    limits are checked on the manifest's or the listing's totals before any byte moves."""
    prefix = parse_s3_uri(uri).as_prefix()
    endpoint = resolve_endpoint(endpoint_url)
    from checkpoint_operator.agent.download import download_prefix
    if manifest_exists(prefix.uri, endpoint_url=endpoint):
        result = download_prefix(prefix.uri, tree, endpoint_url=endpoint, write_manifest=False,
                                 max_size=max_size, max_files=max_members)
        return result.manifest.sizeBytes
    client = make_client(endpoint, max_pool_connections=12)
    try:
        objects = _tree_objects(client, prefix, prefix.uri, max_members)
    except AgentError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise describe_error(exc, prefix.uri, endpoint) from exc
    if not objects:
        raise AgentError(f"nothing under {prefix.uri}: no objects to import")
    problem = paths_problem(rel for rel, _ in objects)
    if problem:
        raise AgentError(f"{prefix.uri}: {problem}; refusing to import it")
    total = sum(o["Size"] for _, o in objects)
    if total > max_size:
        raise _over_limit(prefix.uri, total, max_size, f" in {len(objects)} files")
    from boto3.s3.transfer import S3Transfer, TransferConfig
    transfer = S3Transfer(client, TransferConfig(multipart_chunksize=32 * 1024 * 1024, max_concurrency=4))
    with Progress("import", total) as progress:
        def one(item: tuple[str, dict]) -> None:
            rel, obj = item
            target = os.path.join(tree, *rel.split("/"))
            fstree.make_dirs(os.path.dirname(target))
            try:
                transfer.download_file(prefix.bucket, obj["Key"], target, callback=progress.add)
            except Exception as exc:  # noqa: BLE001
                raise describe_error(exc, f"s3://{prefix.bucket}/{obj['Key']}", endpoint) from exc

        with ThreadPoolExecutor(4) as pool:
            for fut in [pool.submit(one, o) for o in objects]:
                fut.result()
    size, _ = _tree_totals(tree)
    if size > max_size:  # objects replaced by bigger ones since the listing
        raise _over_limit(prefix.uri, size, max_size, "")
    return total


def import_checkpoint(source: str, dest: str, *, max_size: int = DEFAULT_MAX_SIZE,
                      max_members: int = DEFAULT_MAX_MEMBERS, endpoint_url: Optional[str] = None,
                      options: Optional[Options] = None) -> dict:
    """Import SOURCE into DEST (see the module doc). `max_size` bounds the bytes fetched and
    the bytes an archive expands to; `max_members` the files. Returns {"source", "dest",
    "sizeBytes", "fileCount", "extracted", "provenance"} (provenance: what was fetched, with the
    resolved commit for hf:// and git sources)."""
    options = options or Options(endpoint_url=endpoint_url)
    check_url(source, "the import source")
    if options.endpoint_url:
        check_url(options.endpoint_url, "--endpoint-url")
    other = open_source(source, options)
    if other is not None:
        return _import_from(other, source, dest, Limits(max_size, max_members))
    if source.startswith("s3://"):
        loc = parse_s3_uri(source)
        is_tree = not loc.key or loc.key.endswith("/")
        name = None if is_tree else loc.key.rsplit("/", 1)[-1]
        if name is not None and component_problem(name):
            raise AgentError(f"{source}: object name '{printable(name)}' {component_problem(name)}")
    elif source.startswith(("http://", "https://")):
        is_tree = False
        name = _name_from_url(source)
    else:
        raise AgentError(f"unsupported source {source!r}: expected s3://bucket/key, s3://bucket/prefix/, an "
                         f"http(s):// or ftp(s):// URL, hf://org/name[@revision], git+https://host/repo[@revision], "
                         f"git://host/repo[@revision], gs://bucket/prefix/ or az://account/container/prefix/")
    staging = Staging(dest)
    try:
        extracted = False
        if is_tree:
            fetch_s3_tree(source, staging.tree, max_size=max_size, max_members=max_members,
                          endpoint_url=options.endpoint_url)
        else:
            assert name is not None
            kind = archive_kind(name)
            target = os.path.join(staging.downloads if kind else staging.tree, name)
            if source.startswith("s3://"):
                fetch_s3_object(source, target, max_size=max_size, endpoint_url=options.endpoint_url)
            else:
                fetch_http(source, target, max_size=max_size, ca_file=options.ca_file)
            if kind:
                extract_archive(target, staging.tree, max_size=max_size, max_members=max_members, label=name)
                os.unlink(target)
                extracted = True
        size, count = _checked_totals(staging, source, max_size, "empty archive or prefix")
        staging.commit()
    except BaseException as exc:
        staging.discard()
        failure = staging.failure(exc, source)
        if failure is exc:
            raise
        raise failure from None
    return {"source": source, "dest": os.path.abspath(dest), "sizeBytes": size, "fileCount": count,
            "extracted": extracted, "provenance": {"uri": source}}


def _import_from(src: Source, source: str, dest: str, limits: Limits) -> dict:
    """The import of a source of agent/sources/ (see its doc): staged, checked, committed."""
    staging = Staging(dest)
    try:
        fetched = src.fetch(staging.tree, staging.downloads, limits)
        extracted = False
        if fetched.file is not None:
            assert fetched.name is not None
            if archive_kind(fetched.name):
                extract_archive(fetched.file, staging.tree, max_size=limits.max_size, max_members=limits.max_files,
                                label=fetched.name)
                os.unlink(fetched.file)
                extracted = True
            else:
                os.rename(fetched.file, os.path.join(staging.tree, fetched.name))
        size, count = _checked_totals(staging, source, limits.max_size, "empty archive or tree")
        staging.commit()
    except BaseException as exc:
        staging.discard()
        failure = staging.failure(exc, source)
        if failure is exc:
            raise
        raise failure from None
    return {"source": source, "dest": os.path.abspath(dest), "sizeBytes": size, "fileCount": count,
            "extracted": extracted, "provenance": fetched.provenance or {"uri": source}}


def _checked_totals(staging: Staging, source: str, max_size: int, empty: str) -> tuple[int, int]:
    """The last word on what any source (and any archive in it) wrote, before it becomes DEST:
    the links and names rule of agent/tree.py `check_written_tree`, something imported, and
    within the size limit (each source bounds its bytes as they move; this is the total)."""
    check_written_tree(staging.tree, source)
    size, count = _tree_totals(staging.tree)
    if count == 0:
        raise AgentError(f"{source}: imported nothing ({empty})")
    if size > max_size:
        raise _over_limit(source, size, max_size, "")
    return size, count


def _tree_totals(root: str) -> tuple[int, int]:
    size = count = 0
    for dirpath, _, filenames in fstree.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                size += os.path.getsize(path)
                count += 1
    return size, count


def imported_marker(dest: str) -> str:
    dest = os.path.abspath(dest)
    tag = hashlib.sha256(os.fsencode(os.path.basename(dest))).hexdigest()[:16]
    return os.path.join(os.path.dirname(dest), f"{IMPORTED_PREFIX}{tag}")


def _write_marker(path: str) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.close(fd)


def replace_earlier_import(dest: str) -> bool:
    """--replace-earlier-import (the operator's import pods, on the Checkpoint's own claim): a DEST
    that an earlier import created and filled (its marker beside DEST), e.g. one whose pod was
    deleted unread after an operator restart, is removed so that this import starts afresh. A DEST
    without the marker is left as it is (and refused when not empty). Whether one was removed."""
    marker = imported_marker(dest)
    if not os.path.isfile(marker) or os.path.islink(marker):
        return False
    if os.path.lexists(dest):
        if os.path.islink(dest) or not os.path.isdir(dest):
            return False
        fstree.remove_tree(dest, make_writable=True)
    os.unlink(marker)  # last: a kill before it leaves the marker for the next try
    return True


def main(args: argparse.Namespace) -> int:
    if getattr(args, "replace_earlier_import", False) and replace_earlier_import(args.dest):
        print(f"import: removed an earlier import's output from {args.dest}", file=sys.stderr)
    try:
        max_size = parse_size(args.max_size) if args.max_size else DEFAULT_MAX_SIZE
    except ValueError as exc:
        print(f"error: --max-size: {exc}", file=sys.stderr)
        return 2
    max_members = args.max_files or DEFAULT_MAX_MEMBERS
    try:
        options = Options(include=tuple(args.include or ()), exclude=tuple(args.exclude or ()), lfs=args.lfs,
                          ca_file=args.ca_file, endpoint_url=args.endpoint_url)
        result = import_checkpoint(args.source, args.dest, max_size=max_size, max_members=max_members,
                                   options=options)
    except OSError as exc:  # outside the staging area (DEST's parent): no staging path in it
        print(f"error: import of {shown(args.source)} into {args.dest} failed: {exc.strerror or exc}"
              + (f" ({exc.filename})" if exc.filename else ""), file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"error: import of {shown(args.source)} interrupted; nothing was left in {args.dest}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    print(f"import: {result['fileCount']} files, {human_bytes(result['sizeBytes'])} in {result['dest']}",
          file=sys.stderr)
    channel.write(report_of(result))
    return 0


def report_of(result: dict) -> results.ImportReport:
    """The bounded result the operator reads (protocol/results.py): status.source comes from it."""
    provenance = result.get("provenance") or {"uri": result["source"]}
    return results.ImportReport(sizeBytes=result["sizeBytes"], fileCount=result["fileCount"],
                                extracted=bool(result.get("extracted")),
                                provenance=results.Provenance(
                                    uri=results.cut(str(provenance.get("uri") or result["source"]), results.MAX_URI),
                                    revision=_short(provenance.get("revision"), 256),
                                    resolvedRevision=_short(provenance.get("resolvedRevision"), 128)))


def _short(value: object, limit: int) -> Optional[str]:
    return results.cut(str(value), limit) if value is not None else None
