"""The agent's side of push and pull (agent/transfer.py, agent/tarstream.py) on real files and
real pipes: the bounded tar reader, unpack (push), the receiving end of a pull, receive, hold."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest

from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.manifest import MANIFEST_NAME, Manifest
from checkpoint_operator.agent.scan import scan_directory
from checkpoint_operator.agent.tarstream import MAX_HEADER_BYTES, TarStreamError, TarWriter, iter_files
from checkpoint_operator.agent.transfer import (StreamReceiver, commit_marker, hold, pack, push_under_way,
                                                received_result, take_push_lock, wait_for_commit)


def checkpoint(root: Path, files: dict[str, bytes]) -> Manifest:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return scan_directory(root, single=True).checkpoints[0]


FILES = {"model.safetensors": os.urandom(300_000), "config.json": b'{"a": 1}',
         "deep/" + "n" * 150 + "/é-name.txt": b"long and unicode", "empty.bin": b""}


def stream_of(manifest: Manifest | None, root: Path, only: list[str] | None = None, *,
              manifest_bytes: bytes | None = None) -> io.BytesIO:
    buf = io.BytesIO()
    writer = TarWriter(buf)
    if manifest is not None or manifest_bytes is not None:
        writer.add_bytes(MANIFEST_NAME, manifest_bytes or manifest.to_json().encode())
    entries = manifest.files if manifest is not None else []
    for entry in entries:
        if only is None or entry.path in only:
            writer.add_file(entry.path, str(root / entry.path), entry.size)
    writer.close()
    buf.seek(0)
    return buf


# --- the tar stream ------------------------------------------------------------------------------

def test_pax_stream_round_trips_long_unicode_names_and_empty_files(tmp_path):
    manifest = checkpoint(tmp_path / "src", FILES)
    members = [(m.path, m.read(10 ** 7)) for m in iter_files(stream_of(manifest, tmp_path / "src"), "test")]
    assert members[0][0] == MANIFEST_NAME
    assert {path: data for path, data in members[1:]} == FILES


def test_the_reader_refuses_links_devices_big_headers_and_garbage():
    def tar_with(member: tarfile.TarInfo, data: bytes = b"") -> io.BytesIO:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(member, io.BytesIO(data) if data else None)
        buf.seek(0)
        return buf
    link = tarfile.TarInfo("evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(TarStreamError, match="member 'evil' is a symlink; only regular files"):
        list(iter_files(tar_with(link), "s"))
    fifo = tarfile.TarInfo("f")
    fifo.type = tarfile.FIFOTYPE
    with pytest.raises(TarStreamError, match="is a fifo"):
        list(iter_files(tar_with(fifo), "s"))
    huge = io.BytesIO()
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, MAX_HEADER_BYTES + 1
    huge.write(header.tobuf(format=tarfile.USTAR_FORMAT))
    huge.seek(0)
    with pytest.raises(TarStreamError, match="a pax header claims"):
        list(iter_files(huge, "s"))
    with pytest.raises(TarStreamError, match="not a tar stream"):
        list(iter_files(io.BytesIO(b"x" * 2048), "s"))
    info = tarfile.TarInfo("big")
    info.size = 10_000
    cut = io.BytesIO(info.tobuf(format=tarfile.PAX_FORMAT) + b"x" * 100)  # a stream cut inside a file
    with pytest.raises(TarStreamError, match="the stream ended inside a file"):
        list(m.read(20_000) for m in iter_files(cut, "s"))


# --- push: unpack -------------------------------------------------------------------------------

def test_unpack_writes_verified_files_removes_leftovers_and_commits(tmp_path):
    manifest = checkpoint(tmp_path / "src", FILES)
    dest = tmp_path / "pvc" / "data"
    (dest / "old").mkdir(parents=True)
    (dest / "old" / "stale.bin").write_bytes(b"from an earlier push")
    done = StreamReceiver(str(dest)).run(stream_of(manifest, tmp_path / "src"))
    assert done.received_files == 4 and done.removed_files == 1
    assert scan_directory(dest, single=True).checkpoints[0].digest == manifest.digest
    assert json.loads((dest / MANIFEST_NAME).read_text())["digest"] == manifest.digest
    assert json.loads(Path(commit_marker(str(dest))).read_text())["digest"] == manifest.digest


def test_unpack_keeps_what_an_interrupted_push_left_and_checks_it(tmp_path):
    manifest = checkpoint(tmp_path / "src", FILES)
    dest = tmp_path / "pvc" / "data"
    with pytest.raises(AgentError, match="was neither sent nor is it in"):
        StreamReceiver(str(dest)).run(stream_of(manifest, tmp_path / "src", only=["model.safetensors"]))
    assert (dest / "model.safetensors").read_bytes() == FILES["model.safetensors"]  # verified, kept
    assert not os.path.exists(commit_marker(str(dest)))
    rest = [e.path for e in manifest.files if e.path != "model.safetensors"]
    done = StreamReceiver(str(dest)).run(stream_of(manifest, tmp_path / "src", only=rest))
    assert done.kept_files == 1 and done.received_files == 3
    (dest / "config.json").write_bytes(b'{"a": 2}')  # a kept file that changed since: refused
    with pytest.raises(AgentError, match="'config.json' in .* differs from the manifest"):
        StreamReceiver(str(dest)).run(stream_of(manifest, tmp_path / "src", only=[]))


def test_unpack_refusals_leave_no_file_under_its_name(tmp_path):
    manifest = checkpoint(tmp_path / "src", {"a.bin": b"A" * 1000, "b.bin": b"B"})
    dest = tmp_path / "pvc" / "data"
    with pytest.raises(AgentError, match="must start with .checkpoint-manifest.json"):
        StreamReceiver(str(dest)).run(stream_of(None, tmp_path / "src"))
    (tmp_path / "src" / "a.bin").write_bytes(b"Z" * 1000)  # changed after the manifest was made
    with pytest.raises(AgentError, match="'a.bin': sha256 .* the manifest says"):
        StreamReceiver(str(dest)).run(stream_of(manifest, tmp_path / "src"))
    assert sorted(p.name for p in dest.iterdir()) == []  # no temporary file left either
    other = checkpoint(tmp_path / "other", {"c.bin": b"C"})
    mixed = io.BytesIO()
    writer = TarWriter(mixed)
    writer.add_bytes(MANIFEST_NAME, manifest.to_json().encode())
    writer.add_file("c.bin", str(tmp_path / "other" / "c.bin"), 1)
    writer.close()
    mixed.seek(0)
    with pytest.raises(AgentError, match="file 'c.bin' is not in the manifest"):
        StreamReceiver(str(dest)).run(mixed)
    assert other.fileCount == 1
    with pytest.raises(AgentError, match="past the size limit of 10"):
        StreamReceiver(str(dest), max_size=10).run(stream_of(manifest, tmp_path / "src"))


def test_unpack_never_writes_through_a_symlink(tmp_path):
    manifest = checkpoint(tmp_path / "src", {"sub/x.bin": b"x"})
    dest = tmp_path / "pvc" / "data"
    dest.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (dest / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(AgentError, match="is a symlink"):
        StreamReceiver(str(dest)).run(stream_of(manifest, tmp_path / "src"))
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_one_push_at_a_time_and_the_lock_is_the_process_lifetime(tmp_path):
    dest = tmp_path / "data"
    dest.mkdir()
    import subprocess
    import sys
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom checkpoint_operator.agent.transfer "
                               "import take_push_lock\ntake_push_lock(sys.argv[1]); print('held', flush=True); "
                               "time.sleep(30)", str(dest)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert push_under_way(str(dest))
        with pytest.raises(AgentError, match="another push into it is under way"):
            take_push_lock(str(dest))
    finally:
        holder.kill()
        holder.wait()
    assert not push_under_way(str(dest))  # released by the process's end


# --- receive ------------------------------------------------------------------------------------

def test_receive_reports_the_scan_and_what_differs_from_the_push(tmp_path):
    manifest = checkpoint(tmp_path / "src", FILES)
    dest = tmp_path / "pvc" / "data"
    StreamReceiver(str(dest), name="checkpoint-900").run(stream_of(manifest, tmp_path / "src"))
    commit = wait_for_commit(str(dest), 1)
    assert commit["digest"] == manifest.digest and commit["name"] == "checkpoint-900"
    good = received_result(str(dest), manifest.digest, commit, None)
    assert good.verified and good.received and good.problems == []
    assert good.checkpoint.digest == manifest.digest
    assert good.checkpoint.step == 900  # read from the pushed directory's name
    (dest / "config.json").write_bytes(b'{"a": 3}')  # someone with exec changed it after the commit
    os.mkfifo(dest / "pipe")
    bad = received_result(str(dest), manifest.digest, commit, 100)
    problems = [(p.path, p.problem.split(" ")[0]) for p in bad.problems]
    assert not bad.verified and bad.problemCount == 4
    assert problems == [("pipe", "skipped:"), ("config.json", "sha256"), (".", "the"), (".", "300024")]
    assert "not the declared" in bad.problems[2].problem
    assert "past the size limit of 100" in bad.problems[3].problem


def test_wait_for_commit_gives_up_when_idle_but_not_while_a_push_runs(tmp_path):
    dest = tmp_path / "data"
    dest.mkdir()
    started = time.monotonic()
    assert wait_for_commit(str(dest), 0.3) is None
    assert time.monotonic() - started < 5


# --- pull ---------------------------------------------------------------------------------------

def test_pack_then_a_pull_without_a_stored_manifest_checks_the_digest(tmp_path):
    manifest = checkpoint(tmp_path / "vol", FILES)
    buf = io.BytesIO()
    pack(str(tmp_path / "vol"), buf)
    buf.seek(0)
    done = StreamReceiver(str(tmp_path / "mine"), pulled=True, digest=manifest.digest).run(buf)
    assert done.manifest.digest == manifest.digest and done.received_files == 4
    assert (tmp_path / "mine" / "config.json").read_bytes() == FILES["config.json"]
    buf.seek(0)
    with pytest.raises(AgentError, match="not the recorded sha256:0+; nothing kept"):
        StreamReceiver(str(tmp_path / "other"), pulled=True, digest="sha256:" + "0" * 64).run(buf)
    assert [p.name for p in (tmp_path / "other").iterdir()] == []


def test_a_pull_with_a_stored_manifest_pins_its_digest_first_and_keeps_other_files(tmp_path):
    manifest = checkpoint(tmp_path / "vol", FILES)
    (tmp_path / "vol" / MANIFEST_NAME).write_text(manifest.to_json())
    buf = io.BytesIO()
    pack(str(tmp_path / "vol"), buf, manifest.digest)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    buf.seek(0)
    with pytest.raises(AgentError, match="not the recorded sha256:1+; nothing written"):
        StreamReceiver(str(tmp_path / "mine"), pulled=True, digest="sha256:" + "1" * 64).run(buf)
    buf.seek(0)
    StreamReceiver(str(tmp_path / "mine"), pulled=True, digest=manifest.digest).run(buf)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "mine" / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_hold_ends_once_the_pulls_are_over(tmp_path):
    """A pull is another process (an exec): hold waits while it runs, and until it has ended."""
    import subprocess
    import sys
    work = str(tmp_path / "work")
    os.makedirs(work)
    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(hold(work, 60)))
    thread.start()
    pull = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom checkpoint_operator.agent.transfer import "
                             "pull_session\nwith pull_session(sys.argv[1]):\n    print('pulling', flush=True); "
                             "time.sleep(1)\ntime.sleep(1)", work], stdout=subprocess.PIPE, text=True)
    assert pull.stdout.readline().strip() == "pulling"
    time.sleep(0.6)
    assert thread.is_alive()  # the pull is under way
    pull.wait(20)
    thread.join(20)
    assert results == ["served"]
    assert hold(str(tmp_path / "never"), 0.2) == "idle"


def test_a_pull_never_sends_a_stored_manifest_of_another_digest(tmp_path):
    """hostile1 D9: DIR holds a manifest that came with the data (another checkpoint's): pack sends
    DIR's files as they are, and the puller checks their digest (failed before: the stale manifest
    went first and the pull was refused)."""
    manifest = checkpoint(tmp_path / "vol", FILES)
    stale = checkpoint(tmp_path / "other", {**FILES, "config.json": b'{"a": 2}'})  # before an edit
    (tmp_path / "vol" / MANIFEST_NAME).write_text(stale.to_json())
    for given in (manifest.digest, None):
        buf = io.BytesIO()
        pack(str(tmp_path / "vol"), buf, given)
        buf.seek(0)
        target = tmp_path / f"back-{given is None}"
        StreamReceiver(str(target), pulled=True, digest=manifest.digest).run(buf)
        assert (target / "config.json").read_bytes() == b'{"a": 1}'
    buf = io.BytesIO()
    pack(str(tmp_path / "vol"), buf, stale.digest)  # recorded as the stale one's: trusted, and each file checked
    buf.seek(0)
    with pytest.raises(AgentError, match="config.json"):
        StreamReceiver(str(tmp_path / "lied"), pulled=True, digest=stale.digest).run(buf)
