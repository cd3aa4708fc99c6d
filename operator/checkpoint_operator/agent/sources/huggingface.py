"""hf://[datasets/]org/name[@revision]: the files of one commit of a Hugging Face Hub repository.

huggingface_hub resolves the revision to its commit (`model_info`), lists that commit's files
with their sizes and hashes (`list_repo_tree`), selects them with --include/--exclude
(`filter_repo_objects`: the allow/ignore patterns of `snapshot_download`) and builds each
file's URL (`hf_hub_url`, pinned to the commit, so a branch that moves mid-import cannot mix
two commits). The bytes are streamed here rather than by `hf_hub_download`, for three
guarantees it does not give:
- the token (HF_TOKEN, or the login's token file) is sent only to the endpoint's own origin
  (scheme, host and port): never to the CDN a file redirects to, never after a redirect to
  another host, never over http when the endpoint is https;
- the limits hold while bytes move: no file may be longer than the listing said (a server that
  sends more is cut off at once, not after filling the disk);
- every file is checked against the commit: the sha256 of an LFS file, the git blob id of any
  other, so a mirror that serves other bytes is refused.

The endpoint is --endpoint-url (spec.source.huggingFace.endpoint), else HF_ENDPOINT, else
https://huggingface.co.
"""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.names import printable
from checkpoint_operator.agent.progress import Progress
from checkpoint_operator.agent.redact import quoted
from checkpoint_operator.agent.urls import check_url, scheme_of, shown
from checkpoint_operator.agent.sources.base import (
    Fetched, Limits, Options, Source, check_count, check_listing, copy_stream, git_blob_hasher, http_error, run_parallel,
    target_path,
)

DEFAULT_ENDPOINT = "https://huggingface.co"
HTTP_TIMEOUT = 60
PARALLEL_FILES = 4


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL; a server's malformed one (a redirect) is nobody's origin."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "", "", 0
    return parts.scheme, (parts.hostname or "").lower(), port


class _TokenStaysHome(urllib.request.HTTPRedirectHandler):
    """Follows http(s) redirects; the token goes along only to the endpoint's origin. (urllib
    drops 'unredirected' headers on every redirect; this puts the token back where it may go.)"""

    def __init__(self, endpoint: str, token: Optional[str]) -> None:
        self.home = _origin(endpoint)
        self.token = token

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if scheme_of(newurl) not in ("http", "https"):
            raise AgentError(f"{shown(req.full_url)}: redirected to '{shown(newurl)}': only http(s) redirects are "
                             "followed")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and self.token and _origin(newurl) == self.home:
            new.add_unredirected_header("Authorization", f"Bearer {self.token}")
        return new


