"""agent import against sources that lie, misbehave or are too big: a counting HTTP server on
127.0.0.1, SeaweedFS, and archives whose headers claim gigabytes. Limits hold before bytes move
when the size is known and while they move otherwise; memory stays bounded; DEST is left as it was."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


from checkpoint_operator.agent import importer
from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.agent.importer import import_checkpoint
from checkpoint_operator.agent.upload import upload_dir

MiB = 1024 * 1024
pytestmark = pytest.mark.usefixtures("credential_watch")

CHUNK = b"\0" * MiB


class Served:
    """What the test server sent, per path."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.lock = threading.Lock()

    def add(self, path: str, n: int) -> None:
        with self.lock:
            self.sent[path] = self.sent.get(path, 0) + n


@pytest.fixture
def misbehaving_http():
    """An HTTP server on 127.0.0.1 whose answers are made up on the fly (nothing on disk):
    /big.bin (300 MB, Content-Length), /chunked.bin (300 MB, chunked, no length),
    /short-chunked.bin (a chunked body cut off), /short.bin (Content-Length 10 MB, 1 MB sent),
    /garbage (not HTTP at all), /slow.bin (1 MiB a second, for 60 s), /small.bin (3 bytes).
    Yields (base URL, Served)."""
    served = Served()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, data: bytes) -> None:
            self.wfile.write(data)
            served.add(self.path, len(data))

        def do_GET(self):  # noqa: N802 - http.server's name
            path = self.path
            try:
                if path == "/garbage":
                    self._send(b"SPAM SPAM SPAM\r\n\r\nnot http")
                    self.close_connection = True
                    return
                if path == "/small.bin":
                    self.send_response(200)
                    self.send_header("Content-Length", "3")
                    self.end_headers()
                    self._send(b"abc")
                    return
                chunked = path in ("/chunked.bin", "/short-chunked.bin")
                total = {"/big.bin": 300 * MiB, "/chunked.bin": 300 * MiB, "/short-chunked.bin": 3 * MiB,
                         "/short.bin": MiB, "/slow.bin": 60 * MiB}[path]
                self.send_response(200)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(10 * MiB if path == "/short.bin" else total))
                self.end_headers()
                left = total
                while left > 0:
                    n = min(len(CHUNK), left)
                    self._send(b"%x\r\n" % n + CHUNK[:n] + b"\r\n" if chunked else CHUNK[:n])
                    left -= n
                    if path == "/slow.bin":
                        time.sleep(1)
                if path == "/chunked.bin":
                    self._send(b"0\r\n\r\n")
                self.close_connection = True  # short bodies: the connection just ends
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


def agent_import(*args: str, timeout: float = 120):
    """`agent import` as a subprocess; returns (returncode, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "import", *args],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def agent_import_measured(*args: str, limit_memory: int, workdir: Path):
    """`agent import` under RLIMIT_AS=limit_memory; returns (returncode, stderr, peak RSS in KiB)
    of that one process (os.wait4: not mixed with other children of the test process)."""
    # Measured by a small launcher that forks the agent and reports its peak RSS: a child of the
    # test process itself would count the test process's pages (hundreds of MB in a full run),
    # since exec keeps the high-water mark of the memory it replaces (fork's copy or vfork's own).
    launcher = ("import os, resource, sys\n"
                "pid = os.fork()\n"
                "if pid == 0:\n"
                "    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]),) * 2)\n"
                "    os.execv(sys.executable, [sys.executable, '-m', 'checkpoint_operator', 'agent', 'import', *sys.argv[3:]])\n"
                "_, status, usage = os.wait4(pid, 0)\n"
                "open(sys.argv[2], 'w').write(str(usage.ru_maxrss))\n"
                "sys.exit(os.waitstatus_to_exitcode(status))\n")
    err_path, rss_path = workdir / "stderr.txt", workdir / "maxrss.txt"
    with open(err_path, "w") as err, open(os.devnull, "w") as out:
        code = subprocess.run([sys.executable, "-c", launcher, str(limit_memory), str(rss_path), *args],
                              stdout=out, stderr=err).returncode
    return code, err_path.read_text(), int(rss_path.read_text())


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def nothing_left(parent: Path, dest: Path) -> bool:
    return not dest.exists() and not [p for p in parent.iterdir() if ".ckpt-import-" in p.name]


# ---- sizes known before bytes move ----

def test_http_file_over_the_limit_is_refused_from_its_content_length(misbehaving_http, tmp_path):
    base, served = misbehaving_http
    dest = tmp_path / "ckpt"
    code, _, err = agent_import(f"{base}/big.bin", str(dest), "--max-size", "10Mi")
    line = one_error(err)
    assert code == 1 and "314572800 bytes" in line and "size limit of 10485760" in line, line
    assert served.sent.get("/big.bin", 0) <= 10 * MiB + 32 * MiB  # at most what the socket buffers took
    assert nothing_left(tmp_path, dest)


def test_chunked_http_body_is_cut_at_the_limit(misbehaving_http, tmp_path):
    base, served = misbehaving_http
    dest = tmp_path / "ckpt"
    code, _, err = agent_import(f"{base}/chunked.bin", str(dest), "--max-size", "10Mi")
    line = one_error(err)
    assert code == 1 and "size limit of 10485760" in line, line
    assert served.sent["/chunked.bin"] <= 10 * MiB + 32 * MiB
    assert nothing_left(tmp_path, dest)


@pytest.mark.parametrize("path,words", [
    ("/short-chunked.bin", "connection closed"),
    ("/short.bin", "connection closed"),
    ("/garbage", "not a valid HTTP response"),
])
def test_broken_http_answers_are_one_line(path, words, misbehaving_http, tmp_path):
    base, _ = misbehaving_http
    dest = tmp_path / "ckpt"
    code, _, err = agent_import(f"{base}{path}", str(dest))
    line = one_error(err)
    assert code == 1 and words in line and path in line, line
    assert nothing_left(tmp_path, dest)


def _count_gets(monkeypatch) -> list[str]:
    """Every GetObject the importer's clients send (the server is real; this only listens)."""
    gets: list[str] = []
    real = importer.make_client

    def counting(*args, **kwargs):
        client = real(*args, **kwargs)
        client.meta.events.register("before-call.s3.GetObject", lambda params, **_: gets.append(params["url_path"]))
        return client

    monkeypatch.setattr(importer, "make_client", counting)
    from checkpoint_operator.agent import download
    monkeypatch.setattr(download, "make_client", counting)
    return gets


