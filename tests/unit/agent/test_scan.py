"""`agent scan` on real files: layouts, skip rules, symlinks, special files, digests, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from checkpoint_operator.protocol.errors import REFUSED_EXIT_CODE
from checkpoint_operator.agent.hashing import hash_files, sha256_file
from checkpoint_operator.protocol.manifest import MANIFEST_NAME, Manifest
from checkpoint_operator.agent.scan import LEAVES_CHECKPOINT, ScanResult, format_table, scan_directory
from checkpoint_operator.agent.tree import LINK_TO_DIRECTORY, SYMLINK_LOOP, TooManyEntries
from agentrun import agent_process


def write(path: Path, data: bytes | str = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def by_path(result: ScanResult) -> dict[str, Manifest]:
    return {m.path: m for m in result.checkpoints}


def skipped(result: ScanResult) -> dict[str, str]:
    return {s.path: s.reason for s in result.skipped}


def file_paths(m: Manifest) -> list[str]:
    return [f.path for f in m.files]


@pytest.fixture
def output(tmp_path: Path) -> Path:
    """An output directory as a Transformers run leaves it: step dirs plus the final model at the root."""
    root = tmp_path / "out"
    write(root / "checkpoint-500" / "config.json", "{}")
    write(root / "checkpoint-500" / "model.safetensors", b"w" * 1000)
    write(root / "checkpoint-500" / "optimizer.pt", b"o" * 10)
    write(root / "checkpoint-1000" / "config.json", "{}")
    write(root / "checkpoint-1000" / "model.safetensors", b"v" * 2000)
    write(root / "config.json", "{}")
    write(root / "model.safetensors", b"final")
    return root


# --- layouts -------------------------------------------------------------------------------

def test_auto_layout_makes_one_checkpoint_per_directory_plus_the_root_files(output):
    result = scan_directory(output, "auto")
    ckpts = by_path(result)
    assert list(ckpts) == [".", "checkpoint-1000", "checkpoint-500"]  # sorted by path bytes
    assert file_paths(ckpts["."]) == ["config.json", "model.safetensors"]
    assert file_paths(ckpts["checkpoint-500"]) == ["config.json", "model.safetensors", "optimizer.pt"]
    m = ckpts["checkpoint-500"]
    assert (m.sizeBytes, m.fileCount, m.format, m.step, m.resumable) == (1012, 3, "huggingface", 500, True)
    assert ckpts["checkpoint-1000"].resumable is False
    assert ckpts["."].step is None
    assert result.skipped == []


def test_auto_layout_without_root_files_has_no_root_checkpoint(tmp_path):
    write(tmp_path / "step-1" / "a.bin")
    assert [m.path for m in scan_directory(tmp_path).checkpoints] == ["step-1"]


def test_directories_layout_skips_root_files_with_a_reason(output):
    result = scan_directory(output, "directories")
    assert [m.path for m in result.checkpoints] == ["checkpoint-1000", "checkpoint-500"]
    reasons = skipped(result)
    assert set(reasons) == {"config.json", "model.safetensors"}
    assert "layout 'directories'" in reasons["model.safetensors"]


def test_files_layout_makes_one_checkpoint_per_root_file(tmp_path):
    write(tmp_path / "checkpoint_20000.mdl", b"c" * 7)
    write(tmp_path / "model_step_30.pt", b"t")
    write(tmp_path / "sub" / "x.pt")
    result = scan_directory(tmp_path, "files")
    ckpts = by_path(result)
    assert list(ckpts) == ["checkpoint_20000.mdl", "model_step_30.pt"]
    mdl = ckpts["checkpoint_20000.mdl"]
    assert file_paths(mdl) == ["checkpoint_20000.mdl"]
    assert (mdl.sizeBytes, mdl.fileCount, mdl.format, mdl.step) == (7, 1, "cerebras", 20000)
    assert mdl.files[0].sha256 == hashlib.sha256(b"c" * 7).hexdigest()
    assert (ckpts["model_step_30.pt"].format, ckpts["model_step_30.pt"].step) == ("torch", 30)
    assert "layout 'files'" in skipped(result)["sub"]


def test_single_takes_the_whole_directory_as_one_checkpoint(tmp_path):
    ckpt = tmp_path / "global_step700"
    write(ckpt / "latest", "global_step700")
    write(ckpt / "sub" / "deep" / "mp_rank_00_model_states.pt")
    write(ckpt / ".hidden-inside", "kept")
    write(ckpt / "x.tmp", "kept too: name rules are for top-level candidates")
    write(ckpt / MANIFEST_NAME, "{}")
    result = scan_directory(ckpt, single=True)
    assert len(result.checkpoints) == 1
    m = result.checkpoints[0]
    assert m.path == "."
    assert file_paths(m) == [".hidden-inside", "latest", "sub/deep/mp_rank_00_model_states.pt", "x.tmp"]
    assert (m.format, m.step) == ("deepspeed", 700)


def test_single_still_skips_escaping_symlinks_and_fifos(tmp_path):
    write(tmp_path / "secret", "s")
    ckpt = tmp_path / "adopt"
    write(ckpt / "a.bin")
    os.symlink("../secret", ckpt / "leak")
    os.mkfifo(ckpt / "pipe")
    result = scan_directory(ckpt, single=True)
    assert file_paths(result.checkpoints[0]) == ["a.bin"]
    assert skipped(result) == {"leak": LEAVES_CHECKPOINT, "pipe": "fifo"}


# --- skip rules ----------------------------------------------------------------------------

def test_hidden_unfinished_and_empty_candidates_are_skipped_with_reasons(tmp_path):
    write(tmp_path / ".cache" / "x")
    write(tmp_path / ".DS_Store")
    write(tmp_path / "step-5.orbax-checkpoint-tmp-1712345" / "_METADATA")
    write(tmp_path / "checkpoint-7-incomplete" / "model.pt")
    write(tmp_path / "partial_model.bin")
    (tmp_path / "empty").mkdir()
    (tmp_path / "only-dirs" / "a" / "b").mkdir(parents=True)
    write(tmp_path / "only-manifest" / MANIFEST_NAME, "{}")
    write(tmp_path / "attempt-3" / "model.pt")
    write(tmp_path / "template" / "model.pt")
    result = scan_directory(tmp_path)
    assert [m.path for m in result.checkpoints] == ["attempt-3", "template"]
    reasons = skipped(result)
    assert reasons[".cache"] == reasons[".DS_Store"] == "hidden name"
    assert "'tmp'" in reasons["step-5.orbax-checkpoint-tmp-1712345"]
    assert "'incomplete'" in reasons["checkpoint-7-incomplete"]
    assert "'partial'" in reasons["partial_model.bin"]
    for name in ("empty", "only-dirs", "only-manifest"):
        assert reasons[name].startswith("empty directory"), name
    assert len(reasons) == 8


def test_manifest_is_excluded_only_at_the_checkpoint_root(tmp_path):
    write(tmp_path / "step-1" / MANIFEST_NAME, "{}")
    write(tmp_path / "step-1" / "nested" / MANIFEST_NAME, "{}")
    write(tmp_path / "step-1" / "a")
    m = scan_directory(tmp_path).checkpoints[0]
    assert file_paths(m) == ["a", f"nested/{MANIFEST_NAME}"]


# --- symlinks and special files ------------------------------------------------------------

def test_symlink_to_a_file_inside_is_followed_under_its_own_path(tmp_path):
    ckpt = tmp_path / "step-1"
    write(ckpt / "shards" / "model.bin", b"weights")
    os.symlink("shards/model.bin", ckpt / "model.bin")
    os.symlink("../model.bin", ckpt / "shards" / "again.bin")  # a link to a link, both inside
    os.symlink("shards", ckpt / "linked-dir")  # its files are already there under shards/
    result = scan_directory(tmp_path)
    m = result.checkpoints[0]
    assert file_paths(m) == ["model.bin", "shards/again.bin", "shards/model.bin"]
    assert len({f.sha256 for f in m.files}) == 1
    assert m.sizeBytes == 3 * len(b"weights")
    assert skipped(result) == {"step-1/linked-dir": LINK_TO_DIRECTORY}


def test_link_that_leaves_the_checkpoint_and_comes_back_is_skipped(tmp_path):
    """Mounted alone (subPath), `step-1/sub/x -> ../../step-1/sub/model.safetensors` dangles:
    every hop must stay inside the checkpoint's root."""
    ckpt = tmp_path / "step-1"
    write(ckpt / "sub" / "model.safetensors", b"w")
    os.symlink("../../step-1/sub/model.safetensors", ckpt / "sub" / "x")
    os.symlink("../step-1/sub/model.safetensors", ckpt / "y")
    os.symlink("sub/../sub/model.safetensors", ckpt / "z")  # stays inside all the way: fine
    os.symlink("sub", ckpt / "d")
    os.symlink("d/../../step-1/sub/model.safetensors", ckpt / "via-link")  # out through a link's '..'
    result = scan_directory(tmp_path)
    assert file_paths(result.checkpoints[0]) == ["sub/model.safetensors", "z"]
    reasons = skipped(result)
    for name in ("sub/x", "y", "via-link"):
        assert reasons[f"step-1/{name}"] == LEAVES_CHECKPOINT, name
    # mounted alone, the one kept resolves
    import tempfile
    with tempfile.TemporaryDirectory() as alone:
        shutil.copytree(ckpt, Path(alone) / "mnt", symlinks=True)
        assert (Path(alone) / "mnt" / "z").read_bytes() == b"w"


