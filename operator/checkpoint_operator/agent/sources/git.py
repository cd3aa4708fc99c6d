"""git+https://host/repo[@revision], git+http://..., git://host/repo[@revision]: the files of one commit.

With the `git` CLI: a shallow fetch (depth 1) of the revision (a branch, a tag, a full commit id;
default the remote's HEAD) into a bare repository in the staging area, then the commit's tree
is listed (`ls-tree`: every path, mode and size) and checked before any file is written: the
names rule, the limits, links that would leave the checkpoint, submodules (not fetched:
refused rather than left out silently) and LFS pointers. Files are written from the object
database (`cat-file --batch`), byte for byte as committed: no checkout, so no `.gitattributes`
filter or line-ending conversion alters them. With --lfs, `git lfs fetch` downloads the commit's
LFS objects and each one is checked against its pointer (size and sha256) before it takes the
pointer's place; without it, a commit that holds LFS pointers is refused (its checkpoint would
be the pointers, not the weights).

Git runs isolated from any user or system configuration, with only the URL's protocol
allowed, no terminal prompt, and credentials from a helper that reads the Secret mounted at
CKPT_SOURCE_SECRET_DIR (files username, password) and answers for the URL's host only: never
in the URL, never on a command line, never printed. The fetch is watched while it runs: past
the size limit (plus what packing may add) git is stopped.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import IO, Iterator, Optional

from checkpoint_operator.agent import fstree
from checkpoint_operator.agent.archive import _link_stays_inside
from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.names import printable
from checkpoint_operator.agent.progress import Progress
from checkpoint_operator.agent.redact import quoted
from checkpoint_operator.agent.urls import parse_url, shown
from checkpoint_operator.agent.sources.base import (
    SECRET_DIR_ENV, Fetched, Limits, Options, Source, check_listing, copy_stream, target_path,
)

LFS_POINTER = re.compile(rb"^version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize ([0-9]+)\n")
MAX_POINTER = 1024  # git-lfs pointers are ~130 bytes; larger blobs are never read as pointers
MAX_LINK_TARGET = 4096  # PATH_MAX: a symlink blob longer than this is refused unread
GIT_TIMEOUT = float(os.environ.get("CKPT_GIT_TIMEOUT", "3600"))
WATCH_INTERVAL = 0.2
# Packs are compressed, but incompressible data grows a little in them: the watchdog lets the
# fetch take this much more than the limit before it stops it (the tree's sizes decide exactly).
PACK_SLACK = 1.05
CREDENTIAL_HOST_ENV = "CKPT_GIT_CREDENTIAL_HOST"


@dataclass
class Entry:
    mode: str
    kind: str  # blob, commit (a submodule)
    oid: str
    size: int
    path: str
    lfs: Optional[tuple[str, int]] = None  # (sha256, size) when the blob is an LFS pointer


def parse_git_uri(uri: str) -> tuple[str, Optional[str]]:
    """(the URL git fetches, the revision or None). The revision follows the first '@' after the
    host (a URL never holds credentials here, so an '@' is always the revision's)."""
    url = uri[len("git+"):] if uri.startswith("git+") else uri
    parts = parse_url(url, "the import source")  # credentials and a malformed host: one line
    if parts.scheme not in ("https", "http", "git") or not parts.netloc or parts.query or parts.fragment:
        raise AgentError(f"{shown(uri)}: not a Git repository URL (expected git+https://host/repo[@revision], "
                         f"git+http://host/repo[@revision] or git://host/repo[@revision])")
    path, revision = parts.path, None
    if "@" in path:
        path, _, revision = path.partition("@")
        if not revision or ".." in revision or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._/-]*", revision):
            raise AgentError(f"{uri}: revision {revision!r} is not a branch, tag or commit id")
    if path in ("", "/"):
        raise AgentError(f"{uri}: no repository path in the URL")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", "")), revision


