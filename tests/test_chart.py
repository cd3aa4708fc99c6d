"""The Helm chart, rendered offline with helm-python-sdk (Helm v4 as a library: no helm binary,
no cluster, no network) and every rendered object validated with kubernetes-validate.

Kinds the Kubernetes schemas cannot know (ServiceMonitor, KopfPeering) are validated here
against their own CRD schemas. RBAC is compared with checkpoint_operator/rbac.py both ways.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helm_python import HelmValuesError, chart as helm_chart
from helm_python.errors import HelmRenderError

from checkpoint_operator import rbac
from checkpoint_operator.cli import build_parser
from checkpoint_operator.config import ENV_PREFIX, SIGNING_KEY_SECRET, ConfigError, OperatorConfig

ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = ROOT / "charts" / "checkpoint-operator"
RELEASE = "ckpt"
NAMESPACE = "ckpt-system"
# The oldest version Chart.yaml admits (kubeVersion) and a recent one.
KUBE_VERSIONS = ("1.29.0", "1.34.0")
# Kinds that exist only from a later version on: validated against the versions that have them
# (ValidatingAdmissionPolicy v1 is GA in 1.30; the chart's admissionPolicy.enabled=false is for 1.29).
SINCE = {("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): "1.30.0",
         ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"): "1.30.0"}
PEERING_NAME = "checkpoint-operator"
LIVENESS_PORT = 8081

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "s3": {"storage": {"type": "s3", "storageClassName": "fast", "defaultSize": "50Gi",
                       "s3": {"endpoint": "http://minio.minio.svc:9000", "bucket": "ckpts", "prefix": "team",
                              "region": "us-east-1", "namespaceSecret": "ckpt-s3",
                              "operatorSecret": "ckpt-s3-operator"}}},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "metrics-off": {"metrics": {"enabled": False}},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "10s",
                                                       "labels": {"release": "prometheus"}}}},
    "replicas-2": {"replicas": 2},
    "namespaced-replicas-2": {"replicas": 2, "watchNamespaces": ["team-a", "team-b"]},
    "no-crds": {"crds": {"install": False}},
    "volume-snapshots": {"storage": {"storageClassName": "gp3", "volume": {"snapshotClassName": "ebs-snapshots",
                                                                          "restoreAccessMode": "ReadWriteOnce"}}},
    "namespaced-volume-snapshots": {"watchNamespaces": ["team-a", "team-b"],
                                    "storage": {"volume": {"snapshotClassName": "pd-snapshots",
                                                           "restoreAccessMode": "ReadOnlyMany"}}},
    "s3-cache": {"storage": {"type": "s3", "s3": {"bucket": "ckpts", "namespaceSecret": "ckpt-s3"}},
                 "cache": {"enabled": True, "capacityPerNode": "800Gi", "localPath": "/mnt/nvme/ckpt-cache",
                           "storageClassName": "local-nvme", "nodeSelector": {"nvme": "true"}, "verify": "full"}},
    "namespaced-s3-cache": {"watchNamespaces": ["team-a", "team-b"],
                            "storage": {"type": "s3", "s3": {"bucket": "ckpts", "namespaceSecret": "ckpt-s3"}},
                            "cache": {"enabled": True}},
    "everything-set": {
        "image": {"tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "agent": {"serviceAccount": "ckpt-agent", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
        "serviceAccount": {"create": True, "name": "ckpt-op", "annotations": {"eks.amazonaws.com/role-arn": "arn:x"}},
        "podAnnotations": {"a": "b"}, "podLabels": {"team": "ml"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}]}}},
        "priorityClassName": "system-cluster-critical",
        "logFormat": "text",
        "metrics": {"port": 9090, "service": {"type": "NodePort", "annotations": {"x": "y"}}},
        "publishTimeoutSeconds": 1800,
    },
}


# --- rendering ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chart():
    with helm_chart.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """All objects the chart renders, each annotated with its template in `_template`."""
    manifests = chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                document["_template"] = path
                objects.append(document)
    return objects


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "_template"}


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def operator_policy(objects: list[dict], kind: str = "ValidatingAdmissionPolicy") -> dict:
    """The admission policy (or binding) that fences the operator's own writes, not the tenants' fences
    (templates/exec-fence.yaml: `-agent-exec`, `-live-channel`)."""
    return one([o for o in objects if not o["metadata"]["name"].endswith(("-agent-exec", "-live-channel"))], kind)


def operator_rbac(objects: list[dict], kind: str) -> list[dict]:
    """The operator's own RBAC objects (templates/rbac.yaml), without the catalog's (`-catalog`, and the tenants'
    roles of templates/catalog.yaml)."""
    return [o for o in of_kind(objects, kind) if o["_template"].endswith("/rbac.yaml")
            and not o["metadata"]["name"].endswith(("-catalog", "-node-cache", "-signing-key"))]


def operator_container(objects: list[dict]) -> dict:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return containers[0]


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- validation of kinds kubernetes-validate does not know --------------------------------------

def _crd_schemas() -> dict[tuple[str, str], dict]:
    """openAPIV3Schema by (apiVersion, kind) for the CRDs the chart ships in crds/."""
    schemas = {}
    for path in (CHART_DIR / "crds").glob("*.yaml"):
        for crd in yaml.safe_load_all(path.read_text()):
            if crd:
                for version in crd["spec"]["versions"]:
                    key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                    schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
# The subset of monitoring.coreos.com/v1 ServiceMonitor (prometheus-operator's CRD) the chart
# uses, closed so that a misspelt field fails.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "additionalProperties": False,
                             "properties": {"matchLabels": _LABELS}},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"},
                                                     "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": {"type": "string", "pattern": _DURATION},
                                   "scrapeTimeout": {"type": "string", "pattern": _DURATION}}}},
            },
        },
    },
}

_METADATA_SCHEMA = {
    "type": "object", "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
                   "namespace": {"type": "string"}, "labels": _LABELS, "annotations": _LABELS},
}


def validate_object(obj: dict[str, Any]) -> None:
    obj = strip(obj)
    if obj["apiVersion"] == "monitoring.coreos.com/v1":
        jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
        return
    custom = _crd_schemas().get((obj["apiVersion"], obj["kind"]))
    if custom is not None:
        jsonschema.validate(obj.get("metadata"), _METADATA_SCHEMA)
        jsonschema.validate({k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}, custom)
        return
    since = SINCE.get((obj["apiVersion"], obj["kind"]))
    versions = sorted({since, *[v for v in KUBE_VERSIONS if v >= since]}) if since else KUBE_VERSIONS
    for version in versions:
        # strict: unknown fields fail too; SchemaNotFoundError (an unknown kind) propagates.
        kubernetes_validate.validate(obj, version, strict=True)


# --- every object of every combination is valid -----------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_is_valid(chart, scenario):
    objects = render(chart, SCENARIOS[scenario])
    assert objects
    for obj in objects:
        try:
            validate_object(obj)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{scenario}: {obj['kind']}/{obj['metadata']['name']} from {obj['_template']}: "
                        f"{path}: {error.message}")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_objects_carry_standard_labels_and_namespace(chart, scenario):
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering", "CustomResourceDefinition",
                      "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    for obj in render(chart, SCENARIOS[scenario]):
        if obj["kind"] == "CustomResourceDefinition":
            continue  # generated from the API models, release-independent on purpose
        labels = obj["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, f"{obj['kind']}/{obj['metadata']['name']} lacks label {key}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"].get("namespace"), f"{obj['kind']}/{obj['metadata']['name']} has no namespace"


def test_the_validator_catches_a_broken_object(chart):
    """The validation above would notice a misspelt field and a wrong type (strict schemas)."""
    deployment = copy.deepcopy(one(render(chart), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(deployment)
    deployment = copy.deepcopy(one(render(chart), "Deployment"))
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(deployment)
    monitor = one(render(chart, SCENARIOS["service-monitor"]), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "1m"
    with pytest.raises(jsonschema.ValidationError):
        validate_object(monitor)


# --- the deployment ---------------------------------------------------------------------------

def test_defaults(chart):
    objects = render(chart)
    container = operator_container(objects)
    deployment = one(objects, "Deployment")
    app_version = chart.metadata["appVersion"]
    assert container["image"] == f"ghcr.io/ckpt-dev/checkpoint-operator:{app_version}"
    assert container["args"][0] == "run"
    assert "--all-namespaces" in container["args"]
    assert "--log-format=json" in container["args"]
    assert "--metrics-port=8080" in container["args"]
    # one replica: no peering, and never two operators at once during an update
    assert "--standalone" in container["args"]
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert deployment["spec"]["replicas"] == 1
    assert not of_kind(objects, "ClusterKopfPeering") and not of_kind(objects, "KopfPeering")
    env = env_of(container)
    assert env["CKPT_AGENT_IMAGE"] == container["image"]
    assert env["CKPT_AGENT_IMAGE_PULL_POLICY"] == container["imagePullPolicy"] == "IfNotPresent"
    assert env["CKPT_STORAGE_TYPE"] == "volume"
    assert env["CKPT_DEFAULT_OUTPUT_SIZE"] == "10Gi"
    assert not any(name.startswith("CKPT_S3_") for name in env)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    service_account = one(objects, "ServiceAccount")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == service_account["metadata"]["name"]
    # the pods match their own selector
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_operator_arguments_parse_with_the_real_cli(chart, scenario):
    """The chart's args are accepted by `checkpoint-operator` itself, and mean what the values say."""
    values = SCENARIOS[scenario]
    container = operator_container(render(chart, values))
    args = build_parser().parse_args(container["args"])
    assert args.command == "run"
    namespaces = values.get("watchNamespaces", [])
    assert (args.namespace or []) == namespaces
    assert args.all_namespaces is (not namespaces)
    assert args.liveness_port == LIVENESS_PORT
    assert args.standalone is (values.get("replicas", 1) == 1)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_operator_environment_is_understood_by_the_config(chart, scenario):
    """Every CKPT_* variable the chart sets is a field of OperatorConfig and parses."""
    container = operator_container(render(chart, SCENARIOS[scenario]))
    env = {name: value for name, value in env_of(container).items() if name.startswith(ENV_PREFIX)}
    known = {ENV_PREFIX + field.upper() for field in OperatorConfig.model_fields}
    assert set(env) <= known, f"unknown settings: {set(env) - known}"
    assert all(isinstance(value, str) for value in env.values())
    config = OperatorConfig.from_env(env)
    assert config.agent_image == container["image"]