@pytest.mark.parametrize("depth", [22, 30])
def test_symlink_dag_scans_in_linear_entries(tmp_path, depth):
    """d0..dN, each with links a, b -> ../d(i+1): 2^N paths if links to directories were
    followed; each directory inode is walked once instead."""
    ckpt = tmp_path / "step-1"
    for i in range(depth + 1):
        write(ckpt / f"d{i}" / "w.bin", str(i))
    for i in range(depth):
        os.symlink(f"../d{i + 1}", ckpt / f"d{i}" / "a")
        os.symlink(f"../d{i + 1}", ckpt / f"d{i}" / "b")
    result = scan_directory(tmp_path, max_entries=10 * depth)
    (m,) = result.checkpoints
    assert m.fileCount == depth + 1
    assert result.skippedCount == 2 * depth
    assert set(skipped(result).values()) == {LINK_TO_DIRECTORY}


def test_entry_limit_is_a_clear_error(tmp_path):
    for i in range(30):
        write(tmp_path / "step-1" / f"f{i}")
    assert scan_directory(tmp_path, max_entries=31).checkpoints[0].fileCount == 30
    with pytest.raises(TooManyEntries, match=r"more than 30 entries .*--max-entries"):
        scan_directory(tmp_path, max_entries=30)
    proc = _cli(str(tmp_path), "--json", "--max-entries", "10")
    assert proc.returncode == REFUSED_EXIT_CODE and proc.stdout == ""  # a refusal: not retried
    assert proc.stderr.startswith("error: ") and "more than 10 entries" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


