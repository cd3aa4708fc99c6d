"""The node-local input cache's pure side (logic/node_cache.py): which inputs it takes, the pod parts,
the local PersistentVolume and claim (validated against Kubernetes' OpenAPI schema), the fills' reports
read from pod states, and status.cachedOn."""

from __future__ import annotations

import copy
import json

import kubernetes_validate
import pytest

import pod_shapes
from checkpoint_operator.api.checkpoint import Location
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import node_cache
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.logic.workers import worker_pod

HEX = "b" * 64
DIGEST = "sha256:" + HEX
GiB = 1024 ** 3


def cache_config(**over) -> OperatorConfig:
    return pod_shapes.config("s3-cache", **over)


def item(size: int | None = GiB, *, uri: str | None = "s3://ckpts/checkpoints/team-a/base-1/", digest: str = DIGEST,
         name: str = "base") -> ResolvedInput:
    location = Location.model_validate({"s3": {"uri": uri}} if uri else {"volume": {"claimName": "c", "path": "p"}})
    return ResolvedInput(name=name, uid="u", digest=digest, mount_name=name, location=location, size_bytes=size)


def validate(obj: dict) -> None:
    kubernetes_validate.validate(copy.deepcopy(obj), "1.34.0", strict=True)


def test_which_inputs_the_cache_takes():
    config = cache_config(cache_capacity="2Gi")
    assert node_cache.cacheable(item(), config)
    assert not node_cache.cacheable(item(3 * GiB), config)  # larger than a node's cache: downloaded privately
    assert not node_cache.cacheable(item(None), config)      # size unknown: nothing to reserve
    assert not node_cache.cacheable(item(uri=None), config)  # not on the s3 store
    assert not node_cache.cacheable(item(), pod_shapes.config("s3"))  # not enabled


def test_the_pod_parts_hold_fill_and_mount_read_only_without_host_paths():
    config = cache_config()
    parts = node_cache.cache_parts("team-a", "/in", [(0, item()), (1, item(name="other"))], config, [])
    assert parts.volumes == [{"name": "ckpt-node-cache", "persistentVolumeClaim": {"claimName": "ckpt-node-cache"}}]
    hold, *fills = parts.init_containers
    assert hold["name"] == "ckpt-cache-hold" and hold["restartPolicy"] == "Always"
    assert hold["command"][2:] == ["cache-hold", "/checkpoint-node-cache", "--key", f"team-a/{HEX}"]  # once
    assert [f["name"] for f in fills] == ["download-input-0", "download-input-1"]
    assert fills[0]["command"][2:] == ["cache-fill", "s3://ckpts/checkpoints/team-a/base-1/", "/checkpoint-node-cache",
                                       "--key", f"team-a/{HEX}", "--size", str(GiB), "--capacity", str(200 * GiB),
                                       "--verify", "sample", "--result-file", "/dev/termination-log"]
    assert fills[0]["terminationMessagePath"] == "/dev/termination-log"
    assert all(c["securityContext"]["runAsUser"] == 65532 for c in parts.init_containers)
    assert parts.mounts[0] == {"name": "ckpt-node-cache", "readOnly": True, "mountPath": "/in/base",
                               "subPath": f"entries/team-a/{HEX}/data"}


def test_the_s3_store_caches_what_fits_and_downloads_the_rest_into_the_pod():
    from checkpoint_operator.storage import store_for
    config = cache_config(cache_capacity="2Gi")
    tj = pod_shapes.training_job()
    staged = store_for(config).input_volumes(tj, [item(), item(3 * GiB, name="huge", digest="sha256:" + "c" * 64)])
    names = [c["name"] for c in staged.init_containers]
    assert names == ["ckpt-cache-hold", "download-input-0", "download-input-1"]
    assert staged.init_containers[2]["command"][2] == "download"
    assert {v["name"] for v in staged.volumes} == {"ckpt-node-cache", "ckpt-inputs"}


