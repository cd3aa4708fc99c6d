"""Trees 1,000 directories deep (issue 18 item 5): every path of the agent that walks, copies, makes
or removes a checkpoint's directories holds at any depth: a success, or one clear line, never RecursionError.

The depth is the writer's choice (a training job, an archive, a bucket's keys); agent/names.py
allows paths up to 4096 bytes, so about 2,000 levels. Python's recursion limit (1,000) is below
that, which is what made os.walk, os.makedirs, shutil.copytree/rmtree, os.path.realpath and two
recursive helpers of our own fail. The trees here are built with directory descriptors, so the
tests do not depend on the code under test to build them."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from agentrun import run_agent
from deep_trees import DEEP_DIRS, DEEP_FILE, DEPTH, LEAF, build_deep_tree, files_of
from deep_trees import deep, remove_deep_trees  # noqa: F401  (fixtures)
from gitserver import git, git_daemon  # noqa: F401  (fixture)


# --- each path over a deep tree ------------------------------------------------------------------

def test_scan_of_a_deep_checkpoint(tmp_path: Path, deep: Path):
    ran = run_agent("scan", str(tmp_path), "--json")
    assert ran.code == 0, ran.stderr[-2000:]
    checkpoint = next(c for c in ran.result["checkpoints"] if c["path"] == "deep")
    assert checkpoint["fileCount"] == 2
    assert DEEP_FILE in {f["path"] for f in checkpoint["files"]}


def s3_depth(s3, prefix: str) -> int:  # noqa: F811
    """The deepest d/d/.../leaf.bin whose key fits S3's 1024 bytes under this prefix."""
    return (1024 - len(s3.key(prefix).encode()) - len("leaf.bin")) // 2


def test_upload_of_a_1000_deep_checkpoint_is_one_line_naming_the_s3_key_limit(s3, deep: Path):  # noqa: F811
    up = run_agent("upload", str(deep), s3.uri("ns/deep/"))
    assert "S3 allows 1024" in up.error and "nothing uploaded" in up.error


def test_upload_and_download_as_deep_as_s3_keys_go(s3, tmp_path: Path):  # noqa: F811
    depth = s3_depth(s3, "ns/deep/")
    tree = build_deep_tree(tmp_path / "deep", depth)
    up = run_agent("upload", str(tree), s3.uri("ns/deep/"))
    assert up.code == 0, up.stderr[-2000:]
    assert up.result["fileCount"] == 2
    down = run_agent("download", s3.uri("ns/deep/"), str(tmp_path / "back"))
    assert down.code == 0, down.stderr[-2000:]
    back = files_of(tmp_path / "back")
    assert back.pop(".checkpoint-manifest.json") and back == files_of(tree)
    verified = run_agent("verify", s3.uri("ns/deep/"), "--digest", up.result["digest"], "--json")
    assert verified.code == 0 and json.loads(verified.stdout.strip().splitlines()[-1])["verified"], verified.stderr


def put(s3, rel: str, data: bytes) -> None:  # noqa: F811
    s3.client().put_object(Bucket=s3.bucket, Key=s3.key(rel), Body=data)


def deep_tar(path: Path, with_directories: bool) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        if with_directories:
            for depth in range(1, DEPTH + 1):
                info = tarfile.TarInfo("/".join(["d"] * depth))
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
        info = tarfile.TarInfo(DEEP_FILE)
        info.size = len(LEAF)
        tar.addfile(info, io.BytesIO(LEAF))
        link = tarfile.TarInfo(f"{DEEP_DIRS}/link")  # a link at the bottom, resolved by its real path
        link.type, link.linkname = tarfile.SYMTYPE, "leaf.bin"
        tar.addfile(link)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("with_directories", [True, False], ids=["directory-members", "file-members-only"])
def test_archive_import_of_a_deep_tar(s3, tmp_path: Path, with_directories: bool):  # noqa: F811
    archive = deep_tar(tmp_path / "deep.tar.gz", with_directories)
    put(s3, "archives/deep.tar.gz", archive.read_bytes())
    ran = run_agent("import", s3.uri("archives/deep.tar.gz"), str(tmp_path / "dest"))
    assert ran.code == 0, ran.stderr[-2000:]
    assert files_of(tmp_path / "dest")[DEEP_FILE] == LEAF
    assert os.readlink(tmp_path / "dest" / DEEP_DIRS / "link") == "leaf.bin"


