"""Every Kubernetes API permission the operator process needs, and why each verb remains.

This table is the source of truth for RBAC: the Helm chart's Role/ClusterRole must grant exactly
these rules (tests/test_chart.py compares both ways), and every API call in the code must be
covered by one of them (tests/test_rbac.py). No wildcards: a permission that is not listed here
is not granted. RBAC says which verbs on which resources; what the operator may do with the
dangerous ones (create, patch and delete pods, claims, Jobs, Events) the chart's
ValidatingAdmissionPolicy narrows further, as each reason says (tests/test_admission_policy.py).

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
from checkpoint_operator.config import SIGNING_KEY_SECRET


# What the chart's ValidatingAdmissionPolicy (templates/admission-policy.yaml) holds a verb to:
# RBAC cannot say "only pods of this shape" or "only this annotation"; the policy can.
NARROWED = "; the admission policy allows "


@dataclass(frozen=True)
class PermissionRule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    reasons: tuple[tuple[str, str], ...]  # (verb, why it remains: the code or kopf needs it for ...)
    cluster_only: bool = False
    with_volume_snapshots: bool = False
    # On a cluster-scoped kind of ours (ClusterCheckpoints): no Role can grant it, so a ClusterRole does in
    # both modes (in namespaced mode, one with these rules only).
    cluster_scoped: bool = False
    resource_names: tuple[str, ...] = ()  # only these objects (RBAC cannot limit create or list so)

    @property
    def verbs(self) -> tuple[str, ...]:
        return tuple(verb for verb, _ in self.reasons)

    def to_policy_rule(self) -> dict[str, list[str]]:
        """The rule as it appears in a Role or ClusterRole."""
        rule = {"apiGroups": list(self.api_groups), "resources": list(self.resources), "verbs": list(self.verbs)}
        return {**rule, "resourceNames": list(self.resource_names)} if self.resource_names else rule


KOPF_WATCH = "kopf's watch streams (its indexes and event handlers) list, then watch"
INFORMER_WATCH = "the operator's informer of the child kinds (reconcile/informer.py) lists, then watches"

RULES: tuple[PermissionRule, ...] = (
    PermissionRule((GROUP,), ("checkpoints",), (
        ("get", "read a Checkpoint live before deciding on it (an input at start, a deletion, a status write)"),
        ("list", KOPF_WATCH), ("watch", KOPF_WATCH),
        ("create", "a snapshot and live sealing create the job's Checkpoints"),
        ("patch", "the in-use finalizer, kopf's annotations, request annotations removed once served; a job "
                  "asks its Checkpoint to fail through the changed-after-sealing annotation, and for status.cachedOn "
                  "through the cached-on annotation (only the Checkpoint's reconcile writes its status)"),
        ("delete", "output.keep retention deletes the Checkpoints it drops"))),
    PermissionRule((GROUP,), ("trainingjobs",), (
        ("get", "read a TrainingJob live (a step, the producer of a sealed Checkpoint)"),
        ("list", KOPF_WATCH + "; the in-use protection lists the users of a Checkpoint live"),
        ("watch", KOPF_WATCH),
        ("patch", "the uses labels of the in-use protection; the finalizer of versions before 0.2"))),
    PermissionRule((GROUP,), ("checkpoints/status", "trainingjobs/status"), (
        ("patch", "phase, conditions and usedBy (conditional merge patches with resourceVersion)"),)),
    PermissionRule((GROUP,), ("checkpoints/finalizers", "trainingjobs/finalizers"), (
        ("update", "Kubernetes asks it of whoever sets an owner reference with blockOwnerDeletion on our kinds"),)),
    PermissionRule(("batch",), ("jobs",), (
        ("get", "follow the Job of a TrainingJob to its end"),
        ("list", INFORMER_WATCH + "; a JobSet's child Jobs, whose pods are the only ones trusted as its workers"),
        ("watch", INFORMER_WATCH),
        ("create", "the batch/v1 Job that runs a TrainingJob's pod template" + NARROWED
                   + "only Jobs labelled as a TrainingJob's workers and owned by it, never a change"),
        ("delete", "a distributed job's failed attempt, once every worker has stopped, before the group starts "
                   "again (logic/engines.py)" + NARROWED + "only Jobs labelled as a TrainingJob's workers"))),
    PermissionRule(("jobset.x-k8s.io",), ("jobsets",), (
        ("get", "follow the JobSet of a TrainingJob with spec.engine JobSet to its end"),
        ("list", INFORMER_WATCH), ("watch", INFORMER_WATCH),
        ("create", "the JobSet that runs such a TrainingJob's pod template" + NARROWED
                   + "only JobSets labelled as a TrainingJob's workers and owned by it, never a change"),
        ("delete", "with output.volumePerWorker, a failed attempt's JobSet, once every worker has stopped, before "
                   "the resume step and the next attempt (logic/group_resume.py; otherwise JobSet restarts its own "
                   "child Jobs)" + NARROWED + "only JobSets labelled as a TrainingJob's workers, owned by it"))),
    PermissionRule(("",), ("services",), (
        ("get", "the headless Service of a distributed job, found again after a restart (create is idempotent)"),
        ("create", "the headless Service that gives a distributed job's workers their DNS names" + NARROWED
                   + "only headless Services labelled as a TrainingJob's rendezvous, owned by it, selecting its "
                     "workers"))),
    PermissionRule(("",), ("pods",), (
        ("get", "read an agent pod's state; why a worker pod failed"),
        ("list", INFORMER_WATCH + " (the worker pod index)"), ("watch", INFORMER_WATCH),
        ("create", "agent pods (snapshot, resume, scan, import, upload, verify, pull)" + NARROWED
                   + "only agent pods of their exact shape: the operator's image and commands, unprivileged, no "
                     "service-account token, no Secret but the store's and an import's source credentials"),
        ("patch", "the ckpt.dev/live-remove annotation a live-sealing sidecar reads (downward API)" + NARROWED
                  + "only that annotation, only on the operator's own pods"),
        ("delete", "an agent pod once its result is recorded, a stale serving pod; with volume snapshots, a "
                   "finished worker pod, whose restored input volumes go with it" + NARROWED
                   + "only its agent pods, and its worker pods once they have finished"))),
    PermissionRule(("",), ("pods/log",), (
        ("get", "an agent pod's result, a live-sealing sidecar's lines, a failed container's last line (a read: "
                "no admission policy sees it, see docs/guarantees.md)"),)),
    PermissionRule(("",), ("persistentvolumeclaims",), (
        ("get", "a claim's state and owners (binding, ownership, adoption)"),
        ("list", INFORMER_WATCH), ("watch", INFORMER_WATCH),
        ("create", "output and import volumes" + NARROWED + "only claims labelled as its own, owned by their "
                   "TrainingJob or Checkpoint, copying no other claim"),
        ("patch", "owner references: moved from a TrainingJob to its Checkpoints, added by an adopting Checkpoint"
                  + NARROWED + "only owner references, only of its own claims, only to its kinds"),
        ("delete", "the s3 store releases an output volume once uploaded (or on request); a namespace's catalog "
                   "copy that did not verify is deleted so that the next copy starts empty" + NARROWED
                   + "only its own claims"))),
    PermissionRule(("",), ("events",), (
        ("create", "every wait, refusal and failure becomes an Event (posted through the core API)" + NARROWED
                   + "only Events about the objects it handles, in their namespace"),
        ("list", "why a volume does not bind and why a Job's pods are refused: their own Events (a field "
                 "selector)"))),
    PermissionRule(("kopf.dev",), ("kopfpeerings",), tuple(
        (verb, "kopf peering between the active replica and standbys in namespaced mode")
        for verb in ("get", "list", "watch", "patch"))),
    PermissionRule(("snapshot.storage.k8s.io",), ("volumesnapshots",), (
        ("get", "read a VolumeSnapshot it took until it is readyToUse (polled: snapshots are not watched), and "
                "a Ready Checkpoint's when the resync finds it changed"),
        ("list", "at a job's end, its output's snapshots (by label), to delete those no Checkpoint points into; "
                 "at each resync, its snapshots (by label) that Ready Checkpoints point into"),
        ("create", "a VolumeSnapshot of an output or import volume once its bytes are on the disk" + NARROWED
                   + "only snapshots labelled as its own, owned by their TrainingJob or Checkpoint"),
        ("patch", "owner references: moved from the TrainingJob to the Checkpoints that point into it" + NARROWED
                  + "only owner references, only of its own snapshots, only to its kinds"),
        ("delete", "a job's output snapshot that no Checkpoint points into" + NARROWED + "only its own snapshots")),
        with_volume_snapshots=True),
    PermissionRule(("kopf.dev",), ("clusterkopfpeerings",), tuple(
        (verb, "kopf peering between the active replica and standbys in cluster-wide mode")
        for verb in ("get", "list", "watch", "patch")), cluster_only=True),
    PermissionRule(("",), ("namespaces",), (
        ("get", "read a Namespace's ckpt.dev/max-checkpoint-size annotation"),
        ("list", "kopf follows namespaces when it serves the whole cluster"),
        ("watch", "kopf follows namespaces when it serves the whole cluster")), cluster_only=True),
    PermissionRule(("apiextensions.k8s.io",), ("customresourcedefinitions",), tuple(
        (verb, "kopf discovers our CRDs (and notices them appear) when it serves the whole cluster")
        for verb in ("get", "list", "watch")), cluster_only=True),
)


CATALOG_RULES: tuple[PermissionRule, ...] = (
    PermissionRule((GROUP,), ("clustercheckpoints",), (
        ("get", "read a catalog entry live (an input at start, a deletion, a status write)"),
        ("list", KOPF_WATCH), ("watch", KOPF_WATCH),
        ("patch", "the in-use protection finalizer of a catalog entry")), cluster_scoped=True),
    PermissionRule((GROUP,), ("clustercheckpoints/status",), (
        ("patch", "a catalog entry's phase, conditions and usedBy (conditional merge patches)"),), cluster_scoped=True),
    PermissionRule((GROUP,), ("clustercheckpoints/finalizers",), (
        ("update", "Kubernetes asks it of whoever sets an owner reference with blockOwnerDeletion to a catalog entry "
                   "(its import pod and claims, each namespace's copy)"),), cluster_scoped=True),
)

# cache.enabled (the node-local input cache, logic/node_cache.py): a local PersistentVolume per namespace.
# PersistentVolumes are cluster-scoped: a ClusterRole grants these in both modes, and only with the cache.
NODE_CACHE_RULES: tuple[PermissionRule, ...] = (
    PermissionRule(("",), ("persistentvolumes",), (
        ("get", "the namespace's node-cache volume, found again (its create is idempotent)"),
        ("create", "the node cache's local PersistentVolume of a namespace, before its first cached pod" + NARROWED
                   + "only volumes labelled as the node cache's, of its path and class, reserved (claimRef) for "
                     "the cache claim of the namespace its name says; never a change or a delete")),
        cluster_scoped=True),
)


def node_cache_rules() -> list[dict[str, list[str]]]:
    return [rule.to_policy_rule() for rule in NODE_CACHE_RULES]


# Namespaced mode: the catalog namespace (the operator's own, where entries are imported) gets a Role with
# these, unless it is also a watched namespace (whose Role has them already).
CATALOG_NAMESPACE_RULES: tuple[PermissionRule, ...] = (
    PermissionRule(("",), ("pods",), (
        ("get", "read a catalog import pod's state"),
        ("create", "the import pod of a catalog entry" + NARROWED + "only import pods owned by a ClusterCheckpoint "
                   "in the catalog namespace"),
        ("delete", "the import pod once its result is recorded" + NARROWED + "only its agent pods"))),
    PermissionRule(("",), ("pods/log",), (("get", "a catalog import pod's result"),)),
    PermissionRule(("",), ("persistentvolumeclaims",), (
        ("get", "the catalog's copy: its state (volume store)"),
        ("create", "the catalog's copy of an entry (volume store)" + NARROWED + "only claims owned by a "
                   "ClusterCheckpoint in the catalog namespace"))),
    PermissionRule(("",), ("events",), (
        ("create", "a catalog entry's Events (a cluster-scoped object's go to the catalog namespace)" + NARROWED
                   + "only Events about ClusterCheckpoints there"),
        ("list", "why the catalog's claim does not bind: its own Events"))),
)


def catalog_cluster_rules() -> list[dict[str, list[str]]]:
    """Namespaced mode: the ClusterRole of the catalog (ClusterCheckpoints are cluster-scoped)."""
    return [rule.to_policy_rule() for rule in CATALOG_RULES]


def catalog_namespace_rules() -> list[dict[str, list[str]]]:
    """Namespaced mode: the Role in the catalog namespace, when it is not a watched one."""
    return [rule.to_policy_rule() for rule in CATALOG_NAMESPACE_RULES]


# Both modes: a Role in the operator's own namespace for its signing key (reconcile/signing_keys.py), which
# signs what one of its reconciles tells another through fields users may write (logic/signatures.py).
SIGNING_KEY_RULES: tuple[PermissionRule, ...] = (
    PermissionRule(("",), ("secrets",), (
        ("get", "the operator's signing key, read once per process (and again after a signature fails to "
                "verify): it signs the sealed data of the Checkpoints its jobs create and its own annotations"),),
        resource_names=(SIGNING_KEY_SECRET,)),
    PermissionRule(("",), ("secrets",), (
        ("create", "the signing key on the operator's first start, when missing (32 random bytes; never "
                   "updated or deleted by the operator)" + NARROWED + "only that Secret, in its own namespace"),)),
)


def signing_key_rules() -> list[dict[str, list[str]]]:
    """The Role in the operator's own namespace (both modes): only that Secret."""
    return [rule.to_policy_rule() for rule in SIGNING_KEY_RULES]