def test_symlinks_escaping_the_checkpoint_are_skipped(tmp_path):
    write(tmp_path / "step-1" / "a")
    write(tmp_path / "step-2" / "b", "other checkpoint")
    outside = write(tmp_path.parent / f"{tmp_path.name}-outside", "secret")
    os.symlink("../step-2/b", tmp_path / "step-1" / "sibling")
    os.symlink(f"../../{outside.name}", tmp_path / "step-1" / "up")
    os.symlink(str(tmp_path / "step-1" / "a"), tmp_path / "step-1" / "absolute-inside")  # absolute: never
    os.symlink("/etc", tmp_path / "step-1" / "etc")
    write(tmp_path / "step-1" / "d" / "x")
    os.symlink("../../step-2", tmp_path / "step-1" / "d" / "dir-out")
    result = scan_directory(tmp_path)
    assert file_paths(by_path(result)["step-1"]) == ["a", "d/x"]
    assert skipped(result) == {p: LEAVES_CHECKPOINT for p in (
        "step-1/sibling", "step-1/up", "step-1/absolute-inside", "step-1/etc", "step-1/d/dir-out")}


def test_symlink_loops_and_cycles_end(tmp_path):
    ckpt = tmp_path / "step-1"
    write(ckpt / "a" / "file")
    os.symlink("..", ckpt / "a" / "up")  # back to the checkpoint root
    os.symlink(".", ckpt / "self")
    os.symlink("loop2", ckpt / "loop1")  # loop1 -> loop2 -> loop1
    os.symlink("loop1", ckpt / "loop2")
    os.symlink("missing", ckpt / "dangling")
    os.symlink("a/file/x", ckpt / "through-a-file")
    result = scan_directory(tmp_path)
    assert file_paths(result.checkpoints[0]) == ["a/file"]
    reasons = skipped(result)
    assert reasons["step-1/a/up"] == reasons["step-1/self"] == LINK_TO_DIRECTORY
    assert reasons["step-1/loop1"] == reasons["step-1/loop2"] == SYMLINK_LOOP
    assert reasons["step-1/dangling"] == reasons["step-1/through-a-file"] == "broken symlink"


def test_root_symlinks(tmp_path):
    out = tmp_path / "out"
    write(out / "step-1" / "model.bin", b"m")
    write(tmp_path / "elsewhere.bin")
    os.symlink("step-1", out / "latest")  # a second name for a checkpoint: not a second checkpoint
    os.symlink("step-1/model.bin", out / "best.bin")  # a root file whose bytes are in the output
    os.symlink("../elsewhere.bin", out / "outside.bin")
    result = scan_directory(out)
    assert file_paths(by_path(result)["."]) == ["best.bin"]
    reasons = skipped(result)
    assert reasons["latest"].startswith("symlink to a directory")
    assert reasons["outside.bin"] == LEAVES_CHECKPOINT


