"""agent import hf://: a tiny model from olah (a Hub mirror serving local repositories, offline)
and from the minimal Hub of hubserver.py (tokens, redirects to a CDN on another origin, errors,
misbehaving servers). The first test runs the real `checkpoint-operator agent import` process;
the others run the same command in the test process (agentrun.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import credentials

from agentrun import AgentRun, run_agent
from hubserver import mini_hub  # noqa: F401  (fixtures)
from layouts import read_tree, tiny_model

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("credential_watch")]
TOKEN = "hf_test_token_0123456789abcdef"
credentials.register(TOKEN)


def agent_import(source: str, dest, *args: str, env: dict | None = None) -> AgentRun:
    environ = {k: None for k in os.environ if k.startswith("HF_") and k not in ("HF_HOME", "HF_HUB_DISABLE_TELEMETRY")}
    return run_agent("import", source, str(dest), *args, env={**environ, **(env or {})})


def nothing_left(dest) -> bool:
    return not dest.exists() and not [p for p in dest.parent.iterdir() if ".ckpt-import-" in p.name]


# --- olah: a real Hub-compatible server ----------------------------------------------------------

def test_a_model_from_a_mirror_named_by_hf_endpoint(olah_hub, tmp_path):
    files = tiny_model()
    commit = olah_hub.add_repo("tiny-org/tiny-gpt2", files)
    dest = tmp_path / "ckpt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "agent", "import", "hf://tiny-org/tiny-gpt2",
                           str(dest)], capture_output=True, text=True, timeout=100,
                          env={**env, "HF_ENDPOINT": olah_hub.endpoint, "HF_HOME": str(tmp_path / "hf-home")})
    assert proc.returncode == 0, proc.stderr
    assert read_tree(dest) == files
    result = json.loads(proc.stdout)
    assert result["provenance"] == {"uri": "hf://tiny-org/tiny-gpt2", "revision": "main", "resolvedRevision": commit}
    assert result["fileCount"] == len(files)


def test_include_and_exclude_select_files(olah_hub, tmp_path):
    files = {**tiny_model(), "pytorch_model.bin": b"old weights", "README.md": b"# tiny"}
    olah_hub.add_repo("tiny-org/selected", files)
    dest = tmp_path / "ckpt"
    run = agent_import("hf://tiny-org/selected@main", dest, "--endpoint-url", olah_hub.endpoint,
                       "--include", "*.json", "--include", "*.safetensors", "--exclude", "generation_*")
    assert run.code == 0, run.stderr
    expected = {k: v for k, v in files.items() if k.endswith((".json", ".safetensors")) and "generation" not in k}
    assert read_tree(dest) == expected


def test_no_file_matches_the_globs(olah_hub, tmp_path):
    olah_hub.add_repo("tiny-org/globless", tiny_model())
    dest = tmp_path / "ckpt"
    run = agent_import("hf://tiny-org/globless", dest, "--endpoint-url", olah_hub.endpoint,
                       "--include", "*.gguf")
    line = run.error
    assert "no file of commit" in line and "*.gguf" in line, line
    assert nothing_left(dest)


# --- the minimal Hub: tokens, redirects, errors --------------------------------------------------

def test_private_repo_token_goes_to_the_endpoint_only(mini_hub, tmp_path):
    files = tiny_model()
    commit = mini_hub.add_repo("org/private", files, lfs=("model.safetensors",), token=TOKEN)
    dest = tmp_path / "ckpt"
    run = agent_import("hf://org/private", dest, "--endpoint-url", mini_hub.endpoint,
                       env={"HF_TOKEN": TOKEN})
    assert read_tree(dest) == files and run.result["provenance"]["resolvedRevision"] == commit
    hub_auth = {auth for _, _, _, auth in mini_hub.seen_by("hub")}
    cdn = mini_hub.seen_by("cdn")
    assert hub_auth == {f"Bearer {TOKEN}"}  # every call to the endpoint carried it
    assert cdn and all(auth is None for *_, auth in cdn), cdn  # the LFS file came from the CDN, without it
    assert TOKEN not in run.stderr


def test_the_token_does_not_follow_api_redirects_to_another_origin(mini_hub, tmp_path):
    files = tiny_model()
    mini_hub.add_repo("org/moved", files, token=TOKEN)
    mini_hub.redirect_api = True  # the API answers from the CDN's origin
    dest = tmp_path / "ckpt"
    run = agent_import("hf://org/moved", dest, "--endpoint-url", mini_hub.endpoint, env={"HF_TOKEN": TOKEN})
    assert run.code == 1  # the other origin never gets the token, so the private repository is not found there
    assert "repository not found" in run.error
    assert mini_hub.seen_by("cdn") and all(auth is None for *_, auth in mini_hub.seen_by("cdn"))
    assert nothing_left(dest)


@pytest.mark.parametrize("token,words", [
    ("hf_wrong", "the Hub refused the token (HF_TOKEN)"),
    (None, "no token was given"),
])
def test_wrong_or_missing_token(mini_hub, tmp_path, token, words):
    mini_hub.add_repo("org/private", tiny_model(), token=TOKEN)
    dest = tmp_path / "ckpt"
    run = agent_import("hf://org/private", dest, "--endpoint-url", mini_hub.endpoint,
                       env={"HF_TOKEN": token} if token else None)
    line = run.error
    assert words in line and "hf://org/private" in line, line
    assert "hf_wrong" not in run.stderr and nothing_left(dest)


def test_missing_revision_and_missing_repo(mini_hub, tmp_path):
    mini_hub.add_repo("org/model", tiny_model())
    run = agent_import("hf://org/model@v9", tmp_path / "a", "--endpoint-url", mini_hub.endpoint)
    assert "no revision 'v9' in org/model" in run.error
    run = agent_import("hf://org/absent", tmp_path / "b", "--endpoint-url", mini_hub.endpoint)
    assert "hf://org/absent@main: repository not found" in run.error


def test_a_pinned_commit_is_fetched(mini_hub, tmp_path):
    commit = mini_hub.add_repo("org/model", tiny_model())
    run = agent_import(f"hf://org/model@{commit}", tmp_path / "ckpt", "--endpoint-url",
                       mini_hub.endpoint)
    assert run.result["provenance"]["resolvedRevision"] == commit
    resolves = [path for _, _, path, _ in mini_hub.seen_by("hub") if "/resolve/" in path]
    assert resolves and all(f"/resolve/{commit}/" in path for path in resolves)


def test_bytes_that_do_not_match_the_commit_are_refused(mini_hub, tmp_path):
    files = tiny_model()
    mini_hub.add_repo("org/model", files, lfs=("model.safetensors",))
    forged = bytearray(files["model.safetensors"])
    forged[-1] ^= 1
    mini_hub.tamper["model.safetensors"] = bytes(forged)  # same size, other bytes
    dest = tmp_path / "ckpt"
    run = agent_import("hf://org/model", dest, "--endpoint-url", mini_hub.endpoint)
    line = run.error
    assert "model.safetensors" in line and "do not match the commit (sha256" in line, line
    assert nothing_left(dest)


def test_a_listing_without_a_file_s_hash_is_refused_before_any_byte_moves(mini_hub, tmp_path):
    """hostile6 R6: a listing giving no oid for a file turned its check off, and a mirror serving other
    bytes was accepted with the commit as provenance."""
    files = tiny_model()
    mini_hub.add_repo("org/model", files)
    mini_hub.no_oid.add("config.json")
    mini_hub.tamper["config.json"] = b"{}" + b" " * (len(files["config.json"]) - 2)
    dest = tmp_path / "ckpt"
    run = agent_import("hf://org/model", dest, "--endpoint-url", mini_hub.endpoint)
    assert "gives no hash for 'config.json'" in run.error or "gives no hash for config.json" in run.error, run.error
    assert not [p for _, _, p, _ in mini_hub.seen_by("hub") if "/resolve/" in p]  # nothing was fetched
    assert nothing_left(dest)


def test_a_server_sending_more_than_listed_is_cut_off(mini_hub, tmp_path):
    files = tiny_model()
    mini_hub.add_repo("org/model", files)
    mini_hub.tamper["config.json"] = files["config.json"] + b" " * 10_000_000
    dest = tmp_path / "ckpt"
    run = agent_import("hf://org/model", dest, "--endpoint-url", mini_hub.endpoint)
    line = run.error
    assert "config.json" in line and "more than the" in line, line
    assert nothing_left(dest)


def test_over_the_size_limit_is_refused_before_any_file_is_read(mini_hub, tmp_path):
    files = tiny_model()
    mini_hub.add_repo("org/model", files)
    dest = tmp_path / "ckpt"
    run = agent_import("hf://org/model", dest, "--endpoint-url", mini_hub.endpoint, "--max-size", "1000")
    line = run.error
    total = sum(len(v) for v in files.values())
    assert f"{total} bytes in {len(files)} files, past the size limit of 1000" in line, line
    assert not [p for _, _, p, _ in mini_hub.seen_by("hub") if "/resolve/" in p]
    assert nothing_left(dest)


def test_too_many_files_is_refused_from_the_listing(mini_hub, tmp_path):
    mini_hub.add_repo("org/many", {f"shard-{i}.bin": b"x" for i in range(20)})
    run = agent_import("hf://org/many", tmp_path / "ckpt", "--endpoint-url", mini_hub.endpoint,
                       "--max-files", "5")
    assert "more than the limit of 5 files" in run.error


@pytest.mark.parametrize("name", ["../escape.json", "a\\b.json", "sub/\x1bcolor.json"])
def test_unsafe_names_in_a_listing_are_refused(mini_hub, tmp_path, name):
    mini_hub.add_repo("org/evil", {"config.json": b"{}", name: b"x"})
    dest = tmp_path / "ckpt"
    run = agent_import("hf://org/evil", dest, "--endpoint-url", mini_hub.endpoint)
    line = run.error
    assert "refusing to import it" in line, line
    assert not [p for _, _, p, _ in mini_hub.seen_by("hub") if "/resolve/" in p]
    assert nothing_left(dest)


@pytest.mark.parametrize("uri,words", [
    ("hf://gpt2", "not a Hugging Face repository URI"),
    ("hf://spaces/org/demo", "a space is not a checkpoint source"),
    ("hf://org/model/sub/dir", "not a path inside it"),
])
def test_bad_uris(tmp_path, uri, words):
    run = agent_import(uri, tmp_path / "ckpt")
    assert words in run.error


def test_unreachable_endpoint(tmp_path):
    from s3server import free_port
    run = agent_import("hf://org/model", tmp_path / "ckpt", "--endpoint-url",
                       f"http://127.0.0.1:{free_port()}")
    assert "cannot reach the Hub at http://127.0.0.1:" in run.error


def test_sigterm_mid_transfer_leaves_nothing(mini_hub, tmp_path):
    import signal
    import time
    files = {**tiny_model(), "model.safetensors": os.urandom(4 * 1024 * 1024)}
    mini_hub.add_repo("org/slow", files, lfs=("model.safetensors",))
    mini_hub.slow = 0.05  # 4 MiB in 16 KiB pieces: about 13 s
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "ckpt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    proc = subprocess.Popen([sys.executable, "-m", "checkpoint_operator", "agent", "import", "hf://org/slow", str(dest),
                             "--endpoint-url", mini_hub.endpoint], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**env, "HF_HOME": str(tmp_path / "hf-home")})
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size for p in out.rglob("model.safetensors")):  # bytes are moving
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted; nothing was left in" in err and "Traceback" not in err
    assert "done 4.0 MiB" not in err  # stopped mid-transfer, not after it
    assert nothing_left(dest) and list(out.iterdir()) == []
