"""The adaptations of kmock's emulator (checkpoint_operator.local.emulator): each fails on plain kmock 0.8.

Admission (names, schemas, CEL) is tested in tests/local/test_admission.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import aiohttp
import kmock
import kopf
import pytest
from kmock._internal import dsl, filtering

from checkpoint_operator.local import emulator as emulator_module
from checkpoint_operator.local.server import ApiClient, ApiError, EmulatorServer, open_watches, run_kopf_in_thread

CKPTS = "ckpt.dev/v1alpha1/checkpoints"
NS = "default"


def checkpoint(name: str, **labels: str) -> dict:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": {"name": name, "labels": labels},
            "spec": {"source": {"s3": {"uri": f"s3://models/{name}/"}}, "description": "d"}}


def training_job(name: str) -> dict:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "x"}]}}}}


def pod(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "main", "image": "x"}]}}


async def test_create_sets_server_metadata(api: ApiClient) -> None:
    created = await api.create(CKPTS, NS, checkpoint("c1"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    assert meta["namespace"] == NS


async def test_generate_name(api: ApiClient) -> None:
    created = await api.create("v1/pods", NS, {"metadata": {"generateName": "p-"}, "spec": {}})
    assert created["metadata"]["name"].startswith("p-") and len(created["metadata"]["name"]) == 7


async def test_resource_version_bumps_on_every_change_generation_on_spec_only(api: ApiClient) -> None:
    rv = lambda obj: int(obj["metadata"]["resourceVersion"])  # noqa: E731
    jobs = "batch/v1/jobs"  # a Checkpoint's spec is immutable: a Job's spec can change
    c0 = await api.create(jobs, NS, {"metadata": {"name": "j1"}, "spec": {"parallelism": 1}})
    c1 = await api.patch(jobs, NS, "j1", {"status": {"active": 1}}, subresource="status")
    c2 = await api.patch(jobs, NS, "j1", {"metadata": {"finalizers": ["ckpt.dev/in-use-protection"]}})
    c3 = await api.patch(jobs, NS, "j1", {"spec": {"parallelism": 2}})
    await api.delete(jobs, NS, "j1", propagation_policy="Background")
    c4 = await api.get(jobs, NS, "j1")
    assert rv(c0) < rv(c1) < rv(c2) < rv(c3) < rv(c4)
    assert [c["metadata"]["generation"] for c in (c0, c1, c2, c3, c4)] == [1, 1, 1, 2, 2]
    assert c4["metadata"]["deletionTimestamp"]
    # A no-op patch keeps the resourceVersion, as the real API does.
    c5 = await api.patch(jobs, NS, "j1", {"spec": {"parallelism": 2}})
    assert rv(c5) == rv(c4)
    # Removing the last finalizer is the deletion: a resourceVersion of its own.
    gone = await api.patch(jobs, NS, "j1", {"metadata": {"finalizers": None}})
    assert rv(gone) > rv(c5) and await api.get(jobs, NS, "j1") is None


async def test_stale_resource_version_conflicts(api: ApiClient) -> None:
    created = await api.create(CKPTS, NS, checkpoint("c1"))
    stale = created["metadata"]["resourceVersion"]
    await api.patch(CKPTS, NS, "c1", {"metadata": {"labels": {"a": "b"}}})
    for attempt in (
        api.patch(CKPTS, NS, "c1", {"metadata": {"resourceVersion": stale, "finalizers": ["x"]}}),
        api.patch(CKPTS, NS, "c1", {"metadata": {"resourceVersion": stale}, "status": {"phase": "Ready"}},
                  subresource="status"),
        api.replace(CKPTS, NS, "c1", created),
        api.request("DELETE", f"/apis/{CKPTS.rsplit('/', 1)[0]}/namespaces/{NS}/checkpoints/c1",
                    json_body={"preconditions": {"resourceVersion": stale}}),
    ):
        with pytest.raises(ApiError) as caught:
            await attempt
        assert caught.value.status == 409 and caught.value.reason == "Conflict"
    current = await api.get(CKPTS, NS, "c1")
    assert "finalizers" not in current["metadata"] and "status" not in current
    # With the current resourceVersion the same change passes.
    updated = await api.patch(CKPTS, NS, "c1", {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"],
                                                             "finalizers": ["x"]}})
    assert updated["metadata"]["finalizers"] == ["x"]


async def test_create_existing_name_is_already_exists(api: ApiClient) -> None:
    await api.create(CKPTS, NS, checkpoint("c1"))
    with pytest.raises(ApiError) as caught:
        await api.create(CKPTS, NS, checkpoint("c1"))
    assert caught.value.status == 409 and caught.value.reason == "AlreadyExists"


async def test_failed_json_patch_test_is_422(api: ApiClient) -> None:
    await api.create(CKPTS, NS, checkpoint("c1"))
    with pytest.raises(ApiError) as caught:
        await api.patch(CKPTS, NS, "c1", [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
                                          {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}])
    assert caught.value.status == 422 and caught.value.reason == "Invalid"


@pytest.mark.parametrize("selector, expected", [
    ("app=a", ["p1", "p2"]), ("app==a", ["p1", "p2"]), ("app!=a", ["p3", "p4"]), ("tier", ["p1", "p3"]),
    ("!tier", ["p2", "p4"]), ("app in (a,b)", ["p1", "p2", "p3"]), ("app notin (a)", ["p3", "p4"]),
    ("app=a,tier=web", ["p1"]), ("app in (a, b),!tier", ["p2"]),
])
async def test_label_selectors_filter_lists(api: ApiClient, selector: str, expected: list[str]) -> None:
    await api.create("v1/pods", NS, pod("p1", app="a", tier="web"))
    await api.create("v1/pods", NS, pod("p2", app="a"))
    await api.create("v1/pods", NS, pod("p3", app="b", tier="db"))
    await api.create("v1/pods", NS, pod("p4"))
    items = await api.list("v1/pods", NS, label_selector=selector)
    assert sorted(item["metadata"]["name"] for item in items) == expected


async def test_list_has_kind_api_version_and_resource_version(api: ApiClient) -> None:
    created = await api.create("batch/v1/jobs", NS, {"metadata": {"name": "j"}, "spec": {}})
    listing = await api.request("GET", "/apis/batch/v1/namespaces/default/jobs")
    assert listing["kind"] == "JobList" and listing["apiVersion"] == "batch/v1"
    assert int(listing["metadata"]["resourceVersion"]) >= int(created["metadata"]["resourceVersion"])
    assert (await api.request("GET", "/api/v1/pods"))["kind"] == "PodList"


async def test_a_list_is_paged_with_limit_and_continue_as_kube_apiserver_does(api: ApiClient) -> None:
    """kubectl (--chunk-size 500) and the plugin page their LISTs: a page of `limit` items in (namespace, name)
    order, metadata.continue for the next one and remainingItemCount; the last page has no token (the
    emulator ignored limit: every list was complete)."""
    for i in range(7):
        await api.create(CKPTS, NS, checkpoint(f"c{i}"))
    await api.create(CKPTS, "other", checkpoint("a0"))
    names, token, pages = [], None, []
    while True:
        page = await api.request("GET", "/apis/ckpt.dev/v1alpha1/checkpoints",
                                 params={"limit": "3", **({"continue": token} if token else {})})
        pages.append(page)
        names += [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
    assert [len(p["items"]) for p in pages] == [3, 3, 2]
    assert [p["metadata"].get("remainingItemCount") for p in pages] == [5, 2, None]
    assert names == [(NS, f"c{i}") for i in range(7)] + [("other", "a0")]
    assert len({p["metadata"]["resourceVersion"] for p in pages}) == 1  # the first page's, as there
    everything = await api.request("GET", f"/apis/ckpt.dev/v1alpha1/namespaces/{NS}/checkpoints")
    assert len(everything["items"]) == 7 and "continue" not in everything["metadata"]
    with pytest.raises(ApiError) as refused:
        await api.request("GET", "/apis/ckpt.dev/v1alpha1/checkpoints", params={"limit": "3", "continue": "x!"})
    assert refused.value.status == 400 and "continue" in str(refused.value)


async def test_discovery_maps_pods_to_the_core_group_as_kubectl_reads_it(api: ApiClient) -> None:
    """client-go's GetAPIGroupResources (kubectl's RESTMapper): the groups of /api (the core group first) and
    /apis, each version's resources looked up by the groupVersion string its APIResourceList states. /api/v1
    said "/v1", so the core group had no resources and `pods` mapped to metrics.k8s.io (kubectl get pods: none)."""
    groups = [{"name": "", "versions": [{"groupVersion": v} for v in (await api.request("GET", "/api"))["versions"]]}]
    groups += (await api.request("GET", "/apis"))["groups"]
    by_group_version = {}
    for group in groups:
        for version in group["versions"]:
            path = "/api/" + version["groupVersion"] if not group["name"] else "/apis/" + version["groupVersion"]
            listing = await api.request("GET", path)
            by_group_version[listing["groupVersion"]] = listing
    mapped = [(group["name"], version["groupVersion"]) for group in groups for version in group["versions"][:1]
              if any(r["name"] == "pods" for r in by_group_version.get(version["groupVersion"], {}).get("resources", []))]
    assert mapped[0] == ("", "v1")  # the first match wins: core pods, not metrics.k8s.io's PodMetrics


async def _watch_events(url: str, path: str, count: int) -> list[dict]:
    events = []
    async with aiohttp.ClientSession() as session:
        async with session.get(url + path, params={"watch": "true"}) as response:
            async for line in response.content:
                if line.strip():
                    events.append(json.loads(line))
                if len(events) == count:
                    return events
    return events


async def test_watch_replays_then_streams_only_selected_objects(api: ApiClient, api_url: str, wait_for) -> None:
    await api.create("v1/pods", NS, pod("before", app="a"))
    await api.create("v1/pods", NS, pod("other", app="b"))
    watching = asyncio.create_task(_watch_events(api_url, "/api/v1/namespaces/default/pods?labelSelector=app%3Da", 3))
    await wait_for(lambda: asyncio.to_thread(open_watches, api_url))
    await api.create("v1/pods", NS, pod("ignored", app="b"))
    await api.create("v1/pods", NS, pod("after", app="a"))
    await api.delete("v1/pods", NS, "before")
    events = await asyncio.wait_for(watching, 5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "before"), ("ADDED", "after"), ("DELETED", "before")]


async def test_watch_timeout_seconds_ends_the_stream(api_url: str) -> None:
    events = await asyncio.wait_for(_watch_events(api_url, "/api/v1/pods?timeoutSeconds=0.2", 99), 5)
    assert events == []


async def test_discovery_serves_project_crds_with_status(api: ApiClient) -> None:
    resources = (await api.request("GET", "/apis/ckpt.dev/v1alpha1"))["resources"]
    names = {r["name"]: r for r in resources}
    assert {"checkpoints", "checkpoints/status", "trainingjobs", "trainingjobs/status"} <= set(names)
    assert names["checkpoints"]["kind"] == "Checkpoint" and names["trainingjobs"]["kind"] == "TrainingJob"
    assert names["checkpoints"]["namespaced"] and "ckpt" in names["checkpoints"]["shortNames"]


@pytest.mark.parametrize("resource, body, phases, main_change", [
    # Custom resources: their specs are immutable (a CEL rule) and their phases an enum.
    (CKPTS, checkpoint("o"), ("Pending", "Ready", "Failed", "Importing"), {"metadata": {"labels": {"a": "b"}}}),
    ("ckpt.dev/v1alpha1/trainingjobs", training_job("o"), ("Pending", "Running", "Failed", "Succeeded"),
     {"metadata": {"labels": {"a": "b"}}}),
    ("batch/v1/jobs", {"metadata": {"name": "o"}, "spec": {"a": 1}}, ("Ignored", "Ready", "Lost", "Put"),
     {"spec": {"extra": 2}}),
    ("v1/pods", pod("o"), ("Ignored", "Ready", "Lost", "Put"), {"spec": {"extra": 2}}),
])
async def test_status_subresource_separates_spec_and_status(api: ApiClient, resource: str, body: dict,
                                                            phases: tuple[str, ...], main_change: dict) -> None:
    ignored, ready, lost, put = phases
    created = await api.create(resource, NS, {**body, "status": {"phase": ignored}})
    assert created.get("status", {}).get("phase") != ignored  # create drops status
    spec = created["spec"]
    after_status = await api.patch(resource, NS, "o", {"spec": {"sneaky": 1}, "status": {"phase": ready}},
                                   subresource="status")
    assert after_status["status"]["phase"] == ready and after_status["spec"] == spec
    after_main = await api.patch(resource, NS, "o", {**main_change, "status": {"phase": lost}})
    assert after_main["status"]["phase"] == ready
    assert (after_main["metadata"].get("labels") or {}) == main_change.get("metadata", {}).get("labels", {})
    assert after_main["spec"] == {**spec, **main_change.get("spec", {})}
    replaced = await api.replace(resource, NS, "o", {**after_main, "status": {"phase": put}}, subresource="status")
    assert replaced["status"] == {"phase": put} and replaced["spec"] == after_main["spec"]


async def test_pod_log(api: ApiClient, emulator_server: EmulatorServer) -> None:
    await api.create("v1/pods", NS, pod("p1"))
    await api.write_log(NS, "p1", "main", '{"ok": true}\nwarning\n')
    assert await api.read_log(NS, "p1") == '{"ok": true}\nwarning\n'
    assert await api.read_log(NS, "p1", container="main") == '{"ok": true}\nwarning\n'
    assert emulator_server.call(lambda: emulator_server.emulator.pod_log(NS, "p1")) == '{"ok": true}\nwarning\n'
    with pytest.raises(ApiError) as caught:
        await api.read_log(NS, "missing")
    assert caught.value.status == 404


async def test_pod_logs_are_served_bounded_as_a_kubelet_serves_them(api: ApiClient, api_url: str) -> None:
    """limitBytes, tailLines, timestamps and sinceTime (in whole seconds, as the API server passes
    it to the kubelet); a log past 1 MiB is written in pieces (a single PUT was refused)."""
    from checkpoint_operator.kube import Kube
    await api.create("v1/pods", NS, pod("p1"))
    big = "".join(f"line {i:07d} " + "x" * 100 + "\n" for i in range(30_000))  # 3.3 MB
    await api.write_log(NS, "p1", "main", big)
    assert await api.read_log(NS, "p1") == big
    kube = Kube.from_url(api_url)

    def read(**params):
        return kube.read_log(NS, "p1", "main", **params)
    assert await asyncio.to_thread(read, limit_bytes=50) == big[:50]
    assert await asyncio.to_thread(read, limit_bytes=1 << 20, tail_lines=2) == "".join(big.splitlines(True)[-2:])
    stamped = (await asyncio.to_thread(read, limit_bytes=1 << 20, tail_lines=1, timestamps=True)).split(" ", 1)
    assert stamped[1] == big.splitlines(True)[-1] and stamped[0].endswith("Z") and "T" in stamped[0]
    second = stamped[0].split(".")[0] + "Z"  # the last line's whole second: it and later lines come back
    since = await asyncio.to_thread(read, limit_bytes=8 << 20, since_time=second)
    assert since.endswith(big.splitlines(True)[-1]) and big.endswith(since)
    assert await asyncio.to_thread(read, limit_bytes=1 << 20, since_time="2999-01-01T00:00:00Z") == ""
    with pytest.raises(Exception, match="limitBytes: must be greater than 0"):
        await api.request("GET", "/api/v1/namespaces/default/pods/p1/log", params={"limitBytes": "0"})


def test_since_time_counts_in_whole_seconds_as_the_api_server_passes_it(monkeypatch) -> None:
    from checkpoint_operator.local import podlogs
    clock = iter([1_700_000_000_100_000_000, 1_700_000_000_900_000_000, 1_700_000_001_000_000_001])
    monkeypatch.setattr(podlogs.time, "time_ns", lambda: next(clock))
    log = podlogs.ContainerLog()
    log.append("a\nb\nc\n")
    assert log.read({"sinceTime": "2023-11-14T22:13:20.500Z"}) == "a\nb\nc\n"  # cut to 22:13:20
    assert log.read({"sinceTime": "2023-11-14T22:13:21Z"}) == "c\n"
    assert log.read({"sinceTime": "2023-11-14T22:13:21Z", "timestamps": "true"}) == \
        "2023-11-14T22:13:21.000000001Z c\n"
    assert log.read({"tailLines": "2", "limitBytes": "3"}) == "b\nc"


async def test_a_pod_log_keeps_its_last_10_mib_as_a_kubelet_rotates(api: ApiClient) -> None:
    from checkpoint_operator.local.podlogs import MAX_LOG_BYTES
    await api.create("v1/pods", NS, pod("p1"))
    chunk = "y" * 1023 + "\n"
    for _ in range(12):
        await api.write_log(NS, "p1", "main", chunk * 1024, append=True)  # 1 MiB each
    kept = await api.read_log(NS, "p1")
    assert MAX_LOG_BYTES - 1024 <= len(kept) <= MAX_LOG_BYTES and kept.endswith(chunk)


def test_a_log_read_never_takes_more_than_its_limit_into_memory_whatever_the_server_sends() -> None:
    import http.server
    import threading
    from checkpoint_operator.kube import Kube

    class Flood(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # ignores limitBytes
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(50 * 1024 * 1024))
            self.end_headers()
            try:
                for _ in range(50):
                    self.wfile.write(b"z" * (1024 * 1024))
            except OSError:
                pass  # the client went away after its bound: as it should

        def log_message(self, *args) -> None:
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flood)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        text = Kube.from_url(f"http://127.0.0.1:{server.server_port}").read_log(NS, "p", limit_bytes=4096)
        assert text == "z" * 4096
    finally:
        server.shutdown()


async def test_finalizers_hold_deletion_until_removed(api: ApiClient) -> None:
    await api.create(CKPTS, NS, {**checkpoint("c1"), "metadata": {"name": "c1", "finalizers": ["example.com/x"]}})
    await api.delete(CKPTS, NS, "c1")
    held = await api.get(CKPTS, NS, "c1")
    assert held["metadata"]["deletionTimestamp"]
    await api.patch(CKPTS, NS, "c1", {"metadata": {"finalizers": None}})
    assert await api.get(CKPTS, NS, "c1") is None


async def test_job_deletion_orphans_pods_unless_a_policy_is_given(api: ApiClient) -> None:
    for job_name in ("orphaning", "background"):
        job = await api.create("batch/v1/jobs", NS, {"metadata": {"name": job_name}, "spec": {}})
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job["metadata"]["uid"]}
        await api.create("v1/pods", NS, {**pod(f"{job_name}-pod"), "metadata": {
            "name": f"{job_name}-pod", "ownerReferences": [owner]}})
    await api.delete("batch/v1/jobs", NS, "orphaning", propagation_policy=None)
    await api.delete("batch/v1/jobs", NS, "background", propagation_policy="Background")
    assert "ownerReferences" not in (await api.get("v1/pods", NS, "orphaning-pod"))["metadata"]
    assert (await api.get("v1/pods", NS, "background-pod"))["metadata"]["ownerReferences"]  # left to the GC


async def test_foreground_deletion_holds_an_owner_its_dependents_block(api: ApiClient) -> None:
    """propagationPolicy Foreground: as kube-apiserver, the owner stays (deletionTimestamp and the
    foregroundDeletion finalizer) for the garbage collector to release once its blocking dependents
    are gone (H9-10: it was deleted at once, so a failed attempt's pods overlapped the next one's).
    An owner nothing blocks goes at once, as the real collector releases it at once."""
    jobs = {}
    for name in ("blocked", "unblocked", "free"):
        jobs[name] = await api.create("batch/v1/jobs", NS, {"metadata": {"name": name}, "spec": {}})
    for name, block in (("blocked", True), ("unblocked", False)):
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": jobs[name]["metadata"]["uid"],
                 "controller": True, "blockOwnerDeletion": block}
        await api.create("v1/pods", NS, {**pod(f"{name}-pod"), "metadata": {
            "name": f"{name}-pod", "ownerReferences": [owner]}})
    for name in jobs:
        await api.delete("batch/v1/jobs", NS, name, propagation_policy="Foreground")
    held = await api.get("batch/v1/jobs", NS, "blocked")
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert await api.get("batch/v1/jobs", NS, "unblocked") is None
    assert await api.get("batch/v1/jobs", NS, "free") is None
    await api.delete("batch/v1/jobs", NS, "blocked", propagation_policy="Foreground")  # again: no second finalizer
    assert (await api.get("batch/v1/jobs", NS, "blocked"))["metadata"]["finalizers"] == ["foregroundDeletion"]
    await api.patch("batch/v1/jobs", NS, "blocked", {"metadata": {"finalizers": None}})
    assert await api.get("batch/v1/jobs", NS, "blocked") is None


async def test_namespaces_can_be_listed_fetched_and_created(api: ApiClient) -> None:
    await api.create("v1/namespaces", None, {"metadata": {"name": "team-a"}})
    names = [ns["metadata"]["name"] for ns in await api.list("v1/namespaces")]
    assert names == ["default", "team-a"]
    assert (await api.get("v1/namespaces", None, "team-a"))["kind"] == "Namespace"


async def test_crd_created_through_the_api_registers_its_resource(api: ApiClient) -> None:
    await api.create("apiextensions.k8s.io/v1/customresourcedefinitions", None, {
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}}}]}})
    await api.create("example.com/v1/widgets", NS, {"metadata": {"name": "w"}, "spec": {}})
    assert (await api.request("GET", "/apis/example.com/v1/namespaces/default/widgets"))["kind"] == "WidgetList"


def test_state_survives_a_restart(tmp_path) -> None:
    async def create_checkpoint(url: str) -> dict:
        async with ApiClient(url) as client:
            created = await client.create(CKPTS, NS, checkpoint("kept"))
            await client.create("v1/pods", NS, pod("p"))
            await client.write_log(NS, "p", "main", "hello\n")
            return created

    async def read_back(url: str) -> tuple[dict, dict, str]:
        async with ApiClient(url) as client:
            kept = await client.get(CKPTS, NS, "kept")
            newer = await client.create(CKPTS, NS, checkpoint("newer"))
            return kept, newer, await client.read_log(NS, "p")

    with EmulatorServer(state_dir=tmp_path) as first:
        created = asyncio.run(create_checkpoint(first.url))
    assert (tmp_path / "api-objects.jsonl").exists()
    with EmulatorServer(state_dir=tmp_path) as second:
        kept, newer, log = asyncio.run(read_back(second.url))
    assert kept["metadata"]["uid"] == created["metadata"]["uid"]
    assert int(newer["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert log == "hello\n"


def test_a_format_1_state_file_is_read(tmp_path) -> None:
    """The single JSON document that emulators before the JSON Lines state wrote."""
    obj = {**checkpoint("kept"), "metadata": {"name": "kept", "namespace": NS, "uid": "u1", "resourceVersion": "7",
                                              "generation": 1, "creationTimestamp": "2025-01-01T00:00:00Z"}}
    (tmp_path / "api-objects.json").write_text(json.dumps({
        "format": 1, "resourceVersion": 9, "resources": {}, "podLogs": [],
        "objects": [{"resource": CKPTS, "object": obj}]}, indent=1))

    async def read_back(url: str) -> tuple[dict, dict]:
        async with ApiClient(url) as client:
            return await client.get(CKPTS, NS, "kept"), await client.create(CKPTS, NS, checkpoint("newer"))

    with EmulatorServer(state_dir=tmp_path) as server:
        kept, newer = asyncio.run(read_back(server.url))
    assert kept["metadata"]["uid"] == "u1" and int(newer["metadata"]["resourceVersion"]) > 9
    assert (tmp_path / "api-objects.jsonl").exists() and not (tmp_path / "api-objects.json").exists()


def test_kopf_runs_twice_in_one_process_with_one_registry(emulator_server: EmulatorServer) -> None:
    registry = kopf.OperatorRegistry()

    @kopf.on.create("ckpt.dev", "v1alpha1", "checkpoints", registry=registry)
    def mark_ready(patch: kopf.Patch, **_: object) -> None:
        patch.status["phase"] = "Ready"

    async def create_and_wait(url: str, name: str) -> dict:
        async with ApiClient(url) as client:
            await client.create(CKPTS, NS, checkpoint(name))
            for _ in range(200):
                obj = await client.get(CKPTS, NS, name)
                if obj.get("status", {}).get("phase") == "Ready":
                    return obj
                await asyncio.sleep(0.05)
            raise AssertionError(f"{name} never became Ready")

    for run, namespaces in enumerate((["default"], [])):  # namespaced, then cluster-wide (with scanning)
        with EmulatorServer() as server:
            settings = kopf.OperatorSettings()
            handle = run_kopf_in_thread(registry, settings, namespaces, server.url)
            try:
                assert asyncio.run(create_and_wait(server.url, f"c{run}"))["status"]["phase"] == "Ready"
            finally:
                handle.stop()




# --- cost: what a request touches, not what was served before -------------------------------------

class Counted:
    """Counts, across threads, the calls of kmock's request matching and the request records it scans."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts = {"criteria calls": 0, "records scanned": 0}
        for cls in (filtering.HTTPCriteria, filtering.K8sCriteria, filtering.FnCriteria):
            monkeypatch.setattr(cls, "__call__", self._counting(cls.__call__))
        for cls in (dsl.Root, dsl.Reaction):
            monkeypatch.setattr(cls, "__iter__", self._scanning(cls.__iter__))

    def _counting(self, call):
        def counted(criteria, request):
            self.counts["criteria calls"] += 1
            return call(criteria, request)
        return counted

    def _scanning(self, iterate):
        def scanned(view):
            for item in iterate(view):
                self.counts["records scanned"] += 1
                yield item
        return scanned


