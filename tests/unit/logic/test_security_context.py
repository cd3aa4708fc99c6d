"""Pod Security "restricted" (issue 23 item 3) for every pod and container the operator creates or
injects, and whose identity each takes (logic/security_context.py).

The shapes (tests/pod_shapes.py) are built by the real builders: the operator's agent pods of
every store (volume, s3, volume with volume snapshots) and every source kind, and the pods a Job makes from the template it built (inputs
on both stores, with and without the live-sealing sidecar, one and two workers); each is checked
with local/pod_security.py, which follows k8s.io/pod-security-admission/policy."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

import pod_shapes
from checkpoint_operator.local.pod_security import violations
from checkpoint_operator.logic import security_context, workload
from checkpoint_operator.logic.agent_pods import writes_a_claim

ROOT = Path(__file__).resolve().parents[3]
AGENT_PODS = pod_shapes.agent_pods()
TRAINING_PODS = pod_shapes.training_pods()


def containers(pod: dict) -> list[dict]:
    spec = pod["spec"]
    return [*(spec.get("initContainers") or []), *spec["containers"]]


# --- the operator's pods ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(AGENT_PODS))
def test_every_agent_pod_meets_restricted(name):
    assert violations("restricted", AGENT_PODS[name]) == []


@pytest.mark.parametrize("name", sorted(TRAINING_PODS))
def test_a_restricted_template_stays_restricted_with_what_the_operator_injects(name):
    pod = TRAINING_PODS[name]
    assert pod["spec"]["volumes"], "the operator added nothing: the shape would test nothing"
    assert violations("restricted", pod) == []


_C = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
_RD = {"type": "RuntimeDefault"}
# hostile1's odd templates that meet "restricted" themselves (tests/h1_podsec_probe.py): each stays
# restricted with what the operator injects, and so does the snapshot pod that reads its output.
ODD_TEMPLATES = {
    "container-level only, uid": {"containers": [{"name": "trainer", "image": "t", "securityContext": {
        **_C, "runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": _RD}}]},
    "container-level only, no uid": {"containers": [{"name": "trainer", "image": "t", "securityContext": {
        **_C, "runAsNonRoot": True, "seccompProfile": _RD}}]},
    "hostUsers false, pod uid 0": {"hostUsers": False, "securityContext": {"runAsUser": 0, "seccompProfile": _RD},
                                   "containers": [{"name": "trainer", "image": "t", "securityContext": dict(_C)}]},
    "hostUsers false, container uid 0": {"hostUsers": False, "securityContext": {"seccompProfile": _RD}, "containers": [
        {"name": "trainer", "image": "t", "securityContext": {**_C, "runAsUser": 0, "runAsNonRoot": False}}]},
    "Localhost seccomp": {"securityContext": {"runAsNonRoot": True, "runAsUser": 5, "seccompProfile": {
        "type": "Localhost", "localhostProfile": "p.json"}}, "containers": [{"name": "trainer", "image": "t",
                                                                            "securityContext": dict(_C)}]},
    "logger first": {"securityContext": {"runAsNonRoot": True, "seccompProfile": _RD}, "containers": [
        {"name": "logger", "image": "l", "securityContext": {**_C, "runAsUser": 3000}},
        {"name": "trainer", "image": "t", "securityContext": {**_C, "runAsUser": 1000}}]},
    "groups 0": {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 0, "fsGroup": 0,
                                     "supplementalGroups": [0], "seccompProfile": _RD},
                 "containers": [{"name": "trainer", "image": "t", "securityContext": dict(_C)}]},
    "NET_BIND_SERVICE": {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": _RD},
                         "containers": [{"name": "trainer", "image": "t", "securityContext": {
                             **_C, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]},
    "a native sidecar": {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": _RD},
                         "initContainers": [{"name": "side", "image": "p", "restartPolicy": "Always",
                                             "securityContext": dict(_C)}],
                         "containers": [{"name": "trainer", "image": "t", "securityContext": dict(_C)}]},
}


@pytest.mark.parametrize("label", sorted(ODD_TEMPLATES))
@pytest.mark.parametrize("store", ["volume", "s3"])
@pytest.mark.parametrize("publish", ["OnCompletion", "Continuous"])
def test_odd_restricted_templates_stay_restricted(label, store, publish):
    template = {"spec": ODD_TEMPLATES[label]}
    assert violations("restricted", {"metadata": {}, "spec": template["spec"]}) == []
    pod = pod_shapes.job_pod(pod_shapes.built_job(store, template, publish=publish))
    assert violations("restricted", pod) == []
    cfg = pod_shapes.config(store)
    tj = pod_shapes.training_job(template)
    snapshot = workload.build_snapshot_pod(tj, ["checkpoint-operator", "agent", "scan", "/checkpoint-output"], [], cfg)
    assert violations("restricted", snapshot) == []


def test_the_catalogue_covers_every_kind_of_pod():
    assert {n.split("/")[1] for n in AGENT_PODS} == {"snapshot", "import", "scan", "upload-receiver", "verify",
                                                     "pull", "upload-check", "catalog-import", "catalog-copy",
                                                     "snapshot-volume-per-worker", "resume-volume-per-worker",
                                                     "resume-volume-per-worker-again", "resume-volume-per-worker-published",
                                                     "resume-volume-per-worker-published-3000",
                                                     "resume-volume-per-worker-kept-sealed", "union-volume-per-worker"}
    assert len([n for n in AGENT_PODS if "/import/" in n]) == len(pod_shapes.STORES) * len(pod_shapes.SOURCES)
    assert len([n for n in AGENT_PODS if "/catalog-import/" in n]) == len(pod_shapes.STORES) * len(pod_shapes.SOURCES)
    names = {c["name"] for pod in TRAINING_PODS.values() for c in containers(pod)}
    assert {"ckpt-live", "ckpt-cache-hold", "download-input-0", "trainer"} <= names


@pytest.mark.parametrize("name", sorted(AGENT_PODS))
def test_agent_pods_mount_no_service_account_token(name):
    spec = AGENT_PODS[name]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == pod_shapes.AGENT_SERVICE_ACCOUNT
    assert not any("projected" in v for v in spec.get("volumes") or [])


def test_a_template_that_breaks_restricted_is_blamed_for_its_own_containers_only():
    """The user's choices stay theirs: nothing the operator adds shows up among the violations."""
    loose = {"spec": {"containers": [{"name": "trainer", "image": "t"}]}}
    for store in ("volume", "s3"):
        pod = pod_shapes.job_pod(pod_shapes.built_job(store, loose, publish="Continuous"))
        found = violations("restricted", pod)
        assert found, "a template without any securityContext must not pass"
        for violation in found:
            assert "ckpt-live" not in violation.detail and "download-input" not in violation.detail, violation
            assert '"trainer"' in violation.detail, violation


