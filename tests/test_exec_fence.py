"""The chart's exec fence (templates/exec-fence.yaml; hostile5 H3, H4), evaluated with the `cel`
package as the API server would (tests/admission_policy.py): in the operator's agent pods only the
commands kubectl ckpt push and pull really run are accepted, with the arguments the plugin builds
(logic/transfers.py); any other exec, an attach, a port-forward, an ephemeral container is refused;
pods of other names and exempt groups are not its business."""

from __future__ import annotations

import re

import pytest
from helm_python import chart as helm_chart

from admission_policy import Request, evaluate
from checkpoint_operator.api.checkpoint import Location, VolumeLocation
from checkpoint_operator.logic import exec_fence, transfers
from checkpoint_operator.logic.naming import AGENT_POD_COMPONENTS, agent_pod_name
from test_chart import CHART_DIR, of_kind, render

NS = "team-a"
USER = "alice@example.com"
DIGEST = "sha256:" + "ab" * 32
UPLOAD_POD = transfers.upload_pod_name("llama-ft")
PULL_POD = transfers.pull_pod_name("llama-ft")


def fence_of(values: dict | None = None) -> dict | None:
    with helm_chart.Chart.load(CHART_DIR) as chart:
        found = [o for o in of_kind(render(chart, values or {}), "ValidatingAdmissionPolicy")
                 if o["metadata"]["name"].endswith("-agent-exec")]
    assert len(found) <= 1
    return found[0] if found else None


@pytest.fixture(scope="module")
def fence() -> dict:
    policy = fence_of()
    assert policy is not None, "the exec fence is on by default"
    return policy


def exec_request(pod: str, command: list[str], groups: tuple[str, ...] = ("system:authenticated",),
                 container: str = "") -> Request:
    options = {"kind": "PodExecOptions", "apiVersion": "v1", "stdin": True, "stdout": True, "stderr": True,
               "command": command, **({"container": container} if container else {})}
    return Request("CONNECT", "PodExecOptions", NS, subresource="exec", name=pod, username=USER, groups=groups,
                   object=options)


def accepted(fence: dict, request: Request) -> None:
    decision = evaluate(fence, request)
    assert decision.matched and decision.refusals == []


def refused(fence: dict, request: Request, message: str) -> None:
    decision = evaluate(fence, request)
    assert decision.matched, "an agent pod's exec must be checked"
    assert any(message in m for m in decision.refusals), decision.refusals


# --- what kubectl ckpt really runs is accepted -------------------------------------------------------

PLUGIN_COMMANDS = {
    "push": (UPLOAD_POD, transfers.push_command(None, "step-900")),
    "push with a size": (UPLOAD_POD, transfers.push_command(5 << 30, "checkpoint.v2")),
    "push inventory": (UPLOAD_POD, transfers.inventory_command()),
    "pull": (PULL_POD, transfers.pull_command(None, None)),
    "pull with its manifest": (PULL_POD, transfers.pull_command(
        Location(volume=VolumeLocation(claimName="c", path="data", manifest=".ckpt-manifests/x.json")), DIGEST)),
}


@pytest.mark.parametrize("case", sorted(PLUGIN_COMMANDS))
def test_the_plugins_own_commands_are_accepted(fence, case):
    pod, command = PLUGIN_COMMANDS[case]
    accepted(fence, exec_request(pod, command))


# --- anything else in an agent pod is refused ---------------------------------------------------------

ONLY = "only kubectl ckpt push"
WATCHER = ["python", "-c", "open('/checkpoint-data/data/a.bin', 'r+b').write(b'EVIL')"]