async def _traffic(api: ApiClient, count: int, tag: str) -> None:
    """``count`` requests of the kinds an operator sends (8 at a time): GET, 404, LIST, status PATCH."""
    async def one(i: int) -> None:
        match i % 4:
            case 0:
                await api.get(CKPTS, NS, "c0")
            case 1:
                await api.get(CKPTS, NS, f"missing-{i}")  # kmock records an error for each
            case 2:
                await api.list(CKPTS, NS, label_selector="app=x")
            case 3:
                await api.patch(CKPTS, NS, "c0", {"status": {"message": f"{tag} {i}"}}, subresource="status")

    for start in range(0, count, 8):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + 8))))


@pytest.mark.slow
async def test_per_request_cost_does_not_grow_with_requests_served(api: ApiClient, emulator_server: EmulatorServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    emulator = emulator_server.emulator
    # A reaction injected with kmock's DSL (it never matches here): requests go through kmock's matching.
    emulator_server.call(lambda: emulator[kmock.action.DELETE, kmock.resource("", "v1", "secrets")] << 500)
    await api.create(CKPTS, NS, checkpoint("c0", app="x"))
    counted = Counted(monkeypatch)

    async def cost_of_a_batch() -> dict[str, int]:
        before = dict(counted.counts, visited=emulator.store.visited)
        await _traffic(api, 40, "measured")
        after = dict(counted.counts, visited=emulator.store.visited)
        return {key: after[key] - before[key] for key in after}

    await _traffic(api, 100, "warm-up")
    early = await cost_of_a_batch()
    await _traffic(api, 10_000, "bulk")
    late = await cost_of_a_batch()
    assert early["criteria calls"] > 0 and early["visited"] > 0  # the counters do count
    assert late == early, f"the same 40 requests cost more after 10,000 others: {early} -> {late}"

    def records() -> dict[str, int]:
        return {"requests": len(emulator._requests), "errors": len(emulator.errors),
                "per reaction": max(len(p._requests) for p in emulator._payloads),
                "objects": len(emulator.store), "watch window": max(
                    (len(w) for w in emulator.watches._recent.values()), default=0)}

    kept = emulator_server.call(records)
    assert kept["requests"] <= 2 * emulator.request_history and kept["errors"] <= 2 * emulator.request_history
    assert kept["per reaction"] <= 2 * emulator.request_history
    assert kept["objects"] == 5  # c0, the default namespace, the project's three CRDs: no past versions
    assert kept["watch window"] <= emulator.watches.window


async def test_deleted_objects_leave_nothing_behind(api: ApiClient, emulator_server: EmulatorServer) -> None:
    emulator = emulator_server.emulator
    baseline = emulator_server.call(lambda: (len(emulator.store), dict(emulator.store._labels), emulator._pod_logs))
    job = await api.create("batch/v1/jobs", NS, {"metadata": {"name": "j"}, "spec": {}})
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": job["metadata"]["uid"]}
    for i in range(20):
        await api.create("v1/pods", NS, {**pod(f"p{i}", app="a"), "metadata": {
            "name": f"p{i}", "labels": {"app": "a"}, "ownerReferences": [owner]}})
        await api.write_log(NS, f"p{i}", "main", "log\n")
    for i in range(20):
        await api.delete("v1/pods", NS, f"p{i}")
    await api.delete("batch/v1/jobs", NS, "j")
    after = emulator_server.call(lambda: (len(emulator.store), dict(emulator.store._labels), emulator._pod_logs))
    assert after == baseline
    assert emulator_server.call(lambda: emulator.store._owned) == {}


async def test_a_list_reads_only_its_resource_and_namespace(api: ApiClient, emulator_server: EmulatorServer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emulator_module, "LIST_CHUNK", 4)  # the longer lists below go out in chunks
    for ns in ("busy", "quiet"):
        await api.create("v1/namespaces", None, {"metadata": {"name": ns}})
    for i in range(30):
        await api.create("v1/pods", "busy", pod(f"p{i}", app="a" if i else "b"))
        await api.create(CKPTS, "quiet", checkpoint(f"c{i}"))
    for i in range(3):
        await api.create("v1/pods", "quiet", pod(f"p{i}"))
    store = emulator_server.emulator.store

    async def visits(coroutine) -> tuple[int, object]:
        before = store.visited
        result = await coroutine
        return store.visited - before, result

    seen, items = await visits(api.list("v1/pods", "quiet"))
    assert (seen, len(items)) == (3, 3)
    seen, items = await visits(api.list("v1/pods", "busy", label_selector="app=b"))  # the label index
    assert (seen, [i["metadata"]["name"] for i in items]) == (1, ["p0"])
    seen, items = await visits(api.list("v1/pods", "busy", label_selector="app in (b),!tier"))
    assert (seen, len(items)) == (1, 1)
    await api.patch("v1/pods", "busy", "p5", {"metadata": {"labels": {"uses.ckpt.dev/u1": "true"}}})
    seen, items = await visits(api.list("v1/pods", "busy", label_selector="uses.ckpt.dev/u1"))  # existence
    assert (seen, [i["metadata"]["name"] for i in items]) == (1, ["p5"])
    seen, obj = await visits(api.get(CKPTS, "quiet", "c7"))
    assert seen == 0 and obj["metadata"]["name"] == "c7"
    seen, items = await visits(api.list("v1/pods"))  # cluster-wide: the pods of every namespace, nothing else
    assert (seen, len(items)) == (33, 33)
    assert [i["metadata"]["name"] for i in items][:3] == ["p0", "p1", "p10"]  # sorted by namespace and name


async def test_an_event_list_by_its_object_reads_only_that_object_s_events(api: ApiClient,
                                                                           emulator_server: EmulatorServer) -> None:
    """The operator lists the Events of one Job, claim or pod (fieldSelector involvedObject.name=...): the
    emulator finds them by an index, as labels, instead of parsing every Event of the namespace (bench/scale.py
    with 1,000 jobs spent its time there); the answer is what the full filter gives, through updates and deletes."""
    def event(name: str, about: str, kind: str = "Job") -> dict:
        return {"metadata": {"name": name}, "reason": "R", "message": "m", "type": "Normal",
                "involvedObject": {"kind": kind, "name": about, "namespace": "default", "uid": f"uid-{about}"}}
    for i in range(40):
        await api.create("v1/events", "default", event(f"e{i}", f"job-{i % 10}"))
    store = emulator_server.emulator.store

    async def listed(selector: str) -> tuple[int, list[str]]:
        before = store.visited
        answer = await api.request("GET", "/api/v1/namespaces/default/events", params={"fieldSelector": selector})
        return store.visited - before, sorted(i["metadata"]["name"] for i in answer["items"])
    assert await listed("involvedObject.name=job-3") == (4, ["e13", "e23", "e3", "e33"])
    assert await listed("involvedObject.name=job-3,involvedObject.kind=Pod") == (4, [])  # the rest still checked
    assert await listed("involvedObject.uid=uid-job-4") == (4, ["e14", "e24", "e34", "e4"])
    assert (await listed("involvedObject.name!=job-3"))[1] == sorted(f"e{i}" for i in range(40) if i % 10 != 3)
    await api.request("PUT", "/api/v1/namespaces/default/events/e3", json_body={
        **await api.get("v1/events", "default", "e3"), "involvedObject": {"kind": "Job", "name": "job-5"}})
    await api.delete("v1/events", "default", "e13")
    assert await listed("involvedObject.name=job-3") == (2, ["e23", "e33"])
    assert await listed("involvedObject.name=job-5") == (5, ["e15", "e25", "e3", "e35", "e5"])


async def test_an_event_reaches_only_the_watches_of_its_namespace(api: ApiClient, api_url: str,
                                                                  emulator_server: EmulatorServer, wait_for,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    original = emulator_module.WatchHub.event_for
    monkeypatch.setattr(emulator_module.WatchHub, "event_for", staticmethod(
        lambda watcher, change: checked.append(watcher.namespace or "*") or original(watcher, change)))
    paths = ["/api/v1/namespaces/a/pods", "/api/v1/namespaces/b/pods", "/api/v1/namespaces/c/pods",
             "/api/v1/namespaces/a/configmaps", "/api/v1/pods"]
    watching = [asyncio.create_task(_watch_events(api_url, path, 1)) for path in paths]
    await wait_for(lambda: len(emulator_server.call(lambda: emulator_server.emulator.open_watches)) == 5)
    await api.create("v1/pods", "a", pod("p"))
    assert sorted(checked) == ["*", "a"]  # not the watches of namespaces b and c, nor of configmaps
    done = await asyncio.wait_for(asyncio.gather(watching[0], watching[4]), 5)
    assert [events[0]["object"]["metadata"]["name"] for events in done] == ["p", "p"]
    for task in watching[1:4]:
        task.cancel()


async def test_watch_resumes_from_a_resource_version(api: ApiClient, api_url: str) -> None:
    await api.create("v1/pods", NS, pod("old"))
    listing = await api.request("GET", "/api/v1/namespaces/default/pods")
    rv = listing["metadata"]["resourceVersion"]
    await api.create("v1/pods", NS, pod("new"))
    await api.delete("v1/pods", NS, "old")
    events = await asyncio.wait_for(_watch_events(
        api_url, f"/api/v1/namespaces/default/pods?resourceVersion={rv}&timeoutSeconds=1", 99), 5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "new"), ("DELETED", "old")]
    # Without a resourceVersion (or with 0): the current objects, then (if asked) the initial-events bookmark.
    events = await asyncio.wait_for(_watch_events(
        api_url, "/api/v1/namespaces/default/pods?sendInitialEvents=true&timeoutSeconds=1", 99), 5)
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_watch_from_a_forgotten_resource_version_gets_410(api_url: str, emulator_server: EmulatorServer,
                                                                api: ApiClient) -> None:
    emulator_server.emulator.watches.window = 3
    for i in range(5):
        await api.create("v1/pods", NS, pod(f"p{i}"))
    events = await asyncio.wait_for(_watch_events(api_url, "/api/v1/pods?resourceVersion=2", 99), 5)
    assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in events] == [("ERROR", 410, "Expired")]


