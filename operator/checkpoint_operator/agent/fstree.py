"""Directory trees of any depth: walk, make, copy, remove and resolve them without recursion.

A checkpoint's depth is chosen by whoever wrote it (a training job, an archive, a bucket's
keys): agent/names.py allows paths up to 4096 bytes, so about 2,000 levels. Python's own
helpers recurse once per level (`os.walk`, `os.makedirs`, `shutil.copytree`, `shutil.rmtree`
before 3.12/3.13, `os.path.realpath` once per symlink hop) and raise RecursionError near 1,000.
Every walk over data the operator does not control goes through this module instead: each
function keeps an explicit stack, so depth costs memory (a few bytes a level), never the
interpreter's stack.

`remove_tree` works relative to directory descriptors, one open at a time (so neither the
depth nor PATH_MAX limits it, and a directory swapped for a symlink while it runs is never
followed); the others work on paths.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Optional

MAX_LINK_HOPS = 40  # Linux's MAXSYMLINKS: a path needing more does not open either

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def walk(top: str, *, topdown: bool = True,
         onerror: Optional[Callable[[OSError], None]] = None) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk(top, topdown)` without recursion: (directory, its subdirectory names, its other
    names). As os.walk: links to directories are listed among the directories but not entered,
    unreadable directories are left out (`onerror`, when given, is called with the error and may
    raise it), and with `topdown` the caller may prune `dirnames`."""
    stack: list[tuple[str, Optional[tuple[list[str], list[str]]]]] = [(top, None)]
    while stack:
        directory, listed = stack.pop()
        if listed is not None:  # bottom-up: its subdirectories are done
            yield directory, listed[0], listed[1]
            continue
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError as exc:
            if onerror is not None:
                onerror(exc)
            continue
        dirs: list[str] = []
        others: list[str] = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            (dirs if is_dir else others).append(entry.name)
        if topdown:
            yield directory, dirs, others
        else:
            stack.append((directory, (dirs, others)))
        for name in reversed(dirs):
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                stack.append((path, None))


def make_dirs(path: str, mode: int = 0o777) -> None:
    """`os.makedirs(path, exist_ok=True)` without recursion."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise


def copy_tree(source: str, target: str, copy_function: Callable[[str, str], object] = shutil.copy2) -> None:
    """`shutil.copytree(source, target, symlinks=True, copy_function=...)` without recursion:
    links are copied as links, other non-directories with `copy_function`, and each directory
    gets its source's mode and times once its contents are in."""
    os.mkdir(target)
    made = [(source, target)]
    for directory, dirs, others in walk(source):
        rel = os.path.relpath(directory, source)
        into = target if rel == "." else os.path.join(target, rel)
        for name in dirs + others:
            src, dst = os.path.join(directory, name), os.path.join(into, name)
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
            elif name in dirs:
                os.mkdir(dst)
                made.append((src, dst))
            else:
                copy_function(src, dst)
    for src, dst in reversed(made):  # deepest first: a read-only mode must not stop the copy
        shutil.copystat(src, dst, follow_symlinks=False)


@dataclass
class _Level:
    """One directory on the way down: its identity and the names still to remove in it."""

    ident: tuple[int, int]
    name: str
    names: list[str] = field(default_factory=list)


def remove_tree(path: str, *, ignore_errors: bool = False, make_writable: bool = False) -> None:
    """`shutil.rmtree(path)` without recursion (a link or a file at `path` is unlinked).
    `make_writable`: directories without write or search permission (a read-only view, a sealed
    checkpoint) are given it first. `ignore_errors`: what cannot be removed stays, the rest goes."""
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
            return
        _remove_directory(path, st, make_writable, ignore_errors)
    except FileNotFoundError:
        return
    except OSError:
        if not ignore_errors:
            raise


def _open_directory(name: str, dir_fd: Optional[int], expected: os.stat_result, make_writable: bool) -> int:
    try:
        fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        if not make_writable:
            raise
        os.chmod(name, stat.S_IMODE(expected.st_mode) | stat.S_IRWXU, dir_fd=dir_fd)
        fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=dir_fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
        os.close(fd)
        raise OSError(errno.ESTALE, "directory replaced while it was being removed", name)
    if make_writable and stat.S_IMODE(st.st_mode) & stat.S_IRWXU != stat.S_IRWXU:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
    return fd


def _remove_directory(path: str, top: os.stat_result, make_writable: bool, ignore_errors: bool) -> None:
    """Depth first, one directory descriptor open at a time: down by name (never through a
    link), up through '..' (checked to be the directory we came from)."""
    fd = _open_directory(path, None, top, make_writable)
    levels = [_Level((top.st_dev, top.st_ino), path, os.listdir(fd))]
    try:
        while levels:
            level = levels[-1]
            if level.names:
                name = level.names.pop()
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISDIR(st.st_mode):
                        os.unlink(name, dir_fd=fd)
                        continue
                    child = _open_directory(name, fd, st, make_writable)
                    try:
                        names = os.listdir(child)
                    except OSError:
                        os.close(child)
                        raise
                except FileNotFoundError:
                    continue
                except OSError:
                    if ignore_errors:
                        continue
                    raise
                os.close(fd)
                fd = child
                levels.append(_Level((st.st_dev, st.st_ino), name, names))
                continue
            levels.pop()
            if not levels:
                break
            parent = os.open("..", _DIRECTORY_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != levels[-1].ident:
                raise OSError(errno.ESTALE, "directory moved while it was being removed", level.name)
            try:
                os.rmdir(level.name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError:
                if not ignore_errors:
                    raise
    finally:
        os.close(fd)
    os.rmdir(path)


def real_path(path: str) -> Optional[str]:
    """`os.path.realpath(path)` without recursion: every symlink resolved, a missing component
    taken as it is (non-strict, as realpath). None when it takes more than MAX_LINK_HOPS links
    (a loop, or a chain the kernel would refuse to follow)."""
    resolved = "/"
    absolute = path if path.startswith("/") else os.path.join(os.getcwd(), path)  # not normalized: '..' after a link
    todo = list(reversed(absolute.split("/")))
    hops = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, part)
        try:
            is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
        except OSError:
            is_link = False
        if not is_link:
            resolved = candidate
            continue
        hops += 1
        if hops > MAX_LINK_HOPS:
            return None
        try:
            target = os.readlink(candidate)
        except OSError:
            resolved = candidate
            continue
        if target.startswith("/"):
            resolved = "/"
        todo.extend(reversed(target.split("/")))
    return resolved


def is_inside(root_real: str, path: str) -> bool:
    """`path`, every link resolved, is `root_real` (itself already real) or below it."""
    real = real_path(path)
    return real is not None and (real == root_real or real.startswith(root_real.rstrip("/") + "/"))
