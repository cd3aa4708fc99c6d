"""reconcile/informer.py's pure pieces and reconcile/indexes.py ObjectIndex (issue 22 item 4)."""

from __future__ import annotations

import threading

import pytest

from checkpoint_operator import kube
from checkpoint_operator.kube import ApiError
from checkpoint_operator.reconcile.indexes import Indexes, ObjectIndex, worker_pod_keys
from checkpoint_operator.reconcile.informer import (Backoff, Gone, Holding, Informer, Target, decode, list_error,
                                                    namespace_listed, relist_changes, slim, split_lines, targets,
                                                    unsynced_namespaces)


def _pod(name: str, rv: str, uid: str = "", **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns", "uid": uid or f"uid-{name}", "resourceVersion": rv,
                         "labels": labels, "ownerReferences": [{"kind": "Job", "name": "j", "uid": "job-uid"}]},
            "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running"}}


# --- decoding a watch stream ---------------------------------------------------------------------------

def test_decode_gives_the_type_and_object_and_skips_blank_lines():
    assert decode(b'{"type":"ADDED","object":{"kind":"Pod"}}') == ("ADDED", {"kind": "Pod"})
    assert decode(b"  \r") is None


def test_decode_raises_gone_for_a_410_error_event_and_api_error_for_another():
    with pytest.raises(Gone):
        decode(b'{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old"}}')
    with pytest.raises(ApiError) as raised:
        decode(b'{"type":"ERROR","object":{"kind":"Status","code":500,"reason":"InternalError","message":"x"}}')
    assert raised.value.status == 500 and not isinstance(raised.value, Gone)


def test_split_lines_joins_lines_cut_across_chunks():
    chunks = [b'{"a":', b'1}\n{"b":2}\n{"c"', b"", b':3}\n{"d":4}']
    assert list(split_lines(chunks)) == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b'{"d":4}']


# --- relisting -----------------------------------------------------------------------------------------

def test_a_relist_hands_on_the_vanished_as_deleted_and_skips_the_unchanged():
    known = {("ns", "kept"): slim(_pod("kept", "5")), ("ns", "moved"): slim(_pod("moved", "6")),
             ("ns", "gone"): slim(_pod("gone", "7")), ("ns", "again"): slim(_pod("again", "8", uid="old"))}
    listed = [_pod("kept", "5"), _pod("moved", "9"), _pod("new", "10"), _pod("again", "8", uid="new")]
    changes = [(t, b["metadata"]["name"]) for t, b in relist_changes(known, listed)]
    assert changes == [("MODIFIED", "moved"), ("ADDED", "new"), ("MODIFIED", "again"), ("DELETED", "gone")]
    deleted = [b for t, b in relist_changes(known, listed) if t == "DELETED"][0]
    # What a DELETED carries is enough for every handler: the kind, the owners, the labels.
    assert deleted["kind"] == "Pod" and deleted["metadata"]["ownerReferences"][0]["uid"] == "job-uid"


def test_slim_keeps_only_what_a_deletion_needs():
    kept = slim(_pod("p", "3", a="b"))
    assert kept == {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "p", "namespace": "ns", "uid": "uid-p", "resourceVersion": "3", "labels": {"a": "b"},
        "ownerReferences": [{"kind": "Job", "name": "j", "uid": "job-uid"}]}}


# --- backoff and targets -------------------------------------------------------------------------------