# --- whose identity each container takes -----------------------------------------------------

def test_agent_uid_is_the_image_user():
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users and int(users[-1]) == security_context.AGENT_UID


def test_only_pods_that_write_a_claim_get_an_fs_group():
    """fsGroup makes a fresh (root-owned) volume writable; on a read-only mount it would ask the
    kubelet to re-own the trainer's files, so the readers never get one."""
    writers = {n for n, p in AGENT_PODS.items() if "fsGroup" in p["spec"]["securityContext"]}
    # The resume pod writes the workers' volumes as the trainer: their fsGroup only (below), never the
    # agent's; so do the volume store's snapshot and union pods (.ckpt-manifests/ beside the data).
    as_trainer = {n for n in AGENT_PODS if "/resume-volume-per-worker" in n or (
        n.startswith(("volume/", "snapshots/")) and n.split("/")[1] in (
            "snapshot", "snapshot-volume-per-worker", "union-volume-per-worker"))}
    for name in as_trainer:
        assert AGENT_PODS[name]["spec"]["securityContext"]["fsGroup"] == 2000  # RESTRICTED_TEMPLATE's own
    assert writers - as_trainer == {n for n, p in AGENT_PODS.items() if writes_a_claim(p["spec"]["volumes"])} - as_trainer
    assert writers - as_trainer == {"volume/upload-receiver", "snapshots/upload-receiver", "volume/catalog-copy",
                       "snapshots/catalog-copy",
                       *[n for n in AGENT_PODS if n.startswith(("volume/import/", "snapshots/import/",
                                                                "volume/catalog-import/", "snapshots/catalog-import/"))]}
    for name in writers - as_trainer:
        assert AGENT_PODS[name]["spec"]["securityContext"]["fsGroup"] == security_context.AGENT_UID


