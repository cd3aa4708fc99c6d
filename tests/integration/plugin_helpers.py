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