class GitSource(Source):
    def __init__(self, uri: str, options: Options) -> None:
        self.uri = uri
        self.url, self.revision = parse_git_uri(uri)
        self.lfs = options.lfs
        self.ca_file = options.ca_file
        self.label = uri
        self.scheme = urllib.parse.urlsplit(self.url).scheme
        if shutil.which("git") is None:
            raise AgentError(f"{uri}: the git command is not installed (the agent needs git for Git sources)")

    # --- running git ---

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_ASKPASS="",
                   SSH_ASKPASS="", GIT_LFS_SKIP_SMUDGE="1", LC_ALL="C",
                   **{CREDENTIAL_HOST_ENV: urllib.parse.urlsplit(self.url).netloc})
        return env

    def _config(self) -> list[str]:
        config = ["-c", "protocol.allow=never", "-c", f"protocol.{self.scheme}.allow=always",
                  "-c", "credential.helper=", "-c", "core.askPass=", "-c", "http.followRedirects=initial",
                  "-c", "lfs.concurrenttransfers=4"]
        if os.environ.get(SECRET_DIR_ENV):
            helper = f"!{shlex.quote(sys.executable)} -m checkpoint_operator.agent.sources.git_credential"
            config += ["-c", f"credential.helper={helper}"]
        if self.ca_file:
            config += ["-c", f"http.sslCAInfo={self.ca_file}"]
        return config

    def _git(self, gitdir: str, *args: str, watch: Optional[tuple[str, int]] = None) -> str:
        """Run git on `gitdir`; its stdout, or AgentError with what git said. `watch`: (directory,
        bytes) — stop git when the directory grows past the bytes."""
        argv = ["git", *self._config(), f"--git-dir={gitdir}", *args]
        proc = subprocess.Popen(argv, env=self._env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        over = threading.Event()
        if watch is not None:
            def watchdog() -> None:
                while proc.poll() is None:
                    if _du(watch[0]) > watch[1]:
                        over.set()
                        _kill_group(proc)
                        return
                    time.sleep(WATCH_INTERVAL)
            threading.Thread(target=watchdog, daemon=True).start()
        try:
            out, err = proc.communicate(timeout=GIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            raise AgentError(f"{self.label}: git {args[0]} took longer than {GIT_TIMEOUT:.0f} s (CKPT_GIT_TIMEOUT)")
        except BaseException:  # SIGTERM: git (and git-lfs under it) go with the import
            _kill_group(proc)
            proc.wait()
            raise
        if over.is_set() and watch is not None:
            raise AgentError(f"{self.label}: git {args[0]} went past the size limit while fetching (more than "
                             f"{watch[1]} bytes received; see --max-size); stopped")
        if proc.returncode != 0:
            raise self._describe(args[0], err.decode("utf-8", "replace"))
        return out.decode("utf-8", "surrogateescape")

    def _describe(self, command: str, stderr: str) -> AgentError:
        text = stderr.lower()
        rev = self.revision or "HEAD"
        if "couldn't find remote ref" in text or "no such ref" in text:
            return AgentError(f"{self.label}: no revision {rev!r} in {self.url}")
        if "not our ref" in text or "allowreachablesha1inwant" in text or "upload-pack: not" in text:
            return AgentError(f"{self.label}: the server does not serve commit {rev} by its id; give a branch or tag "
                              f"that points at it")
        if ("authentication failed" in text or "could not read username" in text or "could not read password" in text
                or "terminal prompts disabled" in text or " 401" in text or " 403" in text):
            secret = os.environ.get(SECRET_DIR_ENV)
            return AgentError(f"{self.label}: access denied by {self.url}: "
                              + ("the username/password of the Secret were refused" if secret
                                 else "it needs credentials (a Secret with username and password: secretRef)"))
        if "repository not found" in text or "not found" in text or " 404" in text or "does not appear to be a git" in text:
            return AgentError(f"{self.label}: repository not found at {self.url}")
        if "could not resolve host" in text or "connection refused" in text or "failed to connect" in text \
                or "unable to connect" in text or "couldn't connect" in text:
            return AgentError(f"{self.label}: cannot reach {self.url}: connection refused or unreachable")
        if "certificate" in text or "ssl" in text:
            return AgentError(f"{self.label}: TLS verification of {self.url} failed (give the server's CA: caConfigMap, "
                              f"--ca-file): {_last_line(stderr)}")
        if "failed to fetch some objects" in text:
            return AgentError(f"{self.label}: the LFS server of {self.url} did not provide every LFS object of the "
                              f"commit intact (missing, refused, or not matching its pointer)")
        if "git: 'lfs' is not a git command" in text:
            return AgentError(f"{self.label}: git-lfs is not installed (needed for lfs: true)")
        return AgentError(f"{self.label}: git {command} failed: {_last_line(stderr)}")

    # --- the import ---

    def fetch(self, tree: str, downloads: str, limits: Limits) -> Fetched:
        gitdir = os.path.join(downloads, "repo.git")
        subprocess.run(["git", "init", "--quiet", "--bare", gitdir], env=self._env(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._git(gitdir, "config", "remote.origin.url", self.url)
        pack_limit = int(limits.max_size * PACK_SLACK) + 1024 * 1024
        self._git(gitdir, "fetch", "--quiet", "--depth=1", "--no-tags", "--no-recurse-submodules", "origin",
                  self.revision or "HEAD", watch=(gitdir, pack_limit))
        commit = self._git(gitdir, "rev-parse", "--verify", "FETCH_HEAD^{commit}").strip()
        if self.revision and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", self.revision) and commit != self.revision:
            raise AgentError(f"{self.label}: fetched commit {commit}, not {self.revision}")
        entries = self._entries(gitdir, commit, limits)
        pointers = [e for e in entries if e.lfs]
        if pointers and not self.lfs:
            raise AgentError(f"{self.label}: {len(pointers)} file(s) of commit {commit} are Git LFS pointers (e.g. "
                             f"'{printable(pointers[0].path)}'): set lfs: true (--lfs) to fetch them")
        sized = [(e.path, e.lfs[1] if e.lfs else e.size) for e in entries]
        total = check_listing(self.label, sized, limits)
        with Progress("import", total) as progress:
            self._write_blobs(gitdir, [e for e in entries if not e.lfs], tree, progress)
            if pointers:
                self._write_lfs(gitdir, commit, pointers, tree, limits, progress)
        return Fetched(provenance={"uri": self.uri, "revision": self.revision or "HEAD", "resolvedRevision": commit})

    def _entries(self, gitdir: str, commit: str, limits: Limits) -> list[Entry]:
        listing = self._git(gitdir, "ls-tree", "-r", "-z", "--long", "--full-tree", commit)
        entries: list[Entry] = []
        for record in listing.split("\0"):
            if not record:
                continue
            meta, _, path = record.partition("\t")
            mode, kind, oid, size = meta.split()
            if kind == "commit":
                raise AgentError(f"{self.label}: '{printable(path)}' is a submodule; submodules are not imported "
                                 f"(import that repository on its own)")
            entries.append(Entry(mode, kind, oid, int(size) if size.isdigit() else 0, path))
            if len(entries) > limits.max_files:
                raise AgentError(f"{self.label}: more than the limit of {limits.max_files} files (see --max-files)")
        for entry in entries:
            if entry.mode == "120000" and entry.size > MAX_LINK_TARGET:
                raise AgentError(f"{self.label}: symlink '{printable(entry.path)}' has a target longer than "
                                 f"{MAX_LINK_TARGET} bytes; refused")
        small = [e for e in entries if e.mode == "120000" or e.size <= MAX_POINTER]
        for entry, data in zip(small, self._read_blobs(gitdir, [e.oid for e in small])):
            if entry.mode == "120000":
                target = os.fsdecode(data)
                if not _link_stays_inside(entry.path, target):
                    raise AgentError(f"{self.label}: symlink '{printable(entry.path)}' -> '{printable(target)}' leads "
                                     f"outside the checkpoint; refused")
                entry.size = 0
            else:
                match = LFS_POINTER.match(data)
                if match:
                    entry.lfs = (match.group(1).decode(), int(match.group(2)))
        return entries

    def _read_blobs(self, gitdir: str, oids: list[str]) -> Iterator[bytes]:
        """The content of small blobs (links, candidate LFS pointers), one at a time from one
        `cat-file --batch` (each at most MAX_LINK_TARGET bytes: checked from the listing)."""
        if not oids:
            return
        proc, stdin, stdout = self._cat_file(gitdir)
        try:
            for oid in oids:
                stdin.write(oid.encode() + b"\n")
                stdin.flush()
                header = stdout.readline().split()
                if len(header) != 3:
                    raise AgentError(f"{self.label}: object {oid} missing from the fetch")
                yield stdout.read(int(header[2]))
                stdout.read(1)
        finally:
            stdin.close()
            proc.kill()
            proc.wait()

    def _cat_file(self, gitdir: str) -> tuple[subprocess.Popen[bytes], IO[bytes], IO[bytes]]:
        """A `git cat-file --batch` process and its stdin and stdout."""
        proc = subprocess.Popen(["git", f"--git-dir={gitdir}", "cat-file", "--batch"], env=self._env(),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if proc.stdin is None or proc.stdout is None:  # not with PIPE; said for the type checker
            proc.kill()
            raise AgentError(f"{self.label}: git cat-file started without its pipes")
        return proc, proc.stdin, proc.stdout

    def _write_blobs(self, gitdir: str, entries: list[Entry], tree: str, progress: Progress) -> None:
        """Every file, streamed from one `cat-file --batch` process, checked against its size."""
        proc, stdin, stdout = self._cat_file(gitdir)
        try:
            for entry in entries:
                stdin.write(entry.oid.encode() + b"\n")
                stdin.flush()
                header = stdout.readline().split()
                if len(header) != 3 or header[1] != b"blob":
                    raise AgentError(f"{self.label}: '{printable(entry.path)}': object {entry.oid} missing from the fetch")
                size = int(header[2])
                target = target_path(tree, entry.path)
                if entry.mode == "120000":
                    os.symlink(os.fsdecode(stdout.read(size)), target)
                else:
                    copy_stream(stdout.read, target, label=f"{self.label}: {printable(entry.path)}",
                                expected=size, limit=size, progress=progress, framed=True)
                    os.chmod(target, 0o755 if entry.mode == "100755" else 0o644)
                stdout.read(1)  # the newline after each object
        finally:
            stdin.close()
            proc.kill()
            proc.wait()

    def _write_lfs(self, gitdir: str, commit: str, pointers: list[Entry], tree: str, limits: Limits,
                   progress: Progress) -> None:
        if shutil.which("git-lfs") is None:
            raise AgentError(f"{self.label}: git-lfs is not installed (needed for lfs: true)")
        lfs_limit = sum(e.lfs[1] for e in pointers if e.lfs) + 1024 * 1024
        self._git(gitdir, "lfs", "fetch", "origin", commit, watch=(os.path.join(gitdir, "lfs"), lfs_limit))
        placed: dict[str, str] = {}
        for entry in pointers:
            if entry.lfs is None:
                continue  # (pointers are the entries that are LFS pointers)
            oid, size = entry.lfs
            label = f"{self.label}: {printable(entry.path)}"
            target = target_path(tree, entry.path)
            if oid in placed:  # the same content under two paths
                shutil.copyfile(placed[oid], target)
            else:
                stored = os.path.join(gitdir, "lfs", "objects", oid[:2], oid[2:4], oid)
                if not os.path.isfile(stored):
                    raise AgentError(f"{label}: the LFS server did not provide object {oid}")
                digest = hashlib.sha256()
                with open(stored, "rb") as f:
                    copy_stream(f.read, target, label=label, expected=size, limit=limits.max_size, hasher=digest)
                if digest.hexdigest() != oid:
                    raise AgentError(f"{label}: LFS object does not match its pointer (sha256 {digest.hexdigest()}, "
                                     f"pointer {oid}); refused")
                os.unlink(stored)
                placed[oid] = target
            os.chmod(target, 0o755 if entry.mode == "100755" else 0o644)
            progress.add(size)


def _kill_group(proc: subprocess.Popen) -> None:
    """git runs helpers (git-lfs, remote-http) in its own session: stop them all."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _du(path: str) -> int:
    total = 0
    for dirpath, _, files in fstree.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return quoted(lines[-1]) if lines else "(no message)"


SOURCE = GitSource