def test_s3_store_settings(chart):
    values = SCENARIOS["s3"]
    container = operator_container(render(chart, values))
    config = OperatorConfig.from_env({k: v for k, v in env_of(container).items() if isinstance(v, str)})
    s3 = values["storage"]["s3"]
    assert config.storage_type == "s3"
    assert (config.s3_endpoint, config.s3_bucket, config.s3_prefix, config.s3_region, config.s3_secret_name) == \
        (s3["endpoint"], s3["bucket"], s3["prefix"], s3["region"], s3["namespaceSecret"])
    assert config.default_storage_class == "fast"
    assert config.default_output_size == "50Gi"
    # The operator's own credentials come from its own Secret (agent pods get the namespace's).
    env = env_of(container)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["secretKeyRef"] == {"name": s3["operatorSecret"], "key": key}


def test_s3_store_needs_a_bucket(chart):
    with pytest.raises(HelmValuesError, match="bucket"):
        render(chart, {"storage": {"type": "s3", "s3": {"namespaceSecret": "x"}}})


def test_the_shared_store_secret_is_refused_with_what_to_set_instead(chart):
    with pytest.raises(HelmRenderError, match="namespaceSecret"):
        render(chart, {"storage": {"type": "s3", "s3": {"bucket": "b", "existingSecret": "x"}}})


