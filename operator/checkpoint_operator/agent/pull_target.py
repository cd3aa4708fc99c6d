"""What a directory may hold before a checkpoint is pulled into it (`kubectl ckpt pull NAME DIR`).

A pull makes DIR the checkpoint: afterwards it says "every file verified", which is only true
if DIR holds nothing else. So DIR may hold only what a pull of this same checkpoint leaves:
- its files, under their paths (a pull interrupted earlier: each is checked again, and a file
  that differs is fetched again);
- the directories on their way;
- download's temporary files (`.ckpt-download-*`: the parts of an interrupted pull);
- its manifest at the root, when it is this checkpoint's (same digest).
Anything else (a file the checkpoint does not have, a symlink, another directory, the manifest of
another checkpoint) is foreign: the pull is refused, naming it, unless the user asks for it to
be removed (`--clean`). Nothing is followed through a link, nothing is removed unasked.

`--clean` removes only in a directory a pull wrote (`pulled_into`): one whose root holds a pull's
manifest (of any checkpoint: the next version pulled over the last), or the parts of an
interrupted pull where this checkpoint's files go, or one of its files with its sha256. `kubectl ckpt pull x ~ --clean` (a typo for ./x) would
otherwise empty a home directory: there it is refused, and what to do said (hostile1's note).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from typing import Optional

from checkpoint_operator.agent import fstree
from checkpoint_operator.protocol.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest
from checkpoint_operator.protocol.names import TEMP_PREFIX, printable
from checkpoint_operator.agent.tree import EntryBudget, entry_limit

# Foreign entries named one by one (all are counted).
MAX_LISTED = 50


@dataclass(frozen=True)
class Foreign:
    rel: str  # inside DIR, '/'-separated, as on disk (not escaped)
    what: str  # why it does not belong, for a person
    is_dir: bool = False

    def line(self) -> str:
        return f"{printable(self.rel)}{'/' if self.is_dir else ''}: {self.what}"


@dataclass
class Examined:
    foreign: list[Foreign]  # the first MAX_LISTED
    count: int  # all of them


def _manifest_digest(path: str) -> Optional[str]:
    """The digest a manifest file in DIR records, or None when it cannot be read as one."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read(MAX_MANIFEST_BYTES + 1))
    except (OSError, ValueError, RecursionError):
        return None
    digest = data.get("digest") if isinstance(data, dict) else None
    return digest if isinstance(digest, str) else None


def _earlier_pull(directory: str, digest: str) -> Optional[Manifest]:
    """The manifest an earlier complete pull of the checkpoint `digest` left in DIR, if any."""
    from checkpoint_operator.protocol.errors import AgentError
    from checkpoint_operator.protocol.manifest import parse_manifest
    path = os.path.join(directory, MANIFEST_NAME)
    if _manifest_digest(path) != digest:
        return None
    try:
        with open(path, "rb") as f:
            return parse_manifest(f.read(MAX_MANIFEST_BYTES + 1), path)
    except (OSError, AgentError):
        return None


def examine(directory: str, manifest: Optional[Manifest], digest: Optional[str] = None) -> Examined:
    """What in `directory` does not belong to the checkpoint `manifest` (None: a checkpoint whose
    file list is not known before it arrives: only temporary files, or an earlier complete pull
    of the same checkpoint `digest`, may be there). A missing directory holds nothing."""
    found = Examined([], 0)
    if not os.path.lexists(directory):
        return found
    if manifest is None and digest is not None:
        manifest = _earlier_pull(directory, digest)
    files = {e.path for e in manifest.files} if manifest is not None else set()
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    wanted_digest = manifest.digest if manifest is not None else digest
    budget = EntryBudget(entry_limit(), what=directory)

    def add(item: Foreign) -> None:
        found.count += 1
        if len(found.foreign) < MAX_LISTED:
            found.foreign.append(item)

    stack: list[tuple[str, str]] = [(directory, "")]
    while stack:
        path, rel_dir = stack.pop()
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            budget.take(entry.path)
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                add(Foreign(rel, "unreadable"))
                continue
            if entry.name.startswith(TEMP_PREFIX) and stat.S_ISREG(st.st_mode):
                continue  # an interrupted pull's parts
            if stat.S_ISLNK(st.st_mode):
                add(Foreign(rel, "a symlink (a pull writes only regular files)"))
            elif stat.S_ISDIR(st.st_mode):
                if rel in dirs:
                    stack.append((entry.path, rel))
                else:
                    add(Foreign(rel, "a directory the checkpoint does not have", is_dir=True))
            elif not stat.S_ISREG(st.st_mode):
                add(Foreign(rel, "not a regular file"))
            elif rel == MANIFEST_NAME:
                recorded = _manifest_digest(entry.path)
                if wanted_digest is None or recorded != wanted_digest:
                    add(Foreign(rel, f"the manifest of another checkpoint (digest {recorded or 'unreadable'})"))
            elif rel not in files:
                add(Foreign(rel, "a file the checkpoint does not have"))
    return found


def remove_foreign(directory: str, manifest: Optional[Manifest], digest: Optional[str] = None) -> list[Foreign]:
    """Remove what `examine` finds (links themselves, never what they point at); what was removed."""
    removed: list[Foreign] = []
    while True:  # examine lists MAX_LISTED at a time
        found = examine(directory, manifest, digest)
        if not found.foreign:
            return removed
        for item in found.foreign:
            path = os.path.join(directory, *item.rel.split("/"))
            if item.is_dir:
                fstree.remove_tree(path)  # at any depth, never through a link
            else:
                os.unlink(path)
            removed.append(item)


