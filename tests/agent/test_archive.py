"""Hostile archives are refused with the member named, and leave nothing behind."""

from __future__ import annotations

import gzip
import http.server
import io
import os
import stat
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from checkpoint_operator.agent.archive import UnsafeArchive, extract_archive
from checkpoint_operator.agent.importer import import_checkpoint
from checkpoint_operator.objectstore.s3 import AgentError


# ---- archive builders ----

pytestmark = pytest.mark.usefixtures("credential_watch")

def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


ATTACKS = {
    "absolute-path": ([_file("/tmp/ckpt-evil-absolute")], "/tmp/ckpt-evil-absolute"),
    "dotdot": ([_file("model/../../evil.txt")], "model/../../evil.txt"),
    "symlink-out": ([_special("weights", tarfile.SYMTYPE, "../../../etc")], "weights"),
    "symlink-absolute": ([_special("weights", tarfile.SYMTYPE, "/etc/passwd")], "weights"),
    "hardlink-out": ([_special("weights", tarfile.LNKTYPE, "../outside.txt")], "weights"),
    "hardlink-absolute": ([_special("weights", tarfile.LNKTYPE, "/etc/passwd")], "weights"),
    "char-device": ([_file("ok.json", b"{}"), _special("dev/null", tarfile.CHRTYPE)], "dev/null"),
    "block-device": ([_special("sda", tarfile.BLKTYPE)], "sda"),
    "fifo": ([_special("pipe", tarfile.FIFOTYPE)], "pipe"),
    # each link looks inside on its own; together `b/..` escapes (a -> . , b -> a/..)
    "symlink-chain": ([_special("a", tarfile.SYMTYPE, "."), _special("b", tarfile.SYMTYPE, "a/.."),
                       _file("b/evil.txt")], "b"),
    "symlink-chain-reversed": ([_special("b", tarfile.SYMTYPE, "a/.."), _special("a", tarfile.SYMTYPE, ".")], "b"),
    "write-through-symlink": ([_special("d", tarfile.SYMTYPE, "sub"), _file("sub/x"),
                               _special("d", tarfile.SYMTYPE, "../.."), _file("d/evil.txt")], "d"),
}