def test_everything_set(chart):
    values = SCENARIOS["everything-set"]
    objects = render(chart, values)
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(objects)
    assert container["image"].endswith(":1.2.3")
    assert container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "ckpt-op"
    assert one(objects, "ServiceAccount")["metadata"]["annotations"] == values["serviceAccount"]["annotations"]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {"a": "b"}
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "ml"
    assert "--log-format=text" in container["args"]
    assert "--metrics-port=9090" in container["args"]
    env = env_of(container)
    assert env["CKPT_AGENT_SERVICE_ACCOUNT"] == "ckpt-agent"
    assert json.loads(env["CKPT_AGENT_RESOURCES"]) == {"requests": {"cpu": "1", "memory": "1Gi"},
                                                      "limits": {"memory": "2Gi"}}
    service = one(objects, "Service")
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["port"] == 9090


def test_existing_service_account(chart):
    objects = render(chart, {"serviceAccount": {"create": False, "name": "platform-sa"}})
    assert not of_kind(objects, "ServiceAccount")
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-sa"
    (binding,) = operator_rbac(objects, "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == "platform-sa"


def test_liveness_probe_targets_the_kopf_health_endpoint(chart):
    container = operator_container(render(chart))
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[probe["port"]] == LIVENESS_PORT
    assert f"--liveness-port={LIVENESS_PORT}" in container["args"]


# --- security -------------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_security_settings(chart, scenario):
    objects = render(chart, SCENARIOS[scenario])
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == 65532
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "fsGroup" in pod_security
    container = operator_container(objects)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    assert not security.get("privileged", False)
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    # with a read-only root, /tmp (HOME in the image) must be a writable emptyDir
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("hostPath" not in v for v in volumes.values())
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]] and not tmp[0].get("readOnly")
    assert container["resources"]["limits"]["memory"]