def test_fifo_and_socket_are_skipped(tmp_path):
    ckpt = tmp_path / "step-1"
    write(ckpt / "a")
    os.mkfifo(ckpt / "pipe")
    os.mkfifo(tmp_path / "root-pipe")
    # AF_UNIX paths are limited to ~107 bytes: bind from inside the directory.
    cwd = os.getcwd()
    os.chdir(ckpt)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind("sock")
        result = scan_directory(tmp_path)  # must not block on opening the fifo
    finally:
        sock.close()
        os.chdir(cwd)
    assert file_paths(result.checkpoints[0]) == ["a"]
    assert skipped(result) == {"step-1/pipe": "fifo", "step-1/sock": "socket", "root-pipe": "fifo"}


def test_device_is_skipped(tmp_path):
    write(tmp_path / "step-1" / "a")
    os.symlink("/dev/null", tmp_path / "step-1" / "null")  # absolute symlink: refused before any stat
    result = scan_directory(tmp_path)
    assert skipped(result) == {"step-1/null": LEAVES_CHECKPOINT}
    if not hasattr(os, "mknod") or os.geteuid() != 0:
        return
    os.mknod(tmp_path / "step-1" / "nulldev", 0o600 | 0o020000, os.makedev(1, 3))  # char device
    assert skipped(scan_directory(tmp_path))["step-1/nulldev"] == "device"


# --- names, digests ------------------------------------------------------------------------

def test_unicode_and_spaces_in_names(tmp_path):
    ckpt = tmp_path / "étape 10"
    write(ckpt / "modèle final.safetensors", b"abc")
    write(ckpt / "日本語" / "重み 1.bin", b"def")
    m = scan_directory(tmp_path).checkpoints[0]
    assert m.path == "étape 10"
    assert file_paths(m) == ["modèle final.safetensors", "日本語/重み 1.bin"]
    assert m.files[1].sha256 == hashlib.sha256(b"def").hexdigest()


def test_names_outside_the_names_rule_are_skipped_with_the_rule(tmp_path):
    ckpt = tmp_path / "step-1"
    write(ckpt / "ok.bin")
    write(ckpt / "shard\\0.bin")
    write(ckpt / "line\nbreak.bin")
    write(ckpt / "sub" / "esc\x1b[2J.bin")
    write(ckpt / "bad\\dir" / "inside.bin")
    write(ckpt / ".ckpt-download-0123")  # download's temporaries are not content
    write(tmp_path / "step\n2" / "a.bin")  # a whole candidate
    os.mkdir(os.fsencode(tmp_path / "step-1") + b"/latin1-\xe9")
    result = scan_directory(tmp_path)
    assert [(m.path, file_paths(m)) for m in result.checkpoints] == [("step-1", ["ok.bin"])]
    reasons = skipped(result)
    assert reasons == {
        "step-1/shard\\\\0.bin": "name has a backslash",
        "step-1/line\\nbreak.bin": "name has a control character U+000A",
        "step-1/sub/esc\\x1b[2J.bin": "name has a control character U+001B",
        "step-1/bad\\\\dir": "name has a backslash",
        "step-1/.ckpt-download-0123": reasons["step-1/.ckpt-download-0123"],
        "step\\n2": "name has a control character U+000A",
        "step-1/latin1-\\xe9": "name is not valid UTF-8",
    }
    assert "reserved" in reasons["step-1/.ckpt-download-0123"]
    table = format_table(result)
    assert not any(c in table for c in "\x1b\r") and "line\nbreak" not in table
    assert re.search(r"step-1/line\\nbreak\.bin +name has a control character U\+000A", table), table


def test_longest_names_are_kept(tmp_path):
    name = "n" * 251 + ".bin"  # 255 bytes: the longest a filesystem allows
    write(tmp_path / "step-1" / name, b"x")
    assert file_paths(scan_directory(tmp_path).checkpoints[0]) == [name]


def test_file_changed_while_being_read_is_skipped(tmp_path, monkeypatch):
    from checkpoint_operator.agent import hashing
    write(tmp_path / "step-1" / "stable.bin", b"s" * 10)
    growing = write(tmp_path / "step-1" / "growing.bin", os.urandom(3 * 1024 * 1024))
    real_readv = os.readv
    calls = []

    def readv_while_a_writer_appends(fd, buffers):
        # Stands in for a training process still writing: appends after the first read of the file.
        n = real_readv(fd, buffers)
        if os.fstat(fd).st_ino == growing.stat().st_ino and not calls:
            calls.append(n)
            with open(growing, "ab") as f:
                f.write(b"more")
        return n

    monkeypatch.setattr(hashing.os, "readv", readv_while_a_writer_appends)
    result = scan_directory(tmp_path, workers=1)
    assert file_paths(result.checkpoints[0]) == ["stable.bin"]
    assert skipped(result) == {"step-1/growing.bin": "changed while being read"}