class HuggingFaceSource(Source):
    def __init__(self, uri: str, options: Options) -> None:
        from huggingface_hub import parse_hf_uri
        from huggingface_hub.errors import HfUriError

        self.uri = uri
        try:
            parsed = parse_hf_uri(uri)
        except HfUriError as exc:
            raise AgentError(f"{uri}: not a Hugging Face repository URI ({exc}); expected "
                             f"hf://org/name[@revision] or hf://datasets/org/name[@revision]") from None
        if parsed.type not in ("model", "dataset"):
            raise AgentError(f"{uri}: a {parsed.type} is not a checkpoint source: give a model or dataset repository")
        if parsed.path_in_repo:
            raise AgentError(f"{uri}: give the repository (hf://org/name[@revision]) and select files with --include, "
                             f"not a path inside it")
        self.repo, self.repo_type = parsed.id, parsed.type
        self.revision = parsed.revision or "main"
        self.endpoint = check_url(options.endpoint_url or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT,
                                  "the Hub endpoint").rstrip("/")
        self.include = list(options.include) or None
        self.exclude = list(options.exclude) or None
        self.label = f"hf://{'datasets/' if self.repo_type == 'dataset' else ''}{self.repo}@{self.revision}"

    # --- metadata through huggingface_hub ---

    def _describe(self, exc: BaseException, token: Optional[str]) -> AgentError:
        from huggingface_hub.errors import (
            GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError,
        )
        where = f" on {self.endpoint}"
        if isinstance(exc, GatedRepoError):
            return AgentError(f"{self.label}: gated repository{where}: the token's account must accept its conditions "
                              f"on the Hub first")
        if isinstance(exc, RepositoryNotFoundError):
            hint = ("or the token (HF_TOKEN) may not read it" if token else
                    "or it is private or gated and no token was given (set HF_TOKEN through secretRef)")
            return AgentError(f"{self.label}: repository not found{where}, {hint}")
        if isinstance(exc, RevisionNotFoundError):
            return AgentError(f"{self.label}: no revision {self.revision!r} in {self.repo}{where}")
        if isinstance(exc, HfHubHTTPError):
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status == 401:
                return AgentError(f"{self.label}: the Hub refused the token (HF_TOKEN){where} (HTTP 401)"
                                  if token else f"{self.label}: the Hub asks for a token{where} (HTTP 401): set HF_TOKEN")
            if status == 403:
                return AgentError(f"{self.label}: access denied{where} (HTTP 403): the token may not read this repository")
            return AgentError(f"{self.label}: the Hub answered HTTP {status}{where}")
        text = quoted(str(exc))
        return AgentError(f"{self.label}: cannot reach the Hub at {self.endpoint}: {type(exc).__name__}: {text}")

    def _listing(self, api, token: Optional[str], limits: Limits) -> tuple[str, list]:
        from huggingface_hub.hf_api import RepoFile
        from huggingface_hub.utils import filter_repo_objects
        try:
            info = api.repo_info(self.repo, repo_type=self.repo_type, revision=self.revision)
            commit = info.sha
            if not commit:
                raise AgentError(f"{self.label}: the Hub did not say which commit {self.revision!r} is")
            files = []
            for item in api.list_repo_tree(self.repo, repo_type=self.repo_type, revision=commit, recursive=True):
                if isinstance(item, RepoFile):
                    files.append(item)
                    check_count(self.label, len(files), limits)  # a listing is bounded as it is read
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated into one line
            raise self._describe(exc, token) from None
        selected = list(filter_repo_objects(files, allow_patterns=self.include, ignore_patterns=self.exclude,
                                            key=lambda f: f.path))
        if not selected:
            raise AgentError(f"{self.label}: no file of commit {commit} matches"
                             + (f" --include {self.include}" if self.include else "")
                             + (f" --exclude {self.exclude}" if self.exclude else "") + f" ({len(files)} files in all)")
        # Every file is checked against the commit as it arrives: a listing that gives no hash for one
        # (a mirror or proxy that drops the oid, an LFS entry without sha256) would let any bytes in.
        unhashed = [f.path for f in selected if not _expected_hash(f)]
        if unhashed:
            raise AgentError(f"{self.label}: the listing of commit {commit} at {self.endpoint} gives no hash for "
                             f"{printable(unhashed[0])}" + (f" (and {len(unhashed) - 1} more)" if len(unhashed) > 1 else "")
                             + ": its bytes could not be checked against the commit; refused")
        return commit, selected

    # --- bytes ---

    def fetch(self, tree: str, downloads: str, limits: Limits) -> Fetched:
        from huggingface_hub import HfApi, get_token, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        from checkpoint_operator import __version__
        token = get_token()
        api = HfApi(endpoint=self.endpoint, token=token or False, library_name="checkpoint-operator",
                    library_version=__version__)
        commit, files = self._listing(api, token, limits)
        total = check_listing(self.label, [(f.path, f.size) for f in files], limits)
        headers = build_hf_headers(token=False, library_name="checkpoint-operator", library_version=__version__)
        opener = urllib.request.build_opener(_TokenStaysHome(self.endpoint, token))
        failed = threading.Event()

        def one(f) -> None:
            url = hf_hub_url(self.repo, f.path, repo_type=self.repo_type, revision=commit, endpoint=self.endpoint)
            request = urllib.request.Request(url, headers=headers)
            if token and _origin(url) == _origin(self.endpoint):
                request.add_unredirected_header("Authorization", f"Bearer {token}")
            label = f"{self.label}: {printable(f.path)}"
            lfs = getattr(f, "lfs", None)
            hasher = hashlib.sha256() if lfs else git_blob_hasher(f.size)
            expected_hash = _expected_hash(f)
            try:
                with opener.open(request, timeout=HTTP_TIMEOUT) as resp:
                    served = resp.headers.get("X-Repo-Commit")
                    if served and served != commit:
                        raise AgentError(f"{label}: served from commit {served}, not {commit}; refused")
                    # read1: what has arrived (at most a chunk), so progress and a stop are seen as bytes move
                    copy_stream(resp.read1, target_path(tree, f.path), label=label, expected=f.size,
                                limit=limits.max_size, progress=progress, hasher=hasher, cancelled=failed)
            except urllib.error.HTTPError as exc:
                raise http_error(label, exc) from None
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, AgentError):
                    raise exc.reason from None
                raise AgentError(f"{label}: cannot fetch: {exc.reason}") from None
            except (ConnectionError, TimeoutError, OSError) as exc:
                if isinstance(exc, AgentError):
                    raise
                raise AgentError(f"{label}: transfer failed: {exc}") from None
            if hasher.hexdigest() != expected_hash:
                kind = "sha256" if lfs else "git blob id"
                raise AgentError(f"{label}: the bytes served do not match the commit ({kind} {hasher.hexdigest()}, "
                                 f"the repository lists {expected_hash}); refused")

        with Progress("import", total) as progress:
            run_parallel(one, files, PARALLEL_FILES, failed)
        return Fetched(provenance={"uri": self.uri, "revision": self.revision, "resolvedRevision": commit})


def _expected_hash(f: Any) -> str:
    """What the commit says a listed file's bytes hash to: the LFS sha256, else the git blob id."""
    lfs = getattr(f, "lfs", None)
    return str((lfs.sha256 if lfs else getattr(f, "blob_id", "")) or "")


SOURCE = HuggingFaceSource
