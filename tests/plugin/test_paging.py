"""`kubectl ckpt` reads LISTs in pages (limit + continue, as kubectl's --chunk-size): no response holds a whole
namespace of Checkpoints (100,000 of them in one LIST were 2 GiB of RSS), and ls, lineage and du still see
every object across the pages. Against the emulated API, which pages as kube-apiserver does."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path
from typing import Any

import pytest

from checkpoint_operator import kube
from checkpoint_operator.plugin.cli import build_kubectl_parser
from checkpoint_operator.plugin.client import connect
from checkpoint_operator.plugin.commands import COMMANDS, Io

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from plugin_helpers import write_kubeconfig  # noqa: E402

CKPT = "ckpt.dev/v1alpha1/checkpoints"
PAGE = 2


def digest(i: int) -> str:
    return "sha256:" + f"{i:x}" * 64


@pytest.fixture
def responses(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every answer the plugin's LISTs got, with their query; pages of PAGE objects."""
    monkeypatch.setattr(kube, "LIST_PAGE", PAGE)
    seen: list[dict[str, Any]] = []
    call = kube.Kube._call

    def recording(self: kube.Kube, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        answer = call(self, method, path, *args, **kwargs)
        if method == "GET" and path.endswith("/checkpoints"):
            seen.append({"query": kwargs.get("query") or {}, "items": len(answer.get("items") or [])})
        return answer
    monkeypatch.setattr(kube.Kube, "_call", recording)
    return seen


def ckpt(kubeconfig: str, *argv: str) -> str:
    args = build_kubectl_parser().parse_args(list(argv))
    for name in ("namespace", "context", "output"):
        if not hasattr(args, name):
            setattr(args, name, None)
    out = io.StringIO()
    assert COMMANDS[args.ckpt_command](connect(kubeconfig), args, Io(out, io.StringIO())) == 0
    return out.getvalue()


async def test_ls_lineage_and_du_read_checkpoints_in_pages_and_see_them_all(api, api_url, tmp_path,
                                                                          responses) -> None:
    uids = []
    for i in range(5):
        created = await api.create(CKPT, "default", {"metadata": {"name": f"c{i}"},
                                                     "spec": {"source": {"upload": {}}}})
        uids.append(created["metadata"]["uid"])
        parents = [{"name": f"c{i - 1}", "uid": uids[i - 1], "digest": digest(i - 1)}] if i else []
        await api.patch(CKPT, "default", f"c{i}", {"status": {
            "phase": "Ready", "digest": digest(i), "sizeBytes": 1000, "size": "1000", "parents": parents}},
            subresource="status")
    kubeconfig = write_kubeconfig(tmp_path / "config", api_url)

    table = await asyncio.to_thread(ckpt, kubeconfig, "ls")
    assert [line.split()[0] for line in table.splitlines()[1:]] == [f"c{i}" for i in range(5)]
    assert [r["items"] for r in responses] == [2, 2, 1]  # three pages, none over the limit
    assert all(r["query"].get("limit") == str(PAGE) for r in responses)
    assert [bool(r["query"].get("continue")) for r in responses] == [False, True, True]

    responses.clear()
    lineage = await asyncio.to_thread(ckpt, kubeconfig, "lineage", "c4")
    assert all(f"c{i}" in lineage for i in range(5))  # its parents were on the earlier pages
    assert [r["items"] for r in responses] == [2, 2, 1]

    responses.clear()
    usage = await asyncio.to_thread(ckpt, kubeconfig, "du", "-o", "json")
    assert '"checkpoints": 5' in usage and '"referencedBytes": 5000' in usage
    assert max(r["items"] for r in responses) == PAGE