def test_backoff_doubles_to_its_cap_and_resets():
    backoff = Backoff(base=0.5, cap=4.0)
    assert [backoff.next(lambda: 1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.next(lambda: 0.0) == 2.0  # jitter: between half and all of it
    backoff.reset()
    assert backoff.next(lambda: 1.0) == 0.5


def test_targets_are_every_namespace_or_each_listed_one_as_kopf_watched():
    children = [(kube.PODS, "sel", False), (kube.JOBSETS, "sel", True)]
    assert targets(children, []) == [Target(kube.PODS, None, "sel"), Target(kube.JOBSETS, None, "sel", True)]
    assert targets(children, ["a", "b", "a"]) == [
        Target(kube.PODS, "a", "sel"), Target(kube.PODS, "b", "sel"),
        Target(kube.JOBSETS, "a", "sel", True), Target(kube.JOBSETS, "b", "sel", True)]


# --- the worker pod index ------------------------------------------------------------------------------

def _worker(name: str, job_uid: str, rv: str = "1") -> dict:
    pod = _pod(name, rv, **{"ckpt.dev/component": "worker", "ckpt.dev/trainingjob-uid": job_uid})
    pod["metadata"]["ownerReferences"] = [{"kind": "Job", "name": "j", "uid": "job-uid", "controller": True}]
    return pod


def test_object_index_reads_as_kopf_s_index_through_indexes():
    index = ObjectIndex()
    indexes = Indexes({}, {}, index)
    for pod in (_worker("a", "tj1"), _worker("b", "tj1"), _worker("c", "tj2")):
        index.update(("ns", pod["metadata"]["name"]), worker_pod_keys(pod))
    assert sorted(p.name for p in indexes.worker_pods("ns", "tj1", {"job-uid"})) == ["a", "b"]
    assert [p.name for p in indexes.worker_pods("ns", "tj2", {"job-uid"})] == ["c"]
    index.update(("ns", "a"), {})  # deleted
    assert [p.name for p in indexes.worker_pods("ns", "tj1", {"job-uid"})] == ["b"]
    index.update(("ns", "b"), {})
    assert indexes.worker_pods("ns", "tj1", {"job-uid"}) == [] and ("pods", "ns", "tj1") not in index
    assert list(index) == [("pods", "ns", "tj2")] and len(index) == 1


def test_object_index_moves_an_object_whose_keys_change_and_keeps_its_latest_value():
    index = ObjectIndex()
    index.update(("ns", "a"), {("k", "1"): "v1"})
    index.update(("ns", "a"), {("k", "2"): "v2"})
    assert ("k", "1") not in index and list(index[("k", "2")]) == ["v2"]
    index.update(("ns", "a"), {("k", "2"): "v3"})
    assert list(index[("k", "2")]) == ["v3"]
    index.update(("ns", "b"), {("k", "2"): "w"})
    assert sorted(index[("k", "2")]) == ["v3", "w"]


def test_object_index_readers_hold_a_value_that_never_changes_under_them():
    index = ObjectIndex()
    index.update(("ns", "a"), {("k",): "a"})
    read = index.get(("k",))
    index.update(("ns", "b"), {("k",): "b"})
    assert tuple(read) == ("a",) and sorted(index.get(("k",))) == ["a", "b"]


# --- wake-ups held until kopf's indexes are ready ------------------------------------------------------

def test_holding_keeps_the_latest_event_of_each_object_until_released_then_passes_through():
    delivered: list[tuple[str, str]] = []
    holding = Holding(lambda t, body: delivered.append((t, body["metadata"]["name"])), threading.Lock())
    holding.offer("ADDED", _pod("a", "1"))
    holding.offer("ADDED", _pod("b", "2"))
    holding.offer("DELETED", _pod("a", "3"))
    assert delivered == []
    holding.release()
    assert delivered == [("DELETED", "a"), ("ADDED", "b")]
    holding.release()  # once only
    holding.offer("MODIFIED", _pod("b", "4"))
    assert delivered[-1] == ("MODIFIED", "b") and len(delivered) == 3


def test_holding_holds_again_while_kopf_is_paused_and_its_next_handler_releases():
    """kopf's peering froze it (a peer of higher priority runs): its streams deliver nothing, so the
    children's wake-ups wait too; kopf's first handler after the pause releases them."""
    delivered: list[tuple[str, str]] = []
    paused = False
    holding = Holding(lambda t, body: delivered.append((t, body["metadata"]["name"])), threading.Lock(),
                      paused=lambda: paused)
    holding.release()
    holding.offer("ADDED", _pod("a", "1"))
    assert delivered == [("ADDED", "a")]
    paused = True
    holding.offer("MODIFIED", _pod("a", "2"))
    holding.offer("ADDED", _pod("b", "3"))
    holding.release()  # a handler of kopf's that was still running as it froze: nothing goes yet
    assert delivered == [("ADDED", "a")] and not holding.open
    paused = False
    holding.release()
    assert delivered == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b")] and holding.open


# --- a target that cannot be listed holds no other (hostile11 H11-1) -----------------------------------

def test_list_error_is_one_line_naming_resource_namespace_status_and_message():
    why = list_error(Target(kube.PVCS, "team-b"), ApiError(403, "Forbidden", "cannot list\nclaims"))
    assert why == "cannot list persistentvolumeclaims in namespace team-b: HTTP 403 Forbidden: cannot list claims"
    assert "HTTP 403 Forbidden: (no message)" in list_error(Target(kube.PODS, None), ApiError(403, "", ""))
    assert "in every namespace" in list_error(Target(kube.PODS, None), ApiError(403, "", ""))


def test_a_namespace_is_listed_unless_one_of_its_targets_is_not():
    a_pods, b_claims, all_pods = Target(kube.PODS, "a"), Target(kube.PVCS, "b"), Target(kube.PODS, None)
    unsynced = unsynced_namespaces([(a_pods, True), (b_claims, False)])
    assert unsynced == {"b"}
    assert namespace_listed(unsynced, "a") and not namespace_listed(unsynced, "b")
    assert namespace_listed(unsynced, "")  # a cluster-scoped object: no namespaced target is about it
    everywhere = unsynced_namespaces([(all_pods, False)])
    assert everywhere is None and not namespace_listed(everywhere, "a") and not namespace_listed(everywhere, "")
    assert unsynced_namespaces([(a_pods, True), (all_pods, True)]) == set()


def test_the_informer_settles_once_every_target_listed_or_failed_and_names_what_is_not_listed():
    """Start-up waits for `settled` (bounded), not for `synced`: before, one target whose LIST kept
    failing held every other (the operator never became ready)."""
    informer = Informer(kube.Kube.from_url("http://127.0.0.1:9"), [Target(kube.PODS, "a"), Target(kube.PVCS, "b")],
                        lambda t, b: None)
    changes: list[int] = []
    informer.on_change = lambda: changes.append(len(informer.unsynced()))
    pods, claims = informer.reflectors
    pods._mark_synced()
    assert not informer.wait_settled(0) and not informer.synced
    claims.error = list_error(claims.target, ApiError(403, "Forbidden", "no Role"))
    claims.on_list_failed()
    assert informer.wait_settled(0) and not informer.synced
    assert [(t.namespace, why) for t, why in informer.unsynced()] == [("b", claims.error)]
    assert informer.namespace_listed("a") and not informer.namespace_listed("b")
    assert changes == [1, 1]
    claims.error = None
    claims._mark_synced()
    assert informer.synced and informer.namespace_listed("b") and informer.unsynced() == []


# --- the reflector's loop, with its requests played by the test --------------------------------------

class _Played:
    """A Reflector whose LIST and WATCH the test plays; its pauses are recorded, not slept; it stops
    after `rounds` LISTs."""

    def __init__(self, target: Target, rounds: int) -> None:
        from checkpoint_operator.reconcile.informer import Reflector
        self.events: list[tuple[str, str]] = []
        self.waits: list[float] = []
        self.lists = 0
        self.reflector = Reflector(None, target, lambda t, body: self.events.append((t, body["metadata"]["name"])),
                                   threading.Lock(), lambda: None)
        self.reflector._stop.wait = self._wait  # type: ignore[method-assign]
        self.rounds = rounds

    def _wait(self, delay: float) -> bool:
        self.waits.append(delay)
        return False

    def counted_list(self, apply=None):
        def play() -> None:
            self.lists += 1
            if self.lists >= self.rounds:
                self.reflector._stop.set()
            if apply is not None:
                apply(self.lists)
            self.reflector.version = str(self.lists)
            self.reflector.synced = True
        return play


def test_a_watch_that_always_answers_410_relists_after_a_doubling_pause():
    """hostile11 H11-3: Gone relisted at once (34 LISTs in 3 s against a server answering every watch
    with 410); now a relist waits as client-go's reflector does: 0.8 s doubling to 30 s."""
    played = _Played(Target(kube.PVCS, "default"), rounds=8)
    played.reflector._list = played.counted_list()  # type: ignore[method-assign]

    def gone() -> int:
        raise Gone("too old")
    played.reflector._watch = gone  # type: ignore[method-assign]
    played.reflector._run()
    assert played.lists == 8
    assert len(played.waits) == 8, played.waits  # a pause after every 410 (before: none at all)
    assert all(d >= 0.4 for d in played.waits) and played.waits[-1] >= 15, played.waits  # doubling to 30 s
    backoff = Backoff()
    assert [backoff.next(lambda: 1.0) for _ in range(8)] == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]


def test_an_optional_kind_that_goes_away_hands_on_deleted_for_everything_known():
    """hostile11 H11-6: a JobSet CRD removed while the watch was down: the resumed watch (or relist)
    gets 404; before, the reflector kept its known objects forever (ghosts in the cache)."""
    played = _Played(Target(kube.JOBSETS, "ns", optional=True), rounds=2)
    reflector = played.reflector

    def listed(n: int) -> None:
        if n == 1:
            reflector._apply("ADDED", {"kind": "JobSet", "metadata": {"name": "js", "namespace": "ns",
                                                                     "resourceVersion": "1"}})
    reflector._list = played.counted_list(listed)  # type: ignore[method-assign]

    def absent() -> int:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    reflector._watch = absent  # type: ignore[method-assign]
    reflector._run()
    assert played.events[:2] == [("ADDED", "js"), ("DELETED", "js")] and not reflector.known
    assert played.events.count(("DELETED", "js")) == 1


# --- held wake-ups keep only what a wake-up reads (hostile11 H11-4) ----------------------------------

def _user_claim(i: int) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"user-claim-{i}", "namespace": "data", "uid": f"uid-{i:08d}",
                         "resourceVersion": str(1000 + i), "labels": {"team": "vision", "owner": f"user{i % 50}"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x" * 400},
                         "finalizers": ["kubernetes.io/pvc-protection"],
                         "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Gi"}},
                     "storageClassName": "gp3", "volumeName": f"pvc-{i:08d}"},
            "status": {"phase": "Bound", "capacity": {"storage": "100Gi"}}}


