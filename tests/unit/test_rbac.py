"""RBAC least privilege, checked both ways: every API call the code makes is granted by
checkpoint_operator/rbac.py, and everything rbac.py grants is used by the code or by kopf.
(tests/test_chart.py checks that the chart grants exactly rbac.py.)

The calls are read from the source: every `kube.<verb>(<RESOURCE>, ...)` of the Kube client."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import checkpoint_operator
from checkpoint_operator import kube, rbac

PACKAGE = Path(checkpoint_operator.__file__).parent

# Kube client method -> (verb, subresource)
METHOD_VERBS = {"get": ("get", None), "cached_get": ("get", None), "list": ("list", None), "list_live": ("list", None), "create": ("create", None),
                "patch": ("patch", None), "patch_json": ("patch", None), "patch_status": ("patch", "status"),
                "delete": ("delete", None)}

# What kopf itself does with the configured settings (watching, finalizers and progress
# annotations, events, peering), and what Kubernetes requires for blockOwnerDeletion.
KOPF_AND_KUBERNETES = {
    ("ckpt.dev", "checkpoints", "list"), ("ckpt.dev", "checkpoints", "watch"), ("ckpt.dev", "checkpoints", "patch"),
    ("ckpt.dev", "trainingjobs", "list"), ("ckpt.dev", "trainingjobs", "watch"),
    ("ckpt.dev", "trainingjobs", "patch"),
    ("", "events", "create"),
    # kopf watches (list + watch) Jobs, JobSets, pods and PVCs for the event handlers and the pod index
    ("batch", "jobs", "list"), ("batch", "jobs", "watch"), ("", "pods", "list"), ("", "pods", "watch"),
    ("jobset.x-k8s.io", "jobsets", "list"), ("jobset.x-k8s.io", "jobsets", "watch"),
    ("", "persistentvolumeclaims", "list"), ("", "persistentvolumeclaims", "watch"),
    ("kopf.dev", "kopfpeerings", "get"), ("kopf.dev", "kopfpeerings", "list"), ("kopf.dev", "kopfpeerings", "watch"),
    ("kopf.dev", "kopfpeerings", "patch"),
    # ownerReferences with blockOwnerDeletion=true need `update` on the owner's finalizers
    ("ckpt.dev", "checkpoints/finalizers", "update"), ("ckpt.dev", "trainingjobs/finalizers", "update"),
    ("ckpt.dev", "clustercheckpoints/finalizers", "update"),
    ("ckpt.dev", "clustercheckpoints", "list"), ("ckpt.dev", "clustercheckpoints", "watch"),
}
CLUSTER_ONLY = {
    ("kopf.dev", "clusterkopfpeerings", v) for v in ("get", "list", "watch", "patch")} | {
    ("", "namespaces", v) for v in ("get", "list", "watch")} | {
    ("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("get", "list", "watch")}


@functools.cache  # parsing the package takes 0.5 s, and five tests ask
def code_permissions() -> frozenset[tuple[str, str, str]]:
    resources = {name: value for name, value in vars(kube).items() if isinstance(value, kube.Resource)}
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if "local" in path.parts or "plugin" in path.parts or path.name == "kube.py":  # plugin: the user's calls
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = node.func.value
            is_kube = (isinstance(receiver, ast.Attribute) and receiver.attr == "kube") or \
                      (isinstance(receiver, ast.Name) and receiver.id == "kube")
            if not is_kube:
                continue
            method = node.func.attr
            if method == "read_log":
                found.add(("", "pods/log", "get"))
                continue
            if method in ("serves", "cached"):  # discovery (granted to every authenticated client); the cache: no request
                continue
            assert method in METHOD_VERBS or method == "ensure", f"{path}: unknown Kube method {method}"
            first = node.args[0]
            assert isinstance(first, ast.Name) and first.id in resources, \
                f"{path}:{node.lineno}: call the Kube client with a resource constant of kube.py"
            resource = resources[first.id]
            for verb, sub in ([("create", None), ("get", None)] if method == "ensure" else [METHOD_VERBS[method]]):
                found.add((resource.group, resource.plural + (f"/{sub}" if sub else ""), verb))
    return frozenset(found)


def test_the_code_makes_the_calls_this_test_knows_of():
    calls = code_permissions()
    assert ("", "pods/log", "get") in calls and ("ckpt.dev", "checkpoints/status", "patch") in calls
    assert ("batch", "jobs", "create") in calls and ("", "persistentvolumeclaims", "patch") in calls


def namespaced_grants(volume_snapshots: bool = True, node_cache: bool = True) -> set[tuple[str, str, str]]:
    """A namespaced install (with storage.volume.snapshotClassName unless told otherwise): the Role in
    each namespace, `get` on those Namespaces by name, and the catalog's ClusterRole (ClusterCheckpoints
    are cluster-scoped)."""
    return rbac.permissions(rbac.policy_rules(cluster_wide=False, volume_snapshots=volume_snapshots)) | \
        rbac.permissions(rbac.namespace_reader_rules(["team-a"])) | rbac.permissions(rbac.catalog_cluster_rules()) | \
        rbac.permissions(rbac.signing_key_rules()) | \
        (rbac.permissions(rbac.node_cache_rules()) if node_cache else set())


def test_the_catalog_namespace_role_is_part_of_the_namespace_role():
    """What the catalog namespace needs (its import pod, claim and Events) is what a watched namespace's Role
    grants already: the chart adds that Role only where none is."""
    assert rbac.permissions(rbac.catalog_namespace_rules()) <= rbac.permissions(rbac.policy_rules(cluster_wide=False))


def test_every_call_is_granted():
    granted = namespaced_grants()
    missing = (code_permissions() | KOPF_AND_KUBERNETES) - granted
    assert not missing, f"used but not granted in rbac.py: {sorted(missing)}"


def test_nothing_is_granted_that_nobody_uses():
    namespaced = namespaced_grants()
    unused = namespaced - code_permissions() - KOPF_AND_KUBERNETES
    assert not unused, f"granted but never used: {sorted(unused)}"
    cluster = rbac.permissions(rbac.policy_rules(cluster_wide=True, volume_snapshots=True, node_cache=True)) - namespaced
    assert cluster == CLUSTER_ONLY - {("", "namespaces", "get")}
    assert rbac.permissions(rbac.catalog_cluster_rules()) <= rbac.permissions(rbac.policy_rules(cluster_wide=True))


def test_volume_snapshot_permissions_come_only_with_a_snapshot_class():
    """Least privilege: without storage.volume.snapshotClassName nothing of snapshot.storage.k8s.io is granted."""
    snapshots = namespaced_grants() - namespaced_grants(volume_snapshots=False)
    assert snapshots == {("snapshot.storage.k8s.io", "volumesnapshots", verb)
                         for verb in ("get", "list", "create", "patch", "delete")}
    assert snapshots <= code_permissions()


def test_persistent_volume_permissions_come_only_with_the_node_cache():
    """Least privilege: PersistentVolumes (cluster-scoped) only with cache.enabled, get and create only."""
    cache = namespaced_grants() - namespaced_grants(node_cache=False)
    assert cache == {("", "persistentvolumes", "get"), ("", "persistentvolumes", "create")}
    assert cache <= code_permissions()
    assert not rbac.permissions(rbac.policy_rules(cluster_wide=True)) & cache


# --- why each verb remains, and what narrows the dangerous ones ---------------------------------------

WRITES = {"create": "CREATE", "patch": "UPDATE", "update": "UPDATE", "delete": "DELETE"}


def test_every_verb_says_why_it_remains():
    for rule in (*rbac.RULES, *rbac.CATALOG_RULES, *rbac.CATALOG_NAMESPACE_RULES, *rbac.NODE_CACHE_RULES,
                 *rbac.SIGNING_KEY_RULES, rbac.NAMESPACE_READER):
        verbs = rule.verbs
        assert len(verbs) == len(set(verbs)), f"{rule.resources}: a verb twice"
        for verb, why in rule.reasons:
            assert len(why) > 20, f"{rule.resources} {verb}: say why it remains"


def test_every_write_on_pods_claims_jobs_and_events_is_narrowed_by_the_admission_policy():
    """RBAC cannot say which pods; the chart's policy does, for every write the operator may make
    outside its own API group (tests/test_admission_policy.py evaluates what it allows)."""
    from helm_python import chart as helm_chart

    from test_chart import CHART_DIR, operator_policy, render
    with helm_chart.Chart.load(CHART_DIR) as chart:
        policy = operator_policy(render(chart))
    matched = {(group, resource, operation)
               for rule in policy["spec"]["matchConstraints"]["resourceRules"]
               for group in rule["apiGroups"] for resource in rule["resources"] for operation in rule["operations"]}
    writes = [(rule, verb, why) for rule in (*rbac.RULES, *rbac.NODE_CACHE_RULES, *rbac.SIGNING_KEY_RULES)
              for verb, why in rule.reasons
              if verb in WRITES and rule.api_groups[0] in ("", "batch", "snapshot.storage.k8s.io")
              and not rule.cluster_only]
    assert {(r.resources[0], v) for r, v, _ in writes} >= {("pods", "create"), ("pods", "patch"), ("pods", "delete"),
                                                           ("persistentvolumeclaims", "delete"), ("jobs", "create"),
                                                           ("volumesnapshots", "create"), ("volumesnapshots", "patch"),
                                                           ("volumesnapshots", "delete")}
    for rule, verb, why in writes:
        for group in rule.api_groups:
            for resource in rule.resources:
                assert (group, resource, WRITES[verb]) in matched, f"{resource} {verb} is not seen by the policy"
        assert rbac.NARROWED in why, f"{rule.resources} {verb}: say what the admission policy allows"
