"""Running `kubectl ckpt` in tests: the plugin's own main (in a thread, so that the local cluster
keeps running in the test's loop) against the emulated API through a kubeconfig, as a user runs
it; and small helpers shared by the plugin's test modules."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from checkpoint_operator.plugin.cli import main as plugin_main


def write_kubeconfig(path: Path, server: str, namespace: str = "default") -> str:
    """A kubeconfig for the emulator (plain http, no credentials), as for any cluster."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "me", "namespace": namespace}}]}))
    return str(path)


@dataclass
class Ran:
    code: int
    out: str
    err: str


class Plugin:
    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig

    async def __call__(self, *argv: str) -> Ran:
        out, err = io.StringIO(), io.StringIO()

        def run() -> int:
            try:
                return plugin_main([*argv, "--kubeconfig", self.kubeconfig], out, err)
            except SystemExit as exc:  # argparse: a usage error
                return int(exc.code or 0)
        code = await asyncio.to_thread(run)
        import credentials
        credentials.saw(f"kubectl ckpt {argv[0] if argv else ''} stdout", out.getvalue())
        credentials.saw(f"kubectl ckpt {argv[0] if argv else ''} stderr", err.getvalue())
        return Ran(code, out.getvalue(), err.getvalue())


def make_model_dir(root: Path, name: str = "checkpoint-120", big: int = 3 * 1024 * 1024) -> Path:
    """A small Hugging Face layout: safetensors weights, config, tokenizer, trainer state."""
    directory = root / name
    (directory / "tokenizer").mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(os.urandom(big))
    (directory / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}')
    (directory / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}')
    (directory / "trainer_state.json").write_text('{"global_step": 120}')
    return directory


def tree_digest(directory: Path) -> dict[str, str]:
    """path -> sha256 of every file under `directory` but the manifest (what must come back)."""
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != ".checkpoint-manifest.json":
            out[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


async def push_of_a_file_changed_after_hashing(ckpt: "Plugin", api, tmp_path: Path, monkeypatch, name: str) -> None:
    """hostile1 D11: a file changed between hashing and sending (a trainer still writing). Nothing
    becomes Ready, and the line no longer says 'rerun to resume' (the rerun was then refused: the
    Checkpoint expects the first digest): it says what to do. The advice is then followed."""
    from checkpoint_operator.plugin import commands
    directory = tmp_path / name
    directory.mkdir()
    (directory / "config.json").write_bytes(b"{}")
    (directory / "model.safetensors").write_bytes(b"A" * 1000)
    original = commands.local_manifest

    def racing(path, io):
        manifest = original(path, io)
        (directory / "model.safetensors").write_bytes(b"B" * 1000)  # same size, other bytes
        return manifest
    monkeypatch.setattr(commands, "local_manifest", racing)
    first = await ckpt("push", str(directory), "--name", name)
    monkeypatch.setattr(commands, "local_manifest", original)
    assert first.code == 1, first.err
    line = first.err.strip().splitlines()[-1]
    assert "rerun to resume" not in line, line
    assert f"changed since it was hashed ('model.safetensors'): Checkpoint {name} expects digest" in line, line
    assert f"delete it (kubectl delete checkpoint {name} -n" in line, line
    assert (await api.get("ckpt.dev/v1alpha1/checkpoints", "default", name))["status"].get("phase") != "Ready"
    rerun = await ckpt("push", str(directory), "--name", name)
    assert rerun.code == 1 and "expects data with digest" in rerun.err
    await api.delete("ckpt.dev/v1alpha1/checkpoints", "default", name)
    for _ in range(100):
        if await api.get("ckpt.dev/v1alpha1/checkpoints", "default", name) is None:
            break
        await asyncio.sleep(0.2)
    again = await ckpt("push", str(directory), "--name", name)
    assert again.code == 0, again.err