def _sha256_of(path: str) -> Optional[str]:
    """The sha256 of the regular file at `path` (opened without following a link), or None."""
    import hashlib
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _holds_parts(directory: str) -> bool:
    """Whether `directory` itself (not below) holds a download's part file (`.ckpt-download-*`)."""
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    return True
    except OSError:
        return False
    return False


def _parents(path: str) -> list[str]:
    """The directories on the way to `path` ('a/b/c' -> ['a', 'a/b'])."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _places(directory: str, manifest: Optional[Manifest]) -> set[str]:
    """Where the checkpoint's files go inside `directory` ('' its root, then the manifest's
    directories, '/'-separated) that exist there as real directories, not through a link."""
    wanted = {""}
    for entry in manifest.files if manifest is not None else []:
        wanted.update(_parents(entry.path))
    places = {""}
    for place in sorted(wanted - {""}):  # a parent sorts before its children
        parent = place.rpartition("/")[0]
        path = os.path.join(directory, *place.split("/"))
        if parent in places and os.path.isdir(path) and not os.path.islink(path):
            places.add(place)
    return places


# A repository's own directory: --clean never removes one (hostile3 F5: a clone whose
# `.gitattributes` is the checkpoint's would otherwise lose its history).
REPOSITORY_DIRS = (".git", ".hg", ".svn")


def repository_in(directory: str, manifest: Optional[Manifest]) -> Optional[str]:
    """The first version-control directory (`.git`...) at the root of `directory` or in one of
    the checkpoint's directories there, '/'-separated, or None."""
    own = {p for e in (manifest.files if manifest is not None else []) for p in _parents(e.path)}
    for place in sorted(_places(directory, manifest)):
        for name in REPOSITORY_DIRS:
            rel = f"{place}/{name}" if place else name
            if rel not in own and os.path.lexists(os.path.join(directory, *rel.split("/"))):
                return rel
    return None


def pulled_into(directory: str, manifest: Optional[Manifest]) -> bool:
    """Whether `directory` is one a pull wrote, so that --clean may empty it of what is not the
    checkpoint. Only a pull's own traces count (hostile3 F5): the directory is missing or empty,
    its root holds a pull's manifest (a regular file that reads as one), a download's part files
    lie where this checkpoint's files go (the root or one of the manifest's directories, never
    anywhere below), or one of the checkpoint's files is at its path with its sha256 (not merely
    its size: every clone of a Hub repo has a `.gitattributes` of the same size). Reads the entries
    of the checkpoint's directories and hashes at most the same-size files, smallest first."""
    if not os.path.isdir(directory) or os.path.islink(directory):
        return not os.path.lexists(directory)
    if not os.listdir(directory):
        return True
    root_manifest = os.path.join(directory, MANIFEST_NAME)
    if os.path.isfile(root_manifest) and not os.path.islink(root_manifest) and _manifest_digest(root_manifest):
        return True
    places = _places(directory, manifest)
    for place in sorted(places):
        if _holds_parts(os.path.join(directory, *place.split("/")) if place else directory):
            return True
    same_size = []
    for entry in manifest.files if manifest is not None else []:
        if os.path.dirname(entry.path) not in places:
            continue  # under a link or a missing directory
        path = os.path.join(directory, *entry.path.split("/"))
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == entry.size:
            same_size.append((entry.size, path, entry.sha256))
    for _, path, sha256 in sorted(same_size):
        if _sha256_of(path) == sha256:
            return True
    return False


# --- case twins --------------------------------------------------------------------------------
# A checkpoint may hold `A.bin` and `a.bin` (Linux filesystems and S3 keep them apart; names.py
# does not fold case). On a case-insensitive filesystem (macOS's default APFS, Windows) the two
# are one file: the second would replace the first, verified, and the pull would end "every file
# verified" one file short. So such a pull is refused before a byte is written.

def case_twins(manifest: Manifest) -> Optional[tuple[str, str]]:
    """The first two paths of `manifest` that differ only by case, or None (the usual case)."""
    seen: dict[str, str] = {}
    for entry in manifest.files:
        folded = entry.path.casefold()
        if folded in seen:
            return seen[folded], entry.path
        seen[folded] = entry.path
    return None


def case_insensitive(directory: str) -> bool:
    """Whether names in `directory` (or, while it does not exist, in its nearest existing parent)
    are compared ignoring case: a probe file is made there and looked up by its upper-case name."""
    import tempfile
    where = os.path.abspath(directory)
    while not os.path.isdir(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    try:
        fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX + "case-", dir=where)
    except OSError:
        return False  # nothing can be written there: the pull itself says so, naming DIR
    os.close(fd)
    try:
        upper = os.path.join(where, os.path.basename(probe).upper())
        return upper != probe and os.path.lexists(upper)
    finally:
        os.unlink(probe)


def case_refusal(directory: str, manifest: Manifest) -> Optional[str]:
    """Why the checkpoint cannot be pulled into `directory` (it holds case twins and the
    filesystem there folds case), or None. Probes the filesystem only for a checkpoint with twins."""
    twins = case_twins(manifest)
    if twins is None or not case_insensitive(directory):
        return None
    return (f"{directory}: is on a case-insensitive filesystem, and the checkpoint holds both "
            f"'{printable(twins[0])}' and '{printable(twins[1])}', which would be one file there: pull onto a "
            f"case-sensitive filesystem (Linux, or a case-sensitive APFS volume on macOS)")