@pytest.fixture
def http_dir(tmp_path):
    """A directory served over http on 127.0.0.1; yields (dir, base URL)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".ckpt-import-" in p.name]


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_tar_attack_is_refused_and_leaves_nothing(attack, tmp_path, http_dir):
    www, base = http_dir
    members, bad_member = ATTACKS[attack]
    _tar(www / f"{attack}.tar.gz", members)
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "ckpt"
    with pytest.raises(AgentError) as err:
        import_checkpoint(f"{base}/{attack}.tar.gz", str(dest))
    message = str(err.value)
    assert repr(bad_member) in message, message
    assert "refused" in message
    assert not dest.exists()
    assert _leftovers(out) == []
    assert not Path("/tmp/ckpt-evil-absolute").exists()
    assert not (tmp_path / "evil.txt").exists() and not (out / "evil.txt").exists()


def test_size_bomb_is_refused_before_expanding(tmp_path, http_dir):
    """A header declaring 3 TiB is refused from the header alone (nothing is decompressed)."""
    www, base = http_dir
    info = tarfile.TarInfo("model.safetensors")
    info.size = 3 * 1024 ** 4
    (www / "bomb.tar.gz").write_bytes(gzip.compress(info.tobuf(tarfile.GNU_FORMAT)))
    dest = tmp_path / "ckpt"
    with pytest.raises(UnsafeArchive, match=r"size limit.*'model.safetensors'"):
        import_checkpoint(f"{base}/bomb.tar.gz", str(dest))
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_expansion_past_max_size_is_refused(tmp_path, http_dir):
    www, base = http_dir
    _tar(www / "big.tar.bz2", [_file("a.bin", b"\0" * 600_000), _file("b.bin", b"\0" * 600_000)], mode="w:bz2")
    dest = tmp_path / "ckpt"
    with pytest.raises(UnsafeArchive, match=r"size limit of 1000000 bytes \(at member 'b.bin'\)"):
        import_checkpoint(f"{base}/big.tar.bz2", str(dest), max_size=1_000_000)
    assert not dest.exists() and _leftovers(tmp_path) == []
    # the same archive within the limit imports
    import_checkpoint(f"{base}/big.tar.bz2", str(dest), max_size=2_000_000)
    assert (dest / "b.bin").stat().st_size == 600_000


def test_absurd_member_count_is_refused(tmp_path, http_dir):
    www, base = http_dir
    _tar(www / "many.tar", [_file(f"f{i}") for i in range(11)], mode="w")
    dest = tmp_path / "ckpt"
    with pytest.raises(UnsafeArchive, match=r"more than 10 members \(at 'f10'\)"):
        import_checkpoint(f"{base}/many.tar", str(dest), max_members=10)
    assert not dest.exists()


def _zip(path: Path, entries: list[tuple[str, bytes, int | None]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode is not None:
                info.create_system = 3
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize("name,entries,bad", [
    ("dotdot", [("ok.json", b"{}", None), ("../../evil.txt", b"x", None)], "../../evil.txt"),
    ("absolute", [("/tmp/ckpt-evil-absolute", b"x", None)], "/tmp/ckpt-evil-absolute"),
    ("backslash", [("..\\..\\evil.txt", b"x", None)], "..\\\\..\\\\evil.txt"),
    ("symlink-out", [("w", b"../../../etc", stat.S_IFLNK | 0o777)], "w"),
    ("fifo", [("p", b"", stat.S_IFIFO | 0o644)], "p"),
])
def test_zip_attack_is_refused(name, entries, bad, tmp_path, http_dir):
    www, base = http_dir
    _zip(www / f"{name}.zip", entries)
    dest = tmp_path / "ckpt"
    with pytest.raises(AgentError) as err:
        import_checkpoint(f"{base}/{name}.zip", str(dest))
    assert bad in str(err.value) or repr(bad) in str(err.value), str(err.value)
    assert not dest.exists() and _leftovers(tmp_path) == []
    assert not (tmp_path.parent / "evil.txt").exists()


def test_zip_size_bomb_is_refused(tmp_path):
    path = _zip(tmp_path / "bomb.zip", [("zeros.bin", b"\0" * 5_000_000, None)])
    assert path.stat().st_size < 100_000
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(UnsafeArchive, match=r"size limit.*'zeros.bin'"):
        extract_archive(str(path), str(staging), max_size=1_000_000)


def test_safe_links_inside_are_kept(tmp_path, http_dir):
    www, base = http_dir
    _tar(www / "links.tgz", [
        _file("shards/model-00001.safetensors", b"weights"),
        _special("latest.safetensors", tarfile.SYMTYPE, "shards/model-00001.safetensors"),
        _special("copy.safetensors", tarfile.LNKTYPE, "shards/model-00001.safetensors"),
        _special("shards/self", tarfile.SYMTYPE, "../shards"),
    ])
    dest = tmp_path / "ckpt"
    result = import_checkpoint(f"{base}/links.tgz", str(dest))
    assert result["extracted"] is True
    assert (dest / "latest.safetensors").read_bytes() == b"weights"
    assert (dest / "copy.safetensors").read_bytes() == b"weights"
    assert os.path.islink(dest / "latest.safetensors")


def test_cli_refusal_is_one_line_with_nonzero_exit(tmp_path, http_dir):
    www, base = http_dir
    _tar(www / "evil.tar", [_file("../evil.txt")], mode="w")
    dest = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "import", f"{base}/evil.tar",
                           str(dest)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'../evil.txt'" in errors[0] and "evil.tar" in errors[0], proc.stderr
    assert not dest.exists()