def test_the_resume_pod_writes_the_workers_volumes_as_the_trainer_with_their_fs_group_only():
    tj = pod_shapes.training_job(replicas=2, engine="JobSet", output={"volumePerWorker": True})
    context = workload.build_resume_pod(tj, pod_shapes.config("volume"))["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (1000, 1000)  # RESTRICTED_TEMPLATE's user
    assert (context["fsGroup"], context["fsGroupChangePolicy"]) == (2000, "OnRootMismatch")  # the workers' own
    template = copy.deepcopy(pod_shapes.RESTRICTED_TEMPLATE)
    del template["spec"]["securityContext"]["fsGroup"]
    tj = pod_shapes.training_job(template, replicas=2, engine="JobSet", output={"volumePerWorker": True})
    context = workload.build_resume_pod(tj, pod_shapes.config("volume"))["spec"]["securityContext"]
    assert context["runAsUser"] == 1000 and "fsGroup" not in context  # never the agent's


def test_the_snapshot_pod_reads_the_output_as_the_trainer():
    for name in ("volume/snapshot", "s3/snapshot"):
        context = AGENT_PODS[name]["spec"]["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"], context["supplementalGroups"]) == (1000, 1000, [2000])
    # On s3 it reads only; on the volume store it writes .ckpt-manifests/ with the trainer's fsGroup only.
    assert "fsGroup" not in AGENT_PODS["s3/snapshot"]["spec"]["securityContext"]
    assert AGENT_PODS["volume/snapshot"]["spec"]["securityContext"]["fsGroup"] == 2000
    # A trainer of unknown or root identity: the snapshot runs as the agent (never as root).
    for template in ({"spec": {"containers": [{"name": "t", "image": "t"}]}},
                     {"spec": {"securityContext": {"runAsUser": 0}, "containers": [{"name": "t", "image": "t"}]}}):
        cfg = pod_shapes.config("volume")
        pod = workload.build_snapshot_pod(pod_shapes.training_job(template), ["checkpoint-operator", "agent", "scan"],
                                          [], cfg)
        assert pod["spec"]["securityContext"]["runAsUser"] == security_context.AGENT_UID
        assert violations("restricted", pod_shapes.as_created(pod)) == []


def _containers_by_name(pod: dict) -> dict[str, dict]:
    return {c["name"]: c for c in containers(pod)}


def test_the_sidecar_runs_as_the_trainer_so_it_can_make_its_files_read_only():
    template = copy.deepcopy(pod_shapes.RESTRICTED_TEMPLATE)
    template["spec"]["containers"][0]["securityContext"].update(runAsUser=1234, runAsGroup=99)
    pod = pod_shapes.job_pod(pod_shapes.built_job("volume", template, publish="Continuous"))
    sidecar = _containers_by_name(pod)["ckpt-live"]["securityContext"]
    assert (sidecar["runAsUser"], sidecar["runAsGroup"], sidecar["runAsNonRoot"]) == (1234, 99, True)
    # Only the pod says who: the sidecar inherits it (no value of its own that could differ).
    pod = pod_shapes.job_pod(pod_shapes.built_job("volume", publish="Continuous"))
    sidecar = _containers_by_name(pod)["ckpt-live"]["securityContext"]
    assert "runAsUser" not in sidecar and pod["spec"]["securityContext"]["runAsUser"] == 1000


def test_under_a_root_pod_downloads_run_as_the_agent_and_the_sidecar_as_root():
    """A pod-level runAsUser 0 contradicts runAsNonRoot: the downloads (any user can fill an
    emptyDir) take the agent's user; the sidecar must own the trainer's files, so it is root too."""
    template = {"spec": {"securityContext": {"runAsUser": 0}, "containers": [{"name": "trainer", "image": "t"}]}}
    pod = pod_shapes.job_pod(pod_shapes.built_job("s3", template, publish="Continuous"))
    by_name = _containers_by_name(pod)
    download = by_name["download-input-0"]["securityContext"]
    assert download["runAsUser"] == security_context.AGENT_UID and download["runAsNonRoot"] is True
    sidecar = by_name["ckpt-live"]["securityContext"]
    assert sidecar["runAsUser"] == 0 and "runAsNonRoot" not in sidecar
    assert sidecar["allowPrivilegeEscalation"] is False and sidecar["capabilities"] == {"drop": ["ALL"]}


def test_injected_containers_keep_their_own_settings_over_the_pod_s():
    template = {"spec": {"securityContext": {"seccompProfile": {"type": "Unconfined"}, "runAsUser": 5},
                         "containers": [{"name": "trainer", "image": "t"}]}}
    pod = pod_shapes.job_pod(pod_shapes.built_job("s3", template))
    download = _containers_by_name(pod)["download-input-0"]["securityContext"]
    assert download["seccompProfile"] == {"type": "RuntimeDefault"} and "runAsUser" not in download
