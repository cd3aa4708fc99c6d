"""The tree a container would see, laid out on the host for the process runtime.

Each container of a pod gets a view directory in which every volumeMount's mountPath exists as in
the container: ``<view>/output-checkpoint`` is the output volume, ``<view>/input-checkpoint/<name>``
holds exactly that input's files (a directory subPath, or one entry per single-file subPath mount),
and nothing else is there. Container paths in env values, arguments and workingDir are rewritten
into the view (``/input-checkpoint/x`` -> ``<view>/input-checkpoint/x``), so training code sees the
same names, the same parents and the same listings as in a pod.

- read-write mounts are symlinks to the volume (writes land in the volume, as in a pod);
- read-only mounts are private copies (reflinked where the filesystem can, else copied), with
  the write bits removed (downwardAPI volumes, which the kubelet updates while the pod runs,
  are linked instead, so the container sees each update). A non-root process gets EACCES when it writes into an input. Root
  ignores permission bits: its write succeeds, but only changes the pod's copy; the Checkpoint's
  bytes are never reachable for writing through the view. The container runtimes enforce
  read-only mounts for real (EROFS).
"""

from __future__ import annotations

import errno
import fcntl
import os
import posixpath
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from checkpoint_operator.agent import fstree

FICLONE = 0x40049409  # ioctl: share the data blocks (btrfs, xfs, bcachefs); copy-on-write
NOT_WRITABLE = ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


@dataclass(frozen=True)
class Mount:
    """One volumeMount, resolved: ``path`` in the container, ``source`` on the host."""

    path: str
    source: Path
    read_only: bool
    live: bool = False  # kept current by the kubelet (a downwardAPI volume): linked, never copied


def normalise_mount_path(path: str) -> str:
    return posixpath.normpath("/" + path.strip().lstrip("/"))


def clone_or_copy(source: str, target: str) -> bool:
    """A reflink of ``source`` where the filesystem supports it, else a copy (kernel-side). Regular
    files only: a FIFO, socket or device is left out (False), as the agent's scan leaves it out of
    a checkpoint; opening a FIFO to read it would wait for a writer for good (hostile4 D13). The
    type is checked on the open descriptor (non-blocking), so a file swapped for a FIFO meanwhile
    is left out too."""
    if not stat.S_ISREG(os.stat(source).st_mode):
        return False
    fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        os.set_blocking(fd, True)
        with open(target, "wb") as dst:
            try:
                fcntl.ioctl(dst.fileno(), FICLONE, fd)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
                    raise
                _copy_range(fd, dst.fileno())
    finally:
        os.close(fd)
    shutil.copystat(source, target)
    return True


def _copy_range(src: int, dst: int) -> None:
    size = os.fstat(src).st_size
    offset = 0
    while offset < size:
        sent = os.sendfile(dst, src, offset, size - offset)
        if sent == 0:
            break
        offset += sent


def read_only_copy(source: Path, target: Path) -> None:
    """Copy a file or a tree (symlinks kept as links), then remove every write bit. At any depth
    (agent/fstree.py: a checkpoint's depth is its writer's choice)."""
    if source.is_dir():
        fstree.copy_tree(str(source), str(target), copy_function=clone_or_copy)
        for directory, _dirs, files in fstree.walk(str(target), topdown=False):
            for name in files:
                path = os.path.join(directory, name)
                if not os.path.islink(path):
                    os.chmod(path, os.stat(path).st_mode & NOT_WRITABLE)
            os.chmod(directory, os.stat(directory).st_mode & NOT_WRITABLE)
    elif clone_or_copy(str(source), str(target)):  # (a special file is not laid out)
        os.chmod(target, os.stat(target).st_mode & NOT_WRITABLE)


def remove_tree(path: Path) -> None:
    """Remove a view (or any tree), read-only directories included, at any depth."""
    fstree.remove_tree(str(path), make_writable=True)


class ViewError(RuntimeError):
    pass


class PodView:
    """A container's mounts laid out under ``root`` (see the module's docstring)."""

    def __init__(self, root: Path, mounts: Iterable[Mount]) -> None:
        self.root = root
        self.mounts = sorted(mounts, key=lambda m: (m.path.count("/"), m.path))

    def host_path(self, container_path: str) -> Path:
        return self.root / normalise_mount_path(container_path).lstrip("/")

    def materialise(self) -> None:
        """Lay the mounts out (again: an earlier container's leftovers are replaced)."""
        if self.root.exists():
            remove_tree(self.root)
        fstree.make_dirs(str(self.root))
        for mount in self.mounts:
            target = self.host_path(mount.path)
            self._check_not_inside_a_volume(mount, target)
            fstree.make_dirs(str(target.parent))
            if target.exists() or target.is_symlink():
                remove_tree(target)  # a single-file mount replaces a directory made for its parent
            if mount.read_only and not mount.live:
                read_only_copy(mount.source, target)
            else:
                target.symlink_to(mount.source, target_is_directory=mount.source.is_dir())

    def _check_not_inside_a_volume(self, mount: Mount, target: Path) -> None:
        """A mount nested in a read-write volume's mountPath would have to be created inside that
        volume (a container runtime makes the mount point there); the process runtime refuses."""
        for parent in target.relative_to(self.root).parents:
            if parent != Path(".") and (self.root / parent).is_symlink():
                raise ViewError(f"volumeMount {mount.path!r} is inside the read-write mount /{parent}: "
                                "the process runtime cannot nest mounts in a volume (use --runtime podman)")

    def translate(self, value: str) -> str:
        """A container path at or under a mountPath, or a parent directory of one (``/input-checkpoint``),
        becomes its place in the view; ``--flag=/path`` is translated after the ``=`` too."""
        if "=" in value and not value.startswith("/"):
            prefix, _, rest = value.partition("=")
            return f"{prefix}={self.translate(rest)}" if rest.startswith("/") else value
        if not value.startswith("/") or value == "/":
            return value
        path = normalise_mount_path(value)
        for mount in self.mounts:
            if path == mount.path or path.startswith(mount.path + "/") or mount.path.startswith(path + "/"):
                return str(self.root) + path
        return value

