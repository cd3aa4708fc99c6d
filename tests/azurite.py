"""Azurite, Microsoft's Azure Storage emulator (npm), serving Blob on 127.0.0.1, telemetry off.

Its fixtures are registered for the whole run by tests/conftest.py (pytest_plugins): ask for them by name.

`azurite` (session-scoped) installs Azurite with npm into a cache directory the first time
(`$CKPT_TEST_CACHE`, default ~/.cache/checkpoint-operator-tests; .ci/run installs it first with
`python tests/azurite.py --install`), starts `azurite-blob` once per session (per xdist worker) and yields an
`Azurite`: `connection_string`, `blob_endpoint`, `account`, `key`. `azure_blob` (per test)
gives a fresh container and clears the AZURE_STORAGE_* environment.

Without npm the tests that need it are skipped, saying why; with CKPT_SOURCE_SERVERS=required
(.ci/run sets it) a missing server is a failure instead.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from processes import die_with_parent
from required import unavailable

VERSION = "3.37.0"
# Azurite's well-known development account (public, documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def cache_dir() -> Path:
    return Path(os.environ.get("CKPT_TEST_CACHE") or Path.home() / ".cache" / "checkpoint-operator-tests")


def azurite_bin() -> Path:
    return cache_dir() / f"azurite-{VERSION}" / "node_modules" / ".bin" / "azurite-blob"


def install() -> tuple[Optional[Path], str]:
    """(the azurite-blob binary, "") once installed, else (None, why not)."""
    binary = azurite_bin()
    if binary.exists():
        return binary, ""
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        return None, "Azurite needs node and npm (apt-get install nodejs npm), which are not on PATH"
    prefix = binary.parents[2]
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / f".azurite-{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time (parallel runs share the cache)
        if not binary.exists():
            proc = subprocess.run([npm, "install", "--prefix", str(prefix), f"azurite@{VERSION}", "--no-audit",
                                   "--no-fund", "--no-update-notifier", "--loglevel=error"],
                                  capture_output=True, text=True, timeout=900)
            if proc.returncode != 0 or not binary.exists():
                return None, f"npm install azurite@{VERSION} failed: {proc.stderr.strip()[-500:]}"
    return binary, ""


@dataclass
class Azurite:
    port: int
    proc: subprocess.Popen
    workdir: str
    account: str = ACCOUNT
    key: str = KEY

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
                f"BlobEndpoint={self.blob_endpoint};")

    def service(self):
        from azure.storage.blob import BlobServiceClient
        return BlobServiceClient.from_connection_string(self.connection_string)

    def service_without_retries(self):
        from azure.storage.blob import BlobServiceClient
        return BlobServiceClient.from_connection_string(self.connection_string, retry_total=0)


def start_azurite() -> Azurite:
    binary, why = install()
    if binary is None:
        raise RuntimeError(why)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="ckpt-azurite-")
    log = open(os.path.join(workdir, "azurite.log"), "ab")
    proc = subprocess.Popen([str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", workdir,
                             "--silent", "--skipApiVersionCheck", "--disableTelemetry"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir,
                            preexec_fn=die_with_parent())
    log.close()
    server = Azurite(port, proc, workdir)
    deadline = time.monotonic() + 60
    while True:
        try:
            # The port first, then one request without the SDK's retries: its backoff made every
            # start take 16-19 s whatever Azurite's own start-up took.
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
            list(server.service_without_retries().list_containers(results_per_page=1))
            return server
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"Azurite did not start; see {workdir}/azurite.log")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def azurite():
    try:
        server = start_azurite()
    except RuntimeError as exc:
        unavailable(f"Azurite is not available: {exc}")
    yield server
    os.killpg(server.proc.pid, 9)
    server.proc.wait()
    shutil.rmtree(server.workdir, ignore_errors=True)


@dataclass
class AzureBlobEnv:
    server: Azurite
    container: str

    def uri(self, path: str = "") -> str:
        return f"az://{self.server.account}/{self.container}/{path}"

    def upload(self, name: str, data: bytes) -> None:
        self.server.service().get_blob_client(self.container, name).upload_blob(data, overwrite=True)


@pytest.fixture
def azure_blob(azurite, monkeypatch):
    for key in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    container = f"c{uuid.uuid4().hex[:12]}"
    azurite.service().create_container(container)
    yield AzureBlobEnv(azurite, container)


if __name__ == "__main__":
    if sys.argv[1:] == ["--install"]:
        found, why = install()
        print(found or why)
        sys.exit(0 if found else 1)
    print("usage: python tests/azurite.py --install", file=sys.stderr)
    sys.exit(2)
