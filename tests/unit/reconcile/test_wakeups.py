"""The wake-up mapping (reconcile/wakeups.py): which keys an event puts on the queue."""

from __future__ import annotations

from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.reconcile import wakeups
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.logic.protection import uses_label
from factories import checkpoint, indexes, training_job


class RecordingQueue:
    def __init__(self):
        self.added: list = []

    def add(self, key, after: float = 0.0):
        self.added.append(key)

    def add_all(self, keys, after: float = 0.0):
        for key in keys:
            self.add(key, after)


def context(**bodies) -> Context:
    ctx = Context(kube=None, config=OperatorConfig())
    ctx.indexes, ctx.queue = indexes(**bodies), RecordingQueue()
    return ctx


def test_a_checkpoint_event_wakes_the_pending_jobs_that_want_it_by_name_uid_or_producer():
    ckpt = checkpoint("in", phase="Ready", produced_by="src", directory="s-1")
    by_name = training_job("by-name", checkpoints=[{"name": "in"}])
    by_uid = training_job("by-uid", checkpoints=[{"uid": ckpt["metadata"]["uid"]}])
    by_producer = training_job("by-producer", checkpoints=[{"fromTrainingJob": "src"}])
    running = training_job("running", phase="Running", checkpoints=[{"name": "in"}])
    other = training_job("other", checkpoints=[{"name": "elsewhere"}])
    ctx = context(checkpoints=[ckpt], jobs=[by_name, by_uid, by_producer, running, other])
    wakeups.checkpoint_event(ctx, "MODIFIED", ckpt)
    woken = {k[2] for k in ctx.queue.added if k[0] == "TrainingJob"}
    assert woken == {"by-name", "by-uid", "by-producer"}  # a Running job no longer waits on inputs


def test_a_finished_producer_wakes_the_jobs_waiting_for_its_outputs():
    src = training_job("src", phase="Succeeded")
    waiting = training_job("next", checkpoints=[{"fromTrainingJob": "src"}])
    ctx = context(jobs=[src, waiting])
    wakeups.training_job_event(ctx, "MODIFIED", src)
    assert ("TrainingJob", "default", "next") in ctx.queue.added


def test_a_job_that_drops_its_uses_label_still_wakes_the_checkpoint_it_used():
    ckpt = checkpoint("in")
    uid = ckpt["metadata"]["uid"]
    job = training_job("user", checkpoints=[{"name": "in"}])
    job["metadata"]["labels"] = {uses_label(uid): "true"}
    ctx = context(checkpoints=[ckpt], jobs=[job])
    wakeups.training_job_event(ctx, "MODIFIED", job)
    assert ("Checkpoint", "default", "in") in ctx.queue.added

    ctx.queue.added.clear()
    job["metadata"]["labels"] = {}  # backed off: neither the label nor a pin names the input now
    wakeups.training_job_event(ctx, "MODIFIED", job)
    assert ("Checkpoint", "default", "in") in ctx.queue.added  # usedBy / a blocked deletion see it
    ctx.queue.added.clear()
    wakeups.training_job_event(ctx, "MODIFIED", job)
    assert ("Checkpoint", "default", "in") not in ctx.queue.added and not ctx.last_uses  # remembered once


def test_a_worker_pod_event_wakes_its_job_by_label():
    job = training_job("train", phase="Running")
    pod = {"kind": "Pod", "metadata": {"name": "train-0", "namespace": "default",
                                       "labels": {"ckpt.dev/trainingjob-uid": "u-train"}}}
    ctx = context(jobs=[job])
    wakeups.child_event(ctx, pod)
    assert ctx.queue.added == [("TrainingJob", "default", "train")]


def test_a_failing_mapping_still_queues_the_object_itself():
    ctx = context()
    ctx.indexes = None  # any look-up fails
    job = training_job("broken", phase="Succeeded")
    wakeups.training_job_event(ctx, "MODIFIED", job)
    assert ctx.queue.added == [("TrainingJob", "default", "broken")]


