"""kube.ObjectCache: the newest version wins, only objects with work ahead are kept, reads are copies."""

from checkpoint_operator.kube import ObjectCache

MANAGED = {"app.kubernetes.io/managed-by": "checkpoint-operator"}


def body(kind, rv, phase=None, uid="u1", labels=None, name="a", deleting=False):
    meta = {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": str(rv), "labels": labels or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"kind": kind, "metadata": meta, "status": {"phase": phase} if phase else {}}


def test_the_newest_version_wins_whichever_arrives_first():
    cache = ObjectCache()
    cache.observe(body("TrainingJob", 7, "Running"))   # our write's response
    cache.observe(body("TrainingJob", 5, "Pending"))   # the watch, behind it
    assert cache.get("TrainingJob", "ns", "a")["status"]["phase"] == "Running"
    cache.observe(body("TrainingJob", 9, "Snapshotting"))
    assert cache.get("TrainingJob", "ns", "a")["metadata"]["resourceVersion"] == "9"
    cache.observe(body("TrainingJob", 3, "Pending", uid="u2"))  # a re-created namesake
    assert cache.get("TrainingJob", "ns", "a")["metadata"]["uid"] == "u2"


def test_only_objects_with_work_ahead_are_kept():
    cache = ObjectCache()
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
    assert len(cache) == 1  # the Checkpoint


def test_a_read_is_a_copy():
    cache = ObjectCache()
    cache.observe(body("Job", 1, labels=MANAGED))
    cache.get("Job", "ns", "a")["metadata"]["labels"].clear()
    assert cache.get("Job", "ns", "a")["metadata"]["labels"] == MANAGED
