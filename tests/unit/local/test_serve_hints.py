"""What `local run --serve` tells the user to type (hostile5 F5): with --store s3, where the store is."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

from checkpoint_operator.local.run import serve_hints, store_env_text, write_private
from checkpoint_operator.local.s3store import S3Settings

STORE = S3Settings(endpoint="http://127.0.0.1:8333", bucket="checkpoints", access_key="local-ab12",
                   secret_key="s3cr3t'quote")


def test_the_volume_store_needs_only_the_kubeconfig(tmp_path: Path) -> None:
    assert serve_hints(tmp_path / "kubeconfig", None, None, own_store=False) == [
        f"  export KUBECONFIG={tmp_path / 'kubeconfig'}", "  kubectl ckpt ls"]


def test_the_local_seaweedfs_is_named_by_a_private_file_that_the_shell_reads(tmp_path: Path) -> None:
    env_file = tmp_path / "s3.env"
    write_private(env_file, store_env_text(STORE))
    lines = serve_hints(tmp_path / "kubeconfig", STORE, env_file, own_store=True)
    assert lines[1].startswith(f"  . {env_file}   # AWS_ENDPOINT_URL and the credentials")
    assert not any(STORE.secret_key in line for line in lines)  # never printed
    assert stat.S_IMODE(os.stat(env_file).st_mode) == 0o600
    # what a shell gets from it: the operator's own settings, quoting and all
    shown = subprocess.run(["sh", "-c", f". {shlex.quote(str(env_file))} && env"], capture_output=True, text=True,
                           env={"PATH": os.environ["PATH"]}, check=True).stdout.splitlines()
    assert {k: v for k, v in (line.split("=", 1) for line in shown) if k in STORE.env()} == STORE.env()
    write_private(env_file, "export AWS_ENDPOINT_URL=http://127.0.0.1:1\n")  # the next run's port replaces it
    assert env_file.read_text() == "export AWS_ENDPOINT_URL=http://127.0.0.1:1\n"


def test_a_store_of_the_user_is_named_by_its_endpoint(tmp_path: Path) -> None:
    lines = serve_hints(tmp_path / "kubeconfig", STORE, None, own_store=False)
    assert lines[1].startswith("  export AWS_ENDPOINT_URL=http://127.0.0.1:8333   # with your AWS_* credentials "
                               "of bucket checkpoints")
    assert not any(STORE.access_key in line for line in lines)
