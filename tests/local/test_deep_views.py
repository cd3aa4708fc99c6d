"""The local kubelet's view of a pod at any depth (issue 18 item 5): the read-only copy of a
1,000-deep input (it raised RecursionError and failed the snapshot three times), a mount path
and a working directory 1,000 levels deep."""

from __future__ import annotations

import os
from pathlib import Path

from deep_trees import DEEP_FILE, DEPTH, files_of
from deep_trees import deep, remove_deep_trees  # noqa: F401  (fixtures)

from checkpoint_operator.local.podview import Mount, PodView, remove_tree


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
