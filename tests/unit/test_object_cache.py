"""kube.ObjectCache: the newest version wins, only objects with work ahead are kept, only where a watch keeps
them fresh, reads are copies."""

from checkpoint_operator.kube import ObjectCache

MANAGED = {"app.kubernetes.io/managed-by": "checkpoint-operator"}


def body(kind, rv, phase=None, uid="u1", labels=None, name="a", deleting=False, finalizers=("ckpt.dev/in-use",)):
    meta = {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": str(rv), "labels": labels or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        meta["finalizers"] = list(finalizers)
    return {"kind": kind, "metadata": meta, "status": {"phase": phase} if phase else {}}


def watched(*kinds):
    """A cache whose watch streams have shown an event of each kind in namespace ns."""
    cache = ObjectCache()
    for kind in kinds:
        cache.observe(body(kind, 1, name="seen", labels=MANAGED), from_watch=True)
    return cache


def test_the_newest_version_wins_whichever_arrives_first():
    cache = watched("TrainingJob")
    cache.observe(body("TrainingJob", 7, "Running"))   # our write's response
    cache.observe(body("TrainingJob", 5, "Pending"), from_watch=True)   # the watch, behind it
    assert cache.get("TrainingJob", "ns", "a")["status"]["phase"] == "Running"
    cache.observe(body("TrainingJob", 9, "Snapshotting"))
    assert cache.get("TrainingJob", "ns", "a")["metadata"]["resourceVersion"] == "9"
    cache.observe(body("TrainingJob", 3, "Pending", uid="u2"))  # a re-created namesake
    assert cache.get("TrainingJob", "ns", "a")["metadata"]["uid"] == "u2"


def test_only_objects_with_work_ahead_are_kept():
    cache = watched("TrainingJob", "Checkpoint", "Pod", "Service")
    cache.observe(body("TrainingJob", 1, "Running"))
    cache.observe(body("TrainingJob", 2, "Succeeded"))  # finished: read live from now on
    assert cache.get("TrainingJob", "ns", "a") is None
    cache.observe(body("Checkpoint", 3, "Ready", deleting=True))  # being deleted: work ahead
    assert cache.get("Checkpoint", "ns", "a") is not None
    cache.observe(body("Pod", 4, labels={"app": "x"}))  # not the operator's
    cache.observe(body("Service", 5, labels=MANAGED))  # a kind not cached
    assert cache.get("Pod", "ns", "a") is None and cache.get("Service", "ns", "a") is None
    cache.observe(body("Pod", 6, labels=MANAGED))
    assert cache.get("Pod", "ns", "a") is not None
    cache.observe(body("Pod", 6, labels=MANAGED), deleted=True)
    assert [kind for kind in ("TrainingJob", "Checkpoint", "Pod") if cache.get(kind, "ns", "a")] == ["Checkpoint"]


def test_a_read_is_a_copy():
    cache = watched("Job")
    cache.observe(body("Job", 1, labels=MANAGED))
    cache.get("Job", "ns", "a")["metadata"]["labels"].clear()
    assert cache.get("Job", "ns", "a")["metadata"]["labels"] == MANAGED


def test_what_no_watch_keeps_fresh_is_never_served():
    """A write's response in a namespace no watch has shown an event of (a namespaced install's catalog
    namespace) would never change again: read live instead (an import pod stayed Pending so, forever)."""
    cache = watched("Pod")
    elsewhere = body("Pod", 2, labels=MANAGED)
    elsewhere["metadata"]["namespace"] = "catalog"
    cache.observe(elsewhere)  # what creating it returned
    assert cache.get("Pod", "catalog", "a") is None
    cache.observe(body("PersistentVolumeClaim", 3, labels=MANAGED))  # watched namespace, kind not seen yet
    assert cache.get("PersistentVolumeClaim", "ns", "a") is None
    cache.observe(elsewhere, from_watch=True)  # once a watch shows it, it is kept fresh
    cache.observe({**elsewhere, "metadata": {**elsewhere["metadata"], "name": "b", "resourceVersion": "3"}})
    assert cache.get("Pod", "catalog", "a") is not None and cache.get("Pod", "catalog", "b") is not None


def test_the_response_that_removed_the_last_finalizer_after_the_deleted_event_is_not_kept():
    """The Checkpoint reconcile removes its protection finalizer of a Checkpoint being deleted; the
    API server deletes it then, and its DELETED event may be handled before the PATCH's response is
    observed. That response (deletionTimestamp, no finalizers) was kept for good: about 500 bytes per
    lifecycle in `bench/scale.py --memory` (1 MB over 2,000 lifecycles under tracemalloc)."""
    cache = watched("Checkpoint", "TrainingJob")
    cache.observe(body("Checkpoint", 5, "Ready", deleting=True), from_watch=True)
    cache.observe(body("Checkpoint", 6, "Ready", deleting=True, finalizers=()), deleted=True, from_watch=True)
    cache.observe(body("Checkpoint", 6, "Ready", deleting=True, finalizers=()))  # the PATCH's response, late
    assert cache.get("Checkpoint", "ns", "a") is None
    assert len(cache) == 2  # the two "seen" objects alone
    cache.observe(body("TrainingJob", 7, "Running", name="b", deleting=True, finalizers=()), from_watch=True)
    # A watch event of an object as it goes is kept until its DELETED (a pod in its grace period
    # still exists: hostile13 H13-2); the DELETED drops it.
    assert cache.get("TrainingJob", "ns", "b") is not None
    cache.observe(body("TrainingJob", 8, "Running", name="b", deleting=True, finalizers=()), deleted=True,
                  from_watch=True)
    assert cache.get("TrainingJob", "ns", "b") is None
    cache.observe(body("TrainingJob", 8, "Running", name="c", deleting=True), from_watch=True)
    assert cache.get("TrainingJob", "ns", "c") is not None  # a finalizer left: it is still there


# hostile13 H13-2: a pod deleted gracefully (no finalizer) still exists for its grace period; the
# watch's deleting body is kept, so an older write's response is not taken for the live pod.
MANAGED_BY_US = {"app.kubernetes.io/managed-by": "checkpoint-operator"}


def _graceful_pod(rv, deleting=False):
    meta = {"name": "job-union", "namespace": "ns", "uid": "u1", "resourceVersion": str(rv), "labels": dict(MANAGED_BY_US)}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        meta["deletionGracePeriodSeconds"] = 30  # a real API server's graceful pod deletion: no finalizer
    return {"kind": "Pod", "metadata": meta, "status": {"phase": "Running"}}


def test_an_older_write_response_after_a_graceful_deletion_is_not_taken_for_the_current_pod():
    cache = ObjectCache()
    cache.observe(_graceful_pod(10), from_watch=True)
    cache.observe(_graceful_pod(12, deleting=True), from_watch=True)  # the watch: terminating (still exists)
    cache.observe(_graceful_pod(11))                                  # our PATCH's response, answered late
    body = cache.get("Pod", "ns", "job-union")
    assert body is None or body["metadata"].get("deletionTimestamp"), \
        f"the cache holds rv {body['metadata']['resourceVersion']} without deletionTimestamp: the pod looks alive"