async def test_a_watch_that_allows_bookmarks_gets_them_periodically_and_as_it_times_out(
        api: ApiClient, api_url: str, monkeypatch) -> None:
    """As kube-apiserver's watch cache: a client that allows bookmarks gets one about every minute and
    one as its watch times out, at the current resourceVersion, so it resumes from a recent one even when
    nothing it selects changed (the operator's informer relies on that to avoid relisting)."""
    monkeypatch.setattr(emulator_module, "BOOKMARK_EVERY", 0.3)
    await api.create("v1/pods", NS, pod("other", app="b"))
    rv = (await api.request("GET", "/api/v1/namespaces/default/pods"))["metadata"]["resourceVersion"]
    path = f"/api/v1/namespaces/default/pods?labelSelector=app%3Da&resourceVersion={rv}&allowWatchBookmarks=true"
    watching = asyncio.create_task(_watch_events(api_url, path + "&timeoutSeconds=1", 99))
    await asyncio.sleep(0.1)
    await api.create("v1/pods", NS, pod("unselected", app="b"))
    events = await asyncio.wait_for(watching, 5)
    assert [e["type"] for e in events][-1] == "BOOKMARK" and len(events) >= 3  # periodic ones, then the last
    assert {e["type"] for e in events} == {"BOOKMARK"}
    assert int(events[-1]["object"]["metadata"]["resourceVersion"]) > int(rv)  # past the unselected change
    quiet = await asyncio.wait_for(_watch_events(api_url, path.replace("&allowWatchBookmarks=true", "")
                                                 + "&timeoutSeconds=0.5", 99), 5)
    assert quiet == []  # not asked for: none


