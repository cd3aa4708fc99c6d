"""`agent verify LOCATION [--digest sha256:...]`: re-read a checkpoint where it lives and check
every file against its manifest.

LOCATION is
- an S3 prefix: the manifest stored beside the data is read (and must have the pinned digest),
  then every object it lists is streamed and hashed; nothing is written to disk;
- a directory (a volume): with its manifest (`--manifest FILE`: the volume store keeps them in
  `.ckpt-manifests/` at the volume's root; else `.checkpoint-manifest.json` at the directory's
  root, which downloads and pushes write) every file is checked against it, and files it does
  not list are reported; without one, the directory is scanned as `agent scan --single` does
  and its digest compared with the pinned one (a difference can then not be traced to a file).

`--json` prints one JSON line: `{"verified": bool, "digest", "fileCount", "sizeBytes",
"checkedBytes", "problems": [{"path", "problem"}] (the first MAX_PROBLEMS), "problemCount",
"checkpoints": [manifest], "notes": [what was ignored, e.g. a stored manifest that is not the
recorded digest's]}`, also when the check could not be made (then after it, exit 1); `--result` the
operator's bounded result line (protocol/results.py TransferReport). Exits 0 when the check could
be made, whatever its verdict; 1 when it could not (the store unreachable, access denied), with one
`error:` line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from checkpoint_operator.protocol.errors import AgentError, one_line
from checkpoint_operator.agent.hashing import hash_files
from checkpoint_operator.protocol.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, FileEntry, Manifest, parse_manifest
from checkpoint_operator.protocol.names import printable
from checkpoint_operator.agent.progress import Progress
from checkpoint_operator.agent.tree import EntryBudget, entry_limit, walk_checkpoint
from checkpoint_operator.protocol import channel, results

MAX_PROBLEMS = 20       # problems listed; problemCount counts all of them
READ_CHUNK = 1 << 20
OBJECT_ATTEMPTS = 3     # per object, for a connection that fails midway (botocore retries each request too)


@dataclass(frozen=True)
class Problem:
    path: str      # the file ('.' for the checkpoint as a whole), printable
    problem: str   # what is wrong, one line

    def line(self) -> str:
        return f"'{self.path}': {self.problem}" if self.path != "." else self.problem


@dataclass
class Verification:
    location: str
    manifest: Optional[Manifest] = None
    problems: list[Problem] = field(default_factory=list)
    checked_bytes: int = 0
    notes: list[str] = field(default_factory=list)  # what was ignored and why (not problems)

    @property
    def verified(self) -> bool:
        return self.manifest is not None and not self.problems

    def summary(self) -> dict:
        m = self.manifest
        return {"verified": self.verified, "location": self.location, "digest": m.digest if m else None,
                "fileCount": m.fileCount if m else None, "sizeBytes": m.sizeBytes if m else None,
                "checkedBytes": self.checked_bytes,
                "problems": [{"path": p.path, "problem": p.problem} for p in self.problems[:MAX_PROBLEMS]],
                "problemCount": len(self.problems),
                "checkpoints": [m.model_dump(mode="json")] if m else [], "skipped": [], "notes": self.notes}


def compare(expected: Manifest, found: dict[str, FileEntry]) -> list[Problem]:
    """What differs between the files a manifest lists and the files found (by path)."""
    problems = []
    for entry in expected.files:
        got = found.get(entry.path)
        name = printable(entry.path)
        if got is None:
            problems.append(Problem(name, "missing"))
        elif got.size != entry.size:
            problems.append(Problem(name, f"size {got.size} bytes, the manifest says {entry.size}"))
        elif got.sha256 != entry.sha256:
            problems.append(Problem(name, f"sha256 {got.sha256}, the manifest says {entry.sha256}"))
    listed = {e.path for e in expected.files}
    problems += [Problem(printable(p), "not in the manifest") for p in sorted(found) if p not in listed]
    return problems


def pinned_problem(manifest: Manifest, digest: Optional[str], where: str) -> Optional[Problem]:
    if digest and manifest.digest != digest:
        return Problem(".", f"the manifest at {where} has digest {manifest.digest}, not the recorded {digest} "
                            f"(the data there was replaced)")
    return None


# --- a directory -------------------------------------------------------------------------------

def verify_directory(root: str, digest: Optional[str] = None, *, max_size: Optional[int] = None,
                     manifest_path: Optional[str] = None) -> Verification:
    if not os.path.isdir(root):
        raise AgentError(f"{root}: not a directory")
    result = Verification(root)
    tree = walk_checkpoint(root, EntryBudget(entry_limit(), what=root))
    hashed = hash_files([f.open_path for f in tree.files], sizes=[f.size for f in tree.files])
    found: dict[str, FileEntry] = {}
    for f, outcome in zip(tree.files, hashed):
        if isinstance(outcome, OSError):
            result.problems.append(Problem(printable(f.rel), f"unreadable: {outcome.strerror}"))
            continue
        found[f.rel] = FileEntry.model_construct(path=f.rel, size=outcome[0], sha256=outcome[1])
        result.checked_bytes += outcome[0]
    result.problems += [Problem(printable(rel), f"skipped: {reason}") for rel, reason in sorted(tree.skipped)]
    try:
        manifest = trusted_manifest(root, digest, manifest_path, result.notes)
    except AgentError as exc:
        result.problems = [Problem(".", str(exc))]  # a stored manifest that contradicts itself is a finding
        return result
    if manifest is not None:
        result.manifest = manifest
        result.problems += compare(manifest, found)
    else:
        result.manifest = _manifest_of(root, found)
        if result.manifest is None:
            result.problems.append(Problem(".", "no files"))
        elif digest and result.manifest.digest != digest:
            m = result.manifest
            result.problems.append(Problem(".", f"the data has digest {m.digest} ({m.fileCount} files, {m.sizeBytes} "
                                                f"bytes), not the recorded {digest}; no manifest of that digest is stored "
                                                f"with it, so the file that differs cannot be named"))
    _check_size(result, max_size)
    return result


def trusted_manifest(root: str, digest: Optional[str], manifest_path: Optional[str] = None,
                     notes: Optional[list[str]] = None) -> Optional[Manifest]:
    """The manifest stored in DIR (or at `manifest_path`: the volume store's .ckpt-manifests/, beside
    the data) when it may be taken as the checkpoint's file list: its digest is the recorded one (a
    push's receiver or the snapshot wrote it, and the digest pins every byte of it). One that came
    with the data (an archive or a trainer's output holding a pulled checkpoint's manifest)
    describes other bytes: it is never trusted, and DIR is read as it is (hostile1 D9), also when
    it does not even parse (hostile4 D10: it decided the outcome, or crashed it); `notes` gets
    one line saying it was ignored. Without a recorded digest the stored manifest is all there is
    to compare with: one that does not parse is an AgentError."""
    stored = manifest_path or os.path.join(root, MANIFEST_NAME)
    if not manifest_path and not os.path.isfile(stored):
        return None
    try:
        with open(stored, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise AgentError(f"{stored}: the checkpoint's manifest cannot be read ({exc.strerror})") from None
    try:
        manifest = parse_manifest(raw, stored)
    except AgentError as exc:
        if not digest or manifest_path:
            raise
        _note(notes, f"{one_line(str(exc))}; ignored: the files are read as they are and checked against the "
                     f"recorded digest")
        return None
    if digest and manifest.digest != digest:
        if not manifest_path:
            _note(notes, f"{stored} has digest {manifest.digest}, not the recorded {digest}; ignored: the files are "
                         f"read as they are")
        return None
    return manifest


def _note(notes: Optional[list[str]], line: str) -> None:
    if notes is not None:
        notes.append(line)


def _manifest_of(root: str, found: dict[str, FileEntry]) -> Optional[Manifest]:
    if not found:
        return None
    from checkpoint_operator.protocol.manifest import digest_of
    from checkpoint_operator.agent.scan import describe_checkpoint
    entries = sorted(found.values(), key=lambda e: e.path.encode())
    info = describe_checkpoint(root, [e.path for e in entries], Path(os.path.realpath(root)).name,
                               {e.path: e.size for e in entries})
    return Manifest(path=".", files=entries, sizeBytes=sum(e.size for e in entries), fileCount=len(entries),
                    digest=digest_of(entries), **info)


def _check_size(result: Verification, max_size: Optional[int]) -> None:
    if max_size is not None and result.manifest is not None and result.manifest.sizeBytes > max_size:
        result.problems.append(Problem(".", f"{result.manifest.sizeBytes} bytes, past the size limit of {max_size}"))


# --- an S3 prefix ------------------------------------------------------------------------------

def verify_s3(uri: str, digest: Optional[str] = None, *, max_size: Optional[int] = None,
              concurrency: Optional[int] = None, endpoint_url: Optional[str] = None) -> Verification:
    from checkpoint_operator.objectstore.s3 import (DEFAULT_CONCURRENCY, make_client, manifest_exists, parse_s3_uri,
                                              read_manifest, resolve_endpoint)
    prefix = parse_s3_uri(uri).as_prefix()
    result = Verification(prefix.uri)
    workers = max(1, concurrency or int(os.environ.get("CKPT_S3_CONCURRENCY", DEFAULT_CONCURRENCY)))
    endpoint = resolve_endpoint(endpoint_url)
    client = make_client(endpoint, max_pool_connections=workers + 4)
    if not manifest_exists(prefix.uri, client=client, endpoint_url=endpoint):  # no access: AgentError, exit 1
        result.problems.append(Problem(".", f"no manifest at {prefix.uri}: the upload did not complete, or the data "
                                            f"was deleted"))
        return result
    try:
        manifest = read_manifest(prefix.uri, client=client, endpoint_url=endpoint)
    except AgentError as exc:
        if not str(exc).startswith("invalid manifest"):
            raise
        result.problems.append(Problem(".", str(exc)))  # a manifest that contradicts itself is a finding
        return result
    result.manifest = manifest
    pinned = pinned_problem(manifest, digest, prefix.uri)
    if pinned:
        result.problems.append(pinned)
        return result
    _check_size(result, max_size)
    from checkpoint_operator.objectstore.blobs import manifest_blob_root
    try:
        blob_root = manifest_blob_root(prefix.uri, manifest)  # both layouts: blobs by sha256, or files by path
    except AgentError as exc:
        result.problems.append(Problem(".", str(exc)))
        return result
    where = parse_s3_uri(blob_root) if blob_root else prefix

    def check(entry: FileEntry) -> tuple[Optional[str], int]:
        return _check_object(client, where, entry, progress, endpoint, by_sha=blob_root is not None)

    with Progress("verify", manifest.sizeBytes) as progress, ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(check, manifest.files))
    for entry, (problem, read) in zip(manifest.files, outcomes):
        result.checked_bytes += read
        if problem:
            result.problems.append(Problem(printable(entry.path), problem))
    return result


def _check_object(client, prefix, entry: FileEntry, progress: Progress, endpoint: Optional[str],
                  by_sha: bool = False) -> tuple[Optional[str], int]:
    """(what is wrong with the object of `entry`, or None; bytes read). `by_sha`: `prefix` is the
    blob directory, the object is named by the file's sha256."""
    from checkpoint_operator.objectstore.s3 import describe_error, is_not_found, is_transient
    loc = prefix.child(entry.sha256 if by_sha else entry.path)
    for attempt in range(1, OBJECT_ATTEMPTS + 1):
        read = 0
        try:
            resp = client.get_object(Bucket=loc.bucket, Key=loc.key)
            body = resp["Body"]
            length = resp.get("ContentLength", entry.size)
            if length != entry.size:
                body.close()
                return f"size {length} bytes, the manifest says {entry.size}", 0
            digest = hashlib.sha256()
            while chunk := body.read(READ_CHUNK):
                digest.update(chunk)
                read += len(chunk)
                progress.add(len(chunk))
            body.close()
        except Exception as exc:  # noqa: BLE001 - sorted below
            progress.add(-read)
            if is_not_found(exc):
                return f"missing ({loc.uri})", 0
            if is_transient(exc) and attempt < OBJECT_ATTEMPTS:
                continue
            raise describe_error(exc, loc.uri, endpoint) from exc
        if read != entry.size:
            progress.add(-read)
            continue  # cut short: read it again
        sha = digest.hexdigest()
        return (None if sha == entry.sha256 else f"sha256 {sha}, the manifest says {entry.sha256}"), read
    raise AgentError(f"{loc.uri}: could not be read to its end in {OBJECT_ATTEMPTS} attempts")


