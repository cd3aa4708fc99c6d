"""The fast data path (objectstore/s3http.py): its signatures are botocore's, and its requests work
against a real S3 server (SeaweedFS) with the same failures botocore would raise."""

from __future__ import annotations

import datetime
import os

import botocore.auth
import botocore.exceptions as bexc
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from checkpoint_operator.objectstore.s3 import fast_data_path, make_client
from checkpoint_operator.objectstore.s3http import FastS3, sign_headers

WHEN = datetime.datetime(2026, 12, 1, 10, 4, 27)


def botocore_signature(monkeypatch, method, url, headers, creds, region):
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: WHEN)
    request = AWSRequest(method=method, url=url, headers=dict(headers))
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    botocore.auth.S3SigV4Auth(creds, "s3", region).add_auth(request)
    return request.headers["Authorization"]


@pytest.mark.parametrize("token", [None, "session-token/+="])
@pytest.mark.parametrize("method,path,query,headers", [
    ("GET", "/bucket/dir/model-00001-of-00003.safetensors", "", {}),
    ("GET", "/bucket/a%20b/%C3%A9t%C3%A9~x.bin", "", {"range": "bytes=0-1048575"}),
    ("PUT", "/bucket/k", "partNumber=7&uploadId=abc-DEF_1.2~3", {"content-length": "5"}),
    ("PUT", "/bucket/k", "", {"content-length": "5", "x-amz-meta-sha256": "ab" * 32}),
])
def test_signature_is_botocores(monkeypatch, method, path, query, headers, token):
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    host = "127.0.0.1:8333"
    ours = sign_headers(method, host, path, query, headers, access_key=creds.access_key, secret_key=creds.secret_key,
                        token=token, region="eu-west-3", amz_date=WHEN.strftime("%Y%m%dT%H%M%SZ"))
    url = f"http://{host}{path}" + (f"?{query}" if query else "")
    theirs = botocore_signature(monkeypatch, method, url, {k: v for k, v in headers.items()}, creds, "eu-west-3")
    assert ours["authorization"] == theirs


def test_fast_path_round_trip_and_errors(s3, monkeypatch):
    client = make_client(s3.endpoint)
    fast = fast_data_path(client)
    assert isinstance(fast, FastS3)
    key = s3.key("dir/a b/é~.bin")
    body = bytes(range(256)) * 4096
    etag = fast.put(s3.bucket, key, memoryview(body), metadata={"sha256": "x" * 64})
    assert etag.strip('"') == client.head_object(Bucket=s3.bucket, Key=key)["ETag"].strip('"')
    assert client.head_object(Bucket=s3.bucket, Key=key)["Metadata"] == {"sha256": "x" * 64}

    resp = fast.get(s3.bucket, key, "bytes=1000-1999")
    assert resp.content_length == 1000
    buf = bytearray(1000)
    view = memoryview(buf)
    got = 0
    while got < 1000:
        got += resp.readinto(view[got:])
    resp.finish()
    assert bytes(buf) == body[1000:2000]
    whole = fast.get(s3.bucket, key)  # the same kept-alive connection serves the next request
    assert whole.read(len(body) + 1) == body
    whole.finish()

    with pytest.raises(bexc.ClientError) as info:
        fast.get(s3.bucket, s3.key("missing"))
    assert info.value.response["Error"]["Code"] == "NoSuchKey"

    wrong = make_client(s3.endpoint)
    wrong.ckpt_credentials = Credentials("ckpt-test-access", "not-the-secret")
    with pytest.raises(bexc.ClientError) as info:
        fast_data_path(wrong).get(s3.bucket, key)
    assert info.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "AccessDenied", "403"}

    s3.server.kill()
    with pytest.raises(bexc.EndpointConnectionError):
        fast_data_path(make_client(s3.endpoint)).get(s3.bucket, key)


def test_fast_path_off_for_proxies_and_by_setting(s3, monkeypatch):
    client = make_client(s3.endpoint)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert fast_data_path(client) is None
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert fast_data_path(client) is not None
    monkeypatch.setenv("CKPT_S3_FAST", "0")
    assert fast_data_path(client) is None


@pytest.mark.parametrize("path", ["fast, no botocore client", "fast from botocore's client", "botocore only"])
def test_round_trip_and_tamper_on_every_data_path(s3, monkeypatch, tmp_path, path):
    """Upload and download take the same bytes whichever way the requests go, and a tampered
    object is refused on each."""
    from checkpoint_operator.agent.download import Downloader, download_prefix
    from checkpoint_operator.objectstore.s3 import AgentError
    from checkpoint_operator.agent.upload import upload_dir

    if path == "fast from botocore's client":
        monkeypatch.delenv("AWS_ENDPOINT_URL")  # given as --endpoint-url below: the client's
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
        (tmp_path / "credentials").write_text(f"[default]\naws_access_key_id = {s3.server.access_key}\n"
                                              f"aws_secret_access_key = {s3.server.secret_key}\n")
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    if path == "botocore only":
        monkeypatch.setenv("CKPT_S3_FAST", "0")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {"a.bin": os.urandom(12 * 1024 * 1024 + 3), "sub/b.json": b'{"x": 1}', "empty": b""}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    uri = s3.uri("ckpt/")
    upload_dir(str(src), uri, endpoint_url=s3.endpoint)
    downloader = Downloader(uri, str(tmp_path / "dst"), endpoint_url=s3.endpoint)
    assert (downloader._client is None) == (path == "fast, no botocore client")
    assert (downloader.fast is None) == (path == "botocore only")
    downloader.run()
    for rel, data in files.items():
        assert (tmp_path / "dst" / rel).read_bytes() == data

    s3.client().put_object(Bucket=s3.bucket, Key=s3.key("ckpt/sub/b.json"), Body=b'{"x": 2}')
    with pytest.raises(AgentError, match="sha256 mismatch"):
        download_prefix(uri, str(tmp_path / "dst2"), endpoint_url=s3.endpoint)
    assert not (tmp_path / "dst2" / "sub" / "b.json").exists()


def test_https_endpoint_verified_with_the_ca_bundle(tmp_path, monkeypatch):
    """An https endpoint: the certificate is checked against AWS_CA_BUNDLE (as botocore does),
    and the request is signed. The server is a local TLS server with a self-signed certificate."""
    import http.server
    import shutil
    import ssl
    import subprocess
    import threading

    from checkpoint_operator.objectstore.s3 import fast_for_endpoint

    openssl = shutil.which("openssl")
    assert openssl, "the openssl binary (Debian package openssl) is needed to make a test certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - http.server's name
            seen.update(path=self.path, **{k.lower(): v for k, v in self.headers.items()})
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
        monkeypatch.delenv("CKPT_S3_SECRET_DIR", raising=False)
        endpoint = f"https://127.0.0.1:{server.server_port}"
        monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
        resp = fast_for_endpoint(endpoint).get("bucket", "dir/k.bin")
        assert resp.read(6) == b"hello"
        assert seen["path"] == "/bucket/dir/k.bin"
        assert seen["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
        assert seen["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"

        monkeypatch.delenv("AWS_CA_BUNDLE")  # the default bundle does not know this certificate
        with pytest.raises(bexc.SSLError):
            fast_for_endpoint(endpoint).get("bucket", "dir/k.bin")
    finally:
        server.shutdown()
        server.server_close()