async def test_restart_watches_ends_every_stream_and_a_resume_from_before_it_gets_410(
        api: ApiClient, api_url: str, emulator_server: EmulatorServer, wait_for) -> None:
    await api.create("v1/pods", NS, pod("p"))
    rv = (await api.request("GET", "/api/v1/namespaces/default/pods"))["metadata"]["resourceVersion"]
    watching = asyncio.create_task(_watch_events(api_url, f"/api/v1/pods?resourceVersion={rv}", 1))
    await wait_for(lambda: asyncio.to_thread(open_watches, api_url))
    await api.create("v1/pods", NS, pod("p2"))
    assert [e["object"]["metadata"]["name"] for e in await asyncio.wait_for(watching, 5)] == ["p2"]
    watching = asyncio.create_task(_watch_events(api_url, f"/api/v1/pods?resourceVersion={rv}", 99))
    await wait_for(lambda: asyncio.to_thread(open_watches, api_url))
    assert emulator_server.call(emulator_server.emulator.restart_watches) >= 1
    assert [e["object"]["metadata"]["name"] for e in await asyncio.wait_for(watching, 5)] == ["p2"]  # then it ended
    # Resumed from before the restart (p2 came after rv): 410, the client relists.
    events = await asyncio.wait_for(_watch_events(api_url, f"/api/v1/pods?resourceVersion={rv}", 99), 5)
    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]
    await api.create("v1/pods", NS, pod("q"))  # after the restart: resumable from the new floor
    floor = emulator_server.call(lambda: emulator_server.emulator.watches.floor)
    events = await asyncio.wait_for(_watch_events(
        api_url, f"/api/v1/pods?resourceVersion={floor}&timeoutSeconds=0.5", 99), 5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "q")]


