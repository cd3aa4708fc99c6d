"""agent import of Git repositories: `git http-backend` with Basic auth and an LFS batch endpoint,
and `git daemon`, both on 127.0.0.1 (gitserver.py); the agent runs in the test process (agentrun.py)."""

from __future__ import annotations

import os
import shutil

import pytest

import credentials

from checkpoint_operator.agent.sources import git as git_source
from agentrun import run_agent
from gitserver import git_daemon, git_http  # noqa: F401  (fixtures)
from layouts import read_tree, tiny_model
from required import unavailable

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("credential_watch")]
HAS_LFS = shutil.which("git-lfs") is not None


# The logins these tests hand the agent (the ones it must accept; "wrong" is refused, and an
# ordinary word: looking for it would find it in names).
credentials.register("s3cret-token", "lfs-pass")


def secret_dir(tmp_path, username: str, password: str):
    directory = tmp_path / "secret"
    directory.mkdir(exist_ok=True)
    (directory / "username").write_text(username)
    (directory / "password").write_text(password)
    return str(directory)


def nothing_left(dest) -> bool:
    return not dest.exists() and not [p for p in dest.parent.iterdir() if ".ckpt-import-" in p.name]


def test_a_commit_over_http_byte_for_byte(git_http, tmp_path):
    files = {**tiny_model(), "notes.txt": b"a\nb\n", "run.sh": b"#!/bin/sh\n"}
    # .gitattributes asking for a conversion: a checkout would write notes.txt with CRLF; the
    # import gives the bytes as committed.
    files[".gitattributes"] = b"*.txt text eol=crlf\n"
    commit = git_http.add_repo("model", files, links={"latest.json": "config.json"})
    dest = tmp_path / "ckpt"
    run = run_agent("import", f"git+{git_http.url('model')}", str(dest))
    assert run.result["provenance"] == {"uri": f"git+{git_http.url('model')}", "revision": "HEAD",
                                        "resolvedRevision": commit}
    assert read_tree(dest) == files
    assert os.readlink(dest / "latest.json") == "config.json"
    assert not (dest / ".git").exists()


@pytest.mark.parametrize("revision", ["v1", "main", "commit"])
def test_a_tag_a_branch_or_a_commit(git_http, tmp_path, revision):
    old = {"config.json": b'{"old": true}'}
    commit = git_http.add_repo("model", tiny_model(), tag="v1", history=[old])
    rev = commit if revision == "commit" else revision
    run = run_agent("import", f"git+{git_http.url('model')}@{rev}", str(tmp_path / "ckpt"))
    assert run.result["provenance"]["resolvedRevision"] == commit
    assert read_tree(tmp_path / "ckpt") == tiny_model()


def test_git_daemon(git_daemon, tmp_path):
    commit = git_daemon.add_repo("model", tiny_model())
    run = run_agent("import", git_daemon.url("model"), str(tmp_path / "ckpt"))
    assert run.result["provenance"]["resolvedRevision"] == commit
    assert read_tree(tmp_path / "ckpt") == tiny_model()


def test_credentials_from_the_mounted_secret_only_to_the_repository_host(git_http, tmp_path):
    git_http.add_repo("private", tiny_model())
    git_http.require_login("ckpt", "s3cret-token")
    dest = tmp_path / "ckpt"
    run = run_agent("import", f"git+{git_http.url('private')}", str(dest),
                    env={"CKPT_SOURCE_SECRET_DIR": secret_dir(tmp_path, "ckpt", "s3cret-token")})
    assert read_tree(dest) == tiny_model(), run.stderr
    assert "s3cret-token" not in run.stderr + run.stdout
    assert any(auth for _, _, auth in git_http.requests)


@pytest.mark.parametrize("login,words", [
    (None, "it needs credentials (a Secret with username and password: secretRef)"),
    (("ckpt", "wrong"), "the username/password of the Secret were refused"),
])
def test_missing_or_wrong_credentials(git_http, tmp_path, login, words):
    git_http.add_repo("private", tiny_model())
    git_http.require_login("ckpt", "s3cret-token")
    env = {"CKPT_SOURCE_SECRET_DIR": secret_dir(tmp_path, *login)} if login else None
    dest = tmp_path / "ckpt"
    run = run_agent("import", f"git+{git_http.url('private')}", str(dest), env=env)
    assert "access denied" in run.error and words in run.error, run.error
    assert "wrong" not in run.error and nothing_left(dest)


def test_credential_helper_answers_for_the_repository_host_only():
    from checkpoint_operator.agent.sources.git_credential import answer
    login = ("u", "p")
    assert answer({"protocol": "https", "host": "git.example.com"}, "git.example.com", login) == "username=u\npassword=p\n"
    assert answer({"protocol": "https", "host": "evil.example.com"}, "git.example.com", login) == ""
    assert answer({"protocol": "https", "host": "git.example.com"}, "git.example.com", None) == ""


def test_missing_revision_and_missing_repository(git_http, tmp_path):
    git_http.add_repo("model", tiny_model())
    run = run_agent("import", f"git+{git_http.url('model')}@v9", str(tmp_path / "a"))
    assert "no revision 'v9'" in run.error
    run = run_agent("import", f"git+{git_http.url('absent')}", str(tmp_path / "b"))
    assert "repository not found" in run.error


