"""`kubectl ckpt push`, `pull` and `verify` on the volume store with every pod a Podman container of
the operator's image: the receiver and pull pods are exec'd into with `podman exec -i`
(local/podexec.py), the data streams through the container's stdin and stdout, and read-only
mounts are enforced for real."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from containers_support import CKPT, NS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from plugin_helpers import Plugin, make_model_dir, tree_digest, write_kubeconfig  # noqa: E402

pytestmark = pytest.mark.timeout(300)


async def test_push_pull_verify_through_podman_exec(api, operator, cluster, api_url, tmp_path):
    ckpt = Plugin(write_kubeconfig(tmp_path / "kubeconfig", api_url))
    source = make_model_dir(tmp_path, "checkpoint-30")
    pushed = await ckpt("push", str(source), "--name", "in-podman")
    assert pushed.code == 0, pushed.err
    status = (await api.get(CKPT, NS, "in-podman"))["status"]
    assert status["phase"] == "Ready" and status["step"] == 30
    pulled = await ckpt("pull", "in-podman", str(tmp_path / "back"))
    assert pulled.code == 0, pulled.err
    assert tree_digest(tmp_path / "back") == tree_digest(source)
    verified = await ckpt("verify", "in-podman")
    assert verified.code == 0 and "Verified=True" in verified.out, verified.err