def test_user_matches_the_image(chart):
    """The chart's runAsUser is the numeric USER the Dockerfile sets."""
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "the Dockerfile sets no numeric USER"
    pod = one(render(chart), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(users[-1])


# --- RBAC -----------------------------------------------------------------------------------

def _no_wildcards(rules: list[dict]) -> None:
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), f"wildcard in {field}: {rule}"
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule


def test_rbac_table_has_no_wildcards_or_duplicates():
    _no_wildcards(rbac.policy_rules(cluster_wide=True))
    triples = [t for rule in rbac.policy_rules(cluster_wide=True) for t in rbac.permissions([rule])]
    assert len(triples) == len(set(triples)), "a permission is granted twice in rbac.RULES"
    assert {r.resources for r in rbac.RULES if r.cluster_only} == {
        ("clusterkopfpeerings",), ("namespaces",), ("customresourcedefinitions",)}


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if "namespaced" not in s])
def test_cluster_wide_rbac_equals_the_table(chart, scenario):
    objects = render(chart, SCENARIOS[scenario])
    (role,) = operator_rbac(objects, "ClusterRole")
    granted = rbac.permissions(role["rules"])
    wanted = rbac.permissions(rbac.policy_rules(cluster_wide=True, volume_snapshots=_snapshots(SCENARIOS[scenario]),
                                                node_cache=_node_cache(SCENARIOS[scenario])))
    assert not wanted - granted, f"missing from the chart: {sorted(wanted - granted)}"
    assert not granted - wanted, f"granted beyond rbac.py: {sorted(granted - wanted)}"
    _no_wildcards(role["rules"])
    assert not operator_rbac(objects, "Role") and not operator_rbac(objects, "RoleBinding")
    (binding,) = operator_rbac(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    service_account = one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}]


def _node_cache(values: dict[str, Any]) -> bool:
    return bool((values.get("cache") or {}).get("enabled"))