NAMESPACE_READER = PermissionRule(("",), ("namespaces",), (
    ("get", "read a watched Namespace's ckpt.dev/max-checkpoint-size annotation"),))


def namespace_reader_rules(namespaces: list[str]) -> list[dict[str, list[str]]]:
    """Namespaced mode: the ClusterRole's only rule, limited to the watched Namespaces by name."""
    return [{**NAMESPACE_READER.to_policy_rule(), "resourceNames": sorted(namespaces)}]


def policy_rules(*, cluster_wide: bool, volume_snapshots: bool = False,
                 node_cache: bool = False) -> list[dict[str, list[str]]]:
    """The rules of the operator's ClusterRole (cluster_wide: with the catalog's, and the node cache's when
    `node_cache`) or of each per-namespace Role; `volume_snapshots`: storage.volume.snapshotClassName is set."""
    rules = [rule.to_policy_rule() for rule in RULES
             if (cluster_wide or not rule.cluster_only) and (volume_snapshots or not rule.with_volume_snapshots)]
    return rules + (catalog_cluster_rules() + (node_cache_rules() if node_cache else []) if cluster_wide else [])


def permissions(rules: list[dict[str, list[str]]]) -> set[tuple[str, str, str]]:
    """Flatten policy rules to (apiGroup, resource, verb) triples, the unit RBAC actually grants."""
    return {(group, resource, verb)
            for rule in rules
            for group in rule.get("apiGroups", [])
            for resource in rule.get("resources", [])
            for verb in rule.get("verbs", [])}
