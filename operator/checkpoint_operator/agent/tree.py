"""The files of a checkpoint: one walker for scan, upload and download.

A checkpoint is a directory tree; its files are every regular file under it, with these rules:
- names must pass protocol/names.py; an entry whose name does not is skipped with the rule;
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
- at most `max_entries` directory entries are looked at in all (`EntryBudget`): past it the
  walk fails with a clear error instead of growing without bound.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.manifest import MANIFEST_NAME, RESERVED_ROOT_NAMES
from checkpoint_operator.protocol.names import MAX_PATH_BYTES, component_problem, printable

DEFAULT_MAX_ENTRIES = 1_000_000
# The scan that streams its manifests (scan --result: the volume store's snapshot) holds about
# 100 bytes per file, not a tree: a million files and their directories fit.
STREAMING_MAX_ENTRIES = 2_000_000
MAX_LINK_HOPS = 40  # Linux's MAXSYMLINKS
# Components looked at while resolving one link (bounds the work of links to long paths of links).
MAX_RESOLVE_STEPS = 4096

# Reasons a reader of `skipped` sees; tests and the operator's events quote them.
LEAVES_CHECKPOINT = "symlink leaves the checkpoint"
LINK_TO_DIRECTORY = "symlink to a directory: not followed (its files are taken under their real path)"
SYMLINK_LOOP = "symlink loop (more than 40 hops)"
BROKEN_SYMLINK = "broken symlink"


def entry_limit(given: Optional[int] = None, default: int = DEFAULT_MAX_ENTRIES) -> int:
    """--max-entries, else CKPT_SCAN_MAX_ENTRIES, else the default."""
    value = os.environ.get("CKPT_SCAN_MAX_ENTRIES", "")
    return given or (int(value) if value.isdigit() and int(value) > 0 else default)


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
                                 f"refusing to go on (raise --max-entries if this is intended)")


@dataclass(slots=True)
class TreeFile:
    rel: str  # path inside the checkpoint, '/'-separated
    open_path: str  # the real file to read (symlinks resolved: no link in it)
    inode: tuple[int, int]  # (st_dev, st_ino): each distinct file is read once
    size: int
    shared: bool = False  # other paths may reach the same file (hard links, or reached through a symlink)


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


def walk_checkpoint(top: str, budget: Optional[EntryBudget] = None) -> Tree:
    """Every file of the checkpoint rooted at `top` (see the module doc), and what was skipped."""
    tree = Tree()
    tree.files = list(iter_checkpoint(top, budget, tree.skip))
    return tree


def _sorted_keys(directory: str) -> list[bytes]:
    """The names in `directory` as sort keys: the name's bytes, with '/' after a directory's,
    so that a depth-first walk in this order visits paths in the order of their bytes."""
    keys = []
    with os.scandir(directory) as it:
        for entry in it:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            keys.append(os.fsencode(entry.name) + (b"/" if is_dir else b""))
    keys.sort()
    return keys


def iter_checkpoint(top: str, budget: Optional[EntryBudget] = None,
                    skip: Optional[Callable[[str, str], None]] = None) -> Iterator[TreeFile]:
    """Every file of the checkpoint rooted at `top` (see the module doc), in the canonical
    order: by the bytes of their paths, as the digest sorts them (protocol/manifest.py), so a
    manifest can be written as the files are hashed. `skip(rel, reason)` hears what is left out
    (`rel` as found: escape it with printable() before showing it).

    Memory is one directory's names per level of the walk, never the tree's: sorting a name
    with '/' appended when it is a directory makes the depth-first order the byte order of the
    whole paths ('a-b' < 'a.b' < 'a/x', as '-' < '.' < '/')."""
    budget = budget or EntryBudget(what=top)
    tell = skip or (lambda rel, reason: None)
    # (directory on disk, its components inside the checkpoint, its sorted keys, the next index)
    stack: list[tuple[str, list[str], list[bytes], int]] = []
    try:
        stack.append((top, [], _sorted_keys(top), 0))
    except OSError as exc:
        tell(".", f"unreadable directory: {exc.strerror}")
    while stack:
        directory, parts, keys, index = stack[-1]
        if index == len(keys):
            stack.pop()
            continue
        stack[-1] = (directory, parts, keys, index + 1)
        key = keys[index]
        listed_as_dir = key.endswith(b"/")
        name = os.fsdecode(key[:-1] if listed_as_dir else key)
        rel_dir = "/".join(parts)
        rel = f"{rel_dir}/{name}" if rel_dir else name
        path = os.path.join(directory, name)
        budget.take(path)
        if not parts and name in RESERVED_ROOT_NAMES:
            if name != MANIFEST_NAME:  # a manifest written by an earlier download describes
                tell(rel, "name reserved for the agent's own files")
            continue
        problem = component_problem(name)
        if problem:
            tell(rel, f"name {problem}")
            continue
        if len(rel.encode("utf-8")) > MAX_PATH_BYTES:
            tell(rel, f"path is longer than {MAX_PATH_BYTES} bytes")
            continue
        try:
            st = os.lstat(path)
        except OSError as exc:
            tell(rel, _os_reason(exc))
            continue
        if stat.S_ISDIR(st.st_mode) != listed_as_dir:
            # Replaced between the listing and now: its place in the order is no longer known.
            tell(rel, "changed while the directory was read (a file became a directory, or back)")
            continue
        if listed_as_dir:
            try:
                stack.append((path, [*parts, name], _sorted_keys(path), 0))
            except OSError as exc:
                tell(rel, f"unreadable directory: {exc.strerror}")
            continue
        found = _file_of(top, parts, name, path, st, tell, rel)
        if found is not None:
            yield found


def _file_of(top: str, parts: list[str], name: str, path: str, st: os.stat_result,
             tell: Callable[[str, str], None], rel: str) -> Optional[TreeFile]:
    """One entry that is not a directory: a file (a link to a file: that file), else a skip."""
    open_path, shared = path, st.st_nlink > 1
    if stat.S_ISLNK(st.st_mode):
        real, target_st, reason = resolve_link(top, parts, name)
        if real is None:
            tell(rel, reason)
            return None
        assert target_st is not None
        if stat.S_ISDIR(target_st.st_mode):
            tell(rel, LINK_TO_DIRECTORY)
            return None
        open_path, st, shared = real, target_st, True
    if stat.S_ISREG(st.st_mode):
        return TreeFile(rel, open_path, (st.st_dev, st.st_ino), st.st_size, shared)
    tell(rel, special_kind(st.st_mode))
    return None


def locate_file(top: str, rel: str) -> tuple[str, os.stat_result]:
    """The real file that the valid path `rel` names in the checkpoint rooted at `top`, by the
    rules of walk_checkpoint (no directory reached through a link; a link to a file resolved
    inside the root), as (path to read, its stat); AgentError naming `rel` otherwise."""
    parts = rel.split("/")
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
