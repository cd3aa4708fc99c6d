"""The chart's ValidatingAdmissionPolicy (issue 23 item 2), rendered by the chart and evaluated with
the `cel` package (tests/admission_policy.py), as test_cel_rules.py does for the CRDs:

- every request the operator's code really makes is accepted: each agent pod shape of both stores
  and every source kind (tests/pod_shapes.py), each Job, output and import claim, Event, the
  live-sealing annotation patch, the owner-reference moves, the deletes of its pods and claims;
- each hostile variant of them is refused with the policy's message;
- requests of anyone but the operator are not its business (not matched).

The rendered objects themselves are validated with kubernetes-validate in test_chart.py."""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
from helm_python import chart as helm_chart

import pod_shapes
from admission_policy import OPERATOR_NAMESPACE, Request, evaluate
from checkpoint_operator.logic import catalog, live_sealing, workload
from checkpoint_operator.reconcile.context import Context
from checkpoint_operator.storage import store_for
from test_chart import CHART_DIR, NAMESPACE, RELEASE, of_kind, one, operator_policy, render

assert NAMESPACE == OPERATOR_NAMESPACE and RELEASE == "ckpt"
NS = pod_shapes.NAMESPACE
VALUES = {
    "volume": {"image": {"repository": "registry.example/checkpoint-operator", "tag": "1.2.3"},
               "agent": {"serviceAccount": pod_shapes.AGENT_SERVICE_ACCOUNT}},
}
VALUES["s3"] = {**VALUES["volume"], "storage": {"type": "s3", "s3": {
    "bucket": "ckpts", "endpoint": pod_shapes.S3_ENDPOINT, "namespaceSecret": pod_shapes.STORE_SECRET}}}
VALUES["snapshots"] = {**VALUES["volume"], "storage": {"volume": {"snapshotClassName": pod_shapes.SNAPSHOT_CLASS}}}
assert pod_shapes.IMAGE == "registry.example/checkpoint-operator:1.2.3"


@pytest.fixture(scope="module")
def policies() -> dict[str, dict]:
    with helm_chart.Chart.load(CHART_DIR) as chart:
        return {store: operator_policy(render(chart, values)) for store, values in VALUES.items()}


def store_of(name: str) -> str:
    return name.split("/")[0]


def create(kind: str, obj: dict, namespace: str = NS) -> Request:
    return Request("CREATE", kind, namespace, object=copy.deepcopy(obj))


def allowed(policy: dict, request: Request) -> None:
    decision = evaluate(policy, request)
    assert decision.matched, "the operator's own request must be checked"
    assert decision.refusals == [], decision.refusals


def refused(policy: dict, request: Request, message: str) -> None:
    decision = evaluate(policy, request)
    assert decision.matched
    assert any(message in m for m in decision.refusals), \
        f"expected a refusal with {message!r}, got {decision.refusals}"


# --- what the operator really does is accepted ------------------------------------------------------

AGENT_PODS = pod_shapes.agent_pods()


@pytest.mark.parametrize("name", sorted(AGENT_PODS))
def test_every_agent_pod_the_operator_builds_is_accepted(policies, name):
    pod = AGENT_PODS[name]
    allowed(policies[store_of(name)], create("Pod", pod, namespace=pod["metadata"]["namespace"]))


def test_the_catalog_imports_in_the_operator_namespace_and_nothing_else_does(policies):
    """The operator's namespace is protected, except for what the catalog needs there: its import pod and
    claim (owned by a ClusterCheckpoint), their deletion, and Events about ClusterCheckpoints."""
    catalog_pod = AGENT_PODS["volume/catalog-import/huggingFace"]
    assert catalog_pod["metadata"]["namespace"] == OPERATOR_NAMESPACE
    allowed(policies["volume"], Request("DELETE", "Pod", OPERATOR_NAMESPACE, old_object=catalog_pod))
    entry = pod_shapes.cluster_checkpoint(pod_shapes.SOURCES["http"])
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             **catalog.build_catalog_claim(entry, pod_shapes.config("volume"), OPERATOR_NAMESPACE)}
    allowed(policies["volume"], create("PersistentVolumeClaim", claim, namespace=OPERATOR_NAMESPACE))
    # A Checkpoint's import pod, a snapshot pod: not in the operator's namespace.
    for name in ("volume/import/http", "volume/snapshot"):
        moved = copy.deepcopy(AGENT_PODS[name])
        moved["metadata"]["namespace"] = OPERATOR_NAMESPACE
        refused(policies["volume"], create("Pod", moved, namespace=OPERATOR_NAMESPACE),
                "the checkpoint operator may not create, change or delete pods in namespace ckpt-system")
    # A catalog pod posing as another component is not one of its agent pods.
    posing = copy.deepcopy(catalog_pod)
    posing["metadata"]["labels"]["ckpt.dev/component"] = "verify"
    refused(policies["volume"], create("Pod", posing, namespace=OPERATOR_NAMESPACE), MESSAGES["shape"])


def test_a_catalog_copy_may_be_marked_verified_and_nothing_more(policies):
    entry = pod_shapes.cluster_checkpoint({"huggingFace": {"repo": "org/model"}}, status=pod_shapes.READY_ENTRY_STATUS)
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             **catalog.build_copy_claim(entry, pod_shapes.config("volume"), NS)}
    allowed(policies["volume"], create("PersistentVolumeClaim", claim))
    marked = copy.deepcopy(claim)
    marked["metadata"]["annotations"] = {catalog.COPIED_DIGEST_ANNOTATION: pod_shapes.DIGEST}
    allowed(policies["volume"], Request("UPDATE", "PersistentVolumeClaim", NS, marked, claim))
    pinned = copy.deepcopy(claim)  # the copy pod's UID, recorded when the operator creates it
    pinned["metadata"]["annotations"] = {catalog.COPY_POD_ANNOTATION: "3f1c2a9e-0000-4000-8000-000000000001"}
    allowed(policies["volume"], Request("UPDATE", "PersistentVolumeClaim", NS, pinned, claim))
    other = copy.deepcopy(claim)
    other["metadata"]["annotations"] = {"volume.kubernetes.io/selected-node": "node-1"}
    refused(policies["volume"], Request("UPDATE", "PersistentVolumeClaim", NS, other, claim),
            "the checkpoint operator may change only the owner references of its own claims")
    # On a claim of a Checkpoint (not a catalog copy) that annotation is refused too.
    output = claims()["output"]
    stamped = copy.deepcopy(output)
    stamped["metadata"]["annotations"] = {catalog.COPIED_DIGEST_ANNOTATION: pod_shapes.DIGEST}
    refused(policies["volume"], Request("UPDATE", "PersistentVolumeClaim", NS, stamped, output),
            "the checkpoint operator may change only the owner references of its own claims")
    stamped["metadata"]["annotations"] = {catalog.COPY_POD_ANNOTATION: "3f1c2a9e-0000-4000-8000-000000000001"}
    refused(policies["volume"], Request("UPDATE", "PersistentVolumeClaim", NS, stamped, output),
            "the checkpoint operator may change only the owner references of its own claims")


def test_events_about_a_catalog_entry_go_to_the_operator_namespace(policies):
    recorder = _Recorder()
    ctx = Context(kube=recorder, config=pod_shapes.config("volume", catalog_namespace=OPERATOR_NAMESPACE))  # type: ignore[arg-type]
    ctx.warn(pod_shapes.cluster_checkpoint(pod_shapes.SOURCES["http"]), "DeletionBlocked", "in use by team-a/train")
    (event,) = recorder.bodies
    assert event["metadata"]["namespace"] == OPERATOR_NAMESPACE and "namespace" not in event["involvedObject"]
    allowed(policies["volume"], create("Event", event, namespace=OPERATOR_NAMESPACE))
    refused(policies["volume"], create("Event", event, namespace="kube-system"), "the checkpoint operator may not")
    refused(policies["volume"], create("Event", event, namespace=NS), "the checkpoint operator only creates Events")


