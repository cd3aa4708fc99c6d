"""Pod Security "restricted" (issue 23 item 3): every pod and container the operator creates or
injects meets it, checked with local/pod_security.py, which follows the checks of
k8s.io/pod-security-admission/policy; local mode's API refuses what a cluster would.

The shapes (tests/pod_shapes.py) are built by the real builders: the operator's agent pods of
both stores and every source kind, and the pods a Job makes from the template it built (inputs
on both stores, with and without the live-sealing sidecar, one and two workers)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

import pod_shapes
from checkpoint_operator.local import pod_security
from checkpoint_operator.local.pod_security import violations
from checkpoint_operator.local.server import ApiClient, ApiError
from checkpoint_operator.logic import security_context
from checkpoint_operator.logic.agent_pods import writes_a_claim

ROOT = Path(__file__).resolve().parents[1]
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


def test_the_catalogue_covers_every_kind_of_pod():
    assert {n.split("/")[1] for n in AGENT_PODS} == {"snapshot", "import", "scan", "upload-receiver", "verify",
                                                     "pull", "upload-check"}
    assert len([n for n in AGENT_PODS if "/import/" in n]) == 2 * len(pod_shapes.SOURCES)
    names = {c["name"] for pod in TRAINING_PODS.values() for c in containers(pod)}
    assert {"ckpt-live", "download-input-0", "trainer"} <= names


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
    assert writers == {n for n, p in AGENT_PODS.items() if writes_a_claim(p["spec"]["volumes"])}
    assert writers == {"volume/upload-receiver", *[n for n in AGENT_PODS if n.startswith("volume/import/")]}
    for name in writers:
        assert AGENT_PODS[name]["spec"]["securityContext"]["fsGroup"] == security_context.AGENT_UID


def test_the_snapshot_pod_reads_the_output_as_the_trainer():
    for name in ("volume/snapshot", "s3/snapshot"):
        context = AGENT_PODS[name]["spec"]["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"], context["supplementalGroups"]) == (1000, 1000, [2000])
        assert "fsGroup" not in context
    # A trainer of unknown or root identity: the snapshot runs as the agent (never as root).
    for template in ({"spec": {"containers": [{"name": "t", "image": "t"}]}},
                     {"spec": {"securityContext": {"runAsUser": 0}, "containers": [{"name": "t", "image": "t"}]}}):
        cfg = pod_shapes.config("volume")
        from checkpoint_operator.logic import workload
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


# --- the checks themselves, against the policy's own words -----------------------------------------

def pod(spec: dict, metadata: dict | None = None) -> dict:
    return {"metadata": metadata or {"name": "p"}, "spec": spec}


def compliant() -> dict:
    return pod({"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "c", "image": "i", "securityContext": {
                    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]})


def with_container(**context) -> dict:
    p = compliant()
    p["spec"]["containers"][0]["securityContext"].update(context)
    return p


def with_spec(**fields) -> dict:
    p = compliant()
    p["spec"].update(fields)
    return p


CHECK_CASES = [
    # (id, pod, level that refuses it, check ID, the policy's "reason (detail)")
    ("privileged", with_container(privileged=True), "baseline", "privileged",
     'privileged (container "c" must not set securityContext.privileged=true)'),
    ("host-network", with_spec(hostNetwork=True, hostPID=True), "baseline", "hostNamespaces",
     "host namespaces (hostNetwork, hostPID)"),
    ("host-path", with_spec(volumes=[{"name": "root", "hostPath": {"path": "/"}}]), "baseline", "hostPathVolumes",
     'hostPath volumes (volume "root")'),
    ("host-port", with_spec(containers=[{**compliant()["spec"]["containers"][0],
                                         "ports": [{"containerPort": 80, "hostPort": 80}]}]), "baseline", "hostPorts",
     'hostPort (container "c" uses hostPort 80)'),
    ("sys-admin", with_container(capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}), "baseline",
     "capabilities_baseline", 'non-default capabilities (container "c" must not include "SYS_ADMIN" in '
                              'securityContext.capabilities.add)'),
    ("unconfined-seccomp", with_container(seccompProfile={"type": "Unconfined"}), "baseline",
     "seccompProfile_baseline", 'seccompProfile (container "c" must not set securityContext.seccompProfile.type to '
                                '"Unconfined")'),
    ("proc-mount", with_container(procMount="Unmasked"), "baseline", "procMount",
     'procMount (container "c" must not set securityContext.procMount to "Unmasked")'),
    ("selinux", with_container(seLinuxOptions={"type": "spc_t"}), "baseline", "seLinuxOptions",
     'seLinuxOptions (container "c" set forbidden securityContext.seLinuxOptions: type "spc_t")'),
    ("sysctl", with_spec(securityContext={**compliant()["spec"]["securityContext"],
                                          "sysctls": [{"name": "kernel.msgmax", "value": "1"}]}), "baseline",
     "sysctls", "forbidden sysctls (kernel.msgmax)"),
    ("host-process", with_container(windowsOptions={"hostProcess": True}), "baseline", "windowsHostProcess",
     'hostProcess (container "c" must not set securityContext.windowsOptions.hostProcess=true)'),
    ("probe-host", with_spec(containers=[{**compliant()["spec"]["containers"][0],
                                          "livenessProbe": {"httpGet": {"host": "10.0.0.1", "port": 80}}}]),
     "baseline", "hostProbesAndHostLifecycle",
     'probe or lifecycle host (container "c" uses probe or lifecycle host "10.0.0.1")'),
    ("escalation", with_container(allowPrivilegeEscalation=True), "restricted", "allowPrivilegeEscalation",
     'allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false)'),
    ("no-drop", with_container(capabilities={}), "restricted", "capabilities_restricted",
     'unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"])'),
    ("chown", with_container(capabilities={"drop": ["ALL"], "add": ["CHOWN"]}), "restricted",
     "capabilities_restricted",
     'unrestricted capabilities (container "c" must not include "CHOWN" in securityContext.capabilities.add)'),
    ("root-allowed", with_container(runAsNonRoot=False), "restricted", "runAsNonRoot",
     'runAsNonRoot != true (container "c" must not set securityContext.runAsNonRoot=false)'),
    ("root-uid", with_container(runAsUser=0), "restricted", "runAsUser",
     'runAsUser=0 (container "c" must not set runAsUser=0)'),
    ("nfs", with_spec(volumes=[{"name": "share", "nfs": {"server": "n", "path": "/"}}]), "restricted",
     "restrictedVolumes", 'restricted volume types (volume "share" uses restricted volume type "nfs")'),
]


@pytest.mark.parametrize("case_id, bad, level, check, message", CHECK_CASES, ids=[c[0] for c in CHECK_CASES])
def test_each_check_refuses_its_field_in_the_policy_s_words(case_id, bad, level, check, message):
    assert violations("restricted", compliant()) == [] and violations("baseline", compliant()) == []
    found = violations(level, bad)
    assert [(v.check, str(v)) for v in found] == [(check, message)]
    if level == "baseline":  # restricted refuses it too (some by a restricted check that takes over)
        assert violations("restricted", bad)
    else:
        assert violations("baseline", bad) == []


def test_an_empty_pod_lists_every_restricted_reason_in_check_order():
    found = violations("restricted", pod({"containers": [{"name": "app", "image": "i"}]}))
    assert pod_security.forbidden_message("restricted", found) == (
        'violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "app" must set '
        'securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "app" must set '
        'securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "app" must set '
        'securityContext.runAsNonRoot=true), seccompProfile (pod or container "app" must set '
        'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")')


def test_pod_level_settings_cover_their_containers_and_init_containers_count():
    p = compliant()
    p["spec"]["initContainers"] = [{"name": "init", "image": "i"}]
    found = {v.check: v.detail for v in violations("restricted", p)}
    assert set(found) == {"allowPrivilegeEscalation", "capabilities_restricted"}  # runAsNonRoot, seccomp: the pod's
    assert '"init"' in found["allowPrivilegeEscalation"]


def test_a_user_namespace_relaxes_the_user_checks():
    p = with_container(runAsUser=0)
    p["spec"]["hostUsers"] = False
    assert violations("restricted", p) == []


@pytest.mark.parametrize("labels, level", [
    ({}, None), ({"pod-security.kubernetes.io/enforce": "privileged"}, None),
    ({"pod-security.kubernetes.io/enforce": "baseline"}, "baseline"),
    ({"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "x"}, "restricted"),
    ({"pod-security.kubernetes.io/enforce": "strict"}, "restricted"),  # not a level: the strictest
])
def test_the_namespace_label_chooses_the_level(labels, level):
    assert pod_security.enforced_level(labels) == level


# --- local mode refuses what a cluster would --------------------------------------------------------

async def _namespace(api: ApiClient, name: str, level: str | None) -> None:
    labels = {pod_security.ENFORCE_LABEL: level} if level else {}
    await api.create("v1/namespaces", None, {"metadata": {"name": name, "labels": labels}})


async def test_a_restricted_namespace_refuses_a_pod_that_breaks_the_profile(api: ApiClient):
    await _namespace(api, "strict", "restricted")
    with pytest.raises(ApiError) as caught:
        await api.create("v1/pods", "strict", {"metadata": {"name": "loose"},
                                               "spec": {"containers": [{"name": "app", "image": "i"}]}})
    assert caught.value.status == 403 and caught.value.reason == "Forbidden"
    assert caught.value.body["message"].startswith(
        'pods "loose" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false')
    assert await api.get("v1/pods", "strict", "loose") is None
    for name, shape in [*AGENT_PODS.items(), *TRAINING_PODS.items()][::5]:
        body = copy.deepcopy(shape)
        body["metadata"].update(name=re.sub(r"[^a-z0-9-]", "-", name.lower()), namespace="strict")
        body["metadata"].pop("ownerReferences", None)
        await api.create("v1/pods", "strict", body)


async def test_a_baseline_namespace_refuses_only_baseline_violations(api: ApiClient):
    await _namespace(api, "base", "baseline")
    await api.create("v1/pods", "base", {"metadata": {"name": "plain"},
                                         "spec": {"containers": [{"name": "app", "image": "i"}]}})
    with pytest.raises(ApiError) as caught:
        await api.create("v1/pods", "base", {"metadata": {"name": "priv"}, "spec": {"containers": [
            {"name": "app", "image": "i", "securityContext": {"privileged": True}}]}})
    assert caught.value.status == 403
    assert 'violates PodSecurity "baseline:latest": privileged (container "app" must not set ' \
           'securityContext.privileged=true)' in caught.value.body["message"]


async def test_an_unlabelled_namespace_admits_any_pod(api: ApiClient):
    await _namespace(api, "open", None)
    await api.create("v1/pods", "open", {"metadata": {"name": "priv"}, "spec": {"containers": [
        {"name": "app", "image": "i", "securityContext": {"privileged": True}}], "hostNetwork": True}})
    assert await api.get("v1/pods", "open", "priv") is not None