def test_skipped_list_is_bounded_and_counted(tmp_path):
    write(tmp_path / "step-1" / "a.bin")
    for i in range(1200):
        os.symlink(f"/nowhere/{i}", tmp_path / "step-1" / f"l{i:04d}")
    result = scan_directory(tmp_path)
    assert result.skippedCount == 1200 and len(result.skipped) == 1000
    assert result.skipped[0].path == "step-1/l0000"
    assert "... and 200 more" in format_table(result)


def _coreutils_digest(ckpt: Path) -> str:
    listing = subprocess.run(["find", ".", "-type", "f", "!", "-path", f"./{MANIFEST_NAME}", "-printf", "%P\\n"],
                             cwd=ckpt, check=True, capture_output=True).stdout
    names = sorted(listing.splitlines())  # bytes order, as LC_ALL=C sort
    sums = subprocess.run(["sha256sum", "--", *[n.decode() for n in names]],
                          cwd=ckpt, check=True, capture_output=True, env={**os.environ, "LC_ALL": "C"}).stdout
    return "sha256:" + hashlib.sha256(sums).hexdigest()


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum not installed")
def test_digest_equals_sha256_of_real_sha256sum_output(tmp_path):
    ckpt = tmp_path / "checkpoint-3"
    write(ckpt / "b.bin", os.urandom(3 * 1024 * 1024 + 17))  # several reads of the hashing buffer
    write(ckpt / "a.json", '{"x": 1}')
    write(ckpt / "A-upper.txt", "sorts before lower case in byte order")
    write(ckpt / "sub dir" / "ü.bin", b"\x00" * 5)
    write(ckpt / "sub.dir" / "z", b"")  # byte order ' ' < '.' < '/' decides between these three
    write(ckpt / MANIFEST_NAME, "not content")
    m = scan_directory(tmp_path).checkpoints[0]
    assert m.digest == _coreutils_digest(ckpt)
    real = subprocess.run(["sha256sum", "b.bin"], cwd=ckpt, check=True, capture_output=True, text=True).stdout
    assert next(f for f in m.files if f.path == "b.bin").sha256 == real.split()[0]


def test_digest_changes_with_content_and_name(tmp_path):
    write(tmp_path / "s-1" / "a", "1")
    write(tmp_path / "s-2" / "a", "2")
    write(tmp_path / "s-3" / "b", "1")
    write(tmp_path / "s-4" / "a", "1")
    digests = [m.digest for m in scan_directory(tmp_path).checkpoints]
    assert len(set(digests[:3])) == 3
    assert digests[0] == digests[3]


def test_step_from_trainer_state_when_the_name_has_none(tmp_path):
    write(tmp_path / "best" / "trainer_state.json", json.dumps({"global_step": 1234, "log_history": []}))
    write(tmp_path / "best" / "model.pt")
    write(tmp_path / "step-9" / "trainer_state.json", json.dumps({"global_step": 1}))  # the name wins
    write(tmp_path / "trainer_state.json", json.dumps({"global_step": 77}))
    ckpts = by_path(scan_directory(tmp_path))
    assert (ckpts["best"].step, ckpts["step-9"].step, ckpts["."].step) == (1234, 9, 77)


def test_orbax_manager_layout(tmp_path):
    write(tmp_path / "2000" / "_CHECKPOINT_METADATA", "{}")
    write(tmp_path / "2000" / "state" / "_METADATA", "{}")
    write(tmp_path / "2000" / "state" / "opt_state" / "0")
    write(tmp_path / "3000.orbax-checkpoint-tmp-99" / "_CHECKPOINT_METADATA", "{}")
    result = scan_directory(tmp_path)
    (m,) = result.checkpoints
    assert (m.path, m.format, m.step, m.resumable) == ("2000", "orbax", 2000, True)
    assert list(skipped(result)) == ["3000.orbax-checkpoint-tmp-99"]


def test_hard_links_and_duplicate_paths_are_reported_per_path(tmp_path):
    a = write(tmp_path / "s-1" / "a", b"same")
    os.link(a, tmp_path / "s-1" / "b")
    m = scan_directory(tmp_path, workers=4).checkpoints[0]
    assert [(f.path, f.size) for f in m.files] == [("a", 4), ("b", 4)]


def test_file_that_cannot_be_read_is_skipped_not_fatal(tmp_path, monkeypatch):
    from checkpoint_operator.agent import scan
    write(tmp_path / "s-1" / "ok")
    write(tmp_path / "s-1" / "gone")
    write(tmp_path / "s-2" / "gone-too")

    real_sha256_file = scan.sha256_file

    def vanish_then_hash(path):
        # Root reads every file whatever its mode: make the read fail by removing the files
        # between the walk and the hashing.
        if os.path.basename(path) in ("gone", "gone-too"):
            os.unlink(path)
        return real_sha256_file(path)

    monkeypatch.setattr(scan, "sha256_file", vanish_then_hash)
    result = scan.scan_directory(tmp_path)
    assert [(m.path, file_paths(m)) for m in result.checkpoints] == [("s-1", ["ok"])]
    reasons = skipped(result)
    assert reasons["s-1/gone"].startswith("unreadable")
    assert reasons["s-2/gone-too"].startswith("unreadable")
    assert reasons["s-2"].startswith("empty directory")


