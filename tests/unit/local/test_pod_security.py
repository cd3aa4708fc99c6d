"""The Pod Security Standards' checks (local/pod_security.py), each against the words of
k8s.io/pod-security-admission/policy: what each refuses, at which level, and the message the API
server gives."""

from __future__ import annotations

import pytest

from checkpoint_operator.local import pod_security
from checkpoint_operator.local.pod_security import violations


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
