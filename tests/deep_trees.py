"""Trees 1,000 directories deep for the tests (issue 18 item 5), built and read with directory
descriptors so that the tests do not depend on the code under test to make or read them."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkpoint_operator.agent import fstree

DEPTH = 1000
DEEP_DIRS = "/".join(["d"] * DEPTH)
DEEP_FILE = f"{DEEP_DIRS}/leaf.bin"
LEAF = b"deep leaf bytes\n"


def build_deep_tree(root: Path, depth: int = DEPTH) -> Path:
    """root/config.json and root/d/d/.../d/leaf.bin, `depth` directories down."""
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "deep"}')
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open("leaf.bin", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, LEAF)
        os.close(leaf)
    finally:
        os.close(fd)
    return root


def files_of(root: Path) -> dict[str, bytes]:
    """rel path -> bytes of every regular file, walked with descriptors (no recursion)."""
    found: dict[str, bytes] = {}
    stack = [("", os.open(root, os.O_RDONLY | os.O_DIRECTORY))]
    while stack:
        rel, fd = stack.pop()
        try:
            for name in os.listdir(fd):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                path = f"{rel}/{name}" if rel else name
                if stat.S_ISDIR(st.st_mode):
                    stack.append((path, os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)))
                elif stat.S_ISREG(st.st_mode):
                    f = os.open(name, os.O_RDONLY, dir_fd=fd)
                    with os.fdopen(f, "rb") as handle:
                        found[path] = handle.read()
        finally:
            os.close(fd)
    return found


@pytest.fixture(autouse=True)
def remove_deep_trees(tmp_path: Path) -> Iterator[None]:
    """pytest's own clean-up of old temporary directories recurses (shutil.rmtree): leave none."""
    yield
    fstree.remove_tree(str(tmp_path), ignore_errors=True, make_writable=True)


@pytest.fixture
def deep(tmp_path: Path) -> Path:
    return build_deep_tree(tmp_path / "deep")
