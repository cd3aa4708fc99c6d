"""Object data over plain http.client: signed GETs and PUTs without botocore's per-request cost.

botocore spends 1-2.5 ms of CPU on each request (parameter validation, the endpoint rule set,
a dozen event hooks, response parsing) on top of the transfer itself: for a checkpoint of
10,000 small files that is more CPU than moving the bytes. The requests that move object data
(GET of an object or a range, PUT of an object, PUT of a multipart part) go through this
module instead, at ~0.5 ms each: SigV4 header signing with UNSIGNED-PAYLOAD (as the client
of s3.py: integrity is the manifest's sha256), one keep-alive connection per thread and
endpoint, bodies read straight into the caller's buffer (`readinto`).

Everything else (listing, HEAD, multipart create/complete/abort, the manifest) stays on
botocore, which also supplies what this module must agree with: the credentials of the
default chain (refreshed as botocore refreshes them), the region, and the URL of each bucket
(virtual-hosted or path style, as botocore resolves it for the endpoint). Failures are raised
as the botocore exceptions s3.py already understands (ClientError with the S3 error code,
EndpointConnectionError, ReadTimeoutError, ...), so messages and retries are the same.

Not used (botocore carries the request instead) when a proxy applies to the endpoint
(HTTP(S)_PROXY), or when CKPT_S3_FAST=0. With a custom endpoint and static credentials (the
environment's AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or CKPT_S3_SECRET_DIR) `agent download`
needs no botocore client at all (s3.fast_for_endpoint): making one loads botocore's endpoint
and service models, about half of the command's start-up.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import re
import socket
import ssl
import threading
import time
import urllib.request
from typing import Optional
from urllib.parse import quote, urlsplit

import botocore.exceptions as bexc

UNSIGNED = "UNSIGNED-PAYLOAD"
MAX_ERROR_BODY = 64 * 1024
_CODE = re.compile(rb"<Code>([^<]{1,200})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,2000})</Message>")


def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign_headers(method: str, host: str, path: str, query: str, headers: dict[str, str], *, access_key: str,
                 secret_key: str, token: Optional[str], region: str, amz_date: str,
                 key_cache: Optional[dict] = None) -> dict[str, str]:
    """`headers` (lower-case names) plus host, x-amz-date, x-amz-content-sha256, the session token
    and Authorization: AWS Signature Version 4 of the request, its payload unsigned. `path` is
    already URI-encoded (S3 takes it as it is), `query` already canonical (sorted, encoded)."""
    out = dict(headers)
    out["host"] = host
    out["x-amz-date"] = amz_date
    out["x-amz-content-sha256"] = UNSIGNED
    if token:
        out["x-amz-security-token"] = token
    names = sorted(out)
    canonical = "\n".join([method, path, query, "".join(f"{n}:{' '.join(str(out[n]).split())}\n" for n in names),
                           ";".join(names), UNSIGNED])
    date = amz_date[:8]
    scope = f"{date}/{region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    cache_key = (secret_key, date, region)
    key = key_cache.get(cache_key) if key_cache is not None else None
    if key is None:
        key = signing_key(secret_key, date, region)
        if key_cache is not None:
            key_cache.clear()
            key_cache[cache_key] = key
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(names)}, "
                            f"Signature={signature}")
    return out


class StaticCredentials:
    """Credentials that do not change (botocore's chain returns refreshable ones otherwise)."""

    def __init__(self, access_key: str, secret_key: str, token: Optional[str] = None) -> None:
        self.access_key, self.secret_key, self.token = access_key, secret_key, token

    def get_frozen_credentials(self) -> "StaticCredentials":
        return self


class Response:
    """The answer to a GET: status, headers, and the body read into the caller's buffers."""

    def __init__(self, conn: "_Connection", resp: http.client.HTTPResponse, uri: str) -> None:
        self._conn = conn
        self._resp = resp
        self.uri = uri
        self.status = resp.status
        self.headers = resp.headers
        length = resp.getheader("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    def readinto(self, view: memoryview) -> int:
        try:
            return self._resp.readinto(view)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise bexc.ResponseStreamingError(error=exc) from exc

    def read(self, n: int) -> bytes:
        try:
            return self._resp.read(n)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise bexc.ResponseStreamingError(error=exc) from exc

    def finish(self) -> None:
        """The body was read to its end: the connection serves the next request."""
        if not self._resp.isclosed():
            self.close()

    def close(self) -> None:
        """Give up on the body: the connection is closed (it cannot be reused mid-body)."""
        self._resp.close()
        self._conn.drop()


class _Connection:
    def __init__(self, scheme: str, netloc: str, timeouts: tuple[float, float],
                 context: Optional[ssl.SSLContext]) -> None:
        self.scheme, self.netloc, self.context = scheme, netloc, context
        self.connect_timeout, self.read_timeout = timeouts
        self.http: Optional[http.client.HTTPConnection] = None

    def get(self) -> http.client.HTTPConnection:
        if self.http is None:
            if self.scheme == "https":
                self.http = http.client.HTTPSConnection(self.netloc, timeout=self.connect_timeout,
                                                        context=self.context)
            else:
                self.http = http.client.HTTPConnection(self.netloc, timeout=self.connect_timeout)
        if self.http.sock is None:  # new, or closed by http.client after a `Connection: close`
            _connect(self.http, self.read_timeout)
        return self.http

    def drop(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None


def _connect(conn: http.client.HTTPConnection, read_timeout: float) -> None:
    conn.connect()
    conn.sock.settimeout(read_timeout)


class FastS3:
    """GET and PUT of object data for one botocore client's credentials, region and endpoint."""

    def __init__(self, client, credentials, *, connect_timeout: float = 10.0, read_timeout: float = 120.0,
                 endpoint: Optional[str] = None, region: Optional[str] = None) -> None:
        """For a botocore `client` (its region and bucket URLs), or, without one, for a custom
        `endpoint` addressed path-style (as make_client does for any endpoint) in `region`."""
        self._client = client
        self._endpoint = urlsplit(endpoint) if endpoint else None
        self._credentials = credentials
        self.region = region or (client.meta.region_name if client is not None else None) or "us-east-1"
        self.timeouts = (connect_timeout, read_timeout)
        self._bases: dict[str, tuple[str, str, str]] = {}  # bucket -> (scheme, netloc, path prefix)
        self._regions: dict[str, str] = {}  # buckets found in another region than the client's
        self._lock = threading.Lock()
        self._local = threading.local()
        self._keys: dict = {}
        self._context: Optional[ssl.SSLContext] = None

    @staticmethod
    def usable(endpoint_url: str, credentials) -> bool:
        """False when botocore must carry the requests: turned off, no credentials, a proxy."""
        if os.environ.get("CKPT_S3_FAST", "1") == "0" or credentials is None:
            return False
        url = urlsplit(endpoint_url)
        proxies = urllib.request.getproxies_environment()
        # proxy_bypass_environment: in urllib.request (NO_PROXY), not in typeshed's stubs
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if url.scheme in proxies and not bypass(url.hostname or "", proxies):
            return False
        return True

    def _base(self, bucket: str) -> tuple[str, str, str]:
        base = self._bases.get(bucket)
        if base is None:
            if self._client is None:
                if self._endpoint is None:
                    raise ValueError("FastS3 needs a botocore client or an endpoint")
                url = self._endpoint
                base = (url.scheme, url.netloc, f"{url.path.rstrip('/')}/{quote(bucket, safe='')}/")
            else:
                # The URL botocore would use for an object of this bucket (its endpoint rules
                # decide virtual-hosted or path style); its scheme, host and bucket part are kept.
                url = urlsplit(self._client.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60))
                assert url.path.endswith("/k"), url.path
                base = (url.scheme, url.netloc, url.path[:-1])
            with self._lock:
                self._bases[bucket] = base
                if url.scheme == "https" and self._context is None:
                    from botocore.httpsession import get_cert_path
                    bundle = os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)
                    self._context = ssl.create_default_context(cafile=bundle if isinstance(bundle, str) else None)
        return base

    def _connection(self, scheme: str, netloc: str) -> _Connection:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get((scheme, netloc))
        if conn is None:
            conn = conns[(scheme, netloc)] = _Connection(scheme, netloc, self.timeouts, self._context)
        return conn

    def _send(self, method: str, bucket: str, key: str, query: str, headers: dict, body, operation: str):
        try:
            return self._send_once(method, bucket, key, query, headers, body, operation)
        except bexc.ClientError as exc:
            # A bucket of another region (botocore follows these redirects itself): once more,
            # signed for the region S3 names. The base URL stays botocore's.
            region = getattr(exc, "ckpt_bucket_region", None)
            if not region or region == self._regions.get(bucket, self.region):
                raise
            self._regions[bucket] = region
            return self._send_once(method, bucket, key, query, headers, body, operation)

    def _send_once(self, method: str, bucket: str, key: str, query: str, headers: dict, body, operation: str):
        scheme, netloc, prefix = self._base(bucket)
        path = prefix + quote(key, safe="/~")
        creds = self._credentials.get_frozen_credentials()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        signed = sign_headers(method, netloc, path, query, headers, access_key=creds.access_key,
                              secret_key=creds.secret_key, token=creds.token, region=self._regions.get(bucket, self.region),
                              amz_date=amz_date, key_cache=self._keys)
        target = path + (f"?{query}" if query else "")
        endpoint = f"{scheme}://{netloc}"
        conn = self._connection(scheme, netloc)
        for attempt in (1, 2):
            fresh = conn.http is None
            try:
                h = conn.get()
                h.request(method, target, body=body, headers=signed)
                resp = h.getresponse()
            except (ConnectionRefusedError, socket.gaierror) as exc:
                conn.drop()
                raise bexc.EndpointConnectionError(endpoint_url=endpoint, error=exc) from exc
            except (TimeoutError, socket.timeout) as exc:
                timed_out_connecting = conn.http is None or conn.http.sock is None
                conn.drop()
                if timed_out_connecting:
                    raise bexc.ConnectTimeoutError(endpoint_url=endpoint, error=exc) from exc
                raise bexc.ReadTimeoutError(endpoint_url=endpoint, error=exc) from exc
            except ssl.SSLError as exc:  # a certificate or TLS failure: not retried
                conn.drop()
                raise bexc.SSLError(endpoint_url=endpoint, error=exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.drop()
                if attempt == 1 and not fresh:
                    continue  # a kept-alive connection the server had closed: once more on a new one
                raise bexc.ConnectionClosedError(endpoint_url=endpoint, error=exc) from exc
            break
        if resp.status >= 300:
            data = resp.read(MAX_ERROR_BODY)
            if not resp.isclosed():
                conn.drop()
            code = _CODE.search(data)
            message = _MESSAGE.search(data)
            error = bexc.ClientError({"Error": {"Code": code.group(1).decode() if code else str(resp.status),
                                                "Message": message.group(1).decode() if message else resp.reason},
                                      "ResponseMetadata": {"HTTPStatusCode": resp.status}}, operation)
            error.ckpt_bucket_region = resp.getheader("x-amz-bucket-region")
            raise error
        return conn, resp

    def get(self, bucket: str, key: str, byte_range: Optional[str] = None) -> Response:
        """GET of an object (or a `bytes=a-b` range of it); the caller reads the body."""
        headers = {"range": byte_range} if byte_range else {}
        conn, resp = self._send("GET", bucket, key, "", headers, None, "GetObject")
        return Response(conn, resp, f"s3://{bucket}/{key}")

    def put(self, bucket: str, key: str, body, *, metadata: Optional[dict] = None,
            part: Optional[tuple[str, int]] = None) -> str:
        """PUT of an object, or of part `part = (upload id, number)` of a multipart upload; the ETag."""
        headers = {"content-length": str(len(body))}
        for name, value in (metadata or {}).items():
            headers[f"x-amz-meta-{name.lower()}"] = value
        query = ""
        if part is not None:
            upload_id, number = part
            query = f"partNumber={number}&uploadId={quote(upload_id, safe='-_.~')}"
        conn, resp = self._send("PUT", bucket, key, query, headers, body, "UploadPart" if part else "PutObject")
        try:
            resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.drop()
            raise bexc.ConnectionClosedError(endpoint_url=f"s3://{bucket}", error=exc) from exc
        return (resp.getheader("ETag") or "").strip()