def test_the_event_of_our_own_write_needs_no_reconcile_of_the_object_but_still_wakes_dependents():
    src = training_job("src", phase="Succeeded")
    src["metadata"]["resourceVersion"] = "7"
    waiting = training_job("next", checkpoints=[{"fromTrainingJob": "src"}])
    ctx = context(jobs=[src, waiting])
    running = training_job("self", phase="Running")
    running["metadata"]["resourceVersion"] = "9"
    ctx.wrote({**running, "kind": "TrainingJob"})
    wakeups.training_job_event(ctx, "MODIFIED", running)
    assert ("TrainingJob", "default", "self") not in ctx.queue.added  # the writer acted on it already
    wakeups.training_job_event(ctx, "MODIFIED", running)
    assert ("TrainingJob", "default", "self") in ctx.queue.added  # remembered once: a later event counts
    ctx.wrote({**src, "kind": "TrainingJob"})
    wakeups.training_job_event(ctx, "MODIFIED", src)
    assert ("TrainingJob", "default", "next") in ctx.queue.added


def test_a_pending_snapshot_checkpoint_waits_for_its_live_producer_alone():
    producer = training_job("src", phase="Snapshotting")
    ckpt = checkpoint("src-s-1", phase="Pending", produced_by="src", directory="s-1")
    ckpt["metadata"]["finalizers"] = ["ckpt.dev/in-use-protection"]
    ctx = context(checkpoints=[ckpt], jobs=[producer])
    wakeups.checkpoint_event(ctx, "ADDED", ckpt)
    assert ("Checkpoint", "default", "src-s-1") not in ctx.queue.added
    ctx = context(checkpoints=[ckpt], jobs=[])  # the producer is gone: the Checkpoint fails on its own
    wakeups.training_job_event(ctx, "DELETED", producer)
    assert ("Checkpoint", "default", "src-s-1") in ctx.queue.added


def test_a_new_training_job_wakes_the_pending_jobs_that_take_from_it():
    """A consumer that waited for its producer to exist looks again when it appears (and may then
    find the two of them in a cycle, logic/wait_cycles.py); a plain change does not wake it."""
    consumer = training_job("consumer", checkpoints=[{"fromTrainingJob": "producer"}])
    producer = training_job("producer", checkpoints=[{"fromTrainingJob": "consumer"}])
    ctx = context(jobs=[consumer, producer])
    wakeups.training_job_event(ctx, "ADDED", producer)
    assert ("TrainingJob", "default", "consumer") in ctx.queue.added
    ctx = context(jobs=[consumer, producer])
    wakeups.training_job_event(ctx, "MODIFIED", {**producer, "metadata": {**producer["metadata"], "resourceVersion": "2"}})
    assert ("TrainingJob", "default", "consumer") not in ctx.queue.added


def catalog_entry(name: str, uid: str, phase: str = "Ready") -> dict:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "ClusterCheckpoint",
            "metadata": {"name": name, "uid": uid, "finalizers": ["ckpt.dev/in-use-protection"]},
            "spec": {"source": {"huggingFace": {"repo": "org/m"}}}, "status": {"phase": phase}}


def test_a_catalog_entry_wakes_the_pending_jobs_of_every_namespace_that_name_it():
    entry = catalog_entry("gpt2", "u-gpt2")
    team_a = training_job("a", checkpoints=[{"clusterCheckpoint": "gpt2"}])
    team_b = training_job("b", checkpoints=[{"clusterCheckpoint": "gpt2"}])
    team_b["metadata"]["namespace"] = "team-b"
    running = training_job("r", phase="Running", checkpoints=[{"clusterCheckpoint": "gpt2"}])
    other = training_job("o", checkpoints=[{"clusterCheckpoint": "bert"}])
    ctx = context(jobs=[team_a, team_b, running, other], entries=[entry])
    wakeups.cluster_checkpoint_event(ctx, "MODIFIED", entry)
    woken = {(k[1], k[2]) for k in ctx.queue.added if k[0] == "TrainingJob"}
    assert woken == {("default", "a"), ("team-b", "b")}
    # Settled and up to date: the entry itself needs no reconcile.
    assert ("ClusterCheckpoint", "", "gpt2") not in ctx.queue.added