HOSTILE = [
    (UPLOAD_POD, WATCHER),                                                   # hostile5 H3: the watcher
    (UPLOAD_POD, ["sh", "-c", " ".join(transfers.push_command(None, "x"))]),
    (UPLOAD_POD, [*transfers.push_command(None, "x"), "--name", "y"]),       # a flag twice
    (UPLOAD_POD, [*transfers.push_command(None, "x"), "--max-size"]),        # a flag without its value
    (UPLOAD_POD, [*transfers.push_command(None, "x"), "/elsewhere"]),        # another positional
    (UPLOAD_POD, ["checkpoint-operator", "agent", "unpack", "/checkpoint-data"]),  # beside the data
    (UPLOAD_POD, ["checkpoint-operator", "agent", "receive", "/checkpoint-data/data", "--digest", DIGEST]),
    (UPLOAD_POD, transfers.pull_command(None, None)),                        # pull's command in a receiver
    (PULL_POD, transfers.push_command(None, "x")),                           # push's in a pull pod
    (PULL_POD, [*transfers.pull_command(None, None), "--session-dir", "/tmp"]),
    (agent_pod_name("imp1", "import"), WATCHER),                            # hostile5 H4: an import pod
    (agent_pod_name("imp1", "import"), transfers.push_command(None, "x")),
    (agent_pod_name("c", "verify"), ["sh"]),                                 # could forge Verified
    (agent_pod_name("c", "scan"), ["sh"]),
    (agent_pod_name("tj", "snapshot"), ["sh"]),
    (agent_pod_name("catalog-x-12345", "copy"), ["sh"]),
    (agent_pod_name("x" * 260, "upload"), WATCHER),                          # a long name keeps its suffix
    (UPLOAD_POD, []),
]


@pytest.mark.parametrize("pod, command", HOSTILE, ids=lambda v: v if isinstance(v, str) else " ".join(v)[:40])
def test_any_other_exec_into_an_agent_pod_is_refused(fence, pod, command):
    refused(fence, exec_request(pod, command), ONLY)


@pytest.mark.parametrize("kind, subresource", [("PodAttachOptions", "attach"),
                                               ("PodPortForwardOptions", "portforward")])
def test_attach_and_port_forward_are_refused_even_into_the_receiver(fence, kind, subresource):
    request = Request("CONNECT", kind, NS, subresource=subresource, name=UPLOAD_POD, username=USER,
                      object={"kind": kind, "apiVersion": "v1"})
    refused(fence, request, f"pods/{subresource} is refused in the checkpoint operator's agent pod {UPLOAD_POD}")


def test_an_ephemeral_container_is_refused(fence):
    pod = {"metadata": {"name": agent_pod_name("imp1", "import"), "namespace": NS},
           "spec": {"ephemeralContainers": [{"name": "debug", "image": "busybox", "targetContainerName": "import"}]}}
    request = Request("UPDATE", "Pod", NS, subresource="ephemeralcontainers", username=USER,
                      object=pod, old_object={**pod, "spec": {}})
    refused(fence, request, "pods/ephemeralcontainers is refused")


# --- the live-sealing sidecar of a training pod (hostile7 E2) ---------------------------------------

SIDECAR = "ckpt-live"
FORGED_LINE = ["sh", "-c", "printf '%s\\n' '{\"kind\":\"sealed\",\"path\":\"step-2\"}' > /proc/1/fd/1"]


def test_exec_into_the_live_sealing_sidecar_of_any_pod_is_refused(fence):
    """The sidecar's output is the channel the operator believes about what was sealed: an exec'd shell
    there printed a `sealed` line of its choosing and the operator published a Checkpoint of it."""
    refused(fence, exec_request("train-0-abcde", FORGED_LINE, container=SIDECAR), "live-sealing sidecar")
    refused(fence, exec_request("train-0-abcde", ["checkpoint-operator", "agent", "scan", "/x"], container=SIDECAR),
            "live-sealing sidecar")
    assert exec_fence.refusal("train-0-abcde", "exec", FORGED_LINE, SIDECAR) is not None
    # the training container itself is the user's own: not the fence's business
    assert not evaluate(fence, exec_request("train-0-abcde", FORGED_LINE, container="trainer")).matched
    assert not evaluate(fence, exec_request("train-0-abcde", FORGED_LINE)).matched
    assert exec_fence.refusal("train-0-abcde", "exec", FORGED_LINE, "trainer") is None


