"""Every Kubernetes API permission the operator process needs, and why.

This table is the source of truth for RBAC: the Helm chart's Role/ClusterRole must grant exactly
these rules (tests/test_chart.py compares both ways), and every API call in the code must be
covered by one of them. No wildcards: a permission that is not listed here is not granted.

`with_volume_snapshots` rules exist only when the volume store keeps checkpoints in VolumeSnapshots
(storage.volume.snapshotClassName): the chart grants them then, and only then.

`cluster_only` rules exist only for cluster-wide mode (`checkpoint-operator run` without
`--namespace`): kopf then discovers namespaces and CRDs itself and peers through a
cluster-scoped ClusterKopfPeering. In namespaced mode the chart grants the other rules through
one Role per watched namespace, and one ClusterRole with `NAMESPACE_READER` only: `get` on the
watched Namespaces by name (a Namespace is cluster-scoped, so no Role can grant it), for
their `ckpt.dev/max-checkpoint-size` annotation.
"""

from __future__ import annotations

from dataclasses import dataclass

from checkpoint_operator import GROUP


@dataclass(frozen=True)
class PermissionRule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    cluster_only: bool = False
    with_volume_snapshots: bool = False

    def to_policy_rule(self) -> dict[str, list[str]]:
        """The rule as it appears in a Role or ClusterRole."""
        return {"apiGroups": list(self.api_groups), "resources": list(self.resources), "verbs": list(self.verbs)}


RULES: tuple[PermissionRule, ...] = (
    PermissionRule((GROUP,), ("checkpoints",), ("get", "list", "watch", "create", "patch", "delete"),
                   "watch and read Checkpoints; create them from snapshots; kopf's finalizer and annotations; "
                   "delete the ones output.retention drops"),
    PermissionRule((GROUP,), ("trainingjobs",), ("get", "list", "watch", "patch"),
                   "watch and read TrainingJobs; kopf's finalizer and annotations"),
    PermissionRule((GROUP,), ("checkpoints/status", "trainingjobs/status"), ("patch",),
                   "write phase, conditions and usedBy (conditional merge patches with resourceVersion)"),
    PermissionRule((GROUP,), ("checkpoints/finalizers", "trainingjobs/finalizers"), ("update",),
                   "set owner references with blockOwnerDeletion on objects owned by our kinds"),
    PermissionRule(("batch",), ("jobs",), ("get", "list", "watch", "create"),
                   "the batch/v1 Job that runs a TrainingJob's pod template; watched to react when it ends"),
    PermissionRule(("",), ("pods",), ("get", "list", "watch", "create", "patch", "delete"),
                   "agent pods (snapshot, scan, import); pods watched to react when they end or are stuck; "
                   "annotate a live-sealing job's pods with the directories its sidecar may remove"),
    PermissionRule(("",), ("pods/log",), ("get",),
                   "read an agent pod's result and quote a failed pod's last lines in events"),
    PermissionRule(("",), ("persistentvolumeclaims",), ("get", "list", "watch", "create", "patch", "delete"),
                   "output and import volumes; move owner references from the TrainingJob to its Checkpoints; "
                   "watched to react when one binds"),
    PermissionRule(("",), ("events",), ("create", "list"),
                   "every wait, refusal and failure becomes an Event (posted through the core API); a volume that "
                   "does not bind is explained by its own Events (listed by field selector)"),
    PermissionRule(("kopf.dev",), ("kopfpeerings",), ("get", "list", "watch", "patch"),
                   "kopf peering between the active replica and standbys in namespaced mode"),
    PermissionRule(("snapshot.storage.k8s.io",), ("volumesnapshots",), ("get", "list", "create", "patch", "delete"),
                   "volume store with storage.volume.snapshotClassName: snapshot output and import volumes, read "
                   "readyToUse (polled, not watched), move owner references to the Checkpoints, list a finished "
                   "job's snapshots to delete those no Checkpoint points into", with_volume_snapshots=True),
    PermissionRule(("kopf.dev",), ("clusterkopfpeerings",), ("get", "list", "watch", "patch"),
                   "kopf peering between the active replica and standbys in cluster-wide mode",
                   cluster_only=True),
    PermissionRule(("",), ("namespaces",), ("get", "list", "watch"),
                   "kopf follows namespaces when it serves the whole cluster; read a Namespace's "
                   "ckpt.dev/max-checkpoint-size annotation", cluster_only=True),
    PermissionRule(("apiextensions.k8s.io",), ("customresourcedefinitions",), ("get", "list", "watch"),
                   "kopf discovers our CRDs (and notices them appear) when it serves the whole cluster",
                   cluster_only=True),
)


NAMESPACE_READER = PermissionRule(("",), ("namespaces",), ("get",),
                                  "read a watched Namespace's ckpt.dev/max-checkpoint-size annotation")


def namespace_reader_rules(namespaces: list[str]) -> list[dict[str, list[str]]]:
    """Namespaced mode: the ClusterRole's only rule, limited to the watched Namespaces by name."""
    return [{**NAMESPACE_READER.to_policy_rule(), "resourceNames": sorted(namespaces)}]


def policy_rules(*, cluster_wide: bool, volume_snapshots: bool = False) -> list[dict[str, list[str]]]:
    """The rules of the operator's ClusterRole (cluster_wide) or of each per-namespace Role;
    `volume_snapshots`: storage.volume.snapshotClassName is set."""
    return [rule.to_policy_rule() for rule in RULES
            if (cluster_wide or not rule.cluster_only) and (volume_snapshots or not rule.with_volume_snapshots)]


def permissions(rules: list[dict[str, list[str]]]) -> set[tuple[str, str, str]]:
    """Flatten policy rules to (apiGroup, resource, verb) triples, the unit RBAC actually grants."""
    return {(group, resource, verb)
            for rule in rules
            for group in rule.get("apiGroups", [])
            for resource in rule.get("resources", [])
            for verb in rule.get("verbs", [])}