def test_a_job_using_a_catalog_entry_wakes_it_and_a_copy_pod_wakes_the_job():
    entry = catalog_entry("gpt2", "u-gpt2")
    job = training_job("user", checkpoints=[{"clusterCheckpoint": "gpt2"}])
    job["metadata"]["labels"] = {uses_label("u-gpt2"): "true"}
    ctx = context(jobs=[job], entries=[entry])
    wakeups.training_job_event(ctx, "MODIFIED", job)
    assert ("ClusterCheckpoint", "", "gpt2") in ctx.queue.added  # its usedBy, a deletion it blocks
    ctx.queue.added.clear()
    copy_pod = {"kind": "Pod", "metadata": {"name": "catalog-gpt2-u-gpt-copy", "namespace": "default",
                                            "ownerReferences": [{"kind": "ClusterCheckpoint", "name": "gpt2",
                                                                 "uid": "u-gpt2"}]}}
    wakeups.child_event(ctx, copy_pod)
    assert ("TrainingJob", "default", "user") in ctx.queue.added
    assert ("ClusterCheckpoint", "", "gpt2") in ctx.queue.added


def test_what_is_kept_of_an_object_goes_with_its_deleted_event():
    """A long-running operator sees thousands of objects come and go: nothing it keeps of one
    outlives it (issue 21 item 6)."""
    from checkpoint_operator.logic.live_sealing import LiveMemory
    ckpt = checkpoint("in")
    job = training_job("user", phase="Running", checkpoints=[{"name": "in"}])
    job["metadata"]["labels"] = {uses_label(ckpt["metadata"]["uid"]): "true"}
    job["metadata"]["resourceVersion"] = "3"
    ckpt["metadata"]["resourceVersion"] = "4"
    ctx = context(checkpoints=[ckpt], jobs=[job])
    ctx.wrote({**job, "metadata": {**job["metadata"], "resourceVersion": "2"}})  # its event was batched away
    ctx.wrote({**ckpt, "metadata": {**ckpt["metadata"], "resourceVersion": "2"}})
    ctx.live[("default", "u-user")] = LiveMemory()
    wakeups.training_job_event(ctx, "MODIFIED", job)
    assert ctx.last_uses and ctx.live
    wakeups.training_job_event(ctx, "DELETED", job)
    wakeups.checkpoint_event(ctx, "DELETED", ckpt)
    assert (ctx.own_writes, ctx.last_uses, ctx.live) == ({}, {}, {})
    assert ("Checkpoint", "default", "in") in ctx.queue.added  # the job's input still woken (its usedBy)


def test_the_resync_drops_what_is_kept_of_objects_the_indexes_no_longer_hold():
    """A DELETED event that never came (a watch relisted over a deletion): the resync's pass."""
    from checkpoint_operator.logic.live_sealing import LiveMemory
    kept, finished = training_job("kept", phase="Running"), training_job("done", phase="Succeeded")
    ctx = context(jobs=[kept, finished], checkpoints=[checkpoint("here")])
    ctx.own_writes.update({("TrainingJob", "default", "kept"): "1", ("TrainingJob", "default", "gone"): "1",
                           ("Checkpoint", "default", "here"): "1", ("Checkpoint", "default", "gone"): "1"})
    ctx.last_uses.update({("default", "kept"): {"u"}, ("default", "gone"): {"u"}})
    ctx.live.update({("default", "u-kept"): LiveMemory(), ("default", "u-done"): LiveMemory(),
                     ("default", "u-gone"): LiveMemory()})
    assert ctx.forget_gone() == 5
    assert set(ctx.own_writes) == {("TrainingJob", "default", "kept"), ("Checkpoint", "default", "here")}
    assert set(ctx.last_uses) == {("default", "kept")} and set(ctx.live) == {("default", "u-kept")}