def test_an_s3_pod_needs_the_s3_policy():
    """The store Secret is a chart value: a policy rendered for the volume store refuses it."""
    with helm_chart.Chart.load(CHART_DIR) as chart:
        volume = operator_policy(render(chart, VALUES["volume"]))
    refused(volume, create("Pod", AGENT_PODS["s3/snapshot"]), "an agent container sets only")


def jobs() -> dict[str, dict]:
    built = {f"{store}/{publish}/{replicas}": pod_shapes.built_job(store, publish=publish, replicas=replicas)
             for store in pod_shapes.STORES for publish in ("OnCompletion", "Continuous") for replicas in (1, 2)}
    queued = {"kueue.x-k8s.io/queue-name": "team-a"}
    built["volume/restarted-attempt-3"] = pod_shapes.built_job("volume", replicas=4, attempt=3)
    built["snapshots/restarted-attempt-3"] = pod_shapes.built_job("snapshots", replicas=4, attempt=3)
    built["volume/kueue"] = pod_shapes.built_job("volume", replicas=2, labels=queued)
    return built


def jobsets() -> dict[str, dict]:
    return {f"{store}/{publish}": pod_shapes.built_job(store, publish=publish, replicas=2, engine="JobSet",
                                                        labels={"kueue.x-k8s.io/queue-name": "team-a"})
            for store in pod_shapes.STORES for publish in ("OnCompletion", "Continuous")}


@pytest.mark.parametrize("name", sorted(jobs()))
def test_every_job_the_operator_builds_is_accepted(policies, name):
    allowed(policies[store_of(name)], create("Job", jobs()[name]))


@pytest.mark.parametrize("name", sorted(jobsets()))
def test_every_jobset_the_operator_builds_is_accepted(policies, name):
    allowed(policies[store_of(name)], create("JobSet", jobsets()[name]))


def test_a_distributed_job_s_failed_attempt_may_be_deleted_and_its_service_created(policies):
    allowed(policies["volume"], Request("DELETE", "Job", NS, old_object=pod_shapes.built_job("volume", replicas=2)))
    allowed(policies["volume"], create("Service", pod_shapes.built_service()))


def claims() -> dict[str, dict]:
    cfg = pod_shapes.config("volume")
    output = workload.build_output_claim(pod_shapes.training_job(), cfg)
    imported = workload.build_import_claim(pod_shapes.checkpoint(pod_shapes.SOURCES["http"]), cfg)
    return {name: {"apiVersion": "v1", "kind": "PersistentVolumeClaim", **claim}
            for name, claim in (("output", output), ("import", imported))}


@pytest.mark.parametrize("name", ["output", "import"])
def test_its_claims_are_accepted_and_may_be_deleted(policies, name):
    claim = claims()[name]
    allowed(policies["volume"], create("PersistentVolumeClaim", claim))
    allowed(policies["volume"], Request("DELETE", "PersistentVolumeClaim", NS, old_object=claim))


def checkpoint_owner(name: str) -> dict:
    return workload.owner_reference(pod_shapes.checkpoint({"volume": {"claimName": "c", "path": "/"}}, name=name),
                                    controller=False)


def test_moving_and_adding_owner_references_of_its_claims_is_accepted(policies):
    claim = claims()["output"]
    claim["metadata"]["resourceVersion"] = "7"
    handed_over = copy.deepcopy(claim)
    handed_over["metadata"]["ownerReferences"] = [checkpoint_owner("train-step-1"), checkpoint_owner("train-step-2")]
    allowed(policies["volume"], Request("UPDATE", "PersistentVolumeClaim", NS, handed_over, claim))
    adopted = copy.deepcopy(handed_over)
    adopted["metadata"]["ownerReferences"].append(checkpoint_owner("adopter"))
    allowed(policies["volume"], Request("UPDATE", "PersistentVolumeClaim", NS, adopted, handed_over))


def worker_pod() -> dict:
    return pod_shapes.job_pod(pod_shapes.built_job("volume", publish="Continuous"))


def test_the_live_sealing_annotation_patch_is_accepted(policies):
    old = worker_pod()
    old["metadata"]["annotations"] = {"team.example/owner": "ml"}
    new = copy.deepcopy(old)
    new["metadata"]["annotations"][live_sealing.REMOVE_ANNOTATION] = live_sealing.removal_annotation(
        [("step-1", pod_shapes.DIGEST)], [])
    allowed(policies["volume"], Request("UPDATE", "Pod", NS, new, old))


@pytest.mark.parametrize("name", ["volume/snapshot", "s3/import/git", "volume/pull"])
def test_deleting_its_agent_pods_is_accepted(policies, name):
    allowed(policies[store_of(name)], Request("DELETE", "Pod", NS, old_object=AGENT_PODS[name]))


class _Recorder:
    def __init__(self) -> None:
        self.bodies: list[dict] = []

    def create(self, resource: Any, namespace: str, body: dict) -> dict:
        self.bodies.append({"apiVersion": "v1", "kind": "Event", **body})
        return body


def test_its_events_are_accepted(policies):
    recorder = _Recorder()
    ctx = Context(kube=recorder, config=pod_shapes.config("volume"))  # type: ignore[arg-type]
    ctx.warn(pod_shapes.training_job(), "InputNotFound", "waiting for Checkpoint base")
    ctx.info(pod_shapes.checkpoint(pod_shapes.SOURCES["http"]), "Created", "imported")
    ctx.warn(AGENT_PODS["volume/snapshot"], "Evicted", "kopf posts about the objects it watches too")
    assert len(recorder.bodies) == 3
    for body in recorder.bodies:
        allowed(policies["volume"], create("Event", body))


def test_anyone_else_is_not_the_policy_s_business(policies):
    hostile = copy.deepcopy(AGENT_PODS["volume/snapshot"])
    hostile["spec"]["containers"][0]["securityContext"]["privileged"] = True
    request = create("Pod", hostile, namespace="kube-system")
    request.username = "system:serviceaccount:team-a:default"
    assert not evaluate(policies["volume"], request).matched
    secret = Request("CREATE", "Secret", NS, object={"metadata": {"name": "s"}},
                     username="system:serviceaccount:team-a:default")
    assert not evaluate(policies["volume"], secret).matched
    # The operator's own Secret writes are its business since it makes its signing key: all but that one refused.
    secret = Request("CREATE", "Secret", NS, object={"metadata": {"name": "s"}})
    assert evaluate(policies["volume"], secret).refusals


# --- and what a compromised operator would do is refused ---------------------------------------------

Change = Callable[[dict], None]


def _container(name: str = "snapshot") -> Callable[[dict], dict]:
    def find(pod: dict) -> dict:
        spec = pod["spec"]
        return next(c for c in [*(spec.get("initContainers") or []), *spec["containers"]] if c["name"] == name)
    return find


def _set(path: str, value: Any) -> Change:
    def change(pod: dict) -> None:
        target = pod
        *parents, last = path.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    return change


def _in_container(change: Callable[[dict], None], name: str = "snapshot") -> Change:
    return lambda pod: change(_container(name)(pod))


def _add_volume(volume: dict, mount_in: str | None = "snapshot", mount_path: str = "/x") -> Change:
    def change(pod: dict) -> None:
        pod["spec"].setdefault("volumes", []).append(volume)
        if mount_in:
            _container(mount_in)(pod).setdefault("volumeMounts", []).append(
                {"name": volume["name"], "mountPath": mount_path})
    return change


def _volume(name: str, **fields: Any) -> Change:
    """Replace the body of the pod's volume `name` (keeping its name)."""
    def change(pod: dict) -> None:
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == name)
        volume.clear()
        volume.update(name=name, **fields)
    return change


def _add_env(entry: dict, container: str = "snapshot") -> Change:
    return _in_container(lambda c: c.setdefault("env", []).append(entry), container)