@pytest.mark.parametrize("paused", [True, False], ids=["standby replica (kopf paused)", "no custom resource yet"])
def test_held_wakeups_keep_a_slim_body_of_each_object_not_the_whole(paused):
    """Before, Holding kept the latest whole body of every event while closed (a standby replica for
    hours, a fresh install with no TrainingJob): every claim of the cluster, about 2.5 kB each here."""
    import json
    import tracemalloc
    lock = threading.Lock()
    delivered: list[tuple[str, dict]] = []
    holding = Holding(lambda t, b: delivered.append((t, b)), lock, paused=lambda: paused)
    n = 2000
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        body = json.loads(json.dumps(_user_claim(i)))
        with lock:
            holding.offer("ADDED", body)
            holding.offer("MODIFIED", body)  # the latest per object only
    per = (tracemalloc.get_traced_memory()[0] - base) / n
    tracemalloc.stop()
    assert len(holding.held) == n and not delivered
    assert per < 1000, per  # before: > 2000 B per claim
    event_type, kept = holding.held[("PersistentVolumeClaim", "data", "user-claim-7")]
    assert event_type == "MODIFIED" and set(kept) == {"apiVersion", "kind", "metadata"}
    assert "labels" not in kept["metadata"] and "annotations" not in kept["metadata"]