def test_what_is_kept_of_a_catalog_entry_goes_with_it():
    """A ClusterCheckpoint's own-write record goes with its DELETED event, or with the resync once the index no
    longer holds it; a live entry's stays (its next event is still recognised as our own write)."""
    entry, gone = catalog_entry("gpt2", "u-gpt2"), catalog_entry("bert", "u-bert")
    entry["metadata"]["resourceVersion"] = gone["metadata"]["resourceVersion"] = "7"
    ctx = context(entries=[entry])
    ctx.wrote(entry)
    ctx.wrote(gone)
    assert ctx.forget_gone() == 1  # bert is not in the index
    assert set(ctx.own_writes) == {("ClusterCheckpoint", "", "gpt2")}
    wakeups.cluster_checkpoint_event(ctx, "DELETED", entry)
    assert ctx.own_writes == {}


def test_the_index_keeps_checkpoints_in_snapshots_for_the_resync() -> None:
    """hostile4 D4: Ready Checkpoints in a VolumeSnapshot (and those failed while it was not
    readyToUse) are what the resync compares with one LIST of the namespace's snapshots."""
    from checkpoint_operator.logic.volume_snapshots import SNAPSHOT_NOT_READY, SnapshotUse
    from checkpoint_operator.reconcile.indexes import checkpoint_keys

    def body(phase, reason="Ready", snapshot=True):
        location = {"snapshot": {"volumeSnapshotName": "s", "volumeSnapshotUID": "u1", "path": "."}} if snapshot \
            else {"volume": {"claimName": "c", "path": "."}}
        return {"metadata": {"name": "c1", "namespace": "ns", "uid": "cu"}, "spec": {"source": {}},
                "status": {"phase": phase, "location": location,
                           "conditions": [{"type": "Ready", "status": "False", "reason": reason}]}}
    key = ("in-snapshot", "ns", "s")  # one key per snapshot it is in (a volume per worker: several)
    assert checkpoint_keys(body("Ready"))[key] == SnapshotUse("c1", "s", "u1", True, False)
    assert checkpoint_keys(body("Failed", SNAPSHOT_NOT_READY))[key] == SnapshotUse("c1", "s", "u1", False, True)
    assert key not in checkpoint_keys(body("Failed", "VolumeSnapshotLost"))
    assert key not in checkpoint_keys(body("Ready", snapshot=False))
    assert key not in checkpoint_keys(body("Pending"))


def test_a_jobs_cached_on_request_wakes_the_ready_checkpoint_until_its_status_says_so():
    ckpt = checkpoint("in")
    ckpt["metadata"]["finalizers"] = ["ckpt.dev/in-use-protection"]
    ctx = context(checkpoints=[ckpt])
    wakeups.checkpoint_event(ctx, "MODIFIED", ckpt)
    assert ("Checkpoint", "default", "in") not in ctx.queue.added  # nothing to do
    ckpt["metadata"]["annotations"] = {"ckpt.dev/cached-on": '["node-a"]'}  # unsigned: nobody's request
    wakeups.checkpoint_event(ctx, "MODIFIED", ckpt)
    assert ("Checkpoint", "default", "in") not in ctx.queue.added
    ckpt["metadata"]["annotations"]["ckpt.dev/cached-on-signature"] = "v1:" + "0" * 64  # its reconcile checks it
    wakeups.checkpoint_event(ctx, "MODIFIED", ckpt)
    assert ("Checkpoint", "default", "in") in ctx.queue.added
    ctx.queue.added.clear()
    ckpt["status"]["cachedOn"] = ["node-a"]  # written: no more work
    wakeups.checkpoint_event(ctx, "MODIFIED", ckpt)
    assert ("Checkpoint", "default", "in") not in ctx.queue.added


