"""What `kubectl ckpt push DIR` takes from DIR (issue 18 item 1): the user's own files on the user's
own machine, links followed as `cp -L` does (a Hugging Face cache snapshot is links into
`../../blobs/`; DVC and NFS layouts look alike), and a refusal listing every entry that would
not be part of the checkpoint, never a warning and a smaller checkpoint. The bytes sent are the
links' targets: checked here through the s3 upload (SeaweedFS) the push uses."""

from __future__ import annotations

import io
import os
import socket

import pytest

from checkpoint_operator.agent.download import download_prefix
from checkpoint_operator.agent.upload import upload_dir
from checkpoint_operator.plugin.commands import Io, PluginError, local_manifest
from layouts import CONFIG, WEIGHTS, hf_cache_snapshot

def quiet() -> tuple[Io, io.StringIO]:
    err = io.StringIO()
    return Io(io.StringIO(), err), err


def test_a_hugging_face_cache_snapshot_is_pushed_whole(tmp_path):
    """Failed before: `no files to push` (every entry a link leaving DIR)."""
    manifest = local_manifest(str(hf_cache_snapshot(tmp_path)), quiet()[0])
    sizes = {f.path: f.size for f in manifest.files}
    assert sizes == {"config.json": len(CONFIG), "model.safetensors": len(WEIGHTS), "tokenizer/tokenizer.json": 8}


def test_a_link_to_a_file_outside_is_its_bytes_not_a_warning(tmp_path):
    """Failed before: one warning, and a checkpoint of the 40 bytes left (the weights missing)."""
    outside = tmp_path / "store" / "weights.bin"
    outside.parent.mkdir()
    outside.write_bytes(WEIGHTS)
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "config.json").write_bytes(CONFIG)
    os.symlink(outside, directory / "model.safetensors")  # absolute, out of DIR
    io_, err = quiet()
    manifest = local_manifest(str(directory), io_)
    assert manifest.fileCount == 2 and manifest.sizeBytes == len(CONFIG) + len(WEIGHTS)
    assert "warning" not in err.getvalue()


def test_a_link_to_a_directory_is_walked_under_its_own_name(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "vocab.json").write_bytes(b"{}")
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "config.json").write_bytes(CONFIG)
    os.symlink("../shared", directory / "tokenizer")
    manifest = local_manifest(str(directory), quiet()[0])
    assert [f.path for f in manifest.files] == ["config.json", "tokenizer/vocab.json"]


def test_everything_that_would_be_left_out_refuses_the_push_and_is_listed(tmp_path):
    """Failed before: names with a newline, backslash or tab were dropped (3 of 7 files), rc 0."""
    directory = tmp_path / "ckpt"
    (directory / "sub").mkdir(parents=True)
    (directory / "config.json").write_bytes(CONFIG)
    for name in ("line\nbreak.bin", "back\\slash.bin", "tab\there.bin", "bidi\u202etxt.bin", "model\u200b.bin"):
        (directory / name).write_bytes(b"x")
    (directory / "caf\u00e9").write_bytes(b"1")
    (directory / "cafe\u0301").write_bytes(b"2")
    os.symlink("nowhere", directory / "broken")
    os.symlink("loop-b", directory / "loop-a")
    os.symlink("loop-a", directory / "loop-b")
    os.symlink("..", directory / "sub" / "cycle")
    os.mkfifo(directory / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(directory / "sock"))
    io_, err = quiet()
    with pytest.raises(PluginError) as refused:
        local_manifest(str(directory), io_)
    message = str(refused.value)
    assert "13 entries would not be part of the checkpoint" in message and "nothing pushed" in message, message
    assert "\n" not in message
    listed = err.getvalue()
    for shown, why in [("line\\nbreak.bin", "control character U+000A"), ("back\\\\slash.bin", "backslash"),
                       ("tab\\x09here.bin", "control character U+0009"), ("bidi\\u202etxt.bin", "bidirectional"),
                       ("model\\u200b.bin", "invisible character U+200B"),
                       ("caf\\u00e9", "Unicode normalization"), ("cafe\\u0301", "Unicode normalization"),
                       ("broken", "broken symlink"), ("loop-a", "symlink loop"), ("loop-b", "symlink loop"),
                       ("sub/cycle", "a cycle"), ("pipe", "fifo"), ("sock", "socket")]:
        assert any(line.strip().startswith(f"{shown}: ") and why in line for line in listed.splitlines()), (shown, listed)
    sock.close()


def test_too_many_entries_advise_what_a_push_can_set(tmp_path, monkeypatch):
    """hostile1 D11: the refusal said 'raise --max-entries', a flag `kubectl ckpt push` has not."""
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(b"x")
    monkeypatch.setenv("CKPT_SCAN_MAX_ENTRIES", "3")
    with pytest.raises(Exception) as refused:
        local_manifest(str(tmp_path), quiet()[0])
    message = str(refused.value)
    assert "more than 3 entries" in message and "CKPT_SCAN_MAX_ENTRIES, read by every command" in message
    assert "raise --max-entries" not in message and "\n" not in message
    monkeypatch.setenv("CKPT_SCAN_MAX_ENTRIES", "10")
    assert local_manifest(str(tmp_path), quiet()[0]).fileCount == 5


def test_an_empty_directory_is_refused_with_a_hint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PluginError, match="no files to push"):
        local_manifest(str(tmp_path / "empty"), quiet()[0])


def test_the_s3_push_sends_the_targets_bytes(s3, tmp_path):  # noqa: F811
    snapshot = hf_cache_snapshot(tmp_path)
    manifest = local_manifest(str(snapshot), quiet()[0])
    upload_dir(str(snapshot), s3.uri("pushed/"), manifest=manifest, follow_links=True, log=lambda m: None)
    back = tmp_path / "back"
    result = download_prefix(s3.uri("pushed/"), str(back), digest=manifest.digest, log=lambda m: None)
    assert result.manifest.digest == manifest.digest
    assert (back / "model.safetensors").read_bytes() == WEIGHTS and not (back / "model.safetensors").is_symlink()


def test_a_pull_of_case_twins_onto_a_case_insensitive_filesystem_is_refused(tmp_path, monkeypatch):
    """The pull (both stores) asks pull_target before a byte is written: a checkpoint holding
    `A.bin` and `a.bin` is refused in one line where the filesystem folds case (simulated: Linux
    does not), and pulled where it does not."""
    from checkpoint_operator.agent import pull_target
    from checkpoint_operator.plugin.commands import make_room
    source = tmp_path / "src"
    source.mkdir()
    (source / "A.bin").write_bytes(b"upper")
    (source / "a.bin").write_bytes(b"lower")
    manifest = local_manifest(str(source), Io(out=io.StringIO(), err=io.StringIO()))
    make_room(str(tmp_path / "dest"), manifest, None, False, Io(out=io.StringIO(), err=io.StringIO()))
    monkeypatch.setattr(pull_target, "case_insensitive", lambda directory: True)
    with pytest.raises(PluginError) as refused:
        make_room(str(tmp_path / "dest"), manifest, None, False, Io(out=io.StringIO(), err=io.StringIO()))
    assert "case-insensitive filesystem" in str(refused.value) and "'A.bin' and 'a.bin'" in str(refused.value)
    assert not (tmp_path / "dest").exists()