async def test_objects_entering_or_leaving_a_selection_are_added_or_deleted(api: ApiClient, api_url: str,
                                                                           wait_for) -> None:
    watching = asyncio.create_task(_watch_events(api_url, "/api/v1/namespaces/default/pods?labelSelector=app%3Da", 3))
    await wait_for(lambda: asyncio.to_thread(open_watches, api_url))
    await api.create("v1/pods", NS, pod("p", app="b"))
    await api.patch("v1/pods", NS, "p", {"metadata": {"labels": {"app": "a"}}})
    await api.patch("v1/pods", NS, "p", {"metadata": {"labels": {"app": "a", "x": "y"}}})
    await api.patch("v1/pods", NS, "p", {"metadata": {"labels": {"app": "c"}}})
    events = await asyncio.wait_for(watching, 5)
    assert [(e["type"], e["object"]["metadata"]["labels"]["app"]) for e in events] == [
        ("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


async def test_a_lagging_watch_is_closed() -> None:
    watcher = emulator_module.Watcher(resource=emulator_module.PODS, filter=emulator_module.ObjectFilter(),
                                      user_agent="", limit=3)
    for i in range(3):
        watcher.offer(b"%d" % i)
    assert await watcher.next_events(0.1) == [b"0", b"1", b"2"]
    for i in range(4):
        watcher.offer(b"%d" % i)
    assert watcher.overflowed and await watcher.next_events(0.1) is None


async def test_builtin_routes_agree_with_kmock_matching(emulator_server: EmulatorServer) -> None:
    """The direct route taken when only the emulator's own reactions exist is the one kmock's matching picks."""
    emulator = emulator_server.emulator
    requests = [
        kmock.Request(method=method, url=path, action=action, resource=resource, namespace=namespace, name=name,
                      subresource=subresource)
        for method, path, action, resource, namespace, name, subresource in [
            ("GET", "/api/v1/namespaces/default/pods", kmock.action.LIST, emulator_module.PODS, NS, None, None),
            ("GET", "/api/v1/namespaces/default/pods", kmock.action.WATCH, emulator_module.PODS, NS, None, None),
            ("GET", "/api/v1/namespaces/default/pods/p", kmock.action.FETCH, emulator_module.PODS, NS, "p", None),
            ("POST", "/api/v1/namespaces/default/pods", kmock.action.CREATE, emulator_module.PODS, NS, None, None),
            ("PATCH", "/api/v1/namespaces/default/pods/p", kmock.action.UPDATE, emulator_module.PODS, NS, "p", None),
            ("PATCH", "/api/v1/namespaces/default/pods/p/status", kmock.action.UPDATE, emulator_module.PODS, NS, "p",
             "status"),
            ("PUT", "/api/v1/namespaces/default/pods/p", None, emulator_module.PODS, NS, "p", None),
            ("DELETE", "/api/v1/namespaces/default/pods/p", kmock.action.DELETE, emulator_module.PODS, NS, "p", None),
            ("GET", "/api/v1/namespaces/default/pods/p/log", kmock.action.FETCH, emulator_module.PODS, NS, "p", "log"),
            ("PUT", "/api/v1/namespaces/default/pods/p/log", None, emulator_module.PODS, NS, "p", "log"),
            ("GET", "/api/v1/namespaces/default/pods/p/exec", kmock.action.FETCH, emulator_module.PODS, NS, "p",
             "exec"),
            ("GET", "/_emulator/watches", None, None, None, None, None),
        ]]

    def matched(request: kmock.Request):
        sight = emulator_module._Sight(emulator, request)
        payloads, _ = emulator._reactions()
        return next(emulator._own_reactions.get(id(p)) for p in payloads if sight(p._source))

    def compare() -> list:
        return [(r.method, r.url.path, emulator._route(r), matched(r)) for r in requests]

    for method, path, routed, by_matching in emulator_server.call(compare):
        assert routed is not None and routed == by_matching, (method, path, routed, by_matching)


# --- kmock's DSL still injects responses ----------------------------------------------------------------

async def test_a_500_injected_with_kmocks_dsl_reaches_the_client_and_changes_nothing(
        api: ApiClient, emulator_server: EmulatorServer) -> None:
    emulator = emulator_server.emulator
    await api.create(CKPTS, NS, checkpoint("c1"))
    failure = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 500, "reason": "InternalError",
               "message": "injected"}
    # The first status update of Checkpoints fails; later ones pass.
    emulator_server.call(lambda: emulator[kmock.action.UPDATE, kmock.resource("ckpt.dev", "v1alpha1", "checkpoints"),
                                          kmock.subresource("status")][:1] << 500 << failure)
    with pytest.raises(ApiError) as caught:
        await api.patch(CKPTS, NS, "c1", {"status": {"phase": "Ready"}}, subresource="status")
    assert caught.value.status == 500 and caught.value.body["message"] == "injected"
    assert "status" not in await api.get(CKPTS, NS, "c1")  # the injected answer replaced the write
    updated = await api.patch(CKPTS, NS, "c1", {"status": {"phase": "Ready"}}, subresource="status")
    assert updated["status"]["phase"] == "Ready"


async def test_errors_on_a_fraction_of_requests(api: ApiClient, emulator_server: EmulatorServer) -> None:
    """The fault-matrix shape: every other GET of pods answers 429 (by the request's serial number)."""
    emulator = emulator_server.emulator
    await api.create("v1/pods", NS, pod("p"))
    emulator_server.call(lambda: emulator[kmock.action.FETCH, emulator_module.PODS,
                                          lambda request: request.id % 2 == 0] << 429 << {
        "kind": "Status", "code": 429, "reason": "TooManyRequests", "message": "slow down"})
    statuses = []
    for _ in range(10):
        try:
            await api.get("v1/pods", NS, "p")
            statuses.append(200)
        except ApiError as exc:
            statuses.append(exc.status)
    assert sorted(statuses) == [200] * 5 + [429] * 5


async def test_get_object(api: ApiClient, emulator_server: EmulatorServer) -> None:
    await api.create(CKPTS, NS, checkpoint("c1"))
    emulator = emulator_server.emulator
    found = emulator_server.call(lambda: emulator.get_object(CKPTS, NS, "c1"))
    assert found["spec"]["source"] == {"s3": {"uri": "s3://models/c1/"}}
    assert emulator_server.call(lambda: emulator.get_object("v1/pods", NS, "none")) is None


async def test_a_pod_deleted_with_a_finalizer_keeps_its_grace_period(api: ApiClient) -> None:
    for name, extra, options in (("default", {}, {}), ("own", {"terminationGracePeriodSeconds": 2}, {}),
                                 ("asked", {}, {"gracePeriodSeconds": 0})):
        body = pod(name)
        body["metadata"]["finalizers"] = ["example.com/hold"]
        body["spec"].update(extra)
        await api.create("v1/pods", NS, body)
        await api.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{name}", json_body=options)
    grace = {name: (await api.get("v1/pods", NS, name))["metadata"]["deletionGracePeriodSeconds"]
             for name in ("default", "own", "asked")}
    assert grace == {"default": 30, "own": 2, "asked": 0}
    await api.create(CKPTS, NS, {**checkpoint("c"), "metadata": {"name": "c", "finalizers": ["example.com/hold"]}})
    await api.delete(CKPTS, NS, "c")
    assert (await api.get(CKPTS, NS, "c"))["metadata"]["deletionGracePeriodSeconds"] == 0


@pytest.mark.parametrize("method, content_type", [("POST", "application/json"), ("PUT", "application/json"),
                                                  ("PATCH", "application/merge-patch+json")])
async def test_a_body_nested_deeper_than_the_decoder_goes_is_a_bad_request(api: ApiClient, api_url: str,
                                                                           method: str, content_type: str) -> None:
    """Issue 18 item 5 (no recursion on user-controlled depth): 100,000 nested arrays, or an
    object nested 5,000 deep that the merge patch would walk, are one 400 line, not a 500
    RecursionError with its traceback; the stored object is unchanged."""
    await api.create(CKPTS, NS, checkpoint("deep"))
    path = f"{api_url}/apis/ckpt.dev/v1alpha1/namespaces/{NS}/checkpoints" + ("" if method == "POST" else "/deep")
    for nested in ("[" * 100_000 + "]" * 100_000, '{"a":' * 5000 + "1" + "}" * 5000):
        body = '{"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": {"name": "deep"}, ' \
               '"spec": {"description": ' + nested + "}}"
        async with aiohttp.ClientSession() as session:
            async with session.request(method, path, data=body, headers={"Content-Type": content_type}) as response:
                status, answer = response.status, await response.json()
        assert status == 400, answer
        assert answer["reason"] == "BadRequest"
        assert "nested too deeply" in answer["message"] and "\n" not in answer["message"]
        assert "traceback" not in json.dumps(answer).lower()
    assert (await api.get(CKPTS, NS, "deep"))["spec"]["description"] == "d"


async def test_discovery_lists_subresources_as_kube_apiserver_does(api: ApiClient) -> None:
    """A subresource has no singularName, shortNames or categories, and only its own verbs (kube-apiserver's
    APIResourceList). kmock gave `trainingjobs/status` the CRD's short name: kubectl warned `short name "tj"
    could also match lower priority resource trainingjobs/status.ckpt.dev` on `kubectl get tj,ckpt`."""
    names = {r["name"]: r for r in (await api.request("GET", "/apis/ckpt.dev/v1alpha1"))["resources"]}
    assert names["trainingjobs"]["shortNames"] == ["tj"] and names["trainingjobs"]["categories"] == ["ml"]
    assert names["trainingjobs"]["singularName"] == "trainingjob"
    for name in ("trainingjobs/status", "checkpoints/status", "clustercheckpoints/status"):
        entry = names[name]
        assert "shortNames" not in entry and "categories" not in entry, entry
        assert entry["singularName"] == "" and sorted(entry["verbs"]) == ["get", "patch", "update"]
        assert entry["kind"] == names[name.split("/")[0]]["kind"]
    assert list(names) == sorted(names)  # each resource before its subresources
    # Every short name and category is one resource's (what kubectl's shortcut expander and `get ml` read).
    everywhere = [r for path in ("/api/v1", "/apis/batch/v1", "/apis/ckpt.dev/v1alpha1")
                  for r in (await api.request("GET", path))["resources"]]
    assert not [r["name"] for r in everywhere if "/" in r["name"] and (r.get("shortNames") or r.get("categories"))]
    core = {r["name"]: r for r in everywhere}
    assert core["pods/exec"]["kind"] == "PodExecOptions" and sorted(core["pods/exec"]["verbs"]) == ["create", "get"]
    assert core["pods/log"]["verbs"] == ["get"] and "shortNames" not in core["jobs"]  # empty: omitted


KUBECTL_ACCEPT = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
                  "application/json")