def test_the_node_cache_settings_reach_the_operator_and_its_volumes_get_a_cluster_role(chart):
    values = SCENARIOS["s3-cache"]
    env = {e["name"]: e.get("value") for e in operator_container(render(chart, values))["env"]}
    config = OperatorConfig.from_env({k: v for k, v in env.items() if k.startswith("CKPT_") and v is not None})
    assert (config.cache_enabled, config.cache_capacity, config.cache_local_path, config.cache_storage_class,
            config.cache_node_selector, config.cache_verify) == (True, "800Gi", "/mnt/nvme/ckpt-cache", "local-nvme",
                                                                 {"nvme": "true"}, "full")
    assert not [k for k in env if k.startswith("CKPT_CACHE_")] or _node_cache(values)
    assert not [k for k in (e["name"] for e in operator_container(render(chart))["env"]) if k.startswith("CKPT_CACHE")]
    objects = render(chart, SCENARIOS["namespaced-s3-cache"])
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    role = by_name[("ClusterRole", f"{RELEASE}-checkpoint-operator-node-cache")]
    assert rbac.permissions(role["rules"]) == rbac.permissions(rbac.node_cache_rules())
    binding = by_name[("ClusterRoleBinding", f"{RELEASE}-checkpoint-operator-node-cache")]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert not [o for o in render(chart, SCENARIOS["namespaced"]) if o["metadata"]["name"].endswith("-node-cache")]


def test_the_node_cache_is_refused_on_the_volume_store(chart):
    with pytest.raises(Exception, match="cache.enabled caches inputs of the s3 store"):
        render(chart, {"cache": {"enabled": True}})


def _snapshots(values: dict[str, Any]) -> bool:
    """Whether the values keep checkpoints in VolumeSnapshots (the rules with_volume_snapshots are granted)."""
    storage = values.get("storage") or {}
    return storage.get("type", "volume") == "volume" and bool((storage.get("volume") or {}).get("snapshotClassName"))


@pytest.mark.parametrize("scenario", ["namespaced", "namespaced-replicas-2", "namespaced-volume-snapshots",
                                      "namespaced-s3-cache"])