def test_held_keeps_kind_name_owners_and_the_operator_s_labels():
    from checkpoint_operator.reconcile.informer import held
    pod = _pod("p", "7", **{"ckpt.dev/trainingjob-uid": "tj", "ckpt.dev/component": "worker", "team": "x"})
    pod["metadata"]["annotations"] = {"big": "y" * 100}
    assert held(pod) == {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "p", "namespace": "ns", "uid": "uid-p", "resourceVersion": "7",
        "ownerReferences": [{"kind": "Job", "name": "j", "uid": "job-uid"}],
        "labels": {"ckpt.dev/trainingjob-uid": "tj", "ckpt.dev/component": "worker"}}}


def test_a_held_event_is_released_through_deliver_held():
    live: list[str] = []
    released: list[tuple[str, str]] = []
    holding = Holding(lambda t, b: live.append(t), threading.Lock(),
                      deliver_held=lambda t, b: released.append((t, b["metadata"]["name"])))
    holding.offer("ADDED", _pod("a", "1"))
    holding.release()
    holding.offer("MODIFIED", _pod("a", "2"))
    assert released == [("ADDED", "a")] and live == ["MODIFIED"]


# --- a paged LIST is applied page by page (hostile11 H11-5) -------------------------------------------

class _Page:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data


def test_a_paged_list_hands_on_each_page_before_asking_for_the_next_and_deletes_at_the_end():
    """Before, every page's whole objects were kept until the last page (the peak of a LIST was the
    whole kind, unrelated claims included); now a page is handed on as it arrives, and only the
    keys are kept to find what vanished."""
    import json
    import tracemalloc
    from checkpoint_operator.reconcile.informer import Reflector
    n, page = 3000, 500
    events: list[tuple[str, str]] = []
    reflector = Reflector(None, Target(kube.PVCS, None), lambda t, b: events.append((t, b["metadata"]["name"])),
                          threading.Lock(), lambda: None)
    reflector.known[("data", "gone")] = {"kind": "PersistentVolumeClaim",
                                         "metadata": {"name": "gone", "namespace": "data", "resourceVersion": "1"}}
    handed_before_request: list[int] = []

    def request(query, _timeout):
        handed_before_request.append(len(events))
        start = int(query.get("continue") or 0)
        items = [_user_claim(i) for i in range(start, min(n, start + page))]
        meta = {"resourceVersion": "9"} | ({"continue": str(start + page)} if start + page < n else {})
        return _Page(json.dumps({"kind": "PersistentVolumeClaimList", "metadata": meta, "items": items}).encode())
    reflector._request = request  # type: ignore[method-assign]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    reflector._list()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert handed_before_request == [0, 500, 1000, 1500, 2000, 2500]  # before: all 0 (nothing until the end)
    assert len(events) == n + 1 and events[-1] == ("DELETED", "gone") and ("data", "gone") not in reflector.known
    assert reflector.version == "9" and reflector.lists == 1
    assert peak / n < 3000, peak / n  # before: > 4000 B per claim (every page whole at once)


