"""The files of a checkpoint: one walker for scan, upload and download.

A checkpoint is a directory tree; its files are every regular file under it, with these rules:
- names must pass protocol/names.py; an entry whose name does not is skipped with the rule, and
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
from typing import Callable, Iterator, Optional

from checkpoint_operator.protocol.errors import AgentError, Refusal
from checkpoint_operator.protocol.manifest import MANIFEST_NAME, RESERVED_ROOT_NAMES
from checkpoint_operator.protocol.names import (
    MAX_PATH_BYTES, collision_problem, collisions, component_problem, printable, spelled,
)

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
DIRECTORY_CYCLE = "symlink to a directory that contains it (a cycle)"


def entry_limit(given: Optional[int] = None, default: int = DEFAULT_MAX_ENTRIES) -> int:
    """--max-entries, else CKPT_SCAN_MAX_ENTRIES, else the default."""
    value = os.environ.get("CKPT_SCAN_MAX_ENTRIES", "")
    return given or (int(value) if value.isdigit() and int(value) > 0 else default)


class TooManyEntries(Refusal):
    """More entries than the limit: the same tree has as many the next time (not retried)."""


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


def walk_checkpoint(top: str, budget: Optional[EntryBudget] = None, *, follow_links: bool = False) -> Tree:
    """Every file of the checkpoint rooted at `top` (see the module doc), and what was skipped."""
    tree = Tree()
    tree.files = list(iter_checkpoint(top, budget, lambda shown, reason: tree.skipped.append((shown, reason)),
                                      follow_links=follow_links))
    return tree


def _listing(directory: str, follow_links: bool) -> tuple[list[bytes], dict[str, str]]:
    """The names in `directory` as sort keys: the name's bytes, with '/' after a directory's
    (a link to one too, when links are followed), so that a depth-first walk in this order visits
    paths in the order of their bytes; and the names that are twins after normalization."""
    keys, names = [], []
    with os.scandir(directory) as it:
        for entry in it:
            try:
                is_dir = entry.is_dir(follow_symlinks=follow_links)
            except OSError:
                is_dir = False
            keys.append(os.fsencode(entry.name) + (b"/" if is_dir else b""))
            names.append(entry.name)
    keys.sort()
    return keys, collisions(names)


def _identity(path: str) -> frozenset:
    try:
        st = os.stat(path)
    except OSError:
        return frozenset()
    return frozenset({(st.st_dev, st.st_ino)})


def iter_checkpoint(top: str, budget: Optional[EntryBudget] = None,
                    skip: Optional[Callable[[str, str], None]] = None, *,
                    follow_links: bool = False) -> Iterator[TreeFile]:
    """Every file of the checkpoint rooted at `top` (see the module doc), in the canonical
    order: by the bytes of their paths, as the digest sorts them (protocol/manifest.py), so a
    manifest can be written as the files are hashed. `skip(shown, reason)` hears what is left
    out (`shown`: the path as a message shows it, escaped).

    Memory is one directory's names per level of the walk, never the tree's: sorting a name
    with '/' appended when it is a directory makes the depth-first order the byte order of the
    whole paths ('a-b' < 'a.b' < 'a/x', as '-' < '.' < '/')."""
    budget = budget or EntryBudget(what=top)
    tell = skip or (lambda shown, reason: None)
    # (directory on disk, its components inside the checkpoint, its sorted keys, the next index,
    # its twins, the (st_dev, st_ino) of the directories on its way: kept when links are followed,
    # to refuse a cycle)
    stack: list[tuple[str, list[str], list[bytes], int, dict[str, str], frozenset]] = []
    try:
        keys, twins = _listing(top, follow_links)
        stack.append((top, [], keys, 0, twins, _identity(top) if follow_links else frozenset()))
    except OSError as exc:
        tell(".", f"unreadable directory: {exc.strerror}")
    while stack:
        directory, parts, keys, index, twins, ancestors = stack[-1]
        if index == len(keys):
            stack.pop()
            continue
        stack[-1] = (directory, parts, keys, index + 1, twins, ancestors)
        key = keys[index]
        listed_as_dir = key.endswith(b"/")
        name = os.fsdecode(key[:-1] if listed_as_dir else key)
        rel_dir = "/".join(parts)
        rel = f"{rel_dir}/{name}" if rel_dir else name
        path = os.path.join(directory, name)
        budget.take(path)
        if not parts and name in RESERVED_ROOT_NAMES:
            if name != MANIFEST_NAME:  # a manifest written by an earlier download describes
                tell(printable(rel), "name reserved for the agent's own files")
            continue
        problem = component_problem(name)
        if problem:
            tell(printable(rel), f"name {problem}")
            continue
        if name in twins:  # neither is taken: which one is meant cannot be told
            tell(spelled(rel), f"name {collision_problem(twins[name])}")
            continue
        if len(rel.encode("utf-8")) > MAX_PATH_BYTES:
            tell(printable(rel), f"path is longer than {MAX_PATH_BYTES} bytes")
            continue
        entry = _followed(path, rel, ancestors, tell) if follow_links else _entry(top, parts, name, path, rel, tell)
        if entry is None:
            continue
        found, identity = entry
        if isinstance(found, TreeFile):
            if listed_as_dir:  # replaced between the listing and now: its place in the order is lost
                tell(printable(rel), "changed while the directory was read (a directory became a file)")
                continue
            yield found
            continue
        if not listed_as_dir:
            tell(printable(rel), "changed while the directory was read (a file became a directory)")
            continue
        try:
            child_keys, child_twins = _listing(path, follow_links)
        except OSError as exc:
            tell(printable(rel), f"unreadable directory: {exc.strerror}")
            continue
        stack.append((path, [*parts, name], child_keys, 0, child_twins, ancestors | identity))


def _entry(top: str, parts: list[str], name: str, path: str, rel: str, tell: Callable[[str, str], None]
           ) -> Optional[tuple[Optional[TreeFile], frozenset]]:
    """One entry, links resolved inside the root: (its file, or None for a directory to walk), or
    None when it is skipped."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        tell(printable(rel), _os_reason(exc))
        return None
    if stat.S_ISDIR(st.st_mode):
        return None, frozenset()
    open_path, shared = path, st.st_nlink > 1
    if stat.S_ISLNK(st.st_mode):
        real, target_st, reason = resolve_link(top, parts, name)
        if real is None:
            tell(printable(rel), reason)
            return None
        assert target_st is not None
        if stat.S_ISDIR(target_st.st_mode):
            tell(printable(rel), LINK_TO_DIRECTORY)
            return None
        open_path, st, shared = real, target_st, True
    if stat.S_ISREG(st.st_mode):
        return TreeFile(rel, open_path, (st.st_dev, st.st_ino), st.st_size, shared), frozenset()
    tell(printable(rel), special_kind(st.st_mode))
    return None


def _followed(path: str, rel: str, ancestors: frozenset, tell: Callable[[str, str], None]
              ) -> Optional[tuple[Optional[TreeFile], frozenset]]:
    """One entry, links followed wherever they point (`cp -L`)."""
    try:
        st = os.stat(path)  # follows every link on the way
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            tell(printable(rel), SYMLINK_LOOP)
        elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
            tell(printable(rel), BROKEN_SYMLINK)
        else:
            tell(printable(rel), _os_reason(exc))
        return None
    if stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            tell(printable(rel), DIRECTORY_CYCLE)
            return None
        return None, frozenset({key})
    if stat.S_ISREG(st.st_mode):
        return TreeFile(rel, path, (st.st_dev, st.st_ino), st.st_size, True), frozenset()
    tell(printable(rel), special_kind(st.st_mode))
    return None


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
