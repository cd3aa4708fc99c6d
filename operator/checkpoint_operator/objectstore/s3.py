"""S3 access (moved from agent/s3.py): URIs, the client, one-line errors, and the calls the operator makes.

Credentials come only from botocore's default chain (the one boto3 uses: environment, config
files, instance/pod identity) or from a mounted Secret directory (`CKPT_S3_SECRET_DIR` holding the files
`AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, as `kubectl create secret generic` mounts
them). They are never printed. The endpoint is `--endpoint-url`, else `AWS_ENDPOINT_URL`
(which botocore reads itself), else `CKPT_S3_ENDPOINT`. Object data moves over s3http.py.
"""

from __future__ import annotations

import gc
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import botocore.exceptions as bexc

from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, parse_manifest

__all__ = ["AgentError"]  # re-exported: callers import it from here


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # "" for the bucket root; prefixes keep their trailing "/"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def as_prefix(self) -> "S3Location":
        if self.key and not self.key.endswith("/"):
            return S3Location(self.bucket, self.key + "/")
        return self

    def child(self, rel: str) -> "S3Location":
        return S3Location(self.bucket, self.as_prefix().key + rel)


def parse_s3_uri(uri: str) -> S3Location:
    from checkpoint_operator.protocol.urls import check_url
    if not uri.startswith("s3://"):  # first: a local path given for a URI is the likely mistake
        raise AgentError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix/)")
    check_url(uri, "S3 URI")
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise AgentError(f"S3 URI {uri!r} has no bucket (expected s3://bucket/prefix/)")
    return S3Location(bucket, key)


def resolve_endpoint(explicit: Optional[str] = None) -> Optional[str]:
    # AWS_ENDPOINT_URL is honoured by boto3 itself; pass it on explicitly anyway so error
    # messages can name it.
    from checkpoint_operator.protocol.urls import check_url
    endpoint = explicit or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("CKPT_S3_ENDPOINT") or None
    return check_url(endpoint, "the S3 endpoint") if endpoint else None