def test_scan_refuses_a_missing_or_non_directory_root(tmp_path):
    with pytest.raises(FileNotFoundError):
        scan_directory(tmp_path / "missing")
    with pytest.raises(NotADirectoryError):
        scan_directory(write(tmp_path / "f"))
    with pytest.raises(ValueError, match="layout 'flat'"):
        scan_directory(tmp_path, "flat")


# --- hashing -------------------------------------------------------------------------------

def test_hash_files_keeps_order_and_reports_errors_in_place(tmp_path):
    big = write(tmp_path / "big", os.urandom(20 * 1024 * 1024 + 3))
    small = write(tmp_path / "small", b"hello")
    results = hash_files([small, tmp_path / "missing", big], workers=2, sizes=[5, 0, big.stat().st_size])
    assert results[0] == (5, hashlib.sha256(b"hello").hexdigest())
    assert isinstance(results[1], FileNotFoundError)
    assert results[2] == (big.stat().st_size, hashlib.sha256(big.read_bytes()).hexdigest())
    assert sha256_file(tmp_path / "small") == results[0]


def test_empty_file_hash(tmp_path):
    assert sha256_file(write(tmp_path / "e", b"")) == (0, hashlib.sha256(b"").hexdigest())


# --- output and CLI ------------------------------------------------------------------------

def test_table_lists_checkpoints_and_skips(output):
    write(output / ".trash" / "x")
    table = format_table(scan_directory(output))
    lines = table.splitlines()
    assert lines[0].split() == ["PATH", "FORMAT", "STEP", "FILES", "SIZE", "RESUMABLE", "COMPLETE", "DIGEST"]
    assert lines[3].split()[:6] == ["checkpoint-500", "huggingface", "500", "3", "1012", "B"]
    assert "  .trash  hidden name" in table


def _cli(*args: str) -> subprocess.CompletedProcess:
    return agent_process("scan", *args)


def test_cli_json_matches_scan_directory(output):
    os.symlink("/etc/passwd", output / "checkpoint-500" / "passwd")
    proc = _cli(str(output), "--json", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed == scan_directory(output).model_dump(mode="json")
    assert set(printed) == {"checkpoints", "skipped", "skippedCount"}
    assert printed["skippedCount"] == 1
    assert set(printed["checkpoints"][0]) == {"version", "path", "files", "sizeBytes", "fileCount", "digest",
                                              "format", "step", "resumable", "complete", "completeReason", "metrics"}
    assert printed["skipped"] == [{"path": "checkpoint-500/passwd", "reason": LEAVES_CHECKPOINT}]


def test_cli_layout_and_single_options(output):
    proc = _cli(str(output), "--json", "--layout", "files")
    assert [c["path"] for c in json.loads(proc.stdout)["checkpoints"]] == ["config.json", "model.safetensors"]
    proc = _cli(str(output / "checkpoint-500"), "--json", "--single")
    (ckpt,) = json.loads(proc.stdout)["checkpoints"]
    assert (ckpt["path"], ckpt["step"], ckpt["fileCount"]) == (".", 500, 3)


def test_cli_table_by_default(output):
    proc = _cli(str(output))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("PATH")
    assert "checkpoint-1000" in proc.stdout


def test_cli_missing_directory_fails_naming_it(tmp_path):
    missing = tmp_path / "no-such-output"
    proc = _cli(str(missing), "--json")
    assert proc.returncode != 0
    assert str(missing) in proc.stderr
    assert "no such directory" in proc.stderr
    assert proc.stdout == ""
    proc = _cli(str(write(tmp_path / "a-file")))
    assert proc.returncode != 0 and "not a directory" in proc.stderr


def test_cli_exits_with_the_refusal_code_when_the_output_is_refused_for_what_it_is(tmp_path, monkeypatch):
    """A refusal the same output repeats (too many entries, no directory): REFUSED_EXIT_CODE, which
    the operator does not retry (before: 1, as a store that was down, retried 3 times)."""
    from checkpoint_operator.protocol.errors import REFUSED_EXIT_CODE
    proc = _cli(str(tmp_path / "no-such-output"), "--result")
    assert proc.returncode == REFUSED_EXIT_CODE, proc.stderr
    for i in range(5):
        write(tmp_path / "many" / f"f{i}")
    monkeypatch.setenv("CKPT_SCAN_MAX_ENTRIES", "3")
    proc = _cli(str(tmp_path / "many"), "--result")
    assert proc.returncode == REFUSED_EXIT_CODE and "more than 3 entries" in proc.stderr, proc.stderr


# --- the operator's result (--result) and the manifests beside the data (--manifests-dir) ----------

def test_result_names_each_checkpoint_never_its_files_and_manifests_go_beside_the_data(output):
    from checkpoint_operator.protocol import channel
    from checkpoint_operator.protocol.manifest import parse_manifest
    from checkpoint_operator.protocol.results import ScanReport
    before = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}
    proc = _cli(str(output), "--result", "--manifests-dir", str(output / ".ckpt-manifests"))
    assert proc.returncode == 0, proc.stderr
    report = channel.find_result(proc.stdout, (ScanReport,), limit_bytes=1 << 20)
    assert [c.path for c in report.checkpoints] == [".", "checkpoint-1000", "checkpoint-500"]
    assert all(c.manifestStored for c in report.checkpoints)
    assert report.checkpoints[0].items == ["config.json", "model.safetensors"]
    assert "sha256\"" not in proc.stdout.replace('"sha256:', "")  # no file's hash travels in the result
    full = {m.path: m for m in scan_directory(output).checkpoints}
    for c in report.checkpoints:
        stored = output / ".ckpt-manifests" / (c.digest.replace(":", "-") + ".json")
        manifest = parse_manifest(stored.read_bytes(), str(stored))
        assert manifest.digest == c.digest == full[c.path].digest and manifest.files == full[c.path].files
    # Each checkpoint directory is byte for byte what was written; a second scan skips the manifests.
    assert {p: p.read_bytes() for p in output.rglob("*") if p.is_file() and ".ckpt-manifests" not in p.parts} == before
    again = channel.find_result(_cli(str(output), "--result").stdout, (ScanReport,), limit_bytes=1 << 20)
    assert [c.digest for c in again.checkpoints] == [c.digest for c in report.checkpoints] and again.skippedCount == 0


