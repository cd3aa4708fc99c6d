"""The child kinds (pods, Jobs, JobSets, claims) through the operator's own informer
(reconcile/informer.py), not kopf: a pod still wakes its job, and a watch that expires (410) or an
API server that restarts its watches is relisted without losing an object or keeping a ghost."""

from __future__ import annotations

import asyncio
import time

import pytest

from checkpoint_operator import kopf_startup
from checkpoint_operator import main as main_module
from checkpoint_operator.local import emulator as emulator_module
from conftest import NS, TJ, held_until, training_job

pytestmark = pytest.mark.timeout(120)
MANAGED = {"app.kubernetes.io/managed-by": "checkpoint-operator"}


def _stray_pod(name: str, job_uid: str, controller: str) -> dict:
    """A pod labelled as a worker of a job that does not exist, on a node that does not either (no
    scheduler or kubelet touches it), controlled by the ConfigMap `controller` (a UID: the garbage
    collector keeps a pod whose owner lives): the pod index files it under job_uid."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {**MANAGED, "ckpt.dev/component": "worker", "ckpt.dev/trainingjob-uid": job_uid},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "stray",
                                              "uid": controller, "controller": True}]},
            "spec": {"nodeName": "nowhere", "restartPolicy": "Never",
                     "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}


def _indexed(operator, job_uid: str, controller: str) -> list[str]:
    return [p.name for p in operator.ctx.indexes.worker_pods(NS, job_uid, {controller})]


async def _phase(api, name):
    return ((await api.get(TJ, NS, name)) or {}).get("status", {}).get("phase")


async def test_a_pod_event_still_wakes_its_job_and_kopf_streams_no_child_kind(api, api_url, operator, trainer,
                                                                                 wait_for):
    release = asyncio.Event()
    trainer.behaviours["woken"] = held_until(release)
    await api.create(TJ, NS, training_job("woken"))
    assert await wait_for(lambda: _phase(api, "woken"), timeout=30) in ("Pending", "Running")

    async def running():
        return await _phase(api, "woken") == "Running"
    await wait_for(running, timeout=30)
    from checkpoint_operator.local.server import open_watches
    watches = await asyncio.to_thread(open_watches, api_url)
    by_agent = {(w["resource"], w["user_agent"].split("/")[0]) for w in watches}
    for child in ("v1/pods", "batch/v1/jobs", "v1/persistentvolumeclaims"):
        assert any(r == child and a == "checkpoint-operator-informer" for r, a in by_agent), (child, by_agent)
        assert not any(r == child and a == "kopf" for r, a in by_agent), (child, by_agent)
    release.set()  # the pod succeeds: its event (and its Job's) wakes the job

    async def succeeded():
        return await _phase(api, "woken") == "Succeeded"
    await wait_for(succeeded, timeout=30)


async def test_an_expired_watch_relists_without_losing_or_ghosting_and_a_restart_is_survived(
        api, emulator_server, operator, trainer, wait_for):
    owner = (await api.create("v1/configmaps", NS, {"metadata": {"name": "stray"}}))["metadata"]["uid"]
    await api.create("v1/pods", NS, _stray_pod("ghost", "ghost-job", owner))
    await wait_for(lambda: _indexed(operator, "ghost-job", owner) == ["ghost"], timeout=10)
    assert operator.ctx.kube.cache.knows("Pod", NS, "ghost")
    emulator = emulator_server.emulator

    def restart_while_things_change() -> int:
        """One pod goes and another comes as the API server restarts its watches (all in one step of
        its loop: no stream writes either change): the operator's resumed watch gets 410 (its
        resourceVersion is older than the restarted watch cache) and only a relist can show them."""
        key = (emulator_module.PODS, NS, "ghost")
        last = emulator.store.get(key).load()
        last["metadata"]["resourceVersion"] = emulator._next_rv()
        emulator._remove(key, last)
        emulator._store_new(emulator_module.PODS, _stray_pod("newcomer", "new-job", owner), namespace=NS)
        return emulator.restart_watches()

    assert await asyncio.to_thread(emulator_server.call, restart_while_things_change) > 0
    await wait_for(lambda: _indexed(operator, "new-job", owner) == ["newcomer"], timeout=15)
    await wait_for(lambda: _indexed(operator, "ghost-job", owner) == [], timeout=15)  # no ghost in the index
    assert not operator.ctx.kube.cache.knows("Pod", NS, "ghost")  # nor in the cache
    assert operator.ctx.kube.cache.knows("Pod", NS, "newcomer")
    pods = next(r for r in operator.ctx.informer.reflectors if r.target.resource.plural == "pods")
    assert pods.lists == 2 and pods.synced  # the first LIST, and the relist after the 410

    # The watches came back: a whole lifecycle still runs on their events.
    release = asyncio.Event()
    trainer.behaviours["after"] = held_until(release)
    await api.create(TJ, NS, training_job("after"))

    async def phase_is(phase):
        return await _phase(api, "after") == phase
    await wait_for(lambda: phase_is("Running"), timeout=30)
    release.set()
    await wait_for(lambda: phase_is("Succeeded"), timeout=30)


async def test_while_kopf_is_frozen_a_child_s_event_wakes_nothing_and_after_it_does(api, operator, trainer, wait_for):
    """kopf's peering freezes its watch streams while a peer of higher priority runs; the child kinds'
    events came through those streams, so they woke nothing then. The informer keeps the indexes
    current and queues the keys; the queue runs none of them until kopf resumes."""
    from checkpoint_operator import kopf_startup
    release = asyncio.Event()
    trainer.behaviours["frozen"] = held_until(release)
    await api.create(TJ, NS, training_job("frozen"))

    async def phase_is(phase):
        return await _phase(api, "frozen") == phase
    await wait_for(lambda: phase_is("Running"), timeout=30)
    loop = operator.ctx.queue._loop  # kopf's loop: its operator_paused is recorded per loop
    await wait_for(lambda: loop in kopf_startup._PAUSES, timeout=10)
    toggles = kopf_startup._PAUSES[loop]
    freeze = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
        toggles.make_toggle(True, name="a peer of higher priority"), loop))
    assert kopf_startup.paused(loop)
    uid = (await api.get(TJ, NS, "frozen"))["metadata"]["uid"]
    release.set()  # the pod succeeds, its Job completes: events the informer sees

    def pod_done():
        pods = operator.ctx.pod_index.get(("pods", NS, uid)) or ()
        return [p.name for p in pods if p.phase.value == "Succeeded"]
    await wait_for(pod_done, timeout=30)
    # The pod's events reached the index and queued the job; the queue runs nothing while the
    # replica is paused (WorkQueue may_run), not even a reconcile already due (hostile12 H12-2).
    await asyncio.sleep(1.5)
    assert await _phase(api, "frozen") == "Running"
    assert ("TrainingJob", NS, "frozen") in operator.ctx.queue._queued | set(operator.ctx.queue._due)
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(freeze.turn_to(False), loop))
    await wait_for(lambda: phase_is("Succeeded"), timeout=30)


WIDGET_CRD = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
              "metadata": {"name": "widgets.example.com"},
              "spec": {"group": "example.com", "scope": "Namespaced",
                       "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                       "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                           "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}


async def test_a_kind_the_api_does_not_serve_counts_as_listed_quietly_until_it_is_installed(api, api_url, wait_for,
                                                                                          caplog):
    """A JobSet CRD that is not installed: the informer's start-up does not wait on it, nothing is
    logged per attempt, and once the CRD is there its objects come (as kopf did: it retried slowly)."""
    from checkpoint_operator.kube import Kube, Resource
    from checkpoint_operator.reconcile.informer import Informer, Target
    seen: list[tuple[str, str]] = []
    widgets = Resource("example.com", "v1", "widgets", "Widget")
    informer = Informer(Kube.from_url(api_url), [Target(widgets, NS, None, optional=True)],
                        lambda t, body: seen.append((t, body["metadata"]["name"])), absent_retry=0.2)
    informer.start()
    try:
        assert await asyncio.to_thread(informer.wait_synced, 10)
        await asyncio.sleep(0.6)  # a few more attempts
        assert informer.reflectors[0].lists == 0 and not [r for r in caplog.records if r.levelname == "WARNING"]
        await api.create("apiextensions.k8s.io/v1/customresourcedefinitions", None, WIDGET_CRD)
        await wait_for(lambda: informer.reflectors[0].watches > 0, timeout=10)
        await api.create("example.com/v1/widgets", NS, {"apiVersion": "example.com/v1", "kind": "Widget",
                                                         "metadata": {"name": "w"}})
        await wait_for(lambda: ("ADDED", "w") in seen, timeout=10)
    finally:
        await asyncio.to_thread(informer.stop)


async def test_a_namespace_whose_claims_cannot_be_listed_holds_no_other_and_its_jobs_wait(
        api, emulator_server, cluster, operator_config, trainer, wait_for, monkeypatch, caplog):
    """hostile11 H11-1: a namespace-scoped install over two namespaces, one of which answers 403 to a
    LIST of claims (its Role missing). Before, the informer never synced, start-up waited forever
    and nothing was reconciled anywhere. Now: the healthy namespace's job runs to Succeeded; the
    failing target is named (warning, gauge, /healthz probe); the other namespace's job does nothing
    while its claims are unknown (no Job, no claim, no phase), and proceeds once the LIST works."""
    import kmock
    from checkpoint_operator import metrics
    from checkpoint_operator.reconcile import informer as informer_module
    from conftest import Operator
    monkeypatch.setattr(main_module, "STARTUP_WAIT", 0.5, raising=False)
    monkeypatch.setattr(informer_module, "RETRY_CAP", 1.0, raising=False)
    emulator = emulator_server.emulator
    forbidden = "/api/v1/namespaces/team-b/persistentvolumeclaims"
    blocked = [True]
    emulator_server.call(lambda: emulator[kmock.method.GET,
                                          lambda r: blocked[0] and r.url.path == forbidden] << 403)
    await api.create("v1/namespaces", None, {"metadata": {"name": "team-b"}})
    op = Operator(emulator_server.url, operator_config, namespaces=[NS, "team-b"])
    await op.start()  # before: "did not become ready" (start_queue waited for every first LIST)
    try:
        unsynced = op.ctx.informer.unsynced()
        assert [(t.resource.plural, t.namespace) for t, _ in unsynced] == [("persistentvolumeclaims", "team-b")]
        why = unsynced[0][1]
        assert "persistentvolumeclaims" in why and "team-b" in why and "HTTP 403" in why, why
        assert any(r.levelname == "WARNING" and "HTTP 403" in r.getMessage() and "team-b" in r.getMessage()
                   for r in caplog.records)
        assert metrics.REGISTRY.get_sample_value("checkpoint_operator_informer_unsynced_targets", {
            "resource": "persistentvolumeclaims", "namespace": "team-b", "status": "403"}) == 1
        probe = main_module.informer_probe(memo=main_module.make_memo(op.ctx))
        assert probe["synced"] is False and probe["unsynced"] == [why]

        trainer.behaviours["healthy"] = trainer.behaviours["waiting"] = lambda attempt, env: 0
        waiting = training_job("waiting")
        waiting["metadata"]["namespace"] = "team-b"
        await api.create(TJ, "team-b", waiting)
        await api.create(TJ, NS, training_job("healthy"))

        async def healthy_done():
            return await _phase(api, "healthy") in ("Succeeded", "Failed")
        await wait_for(healthy_done, timeout=60)
        assert await _phase(api, "healthy") == "Succeeded"
        held = await api.get(TJ, "team-b", "waiting")
        assert not (held.get("status") or {}).get("phase"), held.get("status")
        assert not await api.list("batch/v1/jobs", "team-b")
        claims = await asyncio.to_thread(emulator_server.call, lambda: [
            k for k, _ in emulator.store.select(emulator_module.CLAIMS, "team-b")])
        assert not claims, claims

        blocked[0] = False  # the Role is made: the next LIST works and the job goes on

        async def waiting_done():
            return ((await api.get(TJ, "team-b", "waiting")).get("status") or {}).get("phase") in ("Succeeded", "Failed")
        await wait_for(waiting_done, timeout=60)
        assert ((await api.get(TJ, "team-b", "waiting")).get("status") or {}).get("phase") == "Succeeded"
        assert op.ctx.informer.synced and not op.ctx.informer.unsynced()
        assert metrics.REGISTRY.get_sample_value("checkpoint_operator_informer_unsynced_targets", {
            "resource": "persistentvolumeclaims", "namespace": "team-b", "status": "403"}) is None
    finally:
        await op.stop()


async def test_stopping_the_operator_during_start_up_leaves_no_reflector_running(
        api, emulator_server, cluster, operator_config, monkeypatch):
    """hostile11 H11-2: the operator stopped while start_queue still waits for a target that cannot be
    listed: before, kopf ran no cleanup for it and the informer's threads outlived the operator,
    retrying forever. Now start_queue stops the informer when it is cancelled."""
    import kmock
    from checkpoint_operator.local.server import run_kopf_in_thread
    from checkpoint_operator.reconcile.context import Context
    from checkpoint_operator.kube import Kube
    import kopf
    monkeypatch.setattr(main_module, "STARTUP_WAIT", 3600, raising=False)  # start-up still waiting at stop
    emulator = emulator_server.emulator
    forbidden = "/api/v1/namespaces/team-b/persistentvolumeclaims"
    emulator_server.call(lambda: emulator[kmock.method.GET, lambda r: r.url.path == forbidden] << 403)
    settings = kopf.OperatorSettings()
    main_module.configure_settings(settings)
    ctx = Context(kube=Kube.from_url(emulator_server.url), config=operator_config, namespaces=[NS, "team-b"])
    started: list = []
    original = main_module.start_informer

    def recording(c):
        started.append(original(c))
        return started[-1]
    monkeypatch.setattr(main_module, "start_informer", recording)
    with pytest.raises(RuntimeError, match="did not become ready"):
        await asyncio.to_thread(run_kopf_in_thread, kopf.get_default_registry(), settings, [NS, "team-b"],
                                emulator_server.url, memo=main_module.make_memo(ctx), ready_timeout=3)
    assert len(started) == 1 and started[0].reflectors
    assert [r for r in started[0].reflectors if r.target.resource.plural == "persistentvolumeclaims"
            and r.target.namespace == "team-b" and r.lists == 0 and r.error]  # it was still failing
    alive = [r.thread.name for r in started[0].reflectors if r.thread.is_alive()]
    assert not alive, alive
    assert ctx.informer is None


async def _freeze(operator, wait_for):
    """What kopf's peering does when a peer of higher priority runs: its operator_paused turns on."""
    from checkpoint_operator import kopf_startup
    loop = operator.ctx.queue._loop  # kopf's loop: its operator_paused is recorded per loop
    await wait_for(lambda: loop in kopf_startup._PAUSES, timeout=10)
    toggles = kopf_startup._PAUSES[loop]
    freeze = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
        toggles.make_toggle(True, name="a peer of higher priority"), loop))
    assert kopf_startup.paused(loop)

    async def resume():
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(freeze.turn_to(False), loop))
    return resume