def _secret_dir_credentials() -> dict:
    secret_dir = os.environ.get("CKPT_S3_SECRET_DIR")
    if not secret_dir:
        return {}
    creds = {}
    for env_name, arg in (("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
                          ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
                          ("AWS_SESSION_TOKEN", "aws_session_token")):
        path = os.path.join(secret_dir, env_name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                creds[arg] = f.read().strip()
    if "aws_access_key_id" not in creds or "aws_secret_access_key" not in creds:
        raise AgentError(f"CKPT_S3_SECRET_DIR={secret_dir} must hold the files AWS_ACCESS_KEY_ID and "
                         f"AWS_SECRET_ACCESS_KEY")
    return creds


_session_lock = threading.Lock()


def make_client(endpoint_url: Optional[str] = None, *, max_pool_connections: int = 10,
                region: Optional[str] = None):
    """A client tuned for bulk transfers.

    Payload signing is off: over plain http botocore would otherwise sha256 every byte a
    second time for the signature; integrity is end to end instead (the manifest's sha256 of
    every file is verified on download). Checksums only where an operation requires them.
    """
    import botocore.handlers
    import botocore.session
    from botocore.config import Config

    endpoint = resolve_endpoint(endpoint_url)
    attempts = int(os.environ.get("CKPT_S3_MAX_ATTEMPTS", "10"))
    config = Config(
        max_pool_connections=max_pool_connections,
        retries={"max_attempts": attempts, "mode": "standard"},
        connect_timeout=float(os.environ.get("CKPT_S3_CONNECT_TIMEOUT", "10")),
        read_timeout=float(os.environ.get("CKPT_S3_READ_TIMEOUT", "120")),
        tcp_keepalive=True,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"payload_signing_enabled": False,
            "addressing_style": "path" if endpoint else "auto"},
    )
    unsigned = os.environ.get("CKPT_S3_UNSIGNED") == "1"  # anonymous requests (public buckets; gcs.py sets it)
    if unsigned:
        from botocore import UNSIGNED
        config = config.merge(Config(signature_version=UNSIGNED))

    with _session_lock:  # sessions are not thread-safe to create clients from
        # botocore's own session, not boto3's: importing boto3 also imports s3transfer, ~40% of
        # the start-up of `agent download`. (The importer, which uses s3transfer, imports it.)
        # Loading the service model makes ~10^5 objects, none of them cyclic garbage: the
        # cyclic GC passes it triggers cost ~30% of the client's creation time, for nothing.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            session = botocore.session.get_session()
            creds = {} if unsigned else _secret_dir_credentials()
            if creds:
                session.set_credentials(creds["aws_access_key_id"], creds["aws_secret_access_key"],
                                        creds.get("aws_session_token"))
            region = (region or session.get_config_variable("region") or os.environ.get("CKPT_S3_REGION")
                      or "us-east-1")
            client = session.create_client("s3", endpoint_url=endpoint, region_name=region, config=config)
            # for the fast data path (s3http.py); unsigned requests stay with botocore
            client.ckpt_credentials = None if unsigned else session.get_credentials()
        finally:
            if gc_was_enabled:
                gc.enable()
    # No `Expect: 100-continue`: it costs a round trip per PUT, and some S3 servers (SeaweedFS
    # 4.x) answer it in a way that leaves botocore waiting for the read timeout.
    client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    return client


def _timeouts() -> dict:
    return {"connect_timeout": float(os.environ.get("CKPT_S3_CONNECT_TIMEOUT", "10")),
            "read_timeout": float(os.environ.get("CKPT_S3_READ_TIMEOUT", "120"))}


def fast_data_path(client):
    """The s3http.FastS3 for a client made by make_client, or None when botocore must carry the
    object data (see s3http.py)."""
    from checkpoint_operator.objectstore.s3http import FastS3
    credentials = getattr(client, "ckpt_credentials", None)
    if not FastS3.usable(client.meta.endpoint_url, credentials):
        return None
    return FastS3(client, credentials, **_timeouts())


def fast_for_endpoint(endpoint_url: Optional[str] = None):
    """An s3http.FastS3 that needs no botocore client, or None: only for a custom endpoint
    (path-style, as make_client addresses it) with static credentials from the environment or
    CKPT_S3_SECRET_DIR, the ones botocore's chain would take first."""
    from checkpoint_operator.objectstore.s3http import FastS3, StaticCredentials
    endpoint = resolve_endpoint(endpoint_url)
    if not endpoint or os.environ.get("CKPT_S3_UNSIGNED") == "1":
        return None
    creds = _secret_dir_credentials()
    if creds:
        static = StaticCredentials(creds["aws_access_key_id"], creds["aws_secret_access_key"],
                                   creds.get("aws_session_token"))
    elif os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        static = StaticCredentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                                   os.environ.get("AWS_SESSION_TOKEN") or None)
    else:
        return None
    if not FastS3.usable(endpoint, static):
        return None
    region = (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
              or os.environ.get("CKPT_S3_REGION") or "us-east-1")
    return FastS3(None, static, endpoint=endpoint, region=region, **_timeouts())


_ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                 "ExpiredToken", "InvalidClientTokenId", "AllAccessDisabled", "403", "Forbidden"}


def error_code(exc: BaseException) -> str:
    if isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error", {})
        return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return ""


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in {"404", "NoSuchKey", "NotFound"}