def test_the_local_volume_and_its_claim_are_valid_kubernetes_objects():
    config = cache_config(cache_node_selector={"node.kubernetes.io/instance-type": "p5.48xlarge"},
                          cache_local_path="/mnt/nvme/ckpt-cache", cache_storage_class="local-nvme")
    pv = node_cache.build_cache_volume("team-a", config)
    claim = node_cache.build_cache_claim("team-a", config)
    validate(pv)
    validate(claim)
    assert pv["metadata"]["name"] == "ckpt-node-cache-team-a" == claim["spec"]["volumeName"]
    assert pv["spec"]["local"] == {"path": "/mnt/nvme/ckpt-cache"} and "hostPath" not in pv["spec"]
    assert pv["spec"]["claimRef"]["namespace"] == "team-a" and pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"] == [{"matchExpressions": [
        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["p5.48xlarge"]}]}]
    assert pv["spec"]["storageClassName"] == claim["spec"]["storageClassName"] == "local-nvme"
    default = node_cache.build_cache_volume("team-a", cache_config())  # every Linux node
    assert default["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]


def test_a_training_job_built_with_the_cache_is_a_valid_job():
    job = pod_shapes.built_job("s3-cache")
    validate(job if "apiVersion" in job else {"apiVersion": "batch/v1", "kind": "Job", **job})


def _pod(message: str, *, exit_code: int = 0, node: str = "n1", name: str = "download-input-0") -> dict:
    return {"metadata": {"name": "p", "uid": "pod-1", "labels": {}}, "spec": {"nodeName": node},
            "status": {"phase": "Running", "initContainerStatuses": [
                {"name": "ckpt-cache-hold", "state": {"running": {}}},
                {"name": name, "state": {"terminated": {"exitCode": exit_code, "message": message}}}]}}


def _line(outcome: str = "miss", key: str = f"team-a/{HEX}", **over) -> str:
    body = {"kind": "cache-fill", "version": 1, "cache": outcome, "key": key, "sizeBytes": 100,
            "fetchedBytes": 100 if outcome != "hit" else 0,
            "waitedSeconds": 0.1, "evicted": [], "evictedCount": 0, "evictedBytes": 0, **over}
    return json.dumps(body)


def test_fill_reports_are_read_from_pod_states_into_typed_reports():
    (report,) = node_cache.read_fill_reports(_pod(_line("hit")))
    assert (report.node, report.outcome, report.digest, report.saved_bytes) == ("n1", "hit", DIGEST, 100)
    pod = worker_pod(_pod(_line("miss", evicted=[{"key": "team-a/" + "c" * 64, "sizeBytes": 7}], evictedCount=3,
                                evictedBytes=30)))
    assert pod.uid == "pod-1" and pod.cache_fills[0].evicted_count == 3 and pod.cache_fills[0].saved_bytes == 0
    assert pod.cache_fills[0].evicted[0].size_bytes == 7


@pytest.mark.parametrize("message", ["", "not json", "[1]", _line("maybe"), _line(sizeBytes=-1),
                                     _line(fetchedBytes="x"), json.dumps({"cache": "hit"}), "x" * 10000,
                                     _line(version=2), _line(kind="scan"), _line(key="../" + HEX),
                                     _line(evicted=[{"key": f"team-a/{HEX}", "sizeBytes": 1}] * 9)])
def test_what_is_not_a_fill_report_is_ignored(message):
    assert node_cache.read_fill_reports(_pod(message)) == []


def test_only_fills_that_ended_well_and_only_download_containers_count():
    assert node_cache.read_fill_reports(_pod(_line(), exit_code=1)) == []
    assert node_cache.read_fill_reports(_pod(_line(), name="trainer-init")) == []
    assert node_cache.read_fill_reports(_pod(_line(), node="")) == []


def test_cached_on_adds_filled_nodes_and_drops_evicting_ones():
    other = "sha256:" + "c" * 64
    fills = [node_cache.parse_fill_report("n2", _line("miss")), node_cache.parse_fill_report("n1", _line("hit"))]
    assert node_cache.cached_on(["n3"], DIGEST, [r for r in fills if r]) == ["n1", "n2", "n3"]
    evicting = node_cache.parse_fill_report("n3", _line("miss", key="team-a/" + "c" * 64,
                                                        evicted=[{"key": f"team-a/{HEX}", "sizeBytes": 100}]))
    assert evicting is not None
    assert node_cache.cached_on(["n1", "n3"], DIGEST, [evicting]) == ["n1"]
    assert node_cache.cached_on([], other, [evicting]) == ["n3"]
    many = [node_cache.parse_fill_report(f"node-{i:03}", _line("miss")) for i in range(100)]
    assert len(node_cache.cached_on([], DIGEST, [r for r in many if r])) == node_cache.MAX_CACHED_ON


@pytest.mark.parametrize("template, refusal", [
    ({"containers": [{"name": "t", "image": "i"}], "volumes": [{"name": "ckpt-node-cache", "emptyDir": {}}]},
     "use names reserved by the operator"),
    ({"containers": [{"name": "t", "image": "i"}], "initContainers": [{"name": "ckpt-cache-hold", "image": "i"}]},
     "reserved for the operator's node-cache sidecar"),
])
def test_a_template_may_not_take_the_cache_s_names(template, refusal):
    from checkpoint_operator.logic import workload
    with pytest.raises(workload.InvalidSpec, match=refusal):
        workload.check_user_mounts(template, pod_shapes.training_job())


def test_each_fill_is_counted_once_also_when_a_pod_s_fills_end_one_after_the_other():
    from checkpoint_operator.reconcile.node_cache import _Seen, new_reports
    first = _pod(_line("miss"))
    both = copy.deepcopy(first)
    both["status"]["initContainerStatuses"].append(
        {"name": "download-input-1", "state": {"terminated": {"exitCode": 0, "message": _line("hit", key="team-a/" + "c" * 64)}}})
    seen = _Seen()
    assert [r.outcome for r in new_reports([worker_pod(first)], seen)] == ["miss"]
    assert [r.outcome for r in new_reports([worker_pod(both)], seen)] == ["hit"]  # the second input's, once
    assert new_reports([worker_pod(both)], seen) == []


def test_a_job_asks_for_a_full_check_of_its_cached_inputs_on_demand():
    from checkpoint_operator.storage import store_for
    sample, full = cache_config(), cache_config(cache_verify="full")
    assert node_cache.verify_mode({"ckpt.dev/cache-verify": "full"}, sample) == "full"
    assert node_cache.verify_mode({"ckpt.dev/cache-verify": "sample"}, full) == "full"  # never fewer checks
    assert node_cache.verify_mode({"ckpt.dev/cache-verify": "everything"}, sample) == "sample"
    assert node_cache.verify_mode(None, full) == "full"
    tj = pod_shapes.training_job()
    tj.metadata.annotations = {"ckpt.dev/cache-verify": "full"}
    fill = store_for(sample).input_volumes(tj, [item()]).init_containers[1]
    assert fill["command"][fill["command"].index("--verify") + 1] == "full"


def test_the_largest_fill_report_fits_a_termination_message():
    from checkpoint_operator.agent.node_cache import Evicted, FillReport as AgentReport
    longest = "n" * 63 + "/" + HEX
    report = AgentReport(longest, "refetched", 2**63 - 1, fetched_bytes=2**63 - 1, waited_seconds=1e8,
                         problem="p" * 5000, evicted=[Evicted(longest, 2**63 - 1)] * 1000)
    line = report.as_json()
    assert len(line.encode()) <= 4096
    parsed = node_cache.parse_fill_report("node-a", line)
    assert parsed is not None and parsed.evicted_count == 1000 and len(parsed.evicted) == 8