def test_an_ephemeral_container_sharing_the_sidecar_s_processes_is_refused(fence):
    pod = {"metadata": {"name": "train-0-abcde", "namespace": NS},
           "spec": {"ephemeralContainers": [{"name": "debug", "image": "busybox", "targetContainerName": SIDECAR}]}}
    request = Request("UPDATE", "Pod", NS, subresource="ephemeralcontainers", username=USER,
                      object=pod, old_object={**pod, "spec": {}})
    refused(fence, request, "live-sealing sidecar")
    pod["spec"]["ephemeralContainers"][0]["targetContainerName"] = "trainer"
    assert not evaluate(fence, request).matched


# --- what is not its business ---------------------------------------------------------------------

@pytest.mark.parametrize("pod", ["web-0", "llama-ft-upload-1", "uploader", "my-importer"])
def test_other_pods_are_not_matched(fence, pod):
    assert not evaluate(fence, exec_request(pod, WATCHER)).matched


def test_an_exempt_group_is_not_held(fence):
    assert not evaluate(fence, exec_request(UPLOAD_POD, WATCHER, groups=("system:masters",))).matched
    policy = fence_of({"admissionPolicy": {"execFence": {"exemptGroups": ["ops"]}}})
    assert policy is not None
    assert not evaluate(policy, exec_request(UPLOAD_POD, WATCHER, groups=("ops",))).matched
    refused(policy, exec_request(UPLOAD_POD, WATCHER, groups=("system:masters",)), ONLY)


def test_with_watched_namespaces_pods_elsewhere_are_not_its_business():
    policy = fence_of({"watchNamespaces": [NS, "team-b"]})
    assert policy is not None
    refused(policy, exec_request(UPLOAD_POD, WATCHER), ONLY)
    elsewhere = exec_request(UPLOAD_POD, WATCHER)
    elsewhere.namespace = "databases"
    assert not evaluate(policy, elsewhere).matched
    elsewhere.namespace = "ckpt-system"  # the release's own: catalog imports run there
    assert evaluate(policy, elsewhere).matched


def test_it_can_be_turned_off():
    assert fence_of({"admissionPolicy": {"execFence": {"enabled": False}}}) is None


def test_it_knows_every_agent_pod_by_its_name(fence):
    """The fence's name pattern lists exactly the components agent pods are named with (logic/naming.py)."""
    pattern = next(c["expression"] for c in fence["spec"]["matchConditions"]
                   if c["name"] == "an-agent-pod-or-the-sidecar")
    variable = next(v["expression"] for v in fence["spec"]["variables"] if v["name"] == "agentPod")
    for expression in (pattern, variable):
        listed = re.search(r"-\(([a-z|]+)\)\$", expression)
        assert listed is not None and set(listed.group(1).split("|")) == set(AGENT_POD_COMPONENTS)


def test_every_pod_the_operator_builds_for_its_agent_is_fenced(fence):
    """Every agent pod (tests/pod_shapes.py builds each kind the operator creates) is matched by the
    fence and the local emulator: hostile7 E1, the resume pod between a group's attempts (it writes
    into every worker's volume) was named `<job>-resume` and reachable by exec."""
    from pod_shapes import agent_pods
    pods = agent_pods()
    assert any(key.endswith("resume-volume-per-worker") for key in pods)
    for key, pod in pods.items():
        name = pod["metadata"]["name"]
        assert evaluate(fence, exec_request(name, WATCHER)).matched, f"{key}: {name} is not fenced"
        assert exec_fence.is_agent_pod(name), f"{key}: {name} is not fenced in local mode"


def test_the_binding_denies():
    with helm_chart.Chart.load(CHART_DIR) as chart:
        bindings = [o for o in of_kind(render(chart, {}), "ValidatingAdmissionPolicyBinding")
                    if o["metadata"]["name"].endswith("-agent-exec")]
    assert len(bindings) == 1 and bindings[0]["spec"]["validationActions"] == ["Deny"]
    assert bindings[0]["spec"]["policyName"] == bindings[0]["metadata"]["name"]


