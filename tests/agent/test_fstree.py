"""agent/fstree.py (issue 18 item 5): walk, make, copy, remove and resolve directory trees of any
depth without recursion, on trees 1,000 directories deep (built with directory descriptors)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from deep_trees import DEEP_DIRS, DEPTH, files_of
from deep_trees import deep, remove_deep_trees  # noqa: F401  (fixtures)

from checkpoint_operator.agent import fstree


def test_the_recursion_limit_is_below_the_depth():
    # What makes these cases bite: a recursion per level fails well before DEPTH levels.
    assert sys.getrecursionlimit() <= DEPTH


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