def test_result_says_the_filesystem_was_synced_after_the_manifests_with_sync(output):
    """agent scan --result --sync (a volume snapshot of the output follows): the typed result
    carries "synced" (what the operator requires before it takes the snapshot); without --sync, None."""
    from checkpoint_operator.protocol import channel
    from checkpoint_operator.protocol.results import ScanReport
    synced = channel.find_result(_cli(str(output), "--result", "--manifests-dir", str(output / ".ckpt-manifests"),
                                      "--sync").stdout, (ScanReport,), limit_bytes=1 << 20)
    assert synced.synced == "syncfs" and synced.checkpoints
    plain = channel.find_result(_cli(str(output), "--result").stdout, (ScanReport,), limit_bytes=1 << 20)
    assert plain.synced is None


def test_manifests_that_cannot_be_written_are_one_problem_not_a_failed_scan(output):
    from checkpoint_operator.agent.scan import scan_checkpoints
    (output / "blocked").write_text("a file where the directory would go")
    scan = scan_checkpoints(output, keep_files=False, manifests_dir=str(output / "blocked" / "manifests"))
    assert [s.stored for s in scan.checkpoints] == [False, False, False]
    assert "cannot write the manifests to" in scan.manifests_problem
    assert all(s.manifest.files == [] and s.manifest.digest.startswith("sha256:") for s in scan.checkpoints)


def test_more_checkpoints_than_a_result_reports_keeps_the_newest_and_names_the_rest(tmp_path):
    """hostile5 L3: 10,001 step directories failed the whole snapshot (retried, the same error each
    time), even with keep: 2; no Checkpoint was made. The root files, those without a step and the
    highest steps that fit are taken; the rest are skipped entries, one reason (the output volume
    is then kept). Failed before (AgentError)."""
    from checkpoint_operator.agent.scan import scan_checkpoints
    for i in range(6):
        write(tmp_path / f"step-{i}" / "w.bin")
    write(tmp_path / "best" / "w.bin")
    write(tmp_path / "final.safetensors", b"x")
    scan = scan_checkpoints(tmp_path, max_checkpoints=5)
    assert [s.manifest.path for s in scan.checkpoints] == [".", "best", "step-3", "step-4", "step-5"]
    assert [s.path for s in scan.skipped] == ["step-0", "step-1", "step-2"] and scan.skipped_count == 3
    assert all("more than the 5 one snapshot reports" in s.reason for s in scan.skipped)
    assert len(scan_checkpoints(tmp_path, max_checkpoints=8).checkpoints) == 8


def test_that_fit_order():
    from checkpoint_operator.agent.scan import that_fit
    items = [("step-9", 9), ("step-10", 10), (".", None), ("best", None), ("step-2", 2)]
    assert that_fit(items, 3) == [".", "best", "step-10"]
    assert that_fit(items, 10) == [".", "best", "step-10", "step-9", "step-2"]


