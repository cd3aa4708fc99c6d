"""The `kubectl-ckpt` console script as kubectl runs it (a process found on PATH), against the
emulated API through a kubeconfig: exit codes (0, 1 with one `error:` line naming the object,
2 for usage), -o json/yaml, and `checkpoint-operator ckpt` being the same command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from plugin_helpers import write_kubeconfig  # noqa: E402

CKPT = "ckpt.dev/v1alpha1/checkpoints"
SCRIPT = Path(sys.executable).parent / "kubectl-ckpt"


def run(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-c",
                                                     "import sys; from checkpoint_operator.cli import kubectl_ckpt; "
                                                     "sys.exit(kubectl_ckpt())"]
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KUBECONFIG": "", **(env or {})})


@pytest.fixture
def kubeconfig(api_url, tmp_path) -> str:
    return write_kubeconfig(tmp_path / "config", api_url, namespace="default")


async def seed(api) -> None:
    for name, phase in (("alpha", "Ready"), ("beta", "Pending")):
        await api.create(CKPT, "default", {"metadata": {"name": name}, "spec": {"source": {"upload": {}}}})
        await api.patch(CKPT, "default", name, {"status": {"phase": phase, "digest": "sha256:" + "b" * 64,
                                                           "message": "waiting for data"}}, subresource="status")


def test_the_console_script_is_installed():
    assert SCRIPT.exists(), "pip install -e . puts kubectl-ckpt beside the interpreter (so kubectl finds it on PATH)"


async def test_ls_outputs_parse_and_both_commands_print_the_same(api, kubeconfig):
    await seed(api)
    table = run("ls", "--kubeconfig", kubeconfig)
    assert table.returncode == 0, table.stderr
    assert [line.split()[:2] for line in table.stdout.splitlines()] == [["NAME", "PHASE"], ["alpha", "Ready"],
                                                                        ["beta", "Pending"]]
    as_json = json.loads(run("ls", "-o", "json", "--kubeconfig", kubeconfig).stdout)
    assert as_json["kind"] == "List" and [i["metadata"]["name"] for i in as_json["items"]] == ["alpha", "beta"]
    as_yaml = yaml.safe_load(run("--kubeconfig", kubeconfig, "-o", "yaml", "ls").stdout)  # flags before the command
    assert [i["metadata"]["name"] for i in as_yaml["items"]] == ["alpha", "beta"]
    same = subprocess.run([sys.executable, "-m", "checkpoint_operator", "ckpt", "ls", "-o", "json", "--kubeconfig",
                           kubeconfig], capture_output=True, text=True, timeout=60)
    assert json.loads(same.stdout) == as_json  # one implementation
    everywhere = run("ls", "-A", "--kubeconfig", kubeconfig)
    assert everywhere.stdout.splitlines()[1].split()[:2] == ["default", "alpha"]
    empty = run("ls", "--job", "nobody", "--kubeconfig", kubeconfig)
    assert empty.returncode == 0 and "No Checkpoints found in namespace default written by TrainingJob nobody" in \
        empty.stderr


async def test_failures_are_one_line_naming_the_object(api, kubeconfig, tmp_path):
    await seed(api)
    cases = {
        ("verify", "beta"): "error: Checkpoint beta is Pending, not Ready: only a Ready Checkpoint can be verified",
        ("pull", "nope", str(tmp_path / "d")): 'error: Checkpoint "nope" not found in namespace default',
        ("lineage", "Bad_Name"): "error: Checkpoint name 'Bad_Name' is not valid",
        ("ls", "-n", "nowhere"): "error: namespace 'nowhere' not found",
        ("ls", "-n", "NOT.valid_"): "error: namespace name 'NOT.valid_' is not valid",
        ("verify", "alpha", "--local"): "error: --local reads object storage, but Checkpoint alpha is on a volume",
    }
    for argv, message in cases.items():
        result = run(*argv, "--kubeconfig", kubeconfig)
        assert result.returncode == 1 and result.stderr.startswith(message), (argv, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_usage_errors_exit_2_and_a_bad_kubeconfig_or_server_exits_1(tmp_path):
    assert run().returncode == 2
    assert run("push", str(tmp_path)).returncode == 2  # --name is required
    assert run("push", str(tmp_path), "--name", "x", "--format", "pickle").returncode == 2
    missing = run("ls", "--kubeconfig", str(tmp_path / "none"))
    assert missing.returncode == 1 and missing.stderr.startswith(f"error: cannot load the kubeconfig {tmp_path / 'none'}")
    unreachable = write_kubeconfig(tmp_path / "dead", "http://127.0.0.1:9")
    dead = run("ls", "--kubeconfig", unreachable)
    assert dead.returncode == 1 and "cannot reach the API server at http://127.0.0.1:9" in dead.stderr
    other_context = run("ls", "--kubeconfig", unreachable, "--context", "missing")
    assert other_context.returncode == 1 and "cannot load the kubeconfig" in other_context.stderr
    # hostile1 D11: a kubeconfig that is not YAML was a 63-line traceback, one that is not a mapping too
    for text, words in ((": [\n", "not valid YAML (expected <block end>, but found ':' at line 1, column 1)"),
                        ("- a\n", "not a kubeconfig (a YAML mapping with clusters, contexts and users)")):
        (tmp_path / "odd").write_text(text)
        odd = run("ls", "--kubeconfig", str(tmp_path / "odd"))
        assert odd.returncode == 1 and odd.stderr == f"error: cannot load the kubeconfig {tmp_path / 'odd'}: {words}\n"


async def test_verify_local_and_pull_give_up_on_an_unreachable_endpoint_after_a_few_attempts(api, kubeconfig, tmp_path):
    """hostile5 F5: verify --local on an endpoint that does not answer retried 10 times with backoff (more than
    a minute): a command at the terminal tries INTERACTIVE_S3_ATTEMPTS times, then says so in one line."""
    import socket
    import threading

    from checkpoint_operator.plugin.cli import INTERACTIVE_S3_ATTEMPTS
    await api.create(CKPT, "default", {"metadata": {"name": "gamma"}, "spec": {"source": {"upload": {}}}})
    await api.patch(CKPT, "default", "gamma", {"status": {"phase": "Ready", "digest": "sha256:" + "c" * 64, "location": {
        "s3": {"uri": "s3://checkpoints/gamma/"}}}}, subresource="status")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    connections = []

    def accept() -> None:  # an endpoint that takes the connection and closes it: nothing answers
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(1)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    # the user's environment: credentials, no CKPT_S3_MAX_ATTEMPTS (the default is what is tested)
    env = {k: v for k, v in os.environ.items() if k != "CKPT_S3_MAX_ATTEMPTS"} | {
        "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "KUBECONFIG": ""}
    try:
        for argv in (("pull", "gamma", str(tmp_path / "d")), ("verify", "gamma", "--local")):
            connections.clear()
            result = subprocess.run([sys.executable, "-m", "checkpoint_operator", "ckpt", *argv, "--endpoint-url",
                                     endpoint, "--kubeconfig", kubeconfig], capture_output=True, text=True,
                                    timeout=120, env=env)
            assert result.returncode == 1, (argv, result.stderr)
            assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert endpoint in result.stderr, result.stderr
            # one connection more than attempts against a peer that closes at once (seen: 4 for 3); the
            # agents' default of 10 attempts made 11
            assert 1 <= len(connections) <= INTERACTIVE_S3_ATTEMPTS + 1, (argv, len(connections))
    finally:
        listener.close()