async def test_while_paused_a_job_created_meanwhile_is_indexed_not_reconciled_and_runs_once_resumed(
        api, operator, trainer, wait_for):
    """issue 22 item 4, hostile12 H12-2: a replica that kopf's peering paused acts on nothing. The
    cache and the indexes still see every object (the TrainingJob created meanwhile is indexed at
    once: kopf's frozen index did not have it) and its key waits in the queue, which runs nothing;
    once resumed, the job runs to Succeeded. Nothing is held (no relist either): 50 unrelated claims
    created meanwhile leave nothing behind."""
    resume = await _freeze(operator, wait_for)
    for i in range(50):
        await api.create("v1/persistentvolumeclaims", NS, {
            "metadata": {"name": f"unrelated-{i}", "labels": {"team": "x"}, "annotations": {"note": "y" * 200}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    trainer.behaviours["first"] = lambda attempt, env: 0
    await api.create(TJ, NS, training_job("first"))
    await wait_for(lambda: operator.ctx.indexes.training_job(NS, "first"), timeout=10)
    await asyncio.sleep(1.5)
    assert await _phase(api, "first") is None  # paused: not reconciled
    queue = operator.ctx.queue
    assert ("TrainingJob", NS, "first") in queue._queued
    holding = operator.ctx.child_wakeups
    assert holding.open and not holding.held
    jobs = next(r for r in operator.ctx.informer.reflectors if r.target.resource.plural == "trainingjobs")
    await resume()

    async def done():
        return await _phase(api, "first") in ("Succeeded", "Failed")
    await wait_for(done, timeout=60)
    assert await _phase(api, "first") == "Succeeded"
    assert jobs.lists == 1  # no relist needed: the indexes were current all along


async def test_a_custom_resource_deleted_during_a_watch_outage_leaves_the_indexes_after_the_relist(
        api, emulator_server, operator, wait_for):
    """A TrainingJob deleted while the watch was down (the resumed watch gets 410): the relist hands
    it on as DELETED and its index entries go, now that the informer keeps the custom resources'
    indexes (a relist must not keep ghosts there either)."""
    await api.create(TJ, NS, training_job("doomed", checkpoints=[{"name": "never-made"}]))
    indexes = operator.ctx.indexes
    await wait_for(lambda: indexes.jobs_waiting_on(NS, "name", "never-made") == ["doomed"], timeout=10)
    emulator = emulator_server.emulator
    jobs = emulator_module.Resource("ckpt.dev", "v1alpha1", "trainingjobs")

    def delete_in_an_outage() -> int:
        key = (jobs, NS, "doomed")
        last = emulator.store.get(key).load()
        last["metadata"]["resourceVersion"] = emulator._next_rv()
        emulator._remove(key, last)
        return emulator.restart_watches()

    assert await asyncio.to_thread(emulator_server.call, delete_in_an_outage) > 0
    await wait_for(lambda: indexes.training_job(NS, "doomed") is None, timeout=15)
    assert indexes.jobs_waiting_on(NS, "name", "never-made") == []
    reflector = next(r for r in operator.ctx.informer.reflectors if r.target.resource.plural == "trainingjobs")
    assert reflector.lists == 2 and reflector.synced


async def test_an_optional_kind_that_goes_away_in_a_watch_gap_leaves_no_ghost(api, emulator_server, wait_for):
    """hostile11 H11-6: an optional kind (as JobSets) whose CRD is removed while the informer's watch
    is down: the resumed watch or relist gets 404. Before, the objects it knew were never handed on
    as DELETED (the cache and any index kept them); now everything known goes."""
    from checkpoint_operator.kube import Kube, Resource
    from checkpoint_operator.reconcile.informer import Informer, Target
    seen: list[tuple[str, str]] = []
    await api.create("apiextensions.k8s.io/v1/customresourcedefinitions", None, WIDGET_CRD)
    widgets = Resource("example.com", "v1", "widgets", "Widget")

    async def served():
        try:
            await api.list("example.com/v1/widgets", NS)
            return True
        except Exception:  # noqa: BLE001 - not served yet
            return False
    await wait_for(served, timeout=10)
    await api.create("example.com/v1/widgets", NS, {"apiVersion": "example.com/v1", "kind": "Widget",
                                                     "metadata": {"name": "w"}})
    informer = Informer(Kube.from_url(emulator_server.url), [Target(widgets, NS, None, optional=True)],
                        lambda t, body: seen.append((t, body["metadata"]["name"])), absent_retry=0.2)
    informer.start()
    emulator = emulator_server.emulator
    try:
        await wait_for(lambda: ("ADDED", "w") in seen, timeout=10)
        await wait_for(lambda: informer.reflectors[0].watches > 0, timeout=10)

        def crd_gone_in_a_gap() -> int:
            emulator._unregister_crd(WIDGET_CRD)  # its objects go with it, as in the real API
            return emulator.restart_watches()
        await asyncio.to_thread(emulator_server.call, crd_gone_in_a_gap)
        await wait_for(lambda: ("DELETED", "w") in seen, timeout=10)
        assert not informer.reflectors[0].known and seen.count(("DELETED", "w")) == 1
    finally:
        await asyncio.to_thread(informer.stop)


# hostile12 H12-1, H12-2: a standby replica acts on nothing (kopf_startup.may_act, WorkQueue may_run).
async def test_a_replica_paused_from_its_first_moment_reconciles_no_listed_job(
        api, api_url, cluster, operator_config, trainer, monkeypatch):
    """kopf with mandatory peering creates its peering toggle pre-activated (orchestration.py
    spawn_missing_peerings: make_toggle(is_preactivated=settings.peering.mandatory)): the replica is
    paused from the orchestrator's first moment until the peering says it may run. Modelled here by a
    toggle that is on as the orchestrator starts and never turns off (a peer of higher priority runs).
    Expected: nothing reconciled. Actual: the TrainingJob listed at start-up is reconciled (status
    written, its Job created) before the orchestrator was ever called."""
    from kopf._core.reactor import orchestration
    from conftest import Operator

    events: list[tuple[str, float]] = []
    inner = orchestration.orchestrator  # kopf_startup's recording wrapper (installed by configure_settings)

    async def paused_from_start(*, operator_paused, **kwargs):
        events.append(("orchestrator", time.monotonic()))
        await operator_paused.make_toggle(True, name="peering: a peer of higher priority runs")
        await inner(operator_paused=operator_paused, **kwargs)
    kopf_startup.apply()
    monkeypatch.setattr(orchestration, "orchestrator", paused_from_start)
    real_reconcile = main_module.reconcile

    def spying_reconcile(ctx, key):
        loop = ctx.queue._loop
        events.append((f"reconcile {key} paused={kopf_startup.paused(loop)}", time.monotonic()))
        return real_reconcile(ctx, key)
    monkeypatch.setattr(main_module, "reconcile", spying_reconcile)

    trainer.behaviours["standby"] = held_until(asyncio.Event(), timeout=30)
    await api.create(TJ, NS, training_job("standby"))
    op = Operator(api_url, operator_config)
    await op.start()
    try:
        await asyncio.sleep(3)
        phase = await _phase(api, "standby")
        jobs = (await api.list("batch/v1/jobs", NS)) if hasattr(api, "list") else None
        first_reconciles = [(what, t) for what, t in events if what.startswith("reconcile")]
        orchestrated = [t for what, t in events if what == "orchestrator"]
        print("events:", events[:10], "phase:", phase)
        assert not first_reconciles, (
            f"a replica paused from the start reconciled: {first_reconciles[:3]}; orchestrator called at "
            f"{orchestrated}; TrainingJob phase now {phase!r}; Jobs: {jobs}")
        assert phase is None
    finally:
        await op.stop()


async def test_a_paused_replica_runs_nothing_its_queue_holds(api, operator, trainer, wait_for):
    """Freeze the replica (as kopf's peering does) while a job runs; the requeued reconciles go on."""
    from conftest import Operator  # noqa: F401
    release = asyncio.Event()
    trainer.behaviours["busy"] = held_until(release, timeout=60)
    await api.create(TJ, NS, training_job("busy"))

    async def running():
        return await _phase(api, "busy") == "Running"
    await wait_for(running, timeout=30)
    loop = operator.ctx.queue._loop
    await wait_for(lambda: loop in kopf_startup._PAUSES, timeout=10)
    toggles = kopf_startup._PAUSES[loop]
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
        toggles.make_toggle(True, name="a peer of higher priority"), loop))
    assert kopf_startup.paused(loop)
    ran: list[tuple] = []
    real = main_module.reconcile

    def spying(ctx, key):
        ran.append((key, kopf_startup.paused(loop)))
        return real(ctx, key)
    main_module.reconcile = spying
    try:
        await asyncio.sleep(1.0)  # let a reconcile in flight end
        ran.clear()
        await asyncio.sleep(4.0)
        release.set()  # the worker succeeds while paused: does the paused replica write Succeeded?
        await asyncio.sleep(4.0)
        phase = await _phase(api, "busy")
        print("reconciles while paused:", len(ran), ran[:5], "phase:", phase)
        assert not ran, f"{len(ran)} reconciles ran on a paused replica, e.g. {ran[:3]}; phase {phase!r}"
    finally:
        main_module.reconcile = real