def verify_location(location: str, digest: Optional[str] = None, *, manifest_path: Optional[str] = None,
                    **kwargs) -> Verification:
    if location.startswith("s3://"):
        return verify_s3(location, digest, **kwargs)
    return verify_directory(location, digest, max_size=kwargs.get("max_size"), manifest_path=manifest_path)


def report_of(verification: Verification) -> results.TransferReport:
    """The bounded result the operator reads (protocol/results.py)."""
    m = verification.manifest
    return results.TransferReport(
        verified=verification.verified, checkpoint=results.CheckpointSummary.of(m) if m is not None else None,
        problems=[results.Problem(path=results.cut(p.path, results.MAX_REPORTED_PATH), problem=results.cut(p.problem))
                  for p in verification.problems[:results.MAX_PROBLEMS_REPORTED]],
        problemCount=len(verification.problems))


def main(args: argparse.Namespace) -> int:
    from checkpoint_operator.objectstore.s3 import parse_size
    max_size = parse_size(args.max_size) if args.max_size else None
    try:
        result = verify_location(args.location, args.digest, max_size=max_size, concurrency=args.concurrency,
                                 endpoint_url=args.endpoint_url, manifest_path=getattr(args, "manifest", None))
    except AgentError as exc:
        if args.json:  # --json ends with one JSON line whatever happened; the error line and exit 1 follow
            failed = Verification(args.location, problems=[Problem(".", one_line(str(exc)))])
            print(json.dumps(failed.summary()), flush=True)
        raise
    if getattr(args, "result", False):
        channel.write(report_of(result))
        return 0
    if args.json:
        print(json.dumps(result.summary()), flush=True)
    elif result.verified and result.manifest is not None:  # (verified: a manifest and no problems)
        m = result.manifest
        print(f"verified: {m.fileCount} files, {m.sizeBytes} bytes at {result.location} match the manifest "
              f"({m.digest})")
    else:
        print(f"NOT verified: {result.location}: {len(result.problems)} problems")
        for problem in result.problems[:MAX_PROBLEMS]:
            print(f"  {problem.line()}")
    if not args.json:
        for note in result.notes:
            print(f"note: {note}")
    return 0 if result.verified or args.json else 1