def describe_error(exc: BaseException, uri: str, endpoint: Optional[str] = None) -> AgentError:
    """Turn a botocore/OS failure into one line naming the URI and the cause."""
    if isinstance(exc, AgentError):
        return exc
    where = f" (endpoint {endpoint})" if endpoint else ""
    if isinstance(exc, bexc.ClientError):
        code = error_code(exc)
        if code in _ACCESS_CODES:
            return AgentError(f"access denied to {uri}{where}: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                              f"({code})")
        if code == "NoSuchBucket":
            bucket = parse_s3_uri(uri).bucket if uri.startswith("s3://") else "?"
            return AgentError(f"no such bucket {bucket!r} for {uri}{where}")
        if code in {"404", "NoSuchKey", "NotFound"}:
            return AgentError(f"not found: {uri}{where}")
        msg = exc.response.get("Error", {}).get("Message", "") or str(exc)
        return AgentError(f"S3 error on {uri}{where}: {code}: {msg}")
    if isinstance(exc, bexc.NoCredentialsError):
        return AgentError(f"no AWS credentials for {uri}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                          f"(or mount a Secret and set CKPT_S3_SECRET_DIR)")
    if isinstance(exc, bexc.EndpointConnectionError):
        return AgentError(f"cannot reach the S3 endpoint{where or ' ' + str(exc.kwargs.get('endpoint_url', ''))} "
                          f"for {uri}: connection refused or unreachable")
    if isinstance(exc, (bexc.ConnectionClosedError, bexc.ReadTimeoutError, bexc.ConnectTimeoutError,
                        bexc.IncompleteReadError, bexc.ResponseStreamingError, bexc.HTTPClientError,
                        ConnectionError)):
        return AgentError(f"connection to the S3 endpoint{where} lost during transfer of {uri}: "
                          f"{type(exc).__name__}")
    if isinstance(exc, OSError):
        return AgentError(f"{uri}: {exc.strerror or exc}")
    return AgentError(f"{uri}: {type(exc).__name__}: {exc}")


_TRANSIENT_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
                    "RequestTimeout", "RequestTimeTooSkewed"}


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: the connection, not the data (lost, reset, timed out, cut
    short, or a 5xx/throttling answer)."""
    if isinstance(exc, (AgentError, bexc.SSLError)):
        return False
    if isinstance(exc, bexc.ClientError):
        return error_code(exc) in _TRANSIENT_CODES
    if isinstance(exc, (bexc.HTTPClientError, bexc.ConnectionError, bexc.IncompleteReadError,
                        bexc.ResponseStreamingError, ConnectionError, TimeoutError)):
        return True
    import http.client
    import urllib3.exceptions
    return isinstance(exc, (http.client.HTTPException, urllib3.exceptions.HTTPError))


def list_objects(client, loc: S3Location) -> Iterator[dict]:
    """Every object under a prefix (Key, Size, ETag)."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.key):
        yield from page.get("Contents", [])


# ---- calls the operator makes (metadata only: the operator never moves checkpoint bytes) ----

def manifest_location(uri: str) -> S3Location:
    return parse_s3_uri(uri).as_prefix().child(MANIFEST_NAME)


def manifest_exists(uri: str, *, endpoint_url: Optional[str] = None, client=None) -> bool:
    """True when the upload at this prefix completed (its manifest, the commit marker, exists)."""
    loc = manifest_location(uri)
    client = client or make_client(endpoint_url)
    try:
        client.head_object(Bucket=loc.bucket, Key=loc.key)
        return True
    except Exception as exc:  # noqa: BLE001 - translated below
        if is_not_found(exc):
            return False
        raise describe_error(exc, loc.uri, resolve_endpoint(endpoint_url)) from exc


def read_manifest(uri: str, *, endpoint_url: Optional[str] = None, client=None, fast=None) -> Manifest:
    """The manifest of the checkpoint at this prefix; AgentError if the upload never completed.
    Read through `fast` (an s3http.FastS3, retried here as botocore would) when given."""
    prefix = parse_s3_uri(uri).as_prefix()
    loc = manifest_location(uri)
    attempts = max(1, int(os.environ.get("CKPT_S3_MAX_ATTEMPTS", "10"))) if fast is not None else 1
    for attempt in range(1, attempts + 1):
        try:
            if fast is not None:
                resp = fast.get(loc.bucket, loc.key)
                length = resp.content_length or 0
                read, close = resp.read, resp.close
            else:
                client = client or make_client(endpoint_url)
                answer = client.get_object(Bucket=loc.bucket, Key=loc.key)
                length = answer.get("ContentLength", 0)
                read, close = answer["Body"].read, answer["Body"].close
            if length > MAX_MANIFEST_BYTES:
                close()
                raise AgentError(f"invalid manifest at {loc.uri}: {length} bytes, more than the "
                                 f"{MAX_MANIFEST_BYTES} a manifest may have")
            body = read(MAX_MANIFEST_BYTES + 1)
            close()
            break
        except Exception as exc:  # noqa: BLE001
            if is_not_found(exc):
                raise AgentError(f"no manifest at {prefix.uri}: the upload never completed") from exc
            if attempt < attempts and is_transient(exc):
                time.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
                continue
            raise describe_error(exc, loc.uri, resolve_endpoint(endpoint_url)) from exc
    if len(body) > MAX_MANIFEST_BYTES:
        raise AgentError(f"invalid manifest at {loc.uri}: more than the {MAX_MANIFEST_BYTES} bytes a manifest may have")
    return parse_manifest(body, loc.uri)


def delete_prefix(uri: str, *, endpoint_url: Optional[str] = None, client=None) -> int:
    """Delete every object under the prefix, manifest first (so a half-deleted checkpoint is never
    taken for a complete one). Idempotent: deleting what is already gone succeeds. Returns the
    number of objects deleted."""
    prefix = parse_s3_uri(uri).as_prefix()
    if not prefix.key:
        raise AgentError(f"refusing to delete a whole bucket: {uri} (give a prefix ending in /)")
    client = client or make_client(endpoint_url)
    endpoint = resolve_endpoint(endpoint_url)
    deleted = 0
    try:
        mloc = prefix.child(MANIFEST_NAME)
        client.delete_object(Bucket=mloc.bucket, Key=mloc.key)
        batch: list[dict] = []
        for obj in list_objects(client, prefix):
            batch.append({"Key": obj["Key"]})
            if len(batch) == 1000:
                deleted += _delete_batch(client, prefix, batch)
                batch = []
        if batch:
            deleted += _delete_batch(client, prefix, batch)
        _abort_multipart_uploads(client, prefix)
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) == "NoSuchBucket":
            return deleted  # the bucket is gone, and the data with it
        raise describe_error(exc, prefix.uri, endpoint) from exc
    return deleted


