"""The catalog where it only adds to an answer (plugin/commands.py): `ls -A`, `du -A` and `lineage` still answer
on a cluster that does not serve ClusterCheckpoints (an older operator's CRDs) or to a user who may not list
them, with a note; `ls --catalog` and `du --catalog`, which ask for it, fail with one line naming the resource."""

from __future__ import annotations

import io
from typing import Any, Optional

import pytest

from checkpoint_operator.kube import CLUSTER_CHECKPOINTS, PVCS, ApiError, Resource
from checkpoint_operator.plugin.cli import build_kubectl_parser
from checkpoint_operator.plugin.client import Cluster
from checkpoint_operator.plugin.commands import COMMANDS, Io

CHECKPOINT = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
              "metadata": {"name": "base", "namespace": "team-a", "uid": "u-base"},
              "spec": {"source": {"http": {"url": "https://example.com/m.tgz"}}},
              "status": {"phase": "Ready", "sizeBytes": 10, "size": "10", "digest": "sha256:" + "a" * 64}}


class FakeKube:
    def __init__(self, catalog_error: ApiError):
        self.catalog_error = catalog_error

    def pages(self, resource: Resource, namespace: Optional[str], label_selector: Optional[str] = None,
              field_selector: Optional[str] = None, limit: Optional[int] = None) -> Any:
        yield self.list(resource, namespace, label_selector, field_selector)  # one page: as Kube.pages of a short list

    def list(self, resource: Resource, namespace: Optional[str], label_selector: Optional[str] = None,
             field_selector: Optional[str] = None) -> list[dict[str, Any]]:
        if resource == CLUSTER_CHECKPOINTS:
            raise self.catalog_error
        if resource == PVCS:
            return []
        return [CHECKPOINT]


class FakeCluster(Cluster):
    kube: FakeKube

    @property
    def api(self) -> Any:
        return self.kube


NO_CRD = ApiError(404, "Not Found", "the server could not find the requested resource")
FORBIDDEN = ApiError(403, "Forbidden", 'clustercheckpoints.ckpt.dev is forbidden: User "tenant" cannot list')


def ckpt(error: ApiError, *argv: str) -> tuple[int, str, str]:
    cluster = FakeCluster(api_client=None, namespace="team-a", server="https://cluster.example")
    cluster.kube = FakeKube(error)
    args = build_kubectl_parser().parse_args(list(argv))
    for name in ("namespace", "context", "kubeconfig", "output"):
        if not hasattr(args, name):
            setattr(args, name, None)
    out, err = io.StringIO(), io.StringIO()
    from checkpoint_operator.plugin.client import PluginError
    try:
        code = COMMANDS[args.ckpt_command](cluster, args, Io(out, err))
    except PluginError as exc:
        return 1, out.getvalue(), f"error: {exc}"
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("error", [NO_CRD, FORBIDDEN])
def test_ls_all_namespaces_lists_the_checkpoints_without_the_catalog(error):
    code, out, err = ckpt(error, "ls", "-A")
    assert code == 0 and "base" in out
    assert err.startswith("warning: list ClusterCheckpoints (the catalog): ") and "(the catalog is left out)" in err


def test_du_all_namespaces_reports_without_the_catalog():
    code, out, err = ckpt(NO_CRD, "du", "-A", "-o", "json")
    assert code == 0 and '"team-a"' in out and "(catalog)" not in out
    assert "does not serve clustercheckpoints.ckpt.dev" in err


def test_asking_for_the_catalog_fails_naming_it():
    code, _, err = ckpt(NO_CRD, "ls", "--catalog")
    assert code == 1 and err == ("error: list ClusterCheckpoints (the catalog): the API server at "
                                 "https://cluster.example does not serve clustercheckpoints.ckpt.dev: install the "
                                 "CRDs (kubectl apply -f crds/)")
    code, _, err = ckpt(FORBIDDEN, "du", "--catalog")
    assert code == 1 and "403 Forbidden" in err
