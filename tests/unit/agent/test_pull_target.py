"""What a directory may hold before a pull (agent/pull_target.py): only what a pull of the same
checkpoint leaves; the rest is named, and removed only when asked."""

from __future__ import annotations

import hashlib
import os

from checkpoint_operator.protocol.manifest import MANIFEST_NAME, FileEntry, Manifest, digest_of
from checkpoint_operator.agent import pull_target
from checkpoint_operator.agent.pull_target import case_refusal, case_twins, examine, pulled_into, remove_foreign


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


def test_clean_is_allowed_only_where_a_pull_wrote(tmp_path):
    """hostile1's note (`pull x ~ --clean`): a directory showing no trace of a pull is the user's."""
    manifest = manifest_of(FILES)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id").write_bytes(b"key")
    (home / "config.json").write_bytes(b"a different size")  # a namesake is not the checkpoint's file
    assert not pulled_into(str(home), manifest)
    assert not pulled_into(str(home), None)
    link = tmp_path / "link"
    link.symlink_to(home)
    assert not pulled_into(str(link), manifest)
    assert pulled_into(str(tmp_path / "new"), manifest)
    (tmp_path / "empty").mkdir()
    assert pulled_into(str(tmp_path / "empty"), manifest)
    traces = {MANIFEST_NAME: manifest_of({"older": b"1"}).to_json().encode(), ".ckpt-download-0123": b"x",
              "sub/.ckpt-download-0123": b"x", "sub/w.bin": b"w"}
    for trace, data in traces.items():
        one = tmp_path / trace.replace("/", "_").lstrip(".")
        os.makedirs(os.path.dirname(one / trace), exist_ok=True)
        (one / trace).write_bytes(data)
        (one / "junk").write_bytes(b"j")
        assert pulled_into(str(one), manifest), trace


def git_clone(root, gitattributes: bytes) -> None:
    """A clone of a model repository: history, code, notes, and the Hub's standard .gitattributes."""
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "src").mkdir()
    (root / "src" / "train.py").write_text("print('my work')\n")
    (root / "notes.md").write_text("months of notes\n")
    (root / ".gitattributes").write_bytes(gitattributes)


HUB_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n" * 30


def test_a_namesake_of_the_same_size_is_no_proof(tmp_path):
    """hostile3 F5: every Hub clone has a .gitattributes the size of the checkpoint's; only the
    same bytes (sha256) say a pull put it there. Failed before: size alone was proof."""
    manifest = manifest_of({".gitattributes": HUB_GITATTRIBUTES, "config.json": b"{}"})
    git_clone(tmp_path, b"x" * len(HUB_GITATTRIBUTES))
    assert not pulled_into(str(tmp_path), manifest)
    (tmp_path / "config.json").write_bytes(b"[]")  # same size, other bytes
    assert not pulled_into(str(tmp_path), manifest)
    (tmp_path / "config.json").write_bytes(b"{}")
    assert pulled_into(str(tmp_path), manifest)


def test_parts_count_only_where_the_checkpoint_s_files_go(tmp_path):
    """hostile3 F5: one interrupted pull anywhere below a home directory made all of it a pull's
    (the whole tree was walked). Failed before."""
    manifest = manifest_of(FILES)
    home = tmp_path / "home"
    (home / "old" / "models" / "a").mkdir(parents=True)
    (home / "old" / "models" / "a" / ".ckpt-download-123").write_bytes(b"")
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id").write_bytes(b"key")
    (home / "sub").mkdir()
    (home / "sub" / "deeper").mkdir()
    (home / "sub" / "deeper" / ".ckpt-download-9").write_bytes(b"")  # not a directory of the checkpoint
    assert not pulled_into(str(home), manifest)
    assert not pulled_into(str(home), None)
    (home / "sub" / ".ckpt-download-9").write_bytes(b"")  # sub/ is where w.bin goes
    assert pulled_into(str(home), manifest)
    assert not pulled_into(str(home), None)  # without the file list: only the root counts


def test_parts_behind_a_link_are_no_proof(tmp_path):
    manifest = manifest_of(FILES)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".ckpt-download-1").write_bytes(b"")
    (elsewhere / "w.bin").write_bytes(b"w")
    home = tmp_path / "home"
    home.mkdir()
    (home / "mine").write_bytes(b"m")
    (home / "sub").symlink_to(elsewhere)
    assert not pulled_into(str(home), manifest)


def test_a_root_manifest_counts_only_when_it_reads_as_one(tmp_path):
    (tmp_path / MANIFEST_NAME).write_bytes(b"my own notes")
    (tmp_path / "mine").write_bytes(b"m")
    assert not pulled_into(str(tmp_path), manifest_of(FILES))


def test_clean_never_removes_a_repository(tmp_path):
    """hostile3 F5's probe, through the command: a clone holding the very .gitattributes of the
    checkpoint keeps .git/, src/ and notes; a home with an old interrupted pull below is refused."""
    import io as _io
    import pytest
    from checkpoint_operator.plugin import commands
    from checkpoint_operator.plugin.client import PluginError
    manifest = manifest_of({".gitattributes": HUB_GITATTRIBUTES, "model.safetensors": b"m" * 100})
    clone = tmp_path / "clone"
    clone.mkdir()
    git_clone(clone, HUB_GITATTRIBUTES)
    out = commands.Io(out=_io.StringIO(), err=_io.StringIO())
    with pytest.raises(PluginError, match=r"holds \.git/, a repository: --clean never removes one"):
        commands.make_room(str(clone), manifest, None, True, out)
    assert sorted(p.name for p in clone.iterdir()) == [".git", ".gitattributes", "notes.md", "src"]
    home = tmp_path / "home"
    (home / "old" / "a").mkdir(parents=True)
    (home / "old" / "a" / ".ckpt-download-123").write_bytes(b"")
    (home / "notes.md").write_text("mine")
    with pytest.raises(PluginError, match="--clean empties only a directory a pull wrote"):
        commands.make_room(str(home), manifest, None, True, out)
    assert sorted(p.name for p in home.iterdir()) == ["notes.md", "old"]


def test_case_twins_are_refused_only_where_the_filesystem_folds_case(tmp_path, monkeypatch):
    """hostile1 D12's case-twin decision: names keep their case (Linux and S3 tell `A` from `a`),
    so a pull onto a case-insensitive filesystem (macOS, Windows) would write one file over its
    twin, verified each, and end one file short: refused there before a byte is written."""
    twins = manifest_of({"A.bin": b"1", "sub/x": b"2", "a.bin": b"3"})
    assert case_twins(twins) == ("A.bin", "a.bin")
    assert case_twins(manifest_of(FILES)) is None
    assert not pull_target.case_insensitive(str(tmp_path / "new" / "deeper"))  # Linux: the nearest parent probed
    assert os.listdir(tmp_path) == []  # the probe file is gone
    assert case_refusal(str(tmp_path), twins) is None
    monkeypatch.setattr(pull_target, "case_insensitive", lambda directory: True)
    assert case_refusal(str(tmp_path), manifest_of(FILES)) is None
    refusal = case_refusal(str(tmp_path), twins)
    assert refusal is not None and "\n" not in refusal
    assert "case-insensitive filesystem" in refusal and "'A.bin' and 'a.bin'" in refusal