async def _get(url: str, accept: str | None, params: dict | None = None) -> tuple[str, dict]:
    headers = {"Accept": accept} if accept is not None else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers, params=params) as response:
            assert response.status == 200, await response.text()
            return response.headers["Content-Type"], json.loads(await response.read())


async def test_kubectl_get_is_answered_with_the_crds_printer_columns(api: ApiClient, api_url: str) -> None:
    """kubectl get asks for a meta.k8s.io Table; the emulator answered a plain list, so `kubectl get tj` showed
    NAME and AGE only, not the CRD's additionalPrinterColumns."""
    await api.create("ckpt.dev/v1alpha1/trainingjobs", NS, training_job("tj1"))
    await api.patch("ckpt.dev/v1alpha1/trainingjobs", NS, "tj1",
                    {"status": {"phase": "Running", "inputCount": 2}}, subresource="status")
    await api.create("ckpt.dev/v1alpha1/trainingjobs", NS, training_job("tj2"))
    crd = await api.get("apiextensions.k8s.io/v1/customresourcedefinitions", None, "trainingjobs.ckpt.dev")
    declared = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    path = f"{api_url}/apis/ckpt.dev/v1alpha1/namespaces/{NS}/trainingjobs"
    content_type, table = await _get(path, KUBECTL_ACCEPT)
    assert content_type == "application/json;as=Table;v=v1;g=meta.k8s.io"
    assert (table["kind"], table["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name"] + [c["name"] for c in declared]
    assert [c["priority"] for c in table["columnDefinitions"][1:]] == [c.get("priority", 0) for c in declared]
    by_name = {row["cells"][0]: dict(zip([c["name"] for c in table["columnDefinitions"]], row["cells"]))
               for row in table["rows"]}
    assert list(by_name) == ["tj1", "tj2"]
    assert (by_name["tj1"]["Phase"], by_name["tj1"]["Inputs"]) == ("Running", 2)
    assert by_name["tj2"]["Inputs"] is None  # nothing at the path: an empty cell
    assert by_name["tj1"]["Age"].endswith("s")  # a human duration, as kubectl's AGE
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    assert table["rows"][0]["object"]["metadata"]["name"] == "tj1" and "spec" not in table["rows"][0]["object"]
    assert int(table["metadata"]["resourceVersion"]) > 0
    # one object, and the whole object when asked
    _, one = await _get(f"{path}/tj1", KUBECTL_ACCEPT, {"includeObject": "Object"})
    assert [row["cells"][0] for row in one["rows"]] == ["tj1"] and one["rows"][0]["object"]["spec"]
    # paging and selectors work as for a list
    _, page = await _get(path, KUBECTL_ACCEPT, {"limit": "1"})
    assert len(page["rows"]) == 1 and page["metadata"]["continue"] and page["metadata"]["remainingItemCount"] == 1
    # a built-in resource: kube-apiserver's default table
    await api.create("v1/pods", NS, pod("p1"))
    _, pods = await _get(f"{api_url}/api/v1/namespaces/{NS}/pods", KUBECTL_ACCEPT)
    assert [c["name"] for c in pods["columnDefinitions"]] == ["Name", "Created At"]
    assert pods["rows"][0]["cells"][0] == "p1" and pods["rows"][0]["cells"][1].endswith("Z")


@pytest.mark.parametrize("accept", [None, "application/json", "*/*", "application/json, */*"])
async def test_every_other_client_gets_plain_objects(api: ApiClient, api_url: str, accept: str | None) -> None:
    """Only a client that asks for a Table gets one: kopf, the kubernetes client and kubectl ckpt read lists."""
    await api.create("ckpt.dev/v1alpha1/trainingjobs", NS, training_job("tj1"))
    path = f"{api_url}/apis/ckpt.dev/v1alpha1/namespaces/{NS}/trainingjobs"
    content_type, listing = await _get(path, accept)
    assert content_type.startswith("application/json") and "as=Table" not in content_type
    assert listing["kind"] == "TrainingJobList" and listing["items"][0]["spec"]
    _, one = await _get(f"{path}/tj1", accept)
    assert one["kind"] == "TrainingJob"


async def test_the_kubernetes_client_reads_lists_not_tables(api: ApiClient, api_url: str) -> None:
    from kubernetes import client
    await api.create("ckpt.dev/v1alpha1/trainingjobs", NS, training_job("tj1"))
    await api.create("v1/pods", NS, pod("p1"))
    configuration = client.Configuration()
    configuration.host = api_url
    with client.ApiClient(configuration) as kube:
        custom = await asyncio.to_thread(client.CustomObjectsApi(kube).list_namespaced_custom_object,
                                         "ckpt.dev", "v1alpha1", NS, "trainingjobs")
        pods = await asyncio.to_thread(client.CoreV1Api(kube).list_namespaced_pod, NS)
    assert [item["metadata"]["name"] for item in custom["items"]] == ["tj1"]
    assert [p.metadata.name for p in pods.items] == ["p1"] and pods.items[0].spec.containers[0].name == "main"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl on this machine")
async def test_kubectl_get_shows_printer_columns_without_short_name_warnings(api: ApiClient, api_url: str,
                                                                             tmp_path) -> None:
    """With a real kubectl: `kubectl get tj,ckpt` warned `short name "tj" could also match lower priority resource
    trainingjobs/status.ckpt.dev` (the same for ckpt) and showed NAME and AGE only."""
    await api.create("ckpt.dev/v1alpha1/trainingjobs", NS, training_job("tj1"))
    await api.patch("ckpt.dev/v1alpha1/trainingjobs", NS, "tj1", {"status": {"phase": "Running", "inputCount": 2}},
                    subresource="status")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": api_url}}], "users": [{"name": "me", "user": {}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "me", "namespace": NS}}]}))
    done = await asyncio.to_thread(subprocess.run, [
        "kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache"), "get", "tj,ckpt"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "could also match" not in done.stderr, done.stderr
    header, row = done.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "INPUTS", "OUTPUTS", "AGE"]
    assert row.split()[:3] == ["trainingjob.ckpt.dev/tj1", "Running", "2"]


async def test_update_parses_the_stored_object_only_as_often_as_it_must(api: ApiClient, monkeypatch) -> None:
    """A PUT of a ConfigMap (no status subresource) parses the stored object once (the current one,
    compared with the new one); a PATCH twice (the patched copy too). A third parse, to take what the
    request may not change, was made on every update before; it is made only when a status is kept."""
    from checkpoint_operator.local import store as store_module
    cms = "v1/configmaps"
    await api.create(cms, NS, {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    loads = []
    real = store_module.Stored.load
    monkeypatch.setattr(store_module.Stored, "load", lambda self: loads.append(1) or real(self))
    patched = await api.patch(cms, NS, "cm", {"data": {"a": "2"}})
    assert len(loads) == 2 and patched["data"] == {"a": "2"} and patched["metadata"]["uid"]
    loads.clear()
    put = await api.request("PUT", f"/api/v1/namespaces/{NS}/configmaps/cm",
                            json_body={"metadata": {"name": "cm", "uid": "forged"}, "data": {"a": "3"}})
    assert len(loads) == 1 and put["data"] == {"a": "3"} and put["metadata"]["uid"] == patched["metadata"]["uid"]
    # A Job keeps its status through a main-resource update: still taken from the stored object.
    jobs = "batch/v1/jobs"
    await api.create(jobs, NS, {"metadata": {"name": "j"}, "spec": {"parallelism": 1}})
    await api.patch(jobs, NS, "j", {"status": {"active": 1}}, subresource="status")
    job = await api.patch(jobs, NS, "j", {"spec": {"parallelism": 2}, "status": {"active": 5}})
    assert job["status"] == {"active": 1} and job["spec"]["parallelism"] == 2


async def test_status_merge_patch_parses_twice_and_changes_only_the_status(api: ApiClient, monkeypatch) -> None:
    """A merge patch of the status alone is applied to a fresh copy of the stored object: that copy is
    the new object (a third parse, to copy all but the status into it, was made before). Patches that
    name more than the status still have the rest ignored, as on the status subresource of kube-apiserver."""
    from checkpoint_operator.local import store as store_module
    jobs = "batch/v1/jobs"
    await api.create(jobs, NS, {"metadata": {"name": "j", "labels": {"a": "1"}}, "spec": {"parallelism": 1}})
    loads = []
    real = store_module.Stored.load
    monkeypatch.setattr(store_module.Stored, "load", lambda self: loads.append(1) or real(self))
    job = await api.patch(jobs, NS, "j", {"status": {"active": 1}}, subresource="status")
    assert len(loads) == 2 and job["status"] == {"active": 1} and job["metadata"]["labels"] == {"a": "1"}
    job = await api.patch(jobs, NS, "j", {"status": None}, subresource="status")
    assert "status" not in job
    job = await api.patch(jobs, NS, "j", {"status": {"active": 2}, "spec": {"parallelism": 3},
                                          "metadata": {"labels": {"a": "2"}}}, subresource="status")
    assert job["status"] == {"active": 2} and job["spec"]["parallelism"] == 1 and job["metadata"]["labels"] == {"a": "1"}