def test_namespaced_rbac_equals_the_table(chart, scenario):
    values = SCENARIOS[scenario]
    objects = render(chart, values)
    # Cluster-wide, only `get` on the watched Namespaces by name (their size-limit annotation).
    (cluster_role,), (cluster_binding,) = operator_rbac(objects, "ClusterRole"), operator_rbac(objects, "ClusterRoleBinding")
    assert cluster_role["rules"] == rbac.namespace_reader_rules(values["watchNamespaces"])
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    roles = {r["metadata"]["namespace"]: r for r in operator_rbac(objects, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in operator_rbac(objects, "RoleBinding")}
    assert set(roles) == set(bindings) == set(values["watchNamespaces"])
    wanted = rbac.permissions(rbac.policy_rules(cluster_wide=False, volume_snapshots=_snapshots(values)))
    service_account = one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    for namespace, role in roles.items():
        granted = rbac.permissions(role["rules"])
        assert not wanted - granted, f"{namespace}: missing from the chart: {sorted(wanted - granted)}"
        assert not granted - wanted, f"{namespace}: granted beyond rbac.py: {sorted(granted - wanted)}"
        _no_wildcards(role["rules"])
        assert bindings[namespace]["roleRef"]["name"] == role["metadata"]["name"]
        assert bindings[namespace]["subjects"] == [
            {"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}]
    assert cluster_binding["subjects"] == [{"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}]
    args = operator_container(objects)["args"]
    assert [a for a in args if a.startswith("--namespace")] == [f"--namespace={n}" for n in values["watchNamespaces"]]
    assert "--all-namespaces" not in args


def test_the_catalog_rbac_equals_the_table(chart):
    """Namespaced mode: the catalog's ClusterRole (ClusterCheckpoints are cluster-scoped) and, in the release
    namespace when it is not watched, its Role; cluster-wide, the operator's ClusterRole has both."""
    objects = render(chart, SCENARIOS["namespaced"])
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    catalog_role = by_name[("ClusterRole", f"{RELEASE}-checkpoint-operator-catalog")]
    assert rbac.permissions(catalog_role["rules"]) == rbac.permissions(rbac.catalog_cluster_rules())
    namespace_role = by_name[("Role", f"{RELEASE}-checkpoint-operator-catalog")]
    assert namespace_role["metadata"]["namespace"] == NAMESPACE
    assert rbac.permissions(namespace_role["rules"]) == rbac.permissions(rbac.catalog_namespace_rules())
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        binding = by_name[(kind, f"{RELEASE}-checkpoint-operator-catalog")]
        assert binding["roleRef"]["name"] == f"{RELEASE}-checkpoint-operator-catalog"
    watched = render(chart, {"watchNamespaces": ["team-a", NAMESPACE]})
    assert not [o for o in watched if o["kind"] == "Role" and o["metadata"]["name"].endswith("-catalog")]


def test_tenants_read_the_catalog_and_only_administrators_write_it(chart):
    objects = render(chart)
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    reader = by_name[("ClusterRole", f"{RELEASE}-checkpoint-operator-catalog-reader")]
    assert rbac.permissions(reader["rules"]) == {("ckpt.dev", "clustercheckpoints", v) for v in ("get", "list", "watch")}
    for role in ("view", "edit", "admin", "cluster-reader"):
        assert reader["metadata"]["labels"][f"rbac.authorization.k8s.io/aggregate-to-{role}"] == "true"
    binding = by_name[("ClusterRoleBinding", f"{RELEASE}-checkpoint-operator-catalog-reader")]
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                                    "name": "system:authenticated"}]
    # The editor role exists for a platform team to bind; the chart binds it to no one.
    editor = f"{RELEASE}-checkpoint-operator-catalog-editor"
    assert ("ClusterRole", editor) in by_name
    assert not [o for o in objects if o.get("roleRef", {}).get("name") == editor]
    writes = {"create", "update", "patch", "delete"}
    for obj in objects:  # nothing but the operator's own ClusterRole may patch entries, and nothing bound creates one
        if obj["kind"] in ("ClusterRoleBinding", "RoleBinding") and obj["metadata"]["name"] != editor:
            role = by_name.get(("ClusterRole", obj["roleRef"]["name"])) or by_name.get(("Role", obj["roleRef"]["name"]))
            granted = {v for g, r, v in rbac.permissions(role["rules"]) if r == "clustercheckpoints"}
            assert not granted & (writes - {"patch"}), f"{obj['metadata']['name']} may {granted & writes}"
    private = render(chart, {"catalog": {"tenantRead": False}})
    assert not [o for o in private if o["metadata"]["name"].endswith("-catalog-reader") and o["kind"] != "ClusterRole"]


def test_catalog_entries_render_as_valid_cluster_checkpoints(chart):
    entries = [{"name": "gpt2", "source": {"huggingFace": {"repo": "openai-community/gpt2", "revision": "main"}},
                "license": "https://huggingface.co/openai-community/gpt2/blob/main/LICENSE", "description": "GPT-2"},
               {"name": "tiny-bert", "source": {"http": {"url": "https://example.com/tiny-bert.tar.gz"}}}]
    objects = render(chart, {"catalog": {"entries": entries}})
    found = {o["metadata"]["name"]: o for o in of_kind(objects, "ClusterCheckpoint")}
    assert set(found) == {"gpt2", "tiny-bert"}
    from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint
    gpt2 = ClusterCheckpoint.model_validate({k: v for k, v in found["gpt2"].items() if k != "_template"})
    assert gpt2.spec.source.huggingFace is not None and gpt2.spec.license == entries[0]["license"]
    assert found["gpt2"]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "namespace" not in found["gpt2"]["metadata"]


# --- peering --------------------------------------------------------------------------------

def test_two_replicas_peer_cluster_wide(chart):
    objects = render(chart, SCENARIOS["replicas-2"])
    peering = one(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == PEERING_NAME
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "--standalone" not in operator_container(objects)["args"]


def test_two_replicas_peer_in_each_watched_namespace(chart):
    objects = render(chart, SCENARIOS["namespaced-replicas-2"])
    assert not of_kind(objects, "ClusterKopfPeering")
    peerings = of_kind(objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert {p["metadata"]["name"] for p in peerings} == {PEERING_NAME}


def test_chart_ships_the_kopf_peering_crds(chart):
    crds = [d for c in chart.crds for d in yaml.safe_load_all(c["data"]) if d]
    by_name = {c["metadata"]["name"]: c for c in crds}
    assert set(by_name) == {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"}
    assert by_name["kopfpeerings.kopf.dev"]["spec"]["scope"] == "Namespaced"
    assert by_name["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    for crd in crds:
        validate_object(crd)
        assert crd["spec"]["group"] == "kopf.dev"
        assert [v["name"] for v in crd["spec"]["versions"]] == ["v1"]
    # the peering RBAC names exactly these resources
    peering_resources = {r for rule in rbac.RULES if rule.api_groups == ("kopf.dev",) for r in rule.resources}
    assert peering_resources == {c["spec"]["names"]["plural"] for c in crds}


# --- metrics --------------------------------------------------------------------------------

def test_metrics_off(chart):
    objects = render(chart, SCENARIOS["metrics-off"])
    assert not of_kind(objects, "Service") and not of_kind(objects, "ServiceMonitor")
    container = operator_container(objects)
    assert "--metrics-port=0" in container["args"]
    assert "metrics" not in {p["name"] for p in container["ports"]}


def test_metrics_service_targets_the_container_port(chart):
    objects = render(chart)
    service = one(objects, "Service")
    container = operator_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[service["spec"]["ports"][0]["targetPort"]] == 8080
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not of_kind(objects, "ServiceMonitor")


def test_service_monitor(chart):
    objects = render(chart, SCENARIOS["service-monitor"])
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (endpoint["path"], endpoint["interval"], endpoint["scrapeTimeout"]) == ("/metrics", "15s", "10s")


def test_service_monitor_without_service_is_refused(chart):
    with pytest.raises(Exception, match="metrics.service.enabled"):
        render(chart, {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}})


# --- CRDs -----------------------------------------------------------------------------------

def _crds(objects: list[dict]) -> list[dict]:
    return of_kind(objects, "CustomResourceDefinition")


def test_crds_install_false_renders_no_crds(chart):
    assert not _crds(render(chart, SCENARIOS["no-crds"]))


@pytest.fixture(scope="module")
def chart_with_generated_crds(tmp_path_factory):
    """The chart with templates/crds.yaml as `checkpoint-operator crds` writes it (whatever the
    working tree holds; the generator's own --check catches a stale copy)."""
    from checkpoint_operator.api.crdgen import render_chart_template

    copy_dir = tmp_path_factory.mktemp("chart") / "checkpoint-operator"
    shutil.copytree(CHART_DIR, copy_dir)
    (copy_dir / "templates" / "crds.yaml").write_text(render_chart_template())
    with helm_chart.Chart.load(copy_dir) as loaded:
        yield loaded


def test_generated_crds_render_validate_and_are_kept(chart_with_generated_crds):
    crds = _crds(render(chart_with_generated_crds))
    assert sorted(c["metadata"]["name"] for c in crds) == ["checkpoints.ckpt.dev", "clustercheckpoints.ckpt.dev",
                                                           "trainingjobs.ckpt.dev"]
    for crd in crds:
        validate_object(crd)
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not _crds(render(chart_with_generated_crds, {"crds": {"install": False}}))


def test_crd_template_is_wrapped_in_the_install_switch():
    text = (CHART_DIR / "templates" / "crds.yaml").read_text()
    body = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert body[0] == "{{- if .Values.crds.install }}"
    assert body[-1] == "{{- end }}"


# --- values and schema ----------------------------------------------------------------------

BAD_VALUES = {
    "wrong type": ({"replicas": "two"}, "replicas"),
    "unknown top-level key": ({"replicaCount": 2}, "replicaCount"),
    "bad storage type": ({"storage": {"type": "nfs"}}, "type"),
    "unknown nested key": ({"metrics": {"prot": 9090}}, "prot"),
    "bad pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    "bad namespace name": ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    "bad log format": ({"logFormat": "xml"}, "logFormat"),
    "bad size": ({"storage": {"defaultSize": "ten gigs"}}, "defaultSize"),
    "bad interval": ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "interval"),
    "s3 without bucket": ({"storage": {"type": "s3"}}, "bucket"),
    "crds.install not a boolean": ({"crds": {"install": "yes"}}, "install"),
    "metrics port on the liveness port": ({"metrics": {"port": 8081}}, "port"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_schema_rejects_bad_values(chart, case):
    values, key = BAD_VALUES[case]
    # install/upgrade validate the values before rendering: render() raises HelmValuesError
    with pytest.raises(HelmValuesError) as raised:
        render(chart, values)
    assert key in str(raised.value)
    with pytest.raises(HelmValuesError):
        chart.validate_schema(chart.merge_values(values))


def test_schema_accepts_defaults_and_every_scenario(chart):
    chart.validate_schema(chart.values)
    for values in SCENARIOS.values():
        chart.validate_schema(chart.merge_values(values))


def test_values_file_and_schema_describe_the_same_keys(chart):
    schema = chart.schema
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) - {"global"} == set(chart.values)
    for section in ("image", "crds", "storage", "agent", "metrics", "serviceAccount"):
        assert schema["properties"][section]["additionalProperties"] is False, section
        assert set(schema["properties"][section]["properties"]) == set(chart.values[section]), section


@pytest.mark.parametrize("scenario", ["defaults", "s3", "namespaced-replicas-2", "service-monitor"])
def test_lint_passes(scenario):
    report = helm_chart.lint(CHART_DIR, SCENARIOS[scenario], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_lint_reports_bad_values():
    report = helm_chart.lint(CHART_DIR, {"replicas": "two"})
    assert report["errors"], report


def test_notes_tell_the_next_step(chart):
    notes = chart.render(values={"watchNamespaces": ["team-a"]}, name=RELEASE, namespace=NAMESPACE)
    text = next(v for k, v in notes.items() if k.endswith("NOTES.txt"))
    assert "kubectl get tj,ckpt" in text
    assert "kubectl apply -f" in text and "examples/quickstart.yaml" in text  # the one needing no edit (hostile7 D1)
    assert "kubectl wait --for=condition=Ready ckpt/quickstart.step-2" in text
    assert "team-a" in text


def test_the_publish_timeout_reaches_the_operator_and_is_refused_unless_above_zero(chart):
    """publishTimeoutSeconds (CKPT_PUBLISH_TIMEOUT) bounds a finished job's wait for its Checkpoints:
    600 s by default, any other above zero; 0 or less is refused by the chart's schema and, set by
    hand, by the operator in one line (before: a constant)."""
    def config_of(values: dict[str, Any] | None = None) -> OperatorConfig:
        env = env_of(operator_container(render(chart, values)))
        return OperatorConfig.from_env({k: v for k, v in env.items() if k.startswith(ENV_PREFIX) and isinstance(v, str)})
    assert config_of().publish_timeout == 600.0
    assert config_of({"publishTimeoutSeconds": 1800}).publish_timeout == 1800.0
    assert config_of({"publishTimeoutSeconds": 2.5}).publish_timeout == 2.5
    for bad in (0, -5):
        with pytest.raises(HelmValuesError, match="publishTimeoutSeconds"):
            render(chart, {"publishTimeoutSeconds": bad})
    with pytest.raises(ConfigError) as refused:
        OperatorConfig.from_env({"CKPT_PUBLISH_TIMEOUT": "0"})
    assert str(refused.value).startswith("CKPT_PUBLISH_TIMEOUT=0: input should be greater than 0 (seconds a finished job")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("scenario", ["defaults", "namespaced"])
def test_the_signing_key_role_equals_the_table(chart, scenario):
    """Both modes: get on the one signing-key Secret by name, create (when missing), in the release namespace only."""
    objects = render(chart, SCENARIOS.get(scenario, {}))
    roles = [o for o in of_kind(objects, "Role") if o["metadata"]["name"].endswith("-signing-key")]
    bindings = [o for o in of_kind(objects, "RoleBinding") if o["metadata"]["name"].endswith("-signing-key")]
    assert len(roles) == len(bindings) == 1
    (role,), (binding,) = roles, bindings
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == rbac.signing_key_rules()
    assert [r.get("resourceNames") for r in role["rules"] if "get" in r["verbs"]] == [[SIGNING_KEY_SECRET]]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    service_account = one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}]
