"""The files of a checkpoint: one walker for scan, upload and download.

A checkpoint is a directory tree; its files are every regular file under it, with these rules:
- names must pass agent/names.py; an entry whose name does not is skipped with the rule, and
  so are both entries of a directory whose names are the same after Unicode normalization;
- hidden names are content (only the manifest at the root is not: it describes, it is not
  content; other names the agent reserves at the root are skipped);
- a symlink is resolved hop by hop against the checkpoint's root as it will be mounted (on
  its own, e.g. by `subPath`): every hop must stay inside the root (an absolute target, or a
  `..` above the root, even one that comes back in, leaves it), at most 40 hops. A link to a
  file stands for that file's bytes under the link's own path. A link to a directory is not
  followed: the directory is inside the root, so its files are already taken under their real
  path, and not following links to directories keeps the walk linear in the inodes (a DAG of
  links `a`, `b` -> `../d(i+1)` would otherwise make 2^N paths);
- fifos, sockets and devices are skipped; so are files that cannot be read;
- `follow_links` (a push: the user's own directory on the user's own machine) takes links as
  `cp -L` does instead: a link to a file anywhere stands for that file's bytes (a Hugging
  Face cache snapshot, DVC and many NFS layouts are links into a store beside the directory),
  a link to a directory is walked under the link's path; a broken link, a loop and a link to a
  directory that contains it are skipped with the reason (and the push refuses them);
- at most `max_entries` directory entries are looked at in all (`EntryBudget`): past it the
  walk fails with a clear error instead of growing without bound.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Optional

from checkpoint_operator.agent.errors import AgentError
from checkpoint_operator.agent.manifest import MANIFEST_NAME, RESERVED_ROOT_NAMES
from checkpoint_operator.agent.names import (
    MAX_PATH_BYTES, collision_problem, collisions, component_problem, printable, spelled,
)

DEFAULT_MAX_ENTRIES = 1_000_000
MAX_LINK_HOPS = 40  # Linux's MAXSYMLINKS
# Components looked at while resolving one link (bounds the work of links to long paths of links).
MAX_RESOLVE_STEPS = 4096

# Reasons a reader of `skipped` sees; tests and the operator's events quote them.
LEAVES_CHECKPOINT = "symlink leaves the checkpoint"
LINK_TO_DIRECTORY = "symlink to a directory: not followed (its files are taken under their real path)"
SYMLINK_LOOP = "symlink loop (more than 40 hops)"
BROKEN_SYMLINK = "broken symlink"
DIRECTORY_CYCLE = "symlink to a directory that contains it (a cycle)"


def entry_limit(given: Optional[int] = None) -> int:
    """--max-entries, else CKPT_SCAN_MAX_ENTRIES, else the default."""
    value = os.environ.get("CKPT_SCAN_MAX_ENTRIES", "")
    return given or (int(value) if value.isdigit() and int(value) > 0 else DEFAULT_MAX_ENTRIES)


class TooManyEntries(AgentError):
    pass


class EntryBudget:
    """Counts the directory entries a walk looks at; fails past the limit."""

    def __init__(self, limit: int = DEFAULT_MAX_ENTRIES, what: str = "") -> None:
        self.limit = limit
        self.used = 0
        self.what = what

    def take(self, where: str) -> None:
        self.used += 1
        if self.used > self.limit:
            raise TooManyEntries(f"{self.what or 'the tree'}: more than {self.limit} entries (at '{printable(where)}'); "
                                 f"refusing to go on (if this is intended, raise the limit: the environment "
                                 f"variable CKPT_SCAN_MAX_ENTRIES, read by every command, or --max-entries of agent "
                                 f"scan, snapshot and watch)")


@dataclass
class TreeFile:
    rel: str  # path inside the checkpoint, '/'-separated
    open_path: str  # the real file to read (symlinks resolved: no link in it)
    inode: tuple[int, int]  # (st_dev, st_ino): each distinct file is read once
    size: int


@dataclass
class Tree:
    files: list[TreeFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (printable rel path, reason)

    def skip(self, rel: str, reason: str) -> None:
        self.skipped.append((printable(rel), reason))


def special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        return "device"
    return "not a regular file"


def _os_reason(exc: OSError) -> str:
    return f"unreadable: {exc.strerror or exc}"


def resolve_link(top: str, dir_parts: list[str], name: str) -> tuple[Optional[str], Optional[os.stat_result], str]:
    """Resolve the symlink `dir_parts/name` of the tree rooted at `top`, hop by hop, never above
    `top`. Returns (real path, its lstat, "") or (None, None, reason)."""
    resolved = list(dir_parts)  # real directories (no links) from the root
    todo = [name]  # components still to walk, in reverse order (a stack)
    hops = steps = 0
    while todo:
        part = todo.pop()
        steps += 1
        if steps > MAX_RESOLVE_STEPS:
            return None, None, SYMLINK_LOOP
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None, None, LEAVES_CHECKPOINT
            resolved.pop()
            continue
        path = os.path.join(top, *resolved, part)
        try:
            st = os.lstat(path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None, None, BROKEN_SYMLINK
            return None, None, _os_reason(exc)
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_LINK_HOPS:
                return None, None, SYMLINK_LOOP
            try:
                target = os.readlink(path)
            except OSError as exc:
                return None, None, _os_reason(exc)
            if target.startswith("/"):
                return None, None, LEAVES_CHECKPOINT  # means something else wherever the volume is mounted
            todo.extend(reversed(target.split("/")))
            continue
        if todo and not stat.S_ISDIR(st.st_mode):
            return None, None, BROKEN_SYMLINK  # a file used as a directory
        resolved.append(part)
    if not resolved:
        return top, os.lstat(top), ""  # the root itself
    path = os.path.join(top, *resolved)
    return path, os.lstat(path), ""


def walk_checkpoint(top: str, budget: Optional[EntryBudget] = None, *, follow_links: bool = False) -> Tree:
    """Every file of the checkpoint rooted at `top` (see the module doc), and what was skipped."""
    budget = budget or EntryBudget(what=top)
    tree = Tree()
    # (directory on disk, its components inside the checkpoint, the (st_dev, st_ino) of the
    # directories on its way: only kept when links are followed, to refuse a cycle)
    stack: list[tuple[str, list[str], frozenset]] = [(top, [], _identity(top) if follow_links else frozenset())]
    while stack:
        directory, parts, ancestors = stack.pop()
        rel_dir = "/".join(parts)
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError as exc:
            tree.skip(rel_dir or ".", f"unreadable directory: {exc.strerror}")
            continue
        twins = collisions([entry.name for entry in entries])
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            budget.take(os.path.join(directory, entry.name))
            if not parts and entry.name in RESERVED_ROOT_NAMES:
                if entry.name != MANIFEST_NAME:  # a manifest written by an earlier download describes
                    tree.skip(rel, "name reserved for the agent's own files")
                continue
            problem = component_problem(entry.name)
            if problem:
                tree.skip(rel, f"name {problem}")
                continue
            if entry.name in twins:  # neither is taken: which one is meant cannot be told
                tree.skipped.append((spelled(rel), f"name {collision_problem(twins[entry.name])}"))
                continue
            if len(rel.encode("utf-8")) > MAX_PATH_BYTES:
                tree.skip(rel, f"path is longer than {MAX_PATH_BYTES} bytes")
                continue
            if follow_links:
                add_followed_entry(tree, stack, parts, ancestors, entry, rel)
            else:
                add_entry(tree, stack, top, parts, entry, rel)
    return tree


def _identity(path: str) -> frozenset:
    try:
        st = os.stat(path)
    except OSError:
        return frozenset()
    return frozenset({(st.st_dev, st.st_ino)})


def add_followed_entry(tree: Tree, stack: list, parts: list[str], ancestors: frozenset, entry: os.DirEntry,
                       rel: str) -> None:
    """One directory entry, links followed wherever they point (`cp -L`)."""
    try:
        st = os.stat(entry.path)  # follows every link on the way
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            tree.skip(rel, SYMLINK_LOOP)
        elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
            tree.skip(rel, BROKEN_SYMLINK)
        else:
            tree.skip(rel, _os_reason(exc))
        return
    if stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            tree.skip(rel, DIRECTORY_CYCLE)
            return
        stack.append((entry.path, [*parts, entry.name], ancestors | {key}))
    elif stat.S_ISREG(st.st_mode):
        tree.files.append(TreeFile(rel, entry.path, (st.st_dev, st.st_ino), st.st_size))
    else:
        tree.skip(rel, special_kind(st.st_mode))


def add_entry(tree: Tree, stack: list, top: str, parts: list[str], entry: os.DirEntry, rel: str) -> None:
    """One directory entry: a file into `tree.files`, a directory onto `stack`, else a skip."""
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError as exc:
        tree.skip(rel, _os_reason(exc))
        return
    open_path = entry.path
    if stat.S_ISLNK(st.st_mode):
        real, target_st, reason = resolve_link(top, parts, entry.name)
        if real is None:
            tree.skip(rel, reason)
            return
        assert target_st is not None
        if stat.S_ISDIR(target_st.st_mode):
            tree.skip(rel, LINK_TO_DIRECTORY)
            return
        open_path, st = real, target_st
    elif stat.S_ISDIR(st.st_mode):
        stack.append((entry.path, [*parts, entry.name], frozenset()))
        return
    if stat.S_ISREG(st.st_mode):
        tree.files.append(TreeFile(rel, open_path, (st.st_dev, st.st_ino), st.st_size))
    else:
        tree.skip(rel, special_kind(st.st_mode))


def locate_file(top: str, rel: str, *, follow_links: bool = False) -> tuple[str, os.stat_result]:
    """The real file that the valid path `rel` names in the checkpoint rooted at `top`, by the
    rules of walk_checkpoint (no directory reached through a link; a link to a file resolved
    inside the root; with `follow_links`, any link followed as `cp -L` does), as (path to read,
    its stat); AgentError naming `rel` otherwise."""
    parts = rel.split("/")
    if follow_links:
        path = os.path.join(top, *parts)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise AgentError(f"{path}: listed in the manifest but unreadable ({exc.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise AgentError(f"{path}: not a regular file")
        return path, st
    for i in range(1, len(parts)):
        path = os.path.join(top, *parts[:i])
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise AgentError(f"{os.path.join(top, rel)}: listed in the manifest but missing ({exc.strerror})") from None
        if not stat.S_ISDIR(st.st_mode):
            what = "a symlink (links to directories are not followed)" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise AgentError(f"{os.path.join(top, rel)}: '{printable('/'.join(parts[:i]))}' is {what}")
    path = os.path.join(top, *parts)
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise AgentError(f"{path}: listed in the manifest but missing ({exc.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        real, target, reason = resolve_link(top, parts[:-1], parts[-1])
        if real is None:
            raise AgentError(f"{path}: {reason}")
        assert target is not None
        path, st = real, target
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else special_kind(st.st_mode)
        raise AgentError(f"{path}: not a regular file ({kind})")
    return path, st


class UnsafeTree(AgentError):
    pass


def check_written_tree(top: str, label: str) -> int:
    """The last look at a tree an import wrote (every source, every archive) before it becomes a
    checkpoint: each symlink must resolve inside `top` by the rule of `resolve_link` (hop by
    hop from its own directory, never above the root, never absolute: the rule the scan, the
    upload and a pod reading the mounted checkpoint all follow, and one that does not depend on
    where the tree sits, unlike realpath), and no two names of one directory may be the same
    after Unicode normalization. UnsafeTree naming the entry otherwise; the number of entries
    looked at. Iterative (no recursion on the tree's depth); links to directories are not
    entered (their targets are inside and walked under their own names)."""
    stack: list[tuple[str, list[str]]] = [(top, [])]
    seen = 0
    while stack:
        directory, parts = stack.pop()
        with os.scandir(directory) as it:
            entries = list(it)
        seen += len(entries)
        twins = collisions([entry.name for entry in entries])
        for entry in entries:
            rel = "/".join([*parts, entry.name])
            if entry.name in twins:
                raise UnsafeTree(f"{label}: name '{spelled(rel)}' {collision_problem(twins[entry.name])}; refused")
            if entry.is_symlink():
                _, _, reason = resolve_link(top, parts, entry.name)
                if reason == LEAVES_CHECKPOINT:
                    raise UnsafeTree(f"{label}: symlink '{printable(rel)}' -> '{printable(os.readlink(entry.path))}' "
                                     f"resolves outside the checkpoint (links are followed hop by hop from their "
                                     f"own directory, never above the checkpoint's root); refused")
            elif entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, [*parts, entry.name]))
    return seen
