"""`agent import SOURCE DEST`: bring a checkpoint in from s3:// or http(s)://.

SOURCE is an S3 object, an S3 prefix ending in `/` (copied as a tree; verified against its
manifest when it has one), or an http(s) URL. Archives are extracted safely (see archive.py);
any other single file lands as DEST/<its name>. Everything is staged in a hidden directory
beside DEST (same filesystem) and moved into place only on success: a failed or refused
import leaves DEST as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

from checkpoint_operator.agent.archive import DEFAULT_MAX_MEMBERS, DEFAULT_MAX_SIZE, archive_kind, extract_archive
from checkpoint_operator.agent.manifest import MANIFEST_NAME
from checkpoint_operator.agent.progress import Progress, human_bytes
from checkpoint_operator.agent.s3 import (
    AgentError, describe_error, list_objects, make_client, manifest_exists, parse_s3_uri, parse_size,
    resolve_endpoint,
)
from checkpoint_operator.agent.names import check_path

COPY_CHUNK = 8 * 1024 * 1024
HTTP_TIMEOUT = 60


class Staging:
    """A hidden directory on DEST's filesystem; `commit()` puts its content at DEST."""

    def __init__(self, dest: str) -> None:
        self.dest = os.path.abspath(dest)
        if os.path.lexists(self.dest):
            if not os.path.isdir(self.dest) or os.path.islink(self.dest):
                raise AgentError(f"{dest}: exists and is not a directory")
            if os.listdir(self.dest):
                raise AgentError(f"{dest}: exists and is not empty; import into a new or empty directory")
            # An existing empty DEST may be a mount point: stage inside it, on its filesystem.
            self.into_existing = True
            base = self.dest
        else:
            self.into_existing = False
            base = os.path.dirname(self.dest)
            os.makedirs(base, exist_ok=True)
        name = "." + os.path.basename(self.dest) + ".ckpt-import-"
        self.root = tempfile.mkdtemp(prefix=name, dir=base)
        self.tree = os.path.join(self.root, "tree")  # what becomes DEST
        os.mkdir(self.tree)
        self.downloads = os.path.join(self.root, "download")  # archives before extraction
        os.mkdir(self.downloads)

    def commit(self) -> None:
        shutil.rmtree(self.downloads, ignore_errors=True)
        if self.into_existing:
            for name in os.listdir(self.tree):
                os.rename(os.path.join(self.tree, name), os.path.join(self.dest, name))
        else:
            os.rename(self.tree, self.dest)
        shutil.rmtree(self.root, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _name_from_url(url: str) -> str:
    path = urllib.parse.urlparse(url).path
    name = urllib.parse.unquote(path.rstrip("/").rsplit("/", 1)[-1])
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise AgentError(f"{url}: cannot tell a file name from the URL path")
    return name


def fetch_http(url: str, target: str) -> int:
    """Stream an http(s) URL to a file. Returns its size."""
    request = urllib.request.Request(url, headers={"User-Agent": "checkpoint-operator-agent"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as resp:  # noqa: S310 - http(s) only
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else 0
            with Progress("import", total) as progress, open(target, "wb") as out:
                while chunk := resp.read(COPY_CHUNK):
                    out.write(chunk)
                    progress.add(len(chunk))
            size = os.path.getsize(target)
            if total and size != total:
                raise AgentError(f"{url}: connection closed after {size} of {total} bytes")
            return size
    except urllib.error.HTTPError as exc:
        raise AgentError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise AgentError(f"{url}: cannot fetch: {exc.reason}") from exc
    except (ConnectionError, TimeoutError, OSError) as exc:
        if isinstance(exc, AgentError):
            raise
        raise AgentError(f"{url}: transfer failed: {exc}") from exc


def fetch_s3_object(uri: str, target: str, *, endpoint_url: Optional[str] = None) -> int:
    loc = parse_s3_uri(uri)
    endpoint = resolve_endpoint(endpoint_url)
    client = make_client(endpoint)
    try:
        from boto3.s3.transfer import TransferConfig
        size = client.head_object(Bucket=loc.bucket, Key=loc.key)["ContentLength"]
        with Progress("import", size) as progress:
            client.download_file(loc.bucket, loc.key, target, Callback=progress.add,
                                 Config=TransferConfig(multipart_chunksize=32 * 1024 * 1024, max_concurrency=8))
        return size
    except Exception as exc:  # noqa: BLE001
        raise describe_error(exc, uri, endpoint) from exc


def fetch_s3_tree(uri: str, tree: str, *, endpoint_url: Optional[str] = None) -> int:
    """Copy every object under the prefix. With a manifest there, the copy is verified."""
    prefix = parse_s3_uri(uri).as_prefix()
    endpoint = resolve_endpoint(endpoint_url)
    from checkpoint_operator.agent.download import download_prefix
    if manifest_exists(prefix.uri, endpoint_url=endpoint):
        result = download_prefix(prefix.uri, tree, endpoint_url=endpoint, write_manifest=False)
        return result.manifest.sizeBytes
    client = make_client(endpoint, max_pool_connections=12)
    try:
        objects = [o for o in list_objects(client, prefix) if not o["Key"].endswith("/")]
    except Exception as exc:  # noqa: BLE001
        raise describe_error(exc, prefix.uri, endpoint) from exc
    if not objects:
        raise AgentError(f"nothing under {prefix.uri}: no objects to import")
    from boto3.s3.transfer import TransferConfig
    from concurrent.futures import ThreadPoolExecutor
    config = TransferConfig(multipart_chunksize=32 * 1024 * 1024, max_concurrency=4)
    total = sum(o["Size"] for o in objects)
    with Progress("import", total) as progress:
        def one(obj: dict) -> None:
            rel = obj["Key"][len(prefix.key):]
            if rel == MANIFEST_NAME:
                return
            check_path(rel, f"the objects under {prefix.uri}")
            target = os.path.join(tree, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                client.download_file(prefix.bucket, obj["Key"], target, Callback=progress.add, Config=config)
            except Exception as exc:  # noqa: BLE001
                raise describe_error(exc, f"s3://{prefix.bucket}/{obj['Key']}", endpoint) from exc

        with ThreadPoolExecutor(4) as pool:
            for fut in [pool.submit(one, o) for o in objects]:
                fut.result()
    return total


def import_checkpoint(source: str, dest: str, *, max_size: int = DEFAULT_MAX_SIZE,
                      max_members: int = DEFAULT_MAX_MEMBERS, endpoint_url: Optional[str] = None) -> dict:
    """Import SOURCE into DEST (see the module doc). Returns {"source", "dest", "sizeBytes",
    "fileCount", "extracted"}."""
    if source.startswith("s3://"):
        loc = parse_s3_uri(source)
        is_tree = not loc.key or loc.key.endswith("/")
        name = None if is_tree else loc.key.rsplit("/", 1)[-1]
    elif source.startswith(("http://", "https://")):
        is_tree = False
        name = _name_from_url(source)
    else:
        raise AgentError(f"unsupported source {source!r}: expected s3://bucket/key, s3://bucket/prefix/ "
                         f"or an http(s):// URL")
    staging = Staging(dest)
    try:
        extracted = False
        if is_tree:
            fetch_s3_tree(source, staging.tree, endpoint_url=endpoint_url)
        else:
            assert name is not None
            kind = archive_kind(name)
            target = os.path.join(staging.downloads if kind else staging.tree, name)
            if source.startswith("s3://"):
                size = fetch_s3_object(source, target, endpoint_url=endpoint_url)
            else:
                size = fetch_http(source, target)
            if kind:
                extract_archive(target, staging.tree, max_size=max_size, max_members=max_members, label=name)
                os.unlink(target)
                extracted = True
            elif size > max_size:
                raise AgentError(f"{source}: {size} bytes, past the size limit of {max_size} (see --max-size)")
        size, count = _tree_totals(staging.tree)
        if count == 0:
            raise AgentError(f"{source}: imported nothing (empty archive or prefix)")
        staging.commit()
    except BaseException:
        staging.discard()
        raise
    return {"source": source, "dest": os.path.abspath(dest), "sizeBytes": size, "fileCount": count,
            "extracted": extracted}


def _tree_totals(root: str) -> tuple[int, int]:
    size = count = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                size += os.path.getsize(path)
                count += 1
    return size, count


def main(args: argparse.Namespace) -> int:
    try:
        max_size = parse_size(args.max_size) if args.max_size else DEFAULT_MAX_SIZE
        max_members = int(getattr(args, "max_files", None) or DEFAULT_MAX_MEMBERS)
    except ValueError as exc:
        print(f"error: --max-size: {exc}", file=sys.stderr)
        return 2
    try:
        result = import_checkpoint(args.source, args.dest, max_size=max_size, max_members=max_members,
                                   endpoint_url=args.endpoint_url)
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: import of {args.source} into {args.dest} failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"error: import of {args.source} interrupted; nothing was left in {args.dest}", file=sys.stderr)
        return 130
    print(json.dumps(result), flush=True)
    print(f"import: {result['fileCount']} files, {human_bytes(result['sizeBytes'])} in {result['dest']}",
          file=sys.stderr)
    return 0
