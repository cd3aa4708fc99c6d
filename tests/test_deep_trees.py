"""Trees 1,000 directories deep (issue 18 item 5): every path that walks, copies, makes or removes
a checkpoint's directories holds at any depth: a success, or one clear line, never RecursionError.

The depth is the writer's choice (a training job, an archive, a bucket's keys); agent/names.py
allows paths up to 4096 bytes, so about 2,000 levels. Python's recursion limit (1,000) is below
that, which is what made os.walk, os.makedirs, shutil.copytree/rmtree, os.path.realpath and two
recursive helpers of our own fail. The trees here are built with directory descriptors, so the
tests do not depend on the code under test to build them."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from agentrun import run_agent
from deep_trees import DEEP_DIRS, DEEP_FILE, DEPTH, LEAF, build_deep_tree, files_of
from deep_trees import deep, remove_deep_trees  # noqa: F401  (fixtures)
from gitserver import git, git_daemon  # noqa: F401  (fixture)
from s3server import seaweedfs, s3  # noqa: F401  (fixtures)

from checkpoint_operator.agent import fstree
from checkpoint_operator.local.podview import Mount, PodView, remove_tree


def test_the_recursion_limit_is_below_the_depth():
    # What makes these cases bite: a recursion per level fails well before DEPTH levels.
    assert sys.getrecursionlimit() <= DEPTH


# --- agent/fstree.py, the helpers every path uses ---------------------------------------------------

def test_walk_matches_os_walk_semantics_at_any_depth(deep: Path):
    (deep / "link-to-d").symlink_to("d")
    top = list(fstree.walk(str(deep)))
    bottom = list(fstree.walk(str(deep), topdown=False))
    assert len(top) == len(bottom) == DEPTH + 1
    root, dirs, others = top[0]
    assert root == str(deep) and sorted(dirs) == ["d", "link-to-d"] and others == ["config.json"]  # link listed, not entered
    assert bottom[-1][0] == str(deep)  # bottom-up: the root last
    assert top[-1] == (str(deep / DEEP_DIRS), [], ["leaf.bin"])


def test_walk_lets_a_top_down_caller_prune(deep: Path):
    seen = []
    for directory, dirs, _ in fstree.walk(str(deep)):
        seen.append(directory)
        dirs.clear()
    assert seen == [str(deep)]


def test_make_dirs_copy_tree_and_remove_tree_at_any_depth(tmp_path: Path, deep: Path):
    made = tmp_path / "made" / DEEP_DIRS
    fstree.make_dirs(str(made))
    fstree.make_dirs(str(made))  # exists: fine, as exist_ok
    assert made.is_dir()
    (deep / "link").symlink_to("config.json")
    copy = tmp_path / "copy"
    fstree.copy_tree(str(deep), str(copy))
    assert files_of(copy) == files_of(deep)
    assert os.readlink(copy / "link") == "config.json"
    fstree.remove_tree(str(copy))
    fstree.remove_tree(str(tmp_path / "made"))
    assert not copy.exists() and not (tmp_path / "made").exists()


def test_make_dirs_refuses_a_file_in_the_way(tmp_path: Path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError):
        fstree.make_dirs(str(tmp_path / "f" / "g"))


def test_remove_tree_removes_read_only_directories_only_when_asked(tmp_path: Path, deep: Path):
    for directory, _, _ in list(fstree.walk(str(deep), topdown=False)):
        os.chmod(directory, 0o555)
    if os.geteuid() != 0:  # root ignores permission bits
        with pytest.raises(PermissionError):
            fstree.remove_tree(str(deep))
    fstree.remove_tree(str(deep), make_writable=True)
    assert not deep.exists()


def test_remove_tree_never_follows_a_link_and_ignores_what_is_gone(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "out").symlink_to(outside)
    fstree.remove_tree(str(tree))
    assert not tree.exists() and (outside / "keep.txt").read_text() == "keep"
    fstree.remove_tree(str(tmp_path / "missing"))  # nothing there: nothing to do
    (tmp_path / "link").symlink_to(outside)
    fstree.remove_tree(str(tmp_path / "link"))  # a link at the top is unlinked, not entered
    assert (outside / "keep.txt").exists() and not os.path.lexists(tmp_path / "link")


def test_remove_tree_with_ignore_errors_removes_what_it_can(tmp_path: Path):
    tree = tmp_path / "tree"
    (tree / "locked").mkdir(parents=True)
    (tree / "locked" / "f").write_text("x")
    (tree / "free.txt").write_text("x")
    os.chmod(tree / "locked", 0o555)
    try:
        fstree.remove_tree(str(tree), ignore_errors=True)
        if os.geteuid() != 0:
            assert (tree / "locked" / "f").exists() and not (tree / "free.txt").exists()
    finally:
        if tree.exists():
            os.chmod(tree / "locked", 0o755)


def test_real_path_matches_realpath_and_bounds_link_chains(tmp_path: Path):
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir" / "up").symlink_to("..")
    (tmp_path / "dir" / "self").symlink_to(".")
    (tmp_path / "abs").symlink_to(tmp_path / "dir" / "sub")
    (tmp_path / "loop").symlink_to("loop")
    for rel in ("dir/sub", "dir/up/dir/sub", "dir/self/self/sub/..", "abs", "abs/../up", "missing/x/..",
                "dir/sub/../../dir"):
        assert fstree.real_path(str(tmp_path / rel)) == os.path.realpath(tmp_path / rel), rel
    assert fstree.real_path(str(tmp_path / "loop")) is None
    chain = tmp_path / "chain"
    chain.mkdir()
    for i in range(1500):  # os.path.realpath recurses once per link
        (chain / f"l{i}").symlink_to(f"l{i + 1}")
    (chain / "l1500").write_text("end")
    assert fstree.real_path(str(chain / "l1460")) == str(chain / "l1500")  # 40 hops: as the kernel
    assert fstree.real_path(str(chain / "l0")) is None  # more: the kernel would refuse it (ELOOP)
    assert not fstree.is_inside(str(chain), str(chain / "l0"))
    assert fstree.is_inside(str(chain), str(chain / "l1460"))


# --- each path over a deep tree ------------------------------------------------------------------

def test_scan_of_a_deep_checkpoint(tmp_path: Path, deep: Path):
    ran = run_agent("scan", str(tmp_path), "--json")
    assert ran.code == 0, ran.stderr[-2000:]
    checkpoint = next(c for c in ran.result["checkpoints"] if c["path"] == "deep")
    assert checkpoint["fileCount"] == 2
    assert DEEP_FILE in {f["path"] for f in checkpoint["files"]}


def test_local_kubelet_read_only_copy_of_a_deep_input(tmp_path: Path, deep: Path):
    view = PodView(tmp_path / "view", [Mount("/input-checkpoint/deep", deep, read_only=True),
                                       Mount("/output-checkpoint", tmp_path / "out", read_only=False)])
    (tmp_path / "out").mkdir()
    view.materialise()
    copied = tmp_path / "view" / "input-checkpoint" / "deep"
    assert files_of(copied) == files_of(deep)
    assert not os.stat(copied / DEEP_FILE).st_mode & 0o222  # read-only, at the bottom too
    view.materialise()  # again: the earlier view (read-only, deep) is replaced
    remove_tree(tmp_path / "view")
    assert not (tmp_path / "view").exists() and files_of(deep)  # the source is untouched


def test_a_mount_path_and_a_working_directory_1000_levels_deep(tmp_path: Path):
    mount_path = "/" + "/".join(["m"] * DEPTH)
    (tmp_path / "vol").mkdir()
    view = PodView(tmp_path / "view", [Mount(mount_path, tmp_path / "vol", read_only=False)])
    view.materialise()
    assert (tmp_path / "view" / mount_path.lstrip("/")).is_symlink()
    remove_tree(tmp_path / "view")


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