def test_root_files_too_many_to_mount_one_by_one_are_reported_without_their_names(tmp_path):
    from checkpoint_operator.agent.scan import scan_checkpoints
    from checkpoint_operator.protocol.results import MAX_ITEMS
    for i in range(MAX_ITEMS + 1):
        write(tmp_path / f"f-{i:04d}.bin")
    (root,) = scan_checkpoints(tmp_path, keep_files=False).checkpoints
    assert root.manifest.path == "." and root.manifest.fileCount == MAX_ITEMS + 1 and root.items is None
    (tmp_path / "f-0000.bin").unlink()
    assert len(scan_checkpoints(tmp_path, keep_files=False).checkpoints[0].items) == MAX_ITEMS


def test_skipped_entries_keep_the_first_by_path_and_count_them_all(tmp_path):
    from checkpoint_operator.agent.scan import scan_checkpoints
    write(tmp_path / "step-1" / "w.bin")
    for i in range(50):
        os.symlink("/etc/passwd", tmp_path / "step-1" / f"leak-{i:02d}")
    scan = scan_checkpoints(tmp_path, max_skipped=5)
    assert scan.skipped_count == 50
    assert [s.path for s in scan.skipped] == [f"step-1/leak-{i:02d}" for i in range(5)]


def test_the_streaming_scan_takes_a_million_files_and_their_directories_by_default(monkeypatch):
    """scan --result (the volume store's snapshot) holds ~100 bytes a file: its default entry
    budget fits a million files with their directories; the scans that hold a tree keep 1,000,000."""
    import argparse

    from checkpoint_operator.agent import scan
    from checkpoint_operator.agent.tree import DEFAULT_MAX_ENTRIES, STREAMING_MAX_ENTRIES
    seen = {}
    monkeypatch.delenv("CKPT_SCAN_MAX_ENTRIES", raising=False)
    monkeypatch.setattr(scan, "scan_checkpoints", lambda *a, **k: seen.update(k) or scan.OutputScan([], [], 0))
    monkeypatch.setattr(scan, "scan_directory", lambda *a, **k: seen.update(k) or scan.ScanResult(checkpoints=[],
                                                                                                  skipped=[]))
    args = argparse.Namespace(dir=".", layout="auto", single=False, workers=None, max_entries=None, json=False,
                              result=True, manifests_dir=None)
    scan.main(args)
    assert seen["max_entries"] == STREAMING_MAX_ENTRIES >= 1_000_000 + 1_000_000 // 100
    scan.main(argparse.Namespace(**{**vars(args), "result": False, "json": True}))
    assert seen["max_entries"] == DEFAULT_MAX_ENTRIES


def test_a_manifests_directory_planted_as_a_link_is_never_written_through(output):
    """An output holding `.ckpt-manifests -> checkpoint-500` would have had the scan write the
    manifests into a checkpoint after hashing it (its bytes no longer its digest)."""
    from checkpoint_operator.agent.scan import scan_checkpoints
    before = sorted(p.name for p in (output / "checkpoint-500").iterdir())
    os.symlink("checkpoint-500", output / ".ckpt-manifests")
    scan = scan_checkpoints(output, keep_files=False, manifests_dir=str(output / ".ckpt-manifests"))
    assert sorted(p.name for p in (output / "checkpoint-500").iterdir()) == before
    assert scan.manifests_problem and "a link or a file, not a directory" in scan.manifests_problem
    assert [s.stored for s in scan.checkpoints] == [False, False, False]


def test_what_the_training_code_puts_in_an_agent_directory_is_skipped_by_name(tmp_path):
    """hostile6 O1: files the trainer wrote under .ckpt-live/, .ckpt-resume/ or .ckpt-manifests/ were
    dropped without a skipped entry, so the output volume was released with them (the only copy). The
    agent's own files there are neither checkpoints nor skipped; anything else is skipped by name."""
    out = tmp_path / "out"
    write(out / "step-1" / "model.bin", b"w")
    write(out / ".ckpt-live" / "sealed.json", "[]")
    os.symlink("../step-1", out / ".ckpt-live" / "resume")
    write(out / ".ckpt-live" / "step-3" / "model.bin", b"saved beside the resume link")
    write(out / ".ckpt-resume" / ("a" * 64) / "model.bin", b"a copy")
    write(out / ".ckpt-resume" / "step-2" / "model.bin", b"the trainer's")
    write(out / ".ckpt-manifests" / f"sha256-{'b' * 64}.json", "{}")
    write(out / ".ckpt-manifests" / "notes.txt", "mine")
    result = scan_directory(str(out))
    assert sorted(by_path(result)) == ["step-1"]
    assert sorted(skipped(result)) == [".ckpt-live/step-3", ".ckpt-manifests/notes.txt", ".ckpt-resume/step-2"]
    assert "reserves for its own files" in skipped(result)[".ckpt-live/step-3"]