def test_over_the_size_limit_refused_from_the_tree(git_http, tmp_path):
    files = tiny_model()
    git_http.add_repo("model", files)
    dest = tmp_path / "ckpt"
    run = run_agent("import", f"git+{git_http.url('model')}", str(dest), "--max-size", "1000")
    total = sum(len(v) for v in files.values())
    assert f"{total} bytes in {len(files)} files, past the size limit of 1000" in run.error
    assert nothing_left(dest)


def test_a_fetch_growing_past_the_limit_is_stopped(git_http, tmp_path, monkeypatch):
    # The watchdog must see the fetch while it runs: a pack of 32 MiB and a watch every 10 ms
    # (a 4 MiB fetch could end before the first look, and the tree check then refuses it).
    monkeypatch.setattr(git_source, "WATCH_INTERVAL", 0.01)
    git_http.add_repo("big", {"weights.bin": os.urandom(32 * 1024 * 1024)})
    dest = tmp_path / "ckpt"
    run = run_agent("import", f"git+{git_http.url('big')}", str(dest), "--max-size", "100000")
    assert "went past the size limit while fetching" in run.error
    assert nothing_left(dest)


@pytest.mark.parametrize("case,words", [
    ("name", "has a backslash"),
    ("link", "leads outside the checkpoint"),
])
def test_unsafe_trees_are_refused(git_http, tmp_path, case, words):
    if case == "name":
        git_http.add_repo("evil", {"config.json": b"{}", "a\\b.json": b"x"})
    else:
        git_http.add_repo("evil", {"config.json": b"{}"}, links={"passwd": "../../../../etc/passwd"})
    dest = tmp_path / "ckpt"
    run = run_agent("import", f"git+{git_http.url('evil')}", str(dest))
    assert words in run.error, run.error
    assert nothing_left(dest)


def test_lfs_pointers_without_lfs_are_refused(git_http, tmp_path):
    git_http.add_repo("lfs", {"config.json": b"{}"}, lfs_files={"model.safetensors": os.urandom(5000)})
    dest = tmp_path / "ckpt"
    run = run_agent("import", f"git+{git_http.url('lfs')}", str(dest))
    assert "are Git LFS pointers (e.g. 'model.safetensors'): set lfs: true" in run.error
    assert nothing_left(dest)


def test_lfs_files_fetched_and_checked(git_http, tmp_path):
    if not HAS_LFS:
        unavailable("git-lfs is not installed (apt-get install git-lfs; .ci/run installs it)")
    files = tiny_model()
    weights = files.pop("model.safetensors")
    git_http.add_repo("lfs", files, lfs_files={"model.safetensors": weights, "copy/model.safetensors": weights})
    git_http.require_login("ckpt", "lfs-pass")
    dest = tmp_path / "ckpt"
    run = run_agent("import", f"git+{git_http.url('lfs')}", str(dest), "--lfs",
                    env={"CKPT_SOURCE_SECRET_DIR": secret_dir(tmp_path, "ckpt", "lfs-pass")})
    assert run.code == 0, run.stderr
    assert read_tree(dest) == {**files, "model.safetensors": weights, "copy/model.safetensors": weights}
    assert any("/info/lfs/objects/batch" in path for _, path, _ in git_http.requests)


def test_lfs_objects_that_do_not_match_their_pointers_are_refused(git_http, tmp_path):
    if not HAS_LFS:
        unavailable("git-lfs is not installed (apt-get install git-lfs; .ci/run installs it)")
    git_http.add_repo("lfs", {"config.json": b"{}"}, lfs_files={"model.safetensors": os.urandom(5000)})
    for stored in git_http.lfs_store.iterdir():
        stored.write_bytes(os.urandom(5000))  # the LFS server serves other bytes
    dest = tmp_path / "ckpt"
    run = run_agent("import", f"git+{git_http.url('lfs')}", str(dest), "--lfs")
    assert "did not provide every LFS object of the commit intact" in run.error
    assert nothing_left(dest)


@pytest.mark.parametrize("uri,words", [
    ("git+https://user:token@example.com/r.git", "credentials in the URL are refused"),
    ("git+ssh://example.com/r.git", "unsupported source"),
    ("git+https://example.com", "no repository path in the URL"),
    ("git+https://example.com/r.git@bad..rev", "is not a branch, tag or commit id"),
])
def test_bad_uris(tmp_path, uri, words):
    run = run_agent("import", uri, str(tmp_path / "ckpt"))
    assert words in run.error
    assert "token" not in run.error.replace("credentials", "")  # never echoed back


def test_sigterm_during_the_fetch_stops_git_and_leaves_nothing(git_http, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import psutil
    git_http.add_repo("slow", tiny_model())
    git_http.pack_delay = 30  # the server takes its time: the fetch is under way when SIGTERM comes
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "checkpoint_operator", "agent", "import",
                             f"git+{git_http.url('slow')}", str(dest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not any(path.endswith("/git-upload-pack") for _, path, _ in git_http.requests):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    gits = [p for p in psutil.Process(proc.pid).children(recursive=True)]
    assert gits  # git (and its remote helper) run under the agent
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert nothing_left(dest) and list(out.iterdir()) == []
    psutil.wait_procs(gits, timeout=10)
    assert not [p for p in gits if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