MESSAGES = {
    "shape": "the checkpoint operator may create only its agent pods",
    "token": "an agent pod runs as the agent ServiceAccount",
    "host": "an agent pod shares no host namespace",
    "image": "every container of an agent pod runs the operator's image",
    "privilege": "every container of an agent pod is unprivileged",
    "hooks": "an agent container has no lifecycle hooks",
    "command": "an agent container runs `checkpoint-operator agent <command>`",
    "volumes": "an agent pod mounts only PersistentVolumeClaims and emptyDirs",
    "read-only": "only import, upload",  # (on the volume store: ", snapshot") "and resume pods mount a PersistentVolumeClaim read-write"
    "source-mounts": "a source's Secret and CA are mounted only by the container named import",
    "env": "an agent container sets only the agent's variables",
    "endpoint": "an agent container that talks to the store uses the store's endpoint",
    "arguments": "an agent command has only the arguments its code passes",
    "source-secret": "an import pod reads one Secret, the one its annotation ckpt.dev/source-secret names",
    "mounts": "an agent container's mounts have no subPathExpr and no mount propagation",
    "resources": "an agent container asks only for cpu, memory and ephemeral-storage",
    "fields": "an agent pod sets none of what its code never sets",
}

SECRET_DIR = "/var/run/secrets/ckpt-source"
HOSTILE_PODS: list[tuple[str, str, Change, str]] = [
    # (case, the real pod it starts from, the change, the refusal)
    # The resume pod (a volume per worker, between two attempts): its one command, its one directory, its flags.
    ("resume-owned-by-a-checkpoint", "volume/resume-volume-per-worker",
     lambda p: p["metadata"]["ownerReferences"][0].update(kind="Checkpoint"), "shape"),
    ("resume-running-a-scan", "volume/resume-volume-per-worker",
     _in_container(lambda c: c.update(command=["checkpoint-operator", "agent", "scan", "/checkpoint-output",
                                               "--result"]), "resume"), "command"),
    ("resume-running-an-import", "volume/resume-volume-per-worker",
     _in_container(lambda c: c["command"].__setitem__(2, "import"), "resume"), "command"),
    ("resume-elsewhere", "volume/resume-volume-per-worker",
     _in_container(lambda c: c["command"].__setitem__(3, "/etc"), "resume"), "arguments"),
    ("resume-zero-parts", "volume/resume-volume-per-worker",
     _in_container(lambda c: c["command"].__setitem__(5, "0"), "resume"), "arguments"),
    ("resume-and-upload", "volume/resume-volume-per-worker",
     _in_container(lambda c: c["command"].extend(["--upload-to", "s3://ckpts/checkpoints/team-a/x/"]), "resume"),
     "arguments"),
    ("resume-max-entries", "volume/resume-volume-per-worker",
     _in_container(lambda c: c["command"].extend(["--max-entries", "1"]), "resume"), "arguments"),
    # One argument per published directory is what the code no longer passes (trust2 B: 300 arguments).
    ("resume-published-one-by-one", "volume/resume-volume-per-worker-published",
     _in_container(lambda c: c["command"].append("--published=step-1"), "resume"), "arguments"),
    ("resume-published-list-not-base64url", "volume/resume-volume-per-worker-published",
     _in_container(lambda c: c["command"].append("--published-list=step-1/../../etc"), "resume"), "arguments"),
    ("resume-published-list-empty", "volume/resume-volume-per-worker-published",
     _in_container(lambda c: c["command"].append("--published-list="), "resume"), "arguments"),
    ("resume-published-list-too-long", "volume/resume-volume-per-worker-published",
     _in_container(lambda c: c["command"].append("--published-list=" + "e" * 98305), "resume"), "arguments"),
    ("resume-published-list-as-two-arguments", "volume/resume-volume-per-worker-published",
     _in_container(lambda c: c["command"].extend(["--published-list", "eNoDAAAAAAE"]), "resume"), "arguments"),
    ("resume-keep-sealed-with-a-value", "volume/resume-volume-per-worker-published",
     _in_container(lambda c: c["command"].extend(["--keep-sealed=1"]), "resume"), "arguments"),
    ("snapshot-with-published", "volume/snapshot",
     _in_container(lambda c: c["command"].append("--published-list=eNoDAAAAAAE")), "arguments"),
    # The union pod (live sealing with a volume per worker): one directory of the output, parts by digest.
    ("union-of-a-hidden-directory", "volume/union-volume-per-worker",
     _in_container(lambda c: c["command"].__setitem__(c["command"].index("--only") + 1, ".ckpt-live")), "arguments"),
    ("union-outside-the-output", "s3/union-volume-per-worker",
     _in_container(lambda c: c["command"].__setitem__(c["command"].index("--only") + 1, "../x")), "arguments"),
    ("union-part-not-a-digest", "volume/union-volume-per-worker",
     _in_container(lambda c: c["command"].__setitem__(c["command"].index("--expect") + 1, "0=/etc/passwd")),
     "arguments"),
    ("snapshot-running-resume", "volume/snapshot",
     _in_container(lambda c: c.update(command=["checkpoint-operator", "agent", "resume-parts", "/checkpoint-output",
                                               "--parts", "2"])), "command"),
    ("not-labelled-as-ours", "volume/snapshot",
     lambda p: p["metadata"]["labels"].pop("app.kubernetes.io/managed-by"), "shape"),
    ("posing-as-a-worker", "volume/snapshot",
     lambda p: p["metadata"]["labels"].update({"ckpt.dev/component": "worker"}), "shape"),
    ("owned-by-something-else", "volume/snapshot",
     lambda p: p["metadata"]["ownerReferences"][0].update(kind="Deployment", apiVersion="apps/v1"), "shape"),
    ("another-image", "volume/snapshot", _in_container(lambda c: c.update(image="evil:latest")), "image"),
    ("privileged", "volume/snapshot",
     _in_container(lambda c: c["securityContext"].update(privileged=True)), "privilege"),
    ("escalation", "volume/snapshot",
     _in_container(lambda c: c["securityContext"].update(allowPrivilegeEscalation=True)), "privilege"),
    ("added-capability", "volume/snapshot",
     _in_container(lambda c: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"])), "privilege"),
    ("root-container", "volume/snapshot",
     _in_container(lambda c: c["securityContext"].update(runAsUser=0)), "privilege"),
    ("root-pod", "volume/snapshot", lambda p: p["spec"]["securityContext"].update(runAsUser=0), "host"),
    ("host-network", "volume/snapshot", _set("spec.hostNetwork", True), "host"),
    ("host-pid", "volume/snapshot", _set("spec.hostPID", True), "host"),
    ("pinned-to-a-node", "volume/snapshot", _set("spec.nodeName", "control-plane-1"), "host"),
    ("token-mounted", "volume/snapshot", _set("spec.automountServiceAccountToken", True), "token"),
    ("token-by-default", "volume/snapshot", lambda p: p["spec"].pop("automountServiceAccountToken"), "token"),
    ("another-service-account", "volume/snapshot", _set("spec.serviceAccountName", "cluster-admin-sa"), "token"),
    ("host-path", "volume/snapshot", _add_volume({"name": "root", "hostPath": {"path": "/"}}), "volumes"),
    ("projected-token", "volume/snapshot", _add_volume({"name": "token", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token"}}]}}), "volumes"),
    ("another-secret", "volume/snapshot", _add_volume({"name": "db", "secret": {"secretName": "db-password"}}),
     "volumes"),
    ("a-secret-in-a-scan-pod", "volume/scan",
     _add_volume({"name": "ckpt-source-secret", "secret": {"secretName": "db-password"}}, "scan"), "volumes"),
    # On the s3 store a snapshot uploads: it writes nothing beside the data (on the volume store it
    # writes .ckpt-manifests/, so mounts read-write there).
    ("read-write-snapshot-on-s3", "s3/snapshot",
     lambda p: p["spec"]["volumes"][0]["persistentVolumeClaim"].update(readOnly=False), "read-only"),
    ("read-write-in-a-verify-pod", "volume/verify",
     lambda p: p["spec"]["volumes"][0]["persistentVolumeClaim"].update(readOnly=False), "read-only"),
    ("source-secret-read-by-the-uploader", "s3/import/git",
     _in_container(lambda c: c["volumeMounts"].append({"name": "ckpt-source-secret", "mountPath": SECRET_DIR}),
                   "upload"), "source-mounts"),
    ("preloaded-library", "volume/snapshot", _add_env({"name": "LD_PRELOAD", "value": "/checkpoint-output/x.so"}),
     "env"),
    ("another-secret-in-env", "s3/snapshot", _add_env({"name": "AWS_ACCESS_KEY_ID", "valueFrom": {
        "secretKeyRef": {"name": "db-password", "key": "AWS_ACCESS_KEY_ID"}}}), "env"),
    ("a-secret-under-another-name", "s3/snapshot", _add_env({"name": "AWS_ENDPOINT_URL", "valueFrom": {
        "secretKeyRef": {"name": pod_shapes.STORE_SECRET, "key": "AWS_SECRET_ACCESS_KEY"}}}), "env"),
    ("a-source-credential-outside-the-import-container", "s3/import/huggingFace", _add_env({
        "name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}}, "upload"), "env"),
    ("field-ref", "volume/snapshot", _add_env({"name": "AWS_DEFAULT_REGION", "valueFrom": {
        "fieldRef": {"fieldPath": "metadata.name"}}}), "env"),
    ("env-from", "volume/snapshot", _in_container(lambda c: c.update(envFrom=[{"secretRef": {"name": "db"}}])),
     "hooks"),
    ("store-creds-to-another-endpoint", "s3/snapshot",
     _in_container(lambda c: next(e for e in c["env"] if e["name"] == "AWS_ENDPOINT_URL").update(
         value="https://attacker.example")), "endpoint"),
    ("a-shell", "volume/import/git",
     _in_container(lambda c: c.update(command=["sh", "-c", f"cat {SECRET_DIR}/password"]), "import"), "command"),
    ("python", "volume/snapshot", _in_container(lambda c: c.update(command=["python", "-c", "print(1)"])), "command"),
    ("a-command-its-component-never-runs", "volume/scan",
     _in_container(lambda c: c.update(command=["checkpoint-operator", "agent", "import", "http://x/y", "/d"]),
                   "scan"), "command"),
    ("the-import-script-scanning-the-secret", "volume/import/git",
     _in_container(lambda c: c["command"].__setitem__(3, SECRET_DIR), "import"), "command"),
    ("the-import-container-running-something-else", "s3/import/git",
     _in_container(lambda c: c["command"].__setitem__(2, "snapshot"), "import"), "command"),
    ("args", "volume/snapshot", _in_container(lambda c: c.update(args=["--help"])), "hooks"),
    ("post-start-hook", "volume/snapshot", _in_container(lambda c: c.update(
        lifecycle={"postStart": {"exec": {"command": ["python", "-c", "import os"]}}})), "hooks"),
    ("exec-probe", "volume/snapshot", _in_container(lambda c: c.update(
        livenessProbe={"exec": {"command": ["sh", "-c", "true"]}})), "hooks"),
    ("ephemeral-container", "volume/snapshot", _set("spec.ephemeralContainers", [{"name": "e", "image": "x"}]),
     "host"),
    # hostile1 D6: any key of any Secret, remapped by items, sent to a server of the operator's choosing
    ("a-token-secret-remapped-to-password", "volume/import/ftp-with-login-and-ca",
     _volume("ckpt-source-secret", secret={"secretName": "builder-token-x7k2p", "defaultMode": 256,
                                           "items": [{"key": "token", "path": "password"}]}), "source-secret"),
    ("the-store-secret-as-a-source-login", "s3/import/ftp-with-login-and-ca",
     _volume("ckpt-source-secret", secret={"secretName": pod_shapes.STORE_SECRET, "defaultMode": 256}), "source-secret"),
    ("the-store-secret-annotated-as-the-source", "s3/import/ftp-with-login-and-ca",
     lambda p: (p["metadata"]["annotations"].update({"ckpt.dev/source-secret": pod_shapes.STORE_SECRET}),
                _volume("ckpt-source-secret", secret={"secretName": pod_shapes.STORE_SECRET, "defaultMode": 256})(p)),
     "source-secret"),
    ("a-secret-other-than-the-annotated-one", "volume/import/git",
     _volume("ckpt-source-secret", secret={"secretName": "db-password", "defaultMode": 256}), "source-secret"),
    ("a-source-secret-world-readable", "volume/import/git",
     _volume("ckpt-source-secret", secret={"secretName": "git-login", "defaultMode": 0o444}), "source-secret"),
    ("the-store-keys-in-the-import-container", "s3/import/huggingFace", _add_env({"name": "AWS_SECRET_ACCESS_KEY",
     "valueFrom": {"secretKeyRef": {"name": pod_shapes.STORE_SECRET, "key": "AWS_SECRET_ACCESS_KEY"}}}, "import"),
     "source-secret"),
    ("a-token-under-another-secret-s-name", "s3/import/huggingFace",
     _in_container(lambda c: c["env"][-1]["valueFrom"]["secretKeyRef"].update(name="other-team-hf"), "import"),
     "source-secret"),
    ("a-ca-bundle-remapped", "s3/import/ftp-with-login-and-ca",
     _volume("ckpt-source-ca", configMap={"name": "corp-ca", "items": [{"key": "x", "path": "ca.pem"}]}),
     "source-secret"),
    # hostile1 D6, D8: arguments the code never passes
    ("an-import-sent-to-a-shell-flag", "s3/import/http",
     _in_container(lambda c: c["command"].__setitem__(3, "--endpoint-url=http://attacker.example"), "import"),
     "arguments"),
    ("a-store-container-sent-elsewhere", "s3/snapshot",
     _in_container(lambda c: c["command"].extend(["--endpoint-url", "http://attacker.example"])), "arguments"),
    ("an-upload-under-another-namespace", "s3/snapshot",
     _in_container(lambda c: c["command"].__setitem__(7, "s3://ckpts/checkpoints/team-b/x/")), "arguments"),
    ("an-import-into-another-directory", "s3/import/http",
     _in_container(lambda c: c["command"].__setitem__(4, "/etc"), "import"), "arguments"),
    ("a-ca-file-read-from-the-secret", "volume/import/git",
     _in_container(lambda c: c["command"].__setitem__(-1, f"{SECRET_DIR}/password"), "import"), "arguments"),
    ("a-scan-of-another-directory", "volume/scan",
     _in_container(lambda c: c["command"].__setitem__(3, "/var/run/secrets"), "scan"), "arguments"),
    ("a-verify-of-another-namespace", "s3/verify",
     _in_container(lambda c: c["command"].__setitem__(3, "s3://ckpts/checkpoints/team-b/m/"), "verify"), "arguments"),
    ("an-extra-positional", "volume/pull", _in_container(lambda c: c["command"].append("/etc"), "hold"), "arguments"),
    # hostile1 D7: seccomp, AppArmor and SELinux held to restricted's rules
    ("seccomp-unconfined-pod", "s3/snapshot", lambda p: p["spec"]["securityContext"].update(
        seccompProfile={"type": "Unconfined"}), "host"),
    ("seccomp-localhost-pod", "s3/snapshot", lambda p: p["spec"]["securityContext"].update(
        seccompProfile={"type": "Localhost", "localhostProfile": "loose.json"}), "host"),
    ("no-pod-seccomp", "s3/snapshot", lambda p: p["spec"]["securityContext"].pop("seccompProfile"), "host"),
    ("selinux-spc-t", "s3/snapshot", lambda p: p["spec"]["securityContext"].update(seLinuxOptions={"type": "spc_t"}),
     "host"),
    ("apparmor-unconfined-pod", "s3/snapshot", lambda p: p["spec"]["securityContext"].update(
        appArmorProfile={"type": "Unconfined"}), "host"),
    ("apparmor-annotation", "s3/snapshot", lambda p: p["metadata"]["annotations"].update(
        {"container.apparmor.security.beta.kubernetes.io/snapshot": "unconfined"}), "host"),
    ("host-users", "s3/snapshot", _set("spec.hostUsers", True), "host"),
    ("seccomp-unconfined-container", "s3/snapshot",
     _in_container(lambda c: c["securityContext"].update(seccompProfile={"type": "Unconfined"})), "privilege"),
    ("apparmor-unconfined-container", "s3/snapshot",
     _in_container(lambda c: c["securityContext"].update(appArmorProfile={"type": "Unconfined"})), "privilege"),
    # hostile1 D8: fields the code never sets
    ("host-aliases", "s3/snapshot", _set("spec.hostAliases", [{"ip": "6.6.6.6", "hostnames": ["minio.minio.svc"]}]),
     "fields"),
    ("dns-none", "s3/snapshot", lambda p: p["spec"].update(dnsPolicy="None", dnsConfig={"nameservers": ["6.6.6.6"]}),
     "fields"),
    ("image-pull-secrets", "s3/snapshot", _set("spec.imagePullSecrets", [{"name": "any-secret"}]), "fields"),
    ("runtime-class", "s3/snapshot", _set("spec.runtimeClassName", "unsafe"), "fields"),
    ("priority-class", "s3/snapshot", _set("spec.priorityClassName", "system-node-critical"), "fields"),
    ("node-selector", "s3/snapshot", _set("spec.nodeSelector", {"node-role.kubernetes.io/control-plane": ""}), "fields"),
    ("tolerate-everything", "s3/snapshot", _set("spec.tolerations", [{"operator": "Exists"}]), "fields"),
    ("resource-claims", "s3/snapshot", _set("spec.resourceClaims", [{"name": "gpu",
                                                                     "resourceClaimName": "someone-elses-gpu"}]),
     "fields"),
    ("os-windows", "s3/snapshot", _set("spec.os", {"name": "windows"}), "fields"),
    ("another-scheduler", "s3/snapshot", _set("spec.schedulerName", "evil"), "fields"),
    ("shared-process-namespace", "s3/snapshot", _set("spec.shareProcessNamespace", True), "fields"),
    ("affinity", "s3/snapshot", _set("spec.affinity", {"nodeAffinity": {}}), "fields"),
    ("eight-gpus", "s3/snapshot", _in_container(lambda c: c["resources"]["limits"].update({"nvidia.com/gpu": "8"})),
     "resources"),
    ("a-container-resource-claim", "s3/snapshot",
     _in_container(lambda c: c["resources"].update(claims=[{"name": "gpu"}])), "resources"),
    ("stdin-tty", "s3/snapshot", _in_container(lambda c: c.update(stdin=True, tty=True)), "hooks"),
    ("raw-device", "volume/snapshot", _in_container(lambda c: c.update(volumeDevices=[
        {"name": "ckpt-output", "devicePath": "/dev/xvda"}])), "hooks"),
    ("sub-path-expr", "volume/snapshot",
     _in_container(lambda c: c["volumeMounts"][0].update(subPathExpr="$(POD)")), "mounts"),
    ("mount-propagation", "volume/snapshot",
     _in_container(lambda c: c["volumeMounts"][0].update(mountPropagation="HostToContainer")), "mounts"),
]


@pytest.mark.parametrize("case, start, change, refusal", HOSTILE_PODS, ids=[c[0] for c in HOSTILE_PODS])
def test_a_hostile_pod_is_refused_with_the_policy_s_message(policies, case, start, change, refusal):
    pod = copy.deepcopy(AGENT_PODS[start])
    change(pod)
    refused(policies[store_of(start)], create("Pod", pod), MESSAGES[refusal])


def test_every_message_has_a_hostile_case():
    assert {refusal for *_, refusal in HOSTILE_PODS} == set(MESSAGES)


@pytest.mark.parametrize("namespace", ["kube-system", "kube-node-lease", OPERATOR_NAMESPACE])
@pytest.mark.parametrize("kind, obj", [("Pod", AGENT_PODS["volume/snapshot"]),
                                       ("Job", pod_shapes.built_job("volume")),
                                       ("JobSet", pod_shapes.built_job("volume", replicas=2, engine="JobSet")),
                                       ("Service", pod_shapes.built_service()),
                                       ("PersistentVolumeClaim", claims()["output"])])
def test_nothing_in_the_protected_namespaces(policies, namespace, kind, obj):
    obj = copy.deepcopy(obj)
    obj["metadata"]["namespace"] = namespace
    refused(policies["volume"], create(kind, obj, namespace), f"the checkpoint operator may not create, change or "
                                                              f"delete {obj['kind'].lower()}")


def test_changing_a_pod_beyond_the_annotation_is_refused(policies):
    old = worker_pod()
    message = "the checkpoint operator may change only the ckpt.dev/live-remove annotation"
    image = copy.deepcopy(old)
    image["spec"]["containers"][0]["image"] = "evil:latest"
    refused(policies["volume"], Request("UPDATE", "Pod", NS, image, old), message)
    other = copy.deepcopy(old)
    other["metadata"]["annotations"] = {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}
    refused(policies["volume"], Request("UPDATE", "Pod", NS, other, old), message)
    relabelled = copy.deepcopy(old)
    relabelled["metadata"]["labels"]["ckpt.dev/component"] = "snapshot"
    refused(policies["volume"], Request("UPDATE", "Pod", NS, relabelled, old), message)
    users = copy.deepcopy(old)
    users["metadata"]["labels"] = {"app": "web"}
    annotated = copy.deepcopy(users)
    annotated["metadata"]["annotations"] = {live_sealing.REMOVE_ANNOTATION: "[]"}
    refused(policies["volume"], Request("UPDATE", "Pod", NS, annotated, users), message)


def test_deleting_pods_that_are_not_its_agent_pods_is_refused(policies):
    message = "the checkpoint operator may delete only its agent pods"
    refused(policies["volume"], Request("DELETE", "Pod", NS, old_object=worker_pod()), message)
    users = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": NS, "labels": {"app": "web"}},
             "spec": {"containers": [{"name": "web", "image": "nginx"}]}}
    refused(policies["volume"], Request("DELETE", "Pod", NS, old_object=users), message)


def test_hostile_jobs_are_refused(policies):
    message = "the checkpoint operator may only create Jobs"
    job = pod_shapes.built_job("volume")
    unlabelled = copy.deepcopy(job)
    unlabelled["metadata"]["labels"] = {}
    refused(policies["volume"], create("Job", unlabelled), message)
    foreign = copy.deepcopy(job)
    foreign["metadata"]["ownerReferences"][0].update(kind="Checkpoint")
    refused(policies["volume"], create("Job", foreign), message)
    other_uid = copy.deepcopy(job)
    other_uid["spec"]["template"]["metadata"]["labels"]["ckpt.dev/trainingjob-uid"] = "someone-else"
    refused(policies["volume"], create("Job", other_uid), message)
    changed = copy.deepcopy(job)
    changed["spec"]["parallelism"] = 9
    refused(policies["volume"], Request("UPDATE", "Job", NS, changed, job), message)
    refused(policies["volume"], Request("DELETE", "Job", NS, old_object=unlabelled), message)  # not its workers'
    foreign_owner = copy.deepcopy(job)
    foreign_owner["metadata"]["ownerReferences"][0].update(kind="Deployment", apiVersion="apps/v1")
    refused(policies["volume"], Request("DELETE", "Job", NS, old_object=foreign_owner), message)


def test_hostile_jobsets_are_refused(policies):
    message = "the checkpoint operator may only create JobSets"
    jobset = pod_shapes.built_job("volume", replicas=2, engine="JobSet")
    unlabelled = copy.deepcopy(jobset)
    unlabelled["metadata"]["labels"] = {}
    refused(policies["volume"], create("JobSet", unlabelled), message)
    other_uid = copy.deepcopy(jobset)
    other_uid["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["metadata"]["labels"][
        "ckpt.dev/trainingjob-uid"] = "someone-else"
    refused(policies["volume"], create("JobSet", other_uid), message)
    second = copy.deepcopy(jobset)  # a second replicated job running pods of nobody's
    second["spec"]["replicatedJobs"].append({"name": "x", "replicas": 1, "template": {"spec": {"template": {
        "spec": {"containers": [{"name": "x", "image": "evil"}]}}}}})
    refused(policies["volume"], create("JobSet", second), message)
    changed = copy.deepcopy(jobset)
    changed["spec"]["suspend"] = False
    refused(policies["volume"], Request("UPDATE", "JobSet", NS, changed, jobset), message)
    # Deleted: only its own (a failed attempt of a job with a volume per worker), never another's.
    refused(policies["volume"], Request("DELETE", "JobSet", NS, old_object=unlabelled), message)
    foreign_owner = copy.deepcopy(jobset)
    foreign_owner["metadata"]["ownerReferences"][0].update(kind="Deployment", apiVersion="apps/v1")
    refused(policies["volume"], Request("DELETE", "JobSet", NS, old_object=foreign_owner), message)
    not_workers = copy.deepcopy(jobset)
    not_workers["metadata"]["labels"]["ckpt.dev/component"] = "rendezvous"
    refused(policies["volume"], Request("DELETE", "JobSet", NS, old_object=not_workers), message)


def test_a_failed_attempt_s_jobset_with_a_volume_per_worker_may_be_deleted(policies):
    jobset = pod_shapes.built_job("volume", replicas=2, engine="JobSet", output={"volumePerWorker": True})
    allowed(policies["volume"], Request("DELETE", "JobSet", NS, old_object=jobset))


def test_hostile_services_are_refused(policies):
    message = "the checkpoint operator may only create headless Services"
    service = pod_shapes.built_service()
    for change in (lambda s: s["spec"].update(clusterIP="10.0.0.9"), lambda s: s["spec"].pop("clusterIP"),
                   lambda s: s["spec"].update(type="ExternalName", externalName="evil.example"),
                   lambda s: s["spec"].update(ports=[{"port": 22}]), lambda s: s["spec"].update(externalIPs=["1.2.3.4"]),
                   lambda s: s["spec"]["selector"].update({"ckpt.dev/trainingjob-uid": "another-job"}),
                   lambda s: s["spec"].update(selector={"app": "database"}),
                   lambda s: s["metadata"]["labels"].update({"ckpt.dev/component": "worker"}),
                   lambda s: s["metadata"].pop("ownerReferences")):
        hostile = copy.deepcopy(service)
        change(hostile)
        refused(policies["volume"], create("Service", hostile), message)
    refused(policies["volume"], Request("UPDATE", "Service", NS, service, service), message)
    refused(policies["volume"], Request("DELETE", "Service", NS, old_object=service), message)


def test_hostile_claims_are_refused(policies):
    claim = claims()["output"]
    create_message = "the checkpoint operator may create only its own claims"
    clone = copy.deepcopy(claim)
    clone["spec"]["dataSource"] = {"kind": "PersistentVolumeClaim", "name": "team-data"}
    refused(policies["volume"], create("PersistentVolumeClaim", clone), create_message)
    unlabelled = copy.deepcopy(claim)
    unlabelled["metadata"]["labels"] = {}
    refused(policies["volume"], create("PersistentVolumeClaim", unlabelled), create_message)
    from_snapshot = copy.deepcopy(claim)
    from_snapshot["spec"]["dataSource"] = {"kind": "VolumeSnapshot", "apiGroup": "snapshot.storage.k8s.io",
                                           "name": "producer-step-1"}
    allowed(policies["volume"], create("PersistentVolumeClaim", from_snapshot))  # room for the snapshot store

    update_message = "the checkpoint operator may change only the owner references of its own claims"
    resized = copy.deepcopy(claim)
    resized["spec"]["resources"]["requests"]["storage"] = "1Ti"
    refused(policies["volume"], Request("UPDATE", "PersistentVolumeClaim", NS, resized, claim), update_message)
    doomed = copy.deepcopy(claim)
    doomed["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": "short-lived", "uid": "u"}]
    refused(policies["volume"], Request("UPDATE", "PersistentVolumeClaim", NS, doomed, claim), update_message)
    users = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "team-data", "namespace": NS}, "spec": claim["spec"]}
    owned = copy.deepcopy(users)
    owned["metadata"]["ownerReferences"] = [checkpoint_owner("x")]
    refused(policies["volume"], Request("UPDATE", "PersistentVolumeClaim", NS, owned, users), update_message)
    refused(policies["volume"], Request("DELETE", "PersistentVolumeClaim", NS, old_object=users),
            "the checkpoint operator may delete only its own claims")


# --- volume snapshots (storage.volume.snapshotClassName) ----------------------------------------------

def finished(pod: dict) -> dict:
    return {**copy.deepcopy(pod), "status": {"phase": "Succeeded"}}


def test_a_finished_worker_pod_with_restored_inputs_may_be_deleted_a_running_one_not(policies):
    pod = pod_shapes.job_pod(pod_shapes.built_job("snapshots"))
    assert any(v.get("ephemeral") for v in pod["spec"]["volumes"])  # the volumes restored for its inputs
    allowed(policies["snapshots"], Request("DELETE", "Pod", NS, old_object=finished(pod)))
    running = {**copy.deepcopy(pod), "status": {"phase": "Running"}}
    refused(policies["snapshots"], Request("DELETE", "Pod", NS, old_object=running),
            "the checkpoint operator may delete only its agent pods, and its worker pods once they have finished")
    users = finished({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": NS,
                                                                      "labels": {"app": "web"}}, "spec": {}})
    refused(policies["snapshots"], Request("DELETE", "Pod", NS, old_object=users), "the checkpoint operator may delete")


def volume_snapshots() -> dict[str, dict]:
    """The VolumeSnapshots the snapshot store builds, as the API server receives them."""
    store = store_for(pod_shapes.config("snapshots"))
    tj = pod_shapes.training_job()
    output = store.output_snapshot(tj, workload.output_claim_name(tj), "final")
    ckpt = pod_shapes.checkpoint(pod_shapes.SOURCES["http"])
    imported = store.import_snapshot(ckpt, workload.import_claim_name(ckpt))
    assert output is not None and imported is not None
    parts = pod_shapes.training_job(replicas=2, engine="JobSet", output={"volumePerWorker": True})
    worker = store.output_part_snapshots(parts, [1], "final")[1]  # one per worker volume (issue 19)
    return {"output": copy.deepcopy(output.body), "import": copy.deepcopy(imported.body),
            "worker-volume": copy.deepcopy(worker.body)}


@pytest.mark.parametrize("name", ["output", "import", "worker-volume"])
def test_its_volume_snapshots_are_accepted_handed_over_and_deleted(policies, name):
    snapshot = volume_snapshots()[name]
    allowed(policies["snapshots"], create("VolumeSnapshot", snapshot))
    handed_over = copy.deepcopy(snapshot)
    handed_over["metadata"]["ownerReferences"] = [checkpoint_owner("train-step-1"), checkpoint_owner("train-step-2")]
    allowed(policies["snapshots"], Request("UPDATE", "VolumeSnapshot", NS, handed_over, snapshot))
    allowed(policies["snapshots"], Request("DELETE", "VolumeSnapshot", NS, old_object=handed_over))


def test_hostile_volume_snapshots_are_refused(policies):
    snapshot = volume_snapshots()["output"]
    create_message = "the checkpoint operator may create only its own VolumeSnapshots"
    unlabelled = copy.deepcopy(snapshot)
    unlabelled["metadata"]["labels"] = {}
    refused(policies["snapshots"], create("VolumeSnapshot", unlabelled), create_message)
    bound = copy.deepcopy(snapshot)  # binding to an existing content: someone else's snapshot
    bound["spec"]["source"] = {"volumeSnapshotContentName": "snapcontent-of-another-namespace"}
    refused(policies["snapshots"], create("VolumeSnapshot", bound), create_message)
    orphan = copy.deepcopy(snapshot)
    orphan["metadata"]["ownerReferences"][0].update(kind="Deployment", apiVersion="apps/v1")
    refused(policies["snapshots"], create("VolumeSnapshot", orphan), create_message)
    update_message = "the checkpoint operator may change only the owner references of its own VolumeSnapshots"
    resourced = copy.deepcopy(snapshot)
    resourced["spec"]["source"]["persistentVolumeClaimName"] = "team-data"
    refused(policies["snapshots"], Request("UPDATE", "VolumeSnapshot", NS, resourced, snapshot), update_message)
    users = {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
             "metadata": {"name": "nightly", "namespace": NS}, "spec": {"source": {"persistentVolumeClaimName": "db"}}}
    refused(policies["snapshots"], Request("DELETE", "VolumeSnapshot", NS, old_object=users),
            "the checkpoint operator may delete only its own VolumeSnapshots")


def test_a_restored_volume_is_allowed_only_in_verify_and_pull_pods_and_only_from_a_snapshot(policies):
    verify = AGENT_PODS["snapshots/verify"]
    restored = next(v for v in verify["spec"]["volumes"] if v.get("ephemeral"))
    message = "an agent pod mounts only PersistentVolumeClaims and emptyDirs"
    clone = copy.deepcopy(verify)
    template = next(v for v in clone["spec"]["volumes"] if v.get("ephemeral"))["ephemeral"]["volumeClaimTemplate"]
    template["spec"]["dataSource"] = {"kind": "PersistentVolumeClaim", "name": "team-data"}
    refused(policies["snapshots"], create("Pod", clone), message)
    in_a_snapshot_pod = copy.deepcopy(AGENT_PODS["snapshots/snapshot"])
    in_a_snapshot_pod["spec"]["volumes"].append(copy.deepcopy(restored))
    refused(policies["snapshots"], create("Pod", in_a_snapshot_pod), message)


def test_hostile_events_are_refused(policies):
    message = "the checkpoint operator only creates Events"
    recorder = _Recorder()
    Context(kube=recorder, config=pod_shapes.config("volume")).warn(  # type: ignore[arg-type]
        pod_shapes.training_job(), "X", "y")
    event = recorder.bodies[0]
    about_a_secret = copy.deepcopy(event)
    about_a_secret["involvedObject"].update(kind="Secret", name="db-password")
    refused(policies["volume"], create("Event", about_a_secret), message)
    elsewhere = copy.deepcopy(event)
    elsewhere["involvedObject"]["namespace"] = "team-b"
    refused(policies["volume"], create("Event", elsewhere), message)


def test_the_policy_binds_to_the_operator_alone_and_denies(policies):
    with helm_chart.Chart.load(CHART_DIR) as chart:
        objects = render(chart, VALUES["volume"])
    binding = operator_policy(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policies["volume"]["metadata"]["name"], "validationActions": ["Deny"]}
    assert policies["volume"]["spec"]["failurePolicy"] == "Fail"
    service_account = one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    condition = policies["volume"]["spec"]["matchConditions"][0]["expression"]
    assert f"system:serviceaccount:{NAMESPACE}:{service_account}" in condition


def test_the_policy_can_be_turned_off_for_older_clusters():
    with helm_chart.Chart.load(CHART_DIR) as chart:
        objects = render(chart, {"admissionPolicy": {"enabled": False}})
    assert not of_kind(objects, "ValidatingAdmissionPolicy") and not of_kind(objects, "ValidatingAdmissionPolicyBinding")


def test_a_watched_namespace_cannot_be_protected():
    from helm_python.errors import HelmRenderError
    with helm_chart.Chart.load(CHART_DIR) as chart:
        with pytest.raises(HelmRenderError, match="kube-system"):
            render(chart, {"watchNamespaces": ["team-a", "kube-system"]})
        objects = render(chart, {"watchNamespaces": ["team-a", NAMESPACE]})
    protected = operator_policy(objects)["spec"]["variables"]
    assert next(v for v in protected if v["name"] == "protectedNamespaces")["expression"] == \
        '["kube-system","kube-public","kube-node-lease"]'


# --- what the API server and common admission add is not refused (the policy sees the pod after them) --

def as_admitted(pod: dict, *, priority_class: str = "") -> dict:
    """The pod as a validating admission policy sees it: defaulted by the API server (SetDefaults_Pod)
    and mutated by the default admission plugins (ServiceAccount, DefaultTolerationSeconds, Priority,
    LimitRanger with a namespace default)."""
    pod = copy.deepcopy(pod)
    spec = pod["spec"]
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("serviceAccountName", "default")
    spec["serviceAccount"] = spec["serviceAccountName"]
    spec["priority"] = 0
    spec["preemptionPolicy"] = "PreemptLowerPriority"
    if priority_class:
        spec["priorityClassName"] = priority_class
    spec["tolerations"] = [{"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
                           for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")]
    for container in [*spec["containers"], *spec.get("initContainers", [])]:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("imagePullPolicy", "IfNotPresent")
        container["resources"].setdefault("requests", {}).setdefault("ephemeral-storage", "1Gi")
    for volume in spec.get("volumes", []):
        for kind in ("secret", "configMap"):
            if kind in volume:
                volume[kind].setdefault("defaultMode", 420)
    return pod


@pytest.mark.parametrize("name", sorted(AGENT_PODS))
def test_every_agent_pod_is_accepted_as_admission_defaults_it(policies, name):
    pod = as_admitted(AGENT_PODS[name])
    allowed(policies[store_of(name)], create("Pod", pod, namespace=pod["metadata"]["namespace"]))


def test_the_cluster_s_own_defaults_are_allowed_when_the_chart_is_told(policies):
    """A globalDefault PriorityClass and PodNodeSelector's selector are refused unless
    admissionPolicy.clusterDefaults names them (then only they are allowed)."""
    pod = as_admitted(AGENT_PODS["s3/snapshot"], priority_class="tenant-default")
    pod["spec"]["nodeSelector"] = {"pool": "batch"}
    refused(policies["s3"], create("Pod", pod), MESSAGES["fields"])
    values = {**VALUES["s3"], "admissionPolicy": {"clusterDefaults": {
        "priorityClassName": "tenant-default", "nodeSelector": {"pool": "batch"},
        "tolerations": [{"key": "pool", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "registry"}]}}}
    with helm_chart.Chart.load(CHART_DIR) as chart:
        told = operator_policy(render(chart, values))
    pod["spec"]["tolerations"].append({"key": "pool", "operator": "Equal", "value": "batch", "effect": "NoSchedule"})
    pod["spec"]["imagePullSecrets"] = [{"name": "registry"}]
    allowed(told, create("Pod", pod))
    pod["spec"]["priorityClassName"] = "system-cluster-critical"
    refused(told, create("Pod", pod), MESSAGES["fields"])


# --- hostile1 D14: a service mesh's injection ----------------------------------------------------------

def test_agent_pods_opt_out_of_mesh_injection():
    for name, pod in AGENT_PODS.items():
        assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false", name
        assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false", name
        assert pod["metadata"]["annotations"]["linkerd.io/inject"] == "disabled", name


def test_a_sidecar_a_webhook_injects_anyway_is_refused_naming_it(policies):
    """What a webhook that ignores the opt-out does (Istio with a policy of `enabled` for all pods): the
    policy refuses the pod, and the refusal names the container the webhook added; the Checkpoint's
    PodRefused condition carries that one line."""
    pod = as_admitted(AGENT_PODS["s3/snapshot"])
    pod["spec"]["containers"].append({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.22.0",
                                      "args": ["proxy", "sidecar"], "securityContext": {
                                          "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                          "runAsNonRoot": True, "runAsUser": 1337}})
    decision = evaluate(policies["s3"], create("Pod", pod))
    image = [m for m in decision.refusals if "every container of an agent pod runs the operator's image" in m]
    assert image == [
        "container istio-proxy runs docker.io/istio/proxyv2:1.22.0: every container of an agent pod runs the "
        "operator's image registry.example/checkpoint-operator:1.2.3 (a mutating webhook that adds a container, such "
        "as a service mesh's sidecar, must skip agent pods: they carry sidecar.istio.io/inject: \"false\" and "
        "linkerd.io/inject: disabled)"]
    assert all("\n" not in m for m in decision.refusals)


# --- hostile1 D6: one Secret per import pod, named on it -------------------------------------------------

def test_an_import_pod_names_the_one_secret_it_reads():
    for name, pod in AGENT_PODS.items():
        secrets = {v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
        containers = [*pod["spec"]["containers"], *pod["spec"].get("initContainers", [])]
        secrets |= {e["valueFrom"]["secretKeyRef"]["name"] for c in containers if c["name"] == "import"
                    for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        annotated = pod["metadata"]["annotations"].get("ckpt.dev/source-secret")
        assert secrets == ({annotated} if annotated else set()), name
    assert AGENT_PODS["volume/import/git"]["metadata"]["annotations"]["ckpt.dev/source-secret"] == "git-login"


# --- hostile1 D8: claims bound to a volume or copied from another namespace ------------------------------

@pytest.mark.parametrize("field, value", [
    ("volumeName", "pv-of-team-b"),
    ("selector", {"matchLabels": {"team": "b"}}),
    ("volumeMode", "Block"),
    ("volumeAttributesClassName", "gold"),
    ("dataSourceRef", {"kind": "VolumeSnapshot", "apiGroup": "snapshot.storage.k8s.io", "name": "s",
                       "namespace": "team-b"}),
])
def test_a_claim_bound_to_a_chosen_volume_or_another_namespace_is_refused(policies, field, value):
    claim = copy.deepcopy(claims()["import"])
    claim["spec"][field] = value
    refused(policies["volume"], create("PersistentVolumeClaim", claim),
            "the checkpoint operator may create only its own claims")
    claim["spec"].pop(field)
    claim["spec"]["volumeMode"] = "Filesystem"  # the API server's default
    allowed(policies["volume"], create("PersistentVolumeClaim", claim))


# --- the node-local input cache (cache.enabled): its local PersistentVolume and claim per namespace -----

CACHE_VALUES = {**VALUES["s3"], "cache": {"enabled": True, "localPath": "/mnt/nvme/ckpt-cache",
                                          "storageClassName": "local-nvme"}}
CACHE_CLAIM = "the checkpoint operator's node-cache claim is ckpt-node-cache"
CACHE_VOLUME = "the checkpoint operator may only create the node cache's local PersistentVolumes"


@pytest.fixture(scope="module")
def cache_policy() -> dict:
    with helm_chart.Chart.load(CHART_DIR) as chart:
        return operator_policy(render(chart, CACHE_VALUES))


def cache_objects() -> tuple[dict, dict]:
    from checkpoint_operator.logic import node_cache
    config = pod_shapes.config("s3-cache", cache_local_path="/mnt/nvme/ckpt-cache", cache_storage_class="local-nvme")
    return node_cache.build_cache_volume(NS, config), node_cache.build_cache_claim(NS, config)


def test_the_node_cache_volume_and_claim_are_accepted_only_with_the_cache(cache_policy, policies):
    pv, claim = cache_objects()
    allowed(cache_policy, create("PersistentVolume", pv, namespace=""))
    allowed(cache_policy, create("PersistentVolumeClaim", claim))
    refused(policies["s3"], create("PersistentVolume", pv, namespace=""), CACHE_VOLUME)
    refused(policies["s3"], create("PersistentVolumeClaim", claim), CACHE_CLAIM)


def _pv_change(path: str, value: Any) -> Callable[[dict], None]:
    def change(pv: dict) -> None:
        *parents, last = path.split(".")
        target = pv
        for part in parents:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return change


@pytest.mark.parametrize("change", [
    _pv_change("spec.local", None), _pv_change("spec.local.path", "/"),
    _pv_change("spec.hostPath", {"path": "/mnt/nvme/ckpt-cache"}),
    _pv_change("spec.storageClassName", "gold"), _pv_change("spec.persistentVolumeReclaimPolicy", "Delete"),
    _pv_change("spec.claimRef.name", "team-data"), _pv_change("spec.claimRef.namespace", "team-b"),
    _pv_change("spec.claimRef.namespace", "kube-system"), _pv_change("metadata.labels", {}),
], ids=["no-local", "root-path", "host-path", "other-class", "delete-policy", "other-claim", "other-namespace",
        "protected-namespace", "unlabelled"])
def test_hostile_node_cache_volumes_are_refused(cache_policy, change):
    pv, _ = cache_objects()
    change(pv)
    if "hostPath" in pv["spec"]:
        pv["spec"].pop("local")
    refused(cache_policy, create("PersistentVolume", pv, namespace=""), CACHE_VOLUME)


def test_node_cache_volumes_are_never_changed_or_deleted(cache_policy):
    pv, _ = cache_objects()
    retargeted = copy.deepcopy(pv)
    retargeted["spec"]["claimRef"]["namespace"] = "team-b"
    refused(cache_policy, Request("UPDATE", "PersistentVolume", "", retargeted, pv), CACHE_VOLUME)
    refused(cache_policy, Request("DELETE", "PersistentVolume", "", old_object=pv), CACHE_VOLUME)


@pytest.mark.parametrize("field, value", [
    ("metadata.name", "team-data"), ("spec.volumeName", "ckpt-node-cache-team-b"), ("spec.storageClassName", "gold"),
    ("spec.dataSource", {"kind": "PersistentVolumeClaim", "name": "team-data"}),
    ("spec.selector", {"matchLabels": {"a": "b"}}),
    ("metadata.ownerReferences", [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}]),
])
def test_hostile_node_cache_claims_are_refused(cache_policy, field, value):
    _, claim = cache_objects()
    _pv_change(field, value)(claim)
    refused(cache_policy, create("PersistentVolumeClaim", claim), CACHE_CLAIM)


# --- Secrets: only its signing key, created once in its own namespace ------------------------------------

def _signing_key(namespace: str = OPERATOR_NAMESPACE, name: str = "checkpoint-operator-signing-key") -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque", "data": {"key": "a2V5"}}


def test_its_signing_key_may_be_created_in_its_own_namespace_and_no_other_secret_written(policies):
    from checkpoint_operator.config import SIGNING_KEY_SECRET
    assert _signing_key()["metadata"]["name"] == SIGNING_KEY_SECRET
    for store in policies:
        allowed(policies[store], create("Secret", _signing_key(), OPERATOR_NAMESPACE))
    message = "the checkpoint operator only creates its signing key"
    policy = policies["volume"]
    refused(policy, create("Secret", _signing_key(NS), NS), message)              # in a tenant's namespace
    refused(policy, create("Secret", _signing_key(name="store-credentials"), OPERATOR_NAMESPACE), message)
    refused(policy, Request("UPDATE", "Secret", OPERATOR_NAMESPACE, object=_signing_key(),
                            old_object=_signing_key()), message)
    refused(policy, Request("DELETE", "Secret", OPERATOR_NAMESPACE, old_object=_signing_key()), message)
    refused(policy, create("Secret", _signing_key("kube-system"), "kube-system"), "may not create, change or delete")