def _delete_batch(client, prefix: S3Location, batch: list[dict]) -> int:
    resp = client.delete_objects(Bucket=prefix.bucket, Delete={"Objects": batch, "Quiet": True})
    errors = [e for e in resp.get("Errors", []) if e.get("Code") not in {"NoSuchKey"}]
    if errors:
        first = errors[0]
        raise AgentError(f"could not delete s3://{prefix.bucket}/{first.get('Key')}: "
                         f"{first.get('Code')}: {first.get('Message')}")
    return len(batch)


def _abort_multipart_uploads(client, prefix: S3Location) -> None:
    try:
        paginator = client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key):
            for up in page.get("Uploads", []):
                client.abort_multipart_upload(Bucket=prefix.bucket, Key=up["Key"], UploadId=up["UploadId"])
    except bexc.ClientError as exc:
        if error_code(exc) not in {"NotImplemented", "NoSuchUpload"}:
            raise


# ---- shared machinery of upload, download and import ----

MiB = 1024 * 1024

# Measured with bench/transfer.py against SeaweedFS on 2 cores (see the bench's docstring).
DEFAULT_PART_SIZE = 32 * MiB  # download: the size of each ranged GET (streamed, not held in memory)
# upload: each part is held in memory while it is sent, (concurrency + 2) of them at most: with
# 8 MiB parts an upload's RSS stays under ~150 MB whatever the checkpoint's size.
DEFAULT_UPLOAD_PART_SIZE = 8 * MiB
DEFAULT_CONCURRENCY = 8
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?)B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`2Ti`, `512MiB`, `1G`, `1000` -> bytes (binary multiples for Ki/Mi/..., decimal for K/M/...)."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 1000, 64Mi, 2Ti, 1G)")
    number, unit, binary = float(match.group(1)), match.group(2).upper(), match.group(3)
    power = "KMGTP".index(unit) + 1 if unit else 0
    return int(number * ((1024 if binary or not unit else 1000) ** power))


def env_size(name: str, default: int) -> int:
    value = os.environ.get(name)
    return parse_size(value) if value else default


def part_size_for(size: int, part_size: int) -> int:
    """The part size for a file: the configured one, grown so the file fits in MAX_PARTS parts."""
    needed = -(-size // (MAX_PARTS - 1))
    if needed > part_size:
        part_size = -(-needed // MiB) * MiB
    return part_size


class ByteBudget:
    """Bounds the bytes held in memory by in-flight parts (a semaphore counted in bytes).

    A request larger than the whole budget is let through alone, so nothing deadlocks."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, cancelled: Optional[threading.Event] = None) -> bool:
        with self._cond:
            while self.used and self.used + n > self.limit:
                if cancelled is not None and cancelled.is_set():
                    return False
                self._cond.wait(0.5)
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class FailureLatch:
    """Remembers the first failure of any worker and tells the others to stop."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.error: Optional[BaseException] = None
        self._lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc
        self.event.set()

    @property
    def failed(self) -> bool:
        return self.event.is_set()