def test_the_unsynced_gauge_names_each_target_not_listed_with_its_status():
    from checkpoint_operator import metrics
    claims, pods = Target(kube.PVCS, "team-b"), Target(kube.PODS, None)
    why = list_error(claims, ApiError(403, "Forbidden", "no Role"))
    for _ in range(2):  # idempotent: a gauge of 1 per target, however often observed
        metrics.observe_informer([(claims, why), (pods, "pods in every namespace: not listed yet")])
    value = metrics.REGISTRY.get_sample_value
    name = "checkpoint_operator_informer_unsynced_targets"
    assert value(name, {"resource": "persistentvolumeclaims", "namespace": "team-b", "status": "403"}) == 1
    assert value(name, {"resource": "pods", "namespace": "", "status": "pending"}) == 1
    metrics.observe_informer([])
    assert value(name, {"resource": "persistentvolumeclaims", "namespace": "team-b", "status": "403"}) is None


# --- the read-only review of the hostile11 fixes -------------------------------------------------------

def test_a_watch_whose_stream_says_410_backs_off_more_each_time():
    """The API server says a watch's resourceVersion expired with HTTP 200 and one ERROR line: that
    line counted as an event, so every 410 looked like "a watch that worked", the backoff reset and
    the relists came every 0.4-0.8 s forever. Only decoded events count now."""
    played = _Played(Target(kube.PVCS, "default"), rounds=8)
    played.reflector._list = played.counted_list()  # type: ignore[method-assign]
    played.reflector._request = lambda query, timeout: _Page(  # type: ignore[method-assign]
        b'{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old"}}\n')
    played.reflector._run()
    assert played.lists == 8 and len(played.waits) == 8, played.waits
    assert played.waits[-1] >= 15, played.waits  # doubling to 30 s (before: every pause under 1 s)


