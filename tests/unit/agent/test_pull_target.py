"""What a directory may hold before a pull (agent/pull_target.py): only what a pull of the same
checkpoint leaves; the rest is named, and removed only when asked."""

from __future__ import annotations

import hashlib
import os

from checkpoint_operator.agent.manifest import MANIFEST_NAME, FileEntry, Manifest, digest_of
from checkpoint_operator.agent.pull_target import examine, remove_foreign


def manifest_of(files: dict[str, bytes]) -> Manifest:
    entries = [FileEntry(path=p, size=len(d), sha256=hashlib.sha256(d).hexdigest()) for p, d in sorted(files.items())]
    return Manifest(path=".", files=entries, sizeBytes=sum(e.size for e in entries), fileCount=len(entries),
                    digest=digest_of(entries))


FILES = {"config.json": b"{}", "sub/w.bin": b"w"}


def test_a_missing_or_empty_directory_holds_nothing(tmp_path):
    assert examine(str(tmp_path / "none"), manifest_of(FILES)).count == 0
    assert examine(str(tmp_path), manifest_of(FILES)).count == 0


def test_an_earlier_pull_of_the_same_checkpoint_is_fine(tmp_path):
    manifest = manifest_of(FILES)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(b"other bytes: fetched again")
    (tmp_path / "sub" / ".ckpt-download-0123").write_bytes(b"part")
    (tmp_path / MANIFEST_NAME).write_text(manifest.to_json())
    assert examine(str(tmp_path), manifest).count == 0
    # without the file list (a volume pull before its stream): the stored manifest of the same digest gives it
    assert examine(str(tmp_path), None, manifest.digest).count == 0


def test_everything_else_is_named_and_removed_only_when_asked(tmp_path):
    manifest = manifest_of(FILES)
    (tmp_path / "config.json").write_bytes(b"{}")
    (tmp_path / "extra.bin").write_bytes(b"x")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.txt").write_bytes(b"x")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "keep.bin").write_bytes(b"keep")
    os.symlink(outside, tmp_path / "sub")  # a link where the checkpoint has a directory
    (tmp_path / MANIFEST_NAME).write_text(manifest_of({"other": b"1"}).to_json())
    found = examine(str(tmp_path), manifest)
    lines = sorted(f.line() for f in found.foreign)
    assert found.count == 4 and lines == [
        ".checkpoint-manifest.json: the manifest of another checkpoint (digest "
        f"{manifest_of({'other': b'1'}).digest})",
        "extra.bin: a file the checkpoint does not have",
        "logs/: a directory the checkpoint does not have",
        "sub: a symlink (a pull writes only regular files)"], lines
    assert len(remove_foreign(str(tmp_path), manifest)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert (outside / "keep.bin").read_bytes() == b"keep"  # the link went, never what it points at


def test_without_a_file_list_only_temporaries_may_be_there(tmp_path):
    (tmp_path / ".ckpt-download-abc").write_bytes(b"part")
    assert examine(str(tmp_path), None, "sha256:" + "0" * 64).count == 0
    (tmp_path / "w.bin").write_bytes(b"w")
    assert [f.rel for f in examine(str(tmp_path), None, "sha256:" + "0" * 64).foreign] == ["w.bin"]