def test_archive_import_of_a_deep_zip(s3, tmp_path: Path):  # noqa: F811
    archive = tmp_path / "deep.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(DEEP_FILE, LEAF)
    put(s3, "archives/deep.zip", archive.read_bytes())
    ran = run_agent("import", s3.uri("archives/deep.zip"), str(tmp_path / "dest"))
    assert ran.code == 0, ran.stderr[-2000:]
    assert files_of(tmp_path / "dest") == {DEEP_FILE: LEAF}


def test_an_archive_with_a_chain_of_1500_links_is_refused_in_one_line(s3, tmp_path: Path):  # noqa: F811
    archive = tmp_path / "chain.tar"
    with tarfile.open(archive, "w") as tar:
        target = tarfile.TarInfo("target")
        target.size = 1
        tar.addfile(target, io.BytesIO(b"x"))
        for i in range(1500, -1, -1):  # l1500 -> target, l1499 -> l1500, ... each one valid on its own
            link = tarfile.TarInfo(f"l{i}")
            link.type, link.linkname = tarfile.SYMTYPE, "target" if i == 1500 else f"l{i + 1}"
            tar.addfile(link)
    put(s3, "archives/chain.tar", archive.read_bytes())
    ran = run_agent("import", s3.uri("archives/chain.tar"), str(tmp_path / "dest"))
    assert "RecursionError" not in ran.stderr and "recursion" not in ran.stderr
    assert "chain.tar" in ran.error and "symlink" in ran.error
    assert not (tmp_path / "dest").exists()


def test_s3_tree_import_of_deep_keys(s3, tmp_path: Path):  # noqa: F811
    rel = "/".join(["d"] * s3_depth(s3, "tree/")) + "/leaf.bin"
    put(s3, f"tree/{rel}", LEAF)
    put(s3, "tree/config.json", b"{}")
    ran = run_agent("import", s3.uri("tree/"), str(tmp_path / "dest"))
    assert ran.code == 0, ran.stderr[-2000:]
    assert files_of(tmp_path / "dest") == {rel: LEAF, "config.json": b"{}"}


def test_verify_of_a_deep_directory(tmp_path: Path, deep: Path):
    scanned = run_agent("scan", str(deep), "--single", "--json")
    assert scanned.code == 0, scanned.stderr[-2000:]
    digest = scanned.result["checkpoints"][0]["digest"]
    verified = run_agent("verify", str(deep), "--digest", digest, "--json")
    assert verified.code == 0, verified.stderr[-2000:]
    assert json.loads(verified.stdout.strip().splitlines()[-1])["verified"], verified.stdout


def test_git_import_of_a_deep_tree(git_daemon, tmp_path: Path):  # noqa: F811
    work = build_deep_tree(tmp_path / "work")
    git("init", "--quiet", "-b", "main", str(work))
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "deep", cwd=work)
    git("clone", "--quiet", "--bare", str(work), str(git_daemon.root / "deep.git"))
    ran = run_agent("import", git_daemon.url("deep"), str(tmp_path / "dest"))
    assert ran.code == 0, ran.stderr[-2000:]
    assert files_of(tmp_path / "dest") == {DEEP_FILE: LEAF, "config.json": b'{"model_type": "deep"}'}


def test_a_manifest_nested_deeper_than_the_json_decoder_goes_is_one_line(s3, tmp_path: Path):  # noqa: F811
    """Depth in a file's content is the writer's choice too: a manifest in the store (or pushed)
    nested 100,000 levels deep; the JSON decoder recurses once per level."""
    put(s3, "ns/nested/.checkpoint-manifest.json", b"[" * 100_000 + b"]" * 100_000)
    ran = run_agent("download", s3.uri("ns/nested/"), str(tmp_path / "dest"))
    assert "nested too deeply to be a manifest" in ran.error
    verified = run_agent("verify", s3.uri("ns/nested/"), "--json")
    assert "RecursionError" not in verified.stderr + verified.stdout


def test_pull_clean_removes_a_foreign_tree_1000_levels_deep(tmp_path: Path, deep: Path):
    """`kubectl ckpt pull --clean` into a DIR that holds a deep directory the checkpoint does not have."""
    from checkpoint_operator.agent.pull_target import remove_foreign
    removed = remove_foreign(str(tmp_path), None, "sha256:" + "0" * 64)
    assert [r.rel for r in removed] == ["deep"] and not deep.exists()


def test_whether_a_pull_wrote_a_1000_deep_directory_is_answered(tmp_path: Path, deep: Path):
    """pull --clean first asks whether DIR is one a pull wrote (main's rule): its walk looking for
    an interrupted pull's parts went down with os.walk, RecursionError at this depth."""
    from checkpoint_operator.agent.pull_target import pulled_into
    assert pulled_into(str(deep), None) is False