def test_s3_object_over_the_limit_is_refused_from_head(s3, tmp_path, monkeypatch):
    s3.client().put_object(Bucket=s3.bucket, Key=s3.key("one/model.bin"), Body=os.urandom(2 * MiB))
    gets = _count_gets(monkeypatch)
    dest = tmp_path / "ckpt"
    with pytest.raises(AgentError, match=r"2097152 bytes, past the size limit of 1048576"):
        import_checkpoint(s3.uri("one/model.bin"), str(dest), max_size=MiB)
    assert gets == [] and nothing_left(tmp_path, dest)


def test_s3_tree_over_the_limits_is_refused_before_any_get(s3, tmp_path, monkeypatch):
    client = s3.client()
    for i in range(5):
        client.put_object(Bucket=s3.bucket, Key=s3.key(f"tree/f{i}.bin"), Body=os.urandom(300_000))
    gets = _count_gets(monkeypatch)
    dest = tmp_path / "ckpt"
    with pytest.raises(AgentError, match=r"1500000 bytes in 5 files, past the size limit of 1000000"):
        import_checkpoint(s3.uri("tree/"), str(dest), max_size=1_000_000)
    with pytest.raises(AgentError, match=r"more than the limit of 4 files"):
        import_checkpoint(s3.uri("tree/"), str(dest), max_members=4)
    assert gets == [] and nothing_left(tmp_path, dest)
    import_checkpoint(s3.uri("tree/"), str(dest), max_size=1_500_000, max_members=5)
    assert len(list(dest.iterdir())) == 5


def test_s3_tree_with_manifest_over_the_limit_is_refused_before_any_get(s3, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(700_000))
    (src / "b.bin").write_bytes(os.urandom(700_000))
    upload_dir(str(src), s3.uri("committed/"))
    gets = _count_gets(monkeypatch)
    dest = tmp_path / "ckpt"
    with pytest.raises(AgentError, match=r"1400000 bytes, past the size limit of 1000000"):
        import_checkpoint(s3.uri("committed/"), str(dest), max_size=1_000_000)
    assert [g for g in gets if not g.endswith(".checkpoint-manifest.json")] == []
    assert nothing_left(tmp_path, dest)


@pytest.mark.parametrize("keys,words", [
    (["a.bin", "a.bin/x"], "'a.bin' is both a file and a directory"),
    (["ok.bin", "bad\nname.bin"], "control character U+000A"),  # SeaweedFS turns a backslash into a '/'

])
def test_s3_tree_with_conflicting_or_invalid_keys_is_refused(keys, words, s3, tmp_path):
    for key in keys:
        s3.client().put_object(Bucket=s3.bucket, Key=s3.key("odd/" + key), Body=b"x")
    dest = tmp_path / "ckpt"
    code, _, err = agent_import(s3.uri("odd/"), str(dest))
    line = one_error(err)
    assert code == 1 and words in line, line
    assert nothing_left(tmp_path, dest)