# --- local mode's emulator applies the same rule (logic/exec_fence.py) ------------------------------

@pytest.mark.parametrize("pod, command", [*PLUGIN_COMMANDS.values(), *HOSTILE, ("web-0", WATCHER),
                                          ("llama-ft-upload-1", WATCHER)],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:40])
def test_local_modes_fence_decides_as_the_charts(fence, pod, command):
    decision = evaluate(fence, exec_request(pod, command))
    charts = "not matched" if not decision.matched else ("accepted" if decision.allowed else decision.refusals[0])
    local = exec_fence.refusal(pod, "exec", command)
    assert (local if local is not None else ("accepted" if exec_fence.is_agent_pod(pod) else "not matched")) \
        == charts


def test_local_modes_fence_refuses_attach_as_the_charts(fence):
    request = Request("CONNECT", "PodAttachOptions", NS, subresource="attach", name=UPLOAD_POD, username=USER,
                      object={"kind": "PodAttachOptions", "apiVersion": "v1"})
    assert evaluate(fence, request).refusals == [exec_fence.refusal(UPLOAD_POD, "attach", [])]


# --- the live-sealing channel's annotation (hostile7 H1) -------------------------------------------

def live_channel() -> dict:
    with helm_chart.Chart.load(CHART_DIR) as chart:
        found = [o for o in of_kind(render(chart, {}), "ValidatingAdmissionPolicy")
                 if o["metadata"]["name"].endswith("-live-channel")]
    assert len(found) == 1
    return found[0]


def test_only_the_operator_asks_a_sidecar_to_remove_sealed_directories():
    """A user who may patch pods set ckpt.dev/live-remove on a running Continuous job's pod and its
    sidecar removed a Ready Checkpoint's directory (volume store)."""
    from admission_policy import OPERATOR_USER
    policy = live_channel()
    before = {"metadata": {"name": "train-0-abcde", "namespace": NS, "annotations": {"team": "a"}}, "spec": {}}
    asked = {**before, "metadata": {**before["metadata"], "annotations": {
        "team": "a", "ckpt.dev/live-remove": '[{"path": "step-1", "digest": "sha256:' + "ab" * 32 + '"}]'}}}
    by_user = Request("UPDATE", "Pod", NS, username=USER, groups=("system:authenticated",),
                      object=asked, old_object=before)
    decision = evaluate(policy, by_user)
    assert decision.matched and any("ckpt.dev/live-remove" in m and "written by the checkpoint operator only" in m
                                    for m in decision.refusals), decision.refusals
    created = Request("CREATE", "Pod", NS, username="system:serviceaccount:kube-system:job-controller",
                      groups=("system:serviceaccounts",), object=asked)
    assert not evaluate(policy, created).allowed
    assert evaluate(policy, Request("UPDATE", "Pod", NS, username=OPERATOR_USER, object=asked,
                                    old_object=before)).matched is False
    other = {**before, "metadata": {**before["metadata"], "annotations": {"team": "b"}}}
    assert evaluate(policy, Request("UPDATE", "Pod", NS, username=USER, groups=("system:authenticated",),
                                    object=other, old_object=before)).allowed
    labelled = Request("UPDATE", "Pod", NS, username=USER, groups=("system:authenticated",),
                       object={**asked, "metadata": {**asked["metadata"], "labels": {"x": "y"}}}, old_object=asked)
    assert evaluate(policy, labelled).allowed  # unchanged: other edits of a pod that has it stay possible
    # hostile8 P2: the pod status strategy keeps annotations, so a PATCH of pods/status could set it too
    via_status = Request("UPDATE", "Pod", NS, username=USER, groups=("system:authenticated",), subresource="status",
                         object=asked, old_object=before)
    assert not evaluate(policy, via_status).allowed