def _pod(phase, *, rv, node="", conditions=(), deleting=False, fill=None):
    meta = {"name": "train-0", "namespace": "default", "uid": "p-1", "resourceVersion": str(rv),
            "labels": {"ckpt.dev/trainingjob-uid": "u-train", "ckpt.dev/component": "worker"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:09Z"
    status = {"phase": phase, "conditions": list(conditions)}
    if fill:  # a node-cache fill's report, in its init container's termination message
        status["initContainerStatuses"] = [{"name": "download-input-0", "state": {"terminated": {
            "exitCode": 0, "message": fill}}}]
    return {"kind": "Pod", "metadata": meta, "spec": {"nodeName": node} if node else {}, "status": status}


def test_a_pod_event_that_changes_nothing_its_job_reads_wakes_no_reconcile():
    """Issue 22.4: a pod's status updates within one phase (the kubelet's conditions, ContainerCreating)
    woke its job each time: about half of a pod's 7 events. Every change the job reads still wakes it:
    scheduling, a problem, a phase, a deletion, a fill report; and the first event of a pod after a
    restart of the operator (nothing remembered)."""
    import json
    ctx = context(jobs=[training_job("train", phase="Running")])
    woken = []

    def event(body, event_type="MODIFIED"):
        ctx.queue.added.clear()
        wakeups.child_event(ctx, body, event_type)
        woken.append(bool(ctx.queue.added))
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:01Z"}
    initialized = {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-01-01T00:00:02Z"}
    stuck = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
    event(_pod("Pending", rv=1), "ADDED")
    event(_pod("Pending", rv=2, conditions=[stuck]))                                # a problem
    event(_pod("Pending", rv=3, node="n1", conditions=[scheduled]))                 # scheduled
    event(_pod("Pending", rv=4, node="n1", conditions=[scheduled, initialized]))    # the kubelet's: nothing read
    event(_pod("Running", rv=5, node="n1", conditions=[scheduled, initialized]))
    event(_pod("Running", rv=6, node="n1", conditions=[scheduled]))                 # nothing read
    fill = json.dumps({"kind": "cache-fill", "version": 1, "cache": "miss", "key": "default/" + "a" * 64,
                       "sizeBytes": 100, "fetchedBytes": 100, "waitedSeconds": 0.1, "evicted": [], "evictedCount": 0,
                       "evictedBytes": 0})
    event(_pod("Running", rv=7, node="n1", conditions=[scheduled], fill=fill))                  # a fill reported
    event(_pod("Succeeded", rv=8, node="n1", conditions=[scheduled], fill=fill))
    event(_pod("Succeeded", rv=9, node="n1", conditions=[scheduled], fill=fill))               # nothing read
    event(_pod("Succeeded", rv=10, node="n1", conditions=[scheduled], fill=fill, deleting=True))
    assert woken == [True, True, True, False, True, False, True, True, False, True]
    event(_pod("Succeeded", rv=11, node="n1", conditions=[scheduled], fill=fill, deleting=True), "DELETED")
    assert woken[-1] and ctx.pod_seen == {}  # goes with the pod
    ctx.pod_seen.clear()
    event(_pod("Succeeded", rv=12, node="n1", conditions=[scheduled], fill=fill, deleting=True), None)  # a relist after a restart
    assert woken[-1]


def test_the_resync_drops_what_is_remembered_of_pods_the_cache_no_longer_holds():
    """A pod's DELETED event that never came: its summary goes at the next resync (memory stays flat)."""
    from types import SimpleNamespace
    from checkpoint_operator.kube import ObjectCache
    ctx = context(jobs=[training_job("train", phase="Running")])
    cache = ctx.kube = SimpleNamespace(cache=ObjectCache())
    live = _pod("Running", rv=1, node="n1")
    live["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "checkpoint-operator"
    cache.cache.observe(live, from_watch=True)
    wakeups.child_event(ctx, live, "MODIFIED")
    ctx.pod_seen[("default", "gone-0")] = ctx.pod_seen[("default", "train-0")]
    assert ctx.forget_gone() == 1 and set(ctx.pod_seen) == {("default", "train-0")}


async def test_the_resync_wakes_nothing_while_the_replica_is_paused():
    """A standby replica's indexes are current now (the informer keeps them while kopf's peering has
    it paused; kopf's froze): its resync must not reconcile what the active peer does."""
    import asyncio
    ctx = context(jobs=[training_job("unfinished", phase="Running")])
    ctx.config = OperatorConfig(resync_interval=0.05)
    paused = [True]
    ctx.paused = lambda: paused[0]
    task = wakeups.start_resync(ctx)
    try:
        await asyncio.sleep(0.3)
        assert ctx.queue.added == []
        paused[0] = False
        for _ in range(40):
            if ctx.queue.added:
                break
            await asyncio.sleep(0.05)
        assert ("TrainingJob", "default", "unfinished") in ctx.queue.added
    finally:
        task.cancel()