# ---- archives whose headers lie: memory stays bounded ----

def _gzip_of_zeros(header: bytes, zeros: int, out: Path) -> Path:
    """header + `zeros` zero bytes, gzip-compressed, written in a few MB without ever holding
    the zeros: after a full flush, deflate emits the same bytes for the same input."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(header) + comp.flush(zlib.Z_FULL_FLUSH)
    with open(out, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x00\xff")  # gzip header, no name
        f.write(block)
        first = comp.compress(CHUNK) + comp.flush(zlib.Z_FULL_FLUSH)
        repeat = comp.compress(CHUNK) + comp.flush(zlib.Z_FULL_FLUSH)
        assert comp.compress(CHUNK) + comp.flush(zlib.Z_FULL_FLUSH) == repeat
        f.write(first)
        for _ in range(zeros // MiB - 1):
            f.write(repeat)
        f.write(comp.flush())  # the trailer's CRC is never reached: the header is refused first
    return out


def _tar_header(name: bytes, size: int, kind: bytes) -> bytes:
    header = bytearray(512)
    header[0:len(name)] = name
    header[100:108] = b"0000644\0"
    header[108:116] = header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"
    header[156:157] = kind
    header[257:265] = b"ustar  \0"  # GNU magic
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


@pytest.mark.parametrize("kind,label", [(b"L", "GNU long name"), (b"x", "PAX")])
def test_tar_header_bomb_is_refused_in_bounded_memory(kind, label, tmp_path):
    """A ~4 MB .tar.gz whose first header claims a 4 GiB long name (or PAX header), backed by
    4 GiB of zeros: tarfile would read the whole claimed size into memory."""
    www = tmp_path / "www"
    www.mkdir()
    bomb = _gzip_of_zeros(_tar_header(b"././@LongLink", 4 * 1024 ** 3, kind), 4 * 1024 ** 3, www / "ln4.tar.gz")
    assert bomb.stat().st_size < 20 * MiB
    import http.server

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "out"
        out.mkdir()
        dest = out / "ckpt"
        url = f"http://127.0.0.1:{server.server_address[1]}/ln4.tar.gz"
        code, err, peak_kib = agent_import_measured(url, str(dest), limit_memory=2 * 1024 ** 3, workdir=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    line = one_error(err)
    assert code == 1 and "ln4.tar.gz" in line and "header" in line and "refused" in line, line
    assert nothing_left(out, dest)
    assert peak_kib < 300 * 1024, peak_kib  # KiB: far from the 4 GiB claimed


def test_zip_whose_directory_lists_more_members_than_allowed_is_refused_before_parsing(tmp_path):
    import zipfile
    from checkpoint_operator.agent.archive import UnsafeArchive, extract_archive
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(50):
            zf.writestr(f"f{i}", b"")
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(UnsafeArchive, match=r"more than 10 members"):
        extract_archive(str(path), str(staging), max_members=10)
    assert list(staging.iterdir()) == []


# ---- interrupted imports ----

def test_sigterm_cleans_up_and_a_rerun_after_sigkill_cleans_stale_staging(misbehaving_http, tmp_path):
    base, _ = misbehaving_http
    dest = tmp_path / "mount"
    dest.mkdir()  # an empty volume: staging happens inside it
    proc = subprocess.Popen([sys.executable, "-m", "checkpoint_operator", "agent", "import", f"{base}/slow.bin",
                             str(dest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(dest.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(dest.iterdir()), "the import never started staging"
    time.sleep(1.5)  # some bytes arrived
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert one_error(err) and list(dest.iterdir()) == []

    # SIGKILL leaves the staging directory behind; the rerun removes it and imports
    proc = subprocess.Popen([sys.executable, "-m", "checkpoint_operator", "agent", "import", f"{base}/slow.bin",
                             str(dest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not list(dest.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.kill()
    proc.communicate(timeout=60)
    stale = list(dest.iterdir())
    assert len(stale) == 1 and stale[0].name.startswith(".ckpt-import-"), stale
    code, out, err = agent_import(f"{base}/small.bin", str(dest))
    assert code == 0, err
    assert sorted(p.name for p in dest.iterdir()) == ["small.bin"]


def test_a_live_import_staging_is_not_taken_for_stale(misbehaving_http, tmp_path):
    base, _ = misbehaving_http
    dest = tmp_path / "mount"
    dest.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "checkpoint_operator", "agent", "import", f"{base}/slow.bin",
                             str(dest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not list(dest.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        code, _, err = agent_import(f"{base}/small.bin", str(dest))
        assert code == 1 and "not empty" in one_error(err)
        assert len(list(dest.iterdir())) == 1  # the live import's staging is still there
    finally:
        proc.kill()
        proc.communicate(timeout=60)