def test_a_single_404_of_an_optional_kind_with_known_objects_is_not_trusted():
    """One 404 may be an API server or a CRD handler not ready: handing on every known JobSet as
    DELETED would make their jobs take their workloads for gone. A second 404 in a row confirms."""
    played = _Played(Target(kube.JOBSETS, "ns", optional=True), rounds=2)
    reflector = played.reflector

    def listed(n: int) -> None:
        reflector.absent_in_a_row = 0  # (a LIST that works resets it, as _list does)
        if n == 1:
            reflector._apply("ADDED", {"kind": "JobSet", "metadata": {"name": "js", "namespace": "ns",
                                                                     "resourceVersion": "1"}})
    reflector._list = played.counted_list(listed)  # type: ignore[method-assign]
    watches = iter([ApiError(404, "NotFound", "not ready"), None])

    def watch() -> int:
        answer = next(watches)
        if answer is not None:
            raise answer
        return 1
    reflector._watch = watch  # type: ignore[method-assign]
    reflector._run()
    assert played.events == [("ADDED", "js")] and ("ns", "js") in reflector.known


def test_a_target_whose_watch_fails_after_it_listed_is_named_until_a_watch_works():
    """Listed once, then its watch refused (a Role that allows list but not watch): the cache keeps
    the last objects; before, /healthz and the gauge said nothing, and the log said "cannot list"."""
    informer = Informer(kube.Kube.from_url("http://127.0.0.1:9"), [Target(kube.PODS, "a")], lambda t, b: None)
    pods = informer.reflectors[0]
    pods._mark_synced()
    pods.version = "5"
    pods._stop.wait = lambda delay: False  # type: ignore[method-assign]
    pods._fail(ApiError(403, "Forbidden", "cannot watch pods"), listing=False)
    assert [why for _, why in informer.unsynced()] == [
        "cannot watch pods in namespace a: HTTP 403 Forbidden: cannot watch pods"]
    assert informer.namespace_listed("a")  # its reconciles go on with the last listed objects
    pods._worked()
    assert informer.unsynced() == []


def test_held_wakeups_past_the_limit_wake_everything_unfinished_instead():
    """A standby replica under claim churn held one entry per object it ever saw, without a bound."""
    delivered: list[str] = []
    overflows: list[int] = []
    holding = Holding(lambda t, body: delivered.append(body["metadata"]["name"]), threading.Lock(),
                      on_overflow=lambda: overflows.append(1), limit=3)
    for i in range(5):
        holding.offer("ADDED", _pod(f"p{i}", str(i)))
    assert holding.overflowed and holding.held == {}
    holding.release()
    assert overflows == [1] and delivered == []
    holding.offer("MODIFIED", _pod("p9", "9"))
    assert delivered == ["p9"] and not holding.overflowed


def test_the_informer_s_pool_has_a_connection_per_target_each_holding_a_watch():
    """7 kinds in two namespaces hold 14 watches open: a pool of the default size (5 per CPU) overflowed
    and urllib3 warned 'Connection pool is full' at every stream's end (local run's last line)."""
    from checkpoint_operator.kube import PODS, Kube
    from checkpoint_operator.reconcile.informer import Informer, Target
    kube = Kube.from_url("http://127.0.0.1:9")
    kube.api.configuration.connection_pool_maxsize = 4
    targets = [Target(PODS, f"ns-{i}", None, False) for i in range(14)]
    informer = Informer(kube, targets, lambda t, body: None)
    assert informer.api.rest_client.pool_manager.connection_pool_kw["maxsize"] >= 14
    assert kube.api.configuration.connection_pool_maxsize == 4  # the operator's own client is left as it is
