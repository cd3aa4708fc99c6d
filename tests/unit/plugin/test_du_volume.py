"""`kubectl ckpt du` on the volume store (plugin/commands.py cmd_du with plugin/usage.py), through the
command with a fake API: the catalog's claims are found in the operator's namespace, a claim that
cannot be measured makes STORED unknown ("-"), never 0 with SAVED 100%, namespaces holding only copies
get rows in `-A`, and the claim index is built once (hostile3 F3, F10)."""

from __future__ import annotations

import io
import json
from typing import Any, Optional

from checkpoint_operator.kube import CHECKPOINTS, CLUSTER_CHECKPOINTS, PVCS, ApiError, Resource
from checkpoint_operator.plugin.cli import build_kubectl_parser
from checkpoint_operator.plugin.client import Cluster
from checkpoint_operator.plugin.commands import COMMANDS, Io

GI = 1024 ** 3
LABEL = "ckpt.dev/clustercheckpoint"


def claim(namespace: str, name: str, size: str = "1Gi", labels: Optional[dict] = None) -> dict:
    return {"metadata": {"namespace": namespace, "name": name, "labels": labels or {}},
            "status": {"capacity": {"storage": size}}}


ENTRY = {"metadata": {"name": "tiny", "uid": "abcde-1"}, "status": {
    "phase": "Ready", "sizeBytes": 5_000_000,
    "location": {"volume": {"claimName": "catalog-tiny-abcde-data", "path": "import"}}}}
CATALOG_CLAIM = claim("ckpt-system", "catalog-tiny-abcde-data", "1Gi", {LABEL: "tiny"})
COPY = claim("team-b", "catalog-tiny-abcde-copy", "64Mi", {LABEL: "tiny"})


class CountingList(list):
    """A list that counts how often it is walked: the claim index is built in one pass."""

    walks = 0

    def __iter__(self):
        CountingList.walks += 1
        return super().__iter__()


class FakeKube:
    def __init__(self, checkpoints: list, claims: list, entries: list, forbid_cluster_claims: bool = False):
        self.checkpoints, self.claims, self.entries = checkpoints, claims, entries
        self.forbid_cluster_claims = forbid_cluster_claims

    def pages(self, resource: Resource, namespace: Optional[str], label_selector: Optional[str] = None,
              field_selector: Optional[str] = None, limit: Optional[int] = None) -> Any:
        yield self.list(resource, namespace, label_selector, field_selector)  # one page: as Kube.pages of a short list

    def list(self, resource: Resource, namespace: Optional[str], label_selector: Optional[str] = None,
             field_selector: Optional[str] = None) -> list[dict[str, Any]]:
        if resource == CLUSTER_CHECKPOINTS:
            return self.entries
        if resource == CHECKPOINTS:
            return [c for c in self.checkpoints if namespace is None or c["metadata"]["namespace"] == namespace]
        assert resource == PVCS
        if namespace is None and self.forbid_cluster_claims:
            raise ApiError(403, "Forbidden", "persistentvolumeclaims is forbidden: User \"tenant\" cannot list")
        found = [c for c in self.claims if namespace is None or c["metadata"]["namespace"] == namespace]
        if label_selector:
            found = [c for c in found if label_selector in c["metadata"]["labels"]]
        return CountingList(found)


class FakeCluster(Cluster):
    kube: FakeKube

    @property
    def api(self) -> Any:
        return self.kube

    def check_namespace(self) -> None:
        pass  # the namespace exists


def du(kube: FakeKube, *argv: str) -> tuple[dict[str, dict], str]:
    cluster = FakeCluster(api_client=None, namespace="team-b", server="https://cluster.example")
    cluster.kube = kube
    args = build_kubectl_parser().parse_args(["du", *argv, "-o", "json"])
    for name in ("namespace", "context", "kubeconfig", "endpoint_url"):
        if not hasattr(args, name):
            setattr(args, name, None)
    out, err = io.StringIO(), io.StringIO()
    assert COMMANDS[args.ckpt_command](cluster, args, Io(out, err)) == 0
    return {r["namespace"]: r for r in json.loads(out.getvalue())["namespaces"]}, err.getvalue()


def test_the_catalog_s_claim_is_measured_where_the_catalog_lives():
    """Failed before: looked up as ('(catalog)', name), never found: 0 B stored, SAVED 100%, 'gone'."""
    kube = FakeKube([], [CATALOG_CLAIM, COPY], [ENTRY])
    rows, err = du(kube, "--catalog")
    assert rows["(catalog)"]["storedBytes"] == GI and rows["(catalog)"]["savedBytes"] == 5_000_000 - GI, rows
    assert rows["team-b"]["storedBytes"] == 64 * 1024 ** 2  # the namespace's copy
    assert "gone" not in err and "not found" not in err, err
    rows, err = du(kube, "-A")
    assert rows["(catalog)"]["storedBytes"] == GI
    # a namespace holding only a copy has its row (failed before: dropped, its copy uncounted)
    assert rows["team-b"]["storedBytes"] == 64 * 1024 ** 2 and rows["team-b"]["checkpoints"] == 0
    assert "ckpt-system" not in rows  # the catalog's own claim is the catalog's row, not a copy


def test_a_claim_that_cannot_be_measured_is_unknown_not_zero():
    """Failed before: a claim gone or unreadable counted as 0: STORED smaller, SAVED larger."""
    rows, err = du(FakeKube([], [COPY], [ENTRY], forbid_cluster_claims=True), "--catalog")
    assert rows["(catalog)"]["storedBytes"] is None and rows["(catalog)"]["savedBytes"] is None, rows
    assert "list the catalog's PersistentVolumeClaims in all namespaces: 403" in err, err
    gone = [{"metadata": {"namespace": "team-b", "name": "x"}, "status": {
        "phase": "Ready", "sizeBytes": 10, "location": {"volume": {"claimName": "x-out", "path": "s"}}}}]
    rows, err = du(FakeKube(gone, [], []))
    assert rows["team-b"]["storedBytes"] is None, rows
    assert "PersistentVolumeClaim x-out: not found" in err


def test_the_claim_index_is_built_once_whatever_the_number_of_namespaces():
    """Failed before: rebuilt per namespace (namespaces x claims); here the claims are walked a fixed
    number of times for 3000 namespaces."""
    checkpoints, claims = [], []
    for n in range(3000):
        checkpoints.append({"metadata": {"namespace": f"ns{n}", "name": "c"}, "status": {
            "phase": "Ready", "sizeBytes": 10, "location": {"volume": {"claimName": "c-data", "path": "d"}}}})
        claims.append(claim(f"ns{n}", "c-data"))
    CountingList.walks = 0
    rows, _ = du(FakeKube(checkpoints, claims, []), "-A")
    assert len(rows) == 3000 and all(r["storedBytes"] == GI for r in rows.values())
    assert CountingList.walks <= 3, CountingList.walks
