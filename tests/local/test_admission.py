"""The emulated API refuses, prunes and defaults what a real API server does (local/admission.py).

Every test goes through the emulator's HTTP API, as local mode, kopf and the integration tests do.
The CEL cases are those of tests/unit/api/test_rules.py: the emulator must refuse exactly what they say.
"""

from __future__ import annotations

import copy

import pytest

from checkpoint_operator.api.checkpoint import Checkpoint
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint
from checkpoint_operator.local.server import ApiClient, ApiError
from unit.api.test_rules import CASES, IMMUTABLE, LONG_BAD, LONG_OK, Case
from unit.api.test_crdgen import EXAMPLE_DOCS

NS = "default"
CKPTS = "ckpt.dev/v1alpha1/checkpoints"
TJS = "ckpt.dev/v1alpha1/trainingjobs"
CCKPTS = "ckpt.dev/v1alpha1/clustercheckpoints"
RESOURCE_OF = {"Checkpoint": CKPTS, "TrainingJob": TJS, "ClusterCheckpoint": CCKPTS}


def ns_of(kind: str) -> str | None:
    """Where an object of the kind lives: a ClusterCheckpoint in no namespace."""
    return None if kind == "ClusterCheckpoint" else NS


def checkpoint(name: str) -> dict:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint", "metadata": {"name": name},
            "spec": {"source": {"s3": {"uri": "s3://models/base/"}}}}


def training_job(name: str, **spec) -> dict:
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "x"}]}}, **spec}}


BODIES = {
    CKPTS: checkpoint,
    TJS: training_job,
    "v1/pods": lambda name: {"metadata": {"name": name}, "spec": {"containers": [{"name": "main", "image": "x"}]}},
    "v1/persistentvolumeclaims": lambda name: {"metadata": {"name": name}, "spec": {}},
    "v1/secrets": lambda name: {"metadata": {"name": name}, "data": {}},
    "v1/configmaps": lambda name: {"metadata": {"name": name}, "data": {}},
    "batch/v1/jobs": lambda name: {"metadata": {"name": name}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "main", "image": "x"}]}}}},
}


async def refused(call) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await call
    assert caught.value.status == 422 and caught.value.reason == "Invalid", caught.value
    return caught.value


# --- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("resource", BODIES)
@pytest.mark.parametrize("name, problem", [
    ("UpperCase", "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters"),
    ("bad_name", "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters"),
    ("-dash", "a lowercase RFC 1123 subdomain"),
    (LONG_BAD, "must be no more than 253 characters"),
])
async def test_invalid_names_are_refused(api: ApiClient, resource: str, name: str, problem: str) -> None:
    error = await refused(api.create(resource, NS, BODIES[resource](name)))
    assert f'metadata.name: Invalid value: "{name}": ' in str(error) and problem in str(error)
    assert error.body["details"]["causes"][0]["field"] == "metadata.name"
    assert await api.list(resource, NS) == []


@pytest.mark.parametrize("resource", [CKPTS, TJS, "v1/pods", "v1/secrets"])
async def test_a_253_character_subdomain_is_a_valid_name(api: ApiClient, resource: str) -> None:
    name = LONG_OK.replace(".", "-") if resource == TJS else LONG_OK  # a TrainingJob's name has no '.' (CEL)
    created = await api.create(resource, NS, BODIES[resource](name))
    assert created["metadata"]["name"] == name


async def test_a_training_job_named_with_a_dot_or_taking_itself_is_refused_by_the_crds_cel(api: ApiClient) -> None:
    error = await refused(api.create(TJS, NS, BODIES[TJS]("sft.v2")))
    assert "metadata.name of a TrainingJob must not contain '.'" in str(error)
    body = BODIES[TJS]("sft")
    body["spec"]["checkpoints"] = [{"name": "base"}, {"fromTrainingJob": "sft"}]
    error = await refused(api.create(TJS, NS, body))
    assert "spec.checkpoints: Invalid value" in str(error) and "must not name the TrainingJob itself" in str(error)
    assert await api.list(TJS, NS) == []


async def test_a_job_name_must_fit_a_label_value(api: ApiClient) -> None:
    await api.create("batch/v1/jobs", NS, BODIES["batch/v1/jobs"]("j" * 63))
    error = await refused(api.create("batch/v1/jobs", NS, BODIES["batch/v1/jobs"]("j" * 64)))
    assert str(error).endswith(f'Job.batch "{"j" * 64}" is invalid: spec.template.labels: Invalid value: '
                               f'"{"j" * 64}": must be no more than 63 characters')


async def test_namespace_names_are_labels(api: ApiClient) -> None:
    await api.create("v1/namespaces", None, {"metadata": {"name": "team-a"}})
    error = await refused(api.create("v1/namespaces", None, {"metadata": {"name": "team.a"}}))
    assert "a lowercase RFC 1123 label must consist of" in str(error)


async def test_generate_name_is_cut_before_the_suffix(api: ApiClient) -> None:
    created = await api.create("v1/pods", NS, {**BODIES["v1/pods"](""), "metadata": {"generateName": "p" * 70}})
    name = created["metadata"]["name"]
    assert len(name) == 63 and name.startswith("p" * 58)
    await refused(api.create("v1/pods", NS, {**BODIES["v1/pods"](""), "metadata": {"generateName": "Bad-"}}))
    error = await refused(api.create("v1/pods", NS, {"metadata": {}, "spec": {}}))
    assert "metadata.name: Required value" in str(error)


@pytest.mark.parametrize("metadata, problem", [
    ({"labels": {"app": "not valid!"}}, 'metadata.labels: Invalid value: "not valid!": a valid label must be'),
    ({"labels": {"app": "v" * 64}}, "must be no more than 63 characters"),
    ({"labels": {"bad key": "v"}}, 'metadata.labels: Invalid value: "bad key": name part must consist of'),
    ({"annotations": {"example.com/": "v"}}, "name part must be non-empty"),
    ({"finalizers": ["Example.com/x y"]}, "metadata.finalizers[0]: Invalid value"),
])
async def test_invalid_metadata_is_refused(api: ApiClient, metadata: dict, problem: str) -> None:
    body = BODIES["v1/pods"]("p")
    error = await refused(api.create("v1/pods", NS, {**body, "metadata": {"name": "p", **metadata}}))
    assert problem in str(error)
    await api.create("v1/pods", NS, body)
    await refused(api.patch("v1/pods", NS, "p", {"metadata": metadata}))  # on update too


# --- the CRDs' schemas and CEL rules -----------------------------------------------------------------

@pytest.mark.parametrize("case", [c for c in CASES if c.old is None], ids=lambda c: c.id)
async def test_cel_cases_on_create(api: ApiClient, case: Case) -> None:
    """Each case of tests/unit/api/test_rules.py, created through the API: refused exactly when the CRD refuses it."""
    resource, ns = RESOURCE_OF[case.kind], ns_of(case.kind)
    if not case.rejected_by and case.openapi_valid:
        created = await api.create(resource, ns, copy.deepcopy(case.obj))
        assert created["metadata"]["name"] == case.obj["metadata"]["name"]
        return
    error = await refused(api.create(resource, ns, copy.deepcopy(case.obj)))
    for rule_message in case.rejected_by:
        assert rule_message in error.body["message"], error.body["message"]
    assert await api.list(resource, ns) == []


@pytest.mark.parametrize("case", [c for c in CASES if c.old is not None], ids=lambda c: c.id)
async def test_cel_transition_cases_on_update(api: ApiClient, case: Case) -> None:
    resource, ns = RESOURCE_OF[case.kind], ns_of(case.kind)
    stored = await api.create(resource, ns, copy.deepcopy(case.old))
    update = {**copy.deepcopy(case.obj), "metadata": stored["metadata"]}
    if IMMUTABLE not in case.rejected_by:
        assert (await api.replace(resource, ns, stored["metadata"]["name"], update))["spec"] == stored["spec"]
        return
    error = await refused(api.replace(resource, ns, stored["metadata"]["name"], update))
    assert f'is invalid: spec: Invalid value: "object": {IMMUTABLE}' in error.body["message"]
    assert (await api.get(resource, ns, stored["metadata"]["name"]))["spec"] == stored["spec"]


async def test_a_training_job_spec_edit_is_refused_but_metadata_and_status_change(api: ApiClient) -> None:
    await api.create(TJS, NS, training_job("tj", replicas=1))
    error = await refused(api.patch(TJS, NS, "tj", {"spec": {"replicas": 2}}))
    assert error.body["message"] == (
        'TrainingJob.ckpt.dev "tj" is invalid: spec: Invalid value: "object": spec is immutable (spec.checkpoints, '
        "spec.output, spec.template, ...): delete and re-create the TrainingJob to change it")
    assert error.body["details"]["causes"] == [{"reason": "FieldValueInvalid", "field": "spec", "message":
                                                error.body["message"].split("is invalid: spec: ")[1]}]
    assert (await api.patch(TJS, NS, "tj", {"metadata": {"labels": {"a": "b"}}}))["metadata"]["labels"] == {"a": "b"}
    assert (await api.patch(TJS, NS, "tj", {"status": {"phase": "Running"}}, subresource="status")
            )["status"]["phase"] == "Running"
    assert (await api.get(TJS, NS, "tj"))["spec"]["replicas"] == 1


async def test_rule_errors_name_the_field_path(api: ApiClient) -> None:
    error = await refused(api.create(TJS, NS, training_job("tj", inputDir="in", replicas=0)))
    fields = sorted(cause["field"] for cause in error.body["details"]["causes"])
    assert fields == ["spec.inputDir", "spec.replicas"]
    assert 'spec.replicas: Invalid value: "object": spec.replicas must be at least 1' in error.body["message"]
    assert error.body["message"].startswith('TrainingJob.ckpt.dev "tj" is invalid: [')


@pytest.mark.parametrize("spec, problem", [
    ({"replicas": "two"}, 'spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: '
                          '"string"'),
    ({"output": {"layout": "flat"}}, 'spec.output.layout: Unsupported value: "flat": supported values: "auto", '
                                     '"directories", "files"'),
    ({"output": {"size": "lots"}}, 'spec.output.size: Invalid value: "lots": spec.output.size in body should match'),
    ({"backoffLimit": -1}, "spec.backoffLimit: Invalid value: -1: spec.backoffLimit in body should be greater than "
                           "or equal to 0"),
    ({"checkpoints": [{"name": "c"}] * 65}, "spec.checkpoints: Too many: 65: must have at most 64 items"),
    ({"checkpoints": [{"name": LONG_BAD}]}, "spec.checkpoints[0].name: Too long: may not be more than 253 bytes"),
])
async def test_schema_violations_are_refused(api: ApiClient, spec: dict, problem: str) -> None:
    error = await refused(api.create(TJS, NS, training_job("tj", **spec)))
    assert problem in error.body["message"]


async def test_required_fields(api: ApiClient) -> None:
    error = await refused(api.create(TJS, NS, {"metadata": {"name": "tj"}, "spec": {}}))
    assert error.body["message"] == 'TrainingJob.ckpt.dev "tj" is invalid: spec.template: Required value'
    error = await refused(api.create(CKPTS, NS, {"metadata": {"name": "c"}}))
    assert error.body["message"] == 'Checkpoint.ckpt.dev "c" is invalid: spec: Required value'


async def test_status_updates_are_validated(api: ApiClient) -> None:
    await api.create(CKPTS, NS, checkpoint("c"))
    error = await refused(api.patch(CKPTS, NS, "c", {"status": {"phase": "Bogus"}}, subresource="status"))
    assert 'status.phase: Unsupported value: "Bogus": supported values: "Pending", "Importing", "Ready", "Failed"' \
        in error.body["message"]
    await refused(api.patch(CKPTS, NS, "c", {"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "R", "lastTransitionTime": "t"},
        {"type": "Ready", "status": "False", "reason": "R", "lastTransitionTime": "t"}]}}, subresource="status"))
    assert "status" not in await api.get(CKPTS, NS, "c")


async def test_unknown_fields_are_pruned_not_refused(api: ApiClient) -> None:
    body = training_job("tj", typo=1, output={"sizee": "1Gi", "keep": 2}, backoffLimit=None)
    body["spec"]["template"]["spec"]["nodeSelector"] = {"gpu": "a100"}  # a PodSpec: kept as it is
    body["metadata"]["madeUp"] = "x"
    created = await api.create(TJS, NS, body)
    assert "typo" not in created["spec"] and "backoffLimit" not in created["spec"]
    assert created["spec"]["output"] == {"enabled": True, "layout": "auto", "keep": 2}
    assert created["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "a100"}
    assert "madeUp" not in created["metadata"]
    updated = await api.patch(TJS, NS, "tj", {"status": {"phase": "Running", "secret": "x", "conditions": [
        {"type": "Ready", "status": "False", "reason": "Starting", "lastTransitionTime": "t", "extra": 1}]}},
        subresource="status")
    assert updated["status"] == {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "False", "reason": "Starting", "lastTransitionTime": "t"}]}
    assert await api.get(TJS, NS, "tj") == updated


async def test_defaults_are_stored_as_the_models_read_them(api: ApiClient) -> None:
    body = training_job("tj")
    created = await api.create(TJS, NS, copy.deepcopy(body))
    assert created["spec"] == TrainingJob.model_validate(body).to_wire()["spec"]
    assert created["spec"]["output"] == {"enabled": True, "layout": "auto"}
    assert (created["spec"]["inputDir"], created["spec"]["outputDir"], created["spec"]["replicas"],
            created["spec"]["checkpoints"]) == ("/input-checkpoint", "/output-checkpoint", 1, [])


@pytest.mark.parametrize("name, doc", EXAMPLE_DOCS, ids=[n for n, _ in EXAMPLE_DOCS])
async def test_the_examples_are_accepted(api: ApiClient, name: str, doc: dict) -> None:
    created = await api.create(RESOURCE_OF[doc["kind"]], ns_of(doc["kind"]), copy.deepcopy(doc))
    model = {"Checkpoint": Checkpoint, "TrainingJob": TrainingJob, "ClusterCheckpoint": ClusterCheckpoint}[doc["kind"]]
    assert created["spec"] == model.model_validate(doc).to_wire()["spec"]


async def test_a_cluster_checkpoint_is_cluster_scoped(api: ApiClient) -> None:
    """Stored without a namespace, listed at the cluster's scope, its status written through its subresource, and
    not reachable under a namespace (a path the API server does not serve for a cluster-scoped kind)."""
    doc = next(d for _, d in EXAMPLE_DOCS if d["kind"] == "ClusterCheckpoint")
    created = await api.create(CCKPTS, None, copy.deepcopy(doc))
    assert "namespace" not in created["metadata"] and created["metadata"]["uid"]
    assert [o["metadata"]["name"] for o in await api.list(CCKPTS, None)] == [doc["metadata"]["name"]]
    patched = await api.patch(CCKPTS, None, doc["metadata"]["name"], {"status": {"phase": "Importing"}},
                              subresource="status")
    assert patched["status"]["phase"] == "Importing"
    assert await api.get(CCKPTS, NS, doc["metadata"]["name"]) is None  # 404


# --- CRDs created through the API are served with their schema ---------------------------------------------

WIDGET_CRD = {
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"spec": {
                     "type": "object", "required": ["size"],
                     "x-kubernetes-validations": [{"rule": "self.size < 10", "message": "spec.size must be below 10",
                                                   "fieldPath": ".size"}],
                     "properties": {"size": {"type": "integer", "minimum": 1},
                                    "color": {"type": "string", "default": "blue", "maxLength": 8}}}}}}}]}}


async def test_a_crd_created_through_the_api_validates_its_objects(api: ApiClient) -> None:
    await api.create("apiextensions.k8s.io/v1/customresourcedefinitions", None, copy.deepcopy(WIDGET_CRD))
    widgets = "example.com/v1/widgets"
    created = await api.create(widgets, NS, {"metadata": {"name": "w"}, "spec": {"size": 3, "shape": "round"}})
    assert created["spec"] == {"size": 3, "color": "blue"}
    error = await refused(api.create(widgets, NS, {"metadata": {"name": "big"}, "spec": {"size": 12}}))
    assert error.body["message"] == ('Widget.example.com "big" is invalid: spec.size: Invalid value: "object": '
                                     "spec.size must be below 10")
    await refused(api.create(widgets, NS, {"metadata": {"name": "zero"}, "spec": {"size": 0}}))
    await refused(api.patch(widgets, NS, "w", {"spec": {"color": "ultraviolet"}}))


async def test_a_crd_whose_rule_does_not_compile_is_refused(api: ApiClient) -> None:
    crd = copy.deepcopy(WIDGET_CRD)
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] = [
        {"rule": "self.size <"}]
    error = await refused(api.create("apiextensions.k8s.io/v1/customresourcedefinitions", None, crd))
    assert "compilation failed" in error.body["message"]


async def test_rules_see_escaped_property_names_as_the_api_server_spells_them(api: ApiClient) -> None:
    """A property named with a CEL keyword is `__namespace__` in rules, and `-`, `.`, `/`, `__` inside a
    name are escaped (apiserver/pkg/cel/escaping.go); keys of a map (additionalProperties) are not.
    External-snapshotter's VolumeSnapshotContent says `has(self.__namespace__)`: every content was
    refused before."""
    crd = copy.deepcopy(WIDGET_CRD)
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec.pop("required", None)
    spec["properties"] = {"namespace": {"type": "string"}, "max-size": {"type": "integer"},
                          "tags": {"type": "object", "additionalProperties": {"type": "string"}}}
    spec["x-kubernetes-validations"] = [
        {"rule": "has(self.__namespace__)", "message": "namespace is required"},
        {"rule": "!has(self.max__dash__size) || self.max__dash__size < 10", "message": "max-size below 10"},
        {"rule": "!has(self.tags) || !('a-b' in self.tags) || self.tags['a-b'] == 'ok'", "message": "tag a-b is ok"}]
    await api.create("apiextensions.k8s.io/v1/customresourcedefinitions", None, crd)
    widgets = "example.com/v1/widgets"
    await api.create(widgets, NS, {"metadata": {"name": "w"},
                                   "spec": {"namespace": "x", "max-size": 3, "tags": {"a-b": "ok"}}})
    for bad, problem in (({}, "namespace is required"), ({"namespace": "x", "max-size": 12}, "max-size below 10"),
                         ({"namespace": "x", "tags": {"a-b": "no"}}, "tag a-b is ok")):
        error = await refused(api.create(widgets, NS, {"metadata": {"name": "bad"}, "spec": bad}))
        assert problem in error.body["message"]


# --- built-in resources: what a TrainingJob's pod template carries (hostile5 F3) -------------------

def job(name: str, **pod_spec) -> dict:
    pod_spec.setdefault("containers", [{"name": "main", "image": "x"}])
    return {"metadata": {"name": name}, "spec": {"template": {"spec": pod_spec}}}


@pytest.mark.parametrize("pod_spec, message", [
    ({"restartPolicy": "Always"}, 'spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: '
                                  '"OnFailure", "Never"'),
    ({}, 'spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never"'),
    ({"restartPolicy": "Never", "containers": [{"name": "Bad Name", "image": "x"}]},
     'spec.template.spec.containers[0].name: Invalid value: "Bad Name": a lowercase RFC 1123 label must consist of'),
    ({"restartPolicy": "Never", "containers": [{"name": "c" * 64, "image": "x"}]},
     f'spec.template.spec.containers[0].name: Invalid value: "{"c" * 64}": must be no more than 63 characters'),
    ({"restartPolicy": "Never", "initContainers": [{"name": "a", "image": "x"}],
      "containers": [{"name": "a", "image": "x"}]}, 'spec.template.spec.initContainers[0].name: Duplicate value: "a"'),
    ({"restartPolicy": "Never", "containers": [{"image": "x"}]},
     "spec.template.spec.containers[0].name: Required value"),
    ({"restartPolicy": "Never", "containers": []}, "spec.template.spec.containers: Required value"),
])
async def test_a_job_is_refused_as_the_api_server_refuses_its_pod_template(api: ApiClient, pod_spec: dict,
                                                                            message: str) -> None:
    error = await refused(api.create("batch/v1/jobs", NS, job("j", **pod_spec)))
    assert error.body["message"].startswith(f'Job.batch "j" is invalid: {message}'), str(error)
    assert await api.list("batch/v1/jobs", NS) == []


async def test_pods_and_claims_are_refused_as_the_api_server_refuses_them(api: ApiClient) -> None:
    error = await refused(api.create("v1/pods", NS, {"metadata": {"name": "p"}, "spec": {
        "restartPolicy": "Sometimes", "containers": [{"name": "under_score", "image": "x"}]}}))
    assert 'spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never"' \
        in str(error) and 'spec.containers[0].name: Invalid value: "under_score"' in str(error)
    for size in ("0", "0Gi", "0.0", "-1Gi"):
        error = await refused(api.create("v1/persistentvolumeclaims", NS, {"metadata": {"name": "c"}, "spec": {
            "resources": {"requests": {"storage": size}}}}))
        assert str(error).endswith(f'spec.resources[storage]: Invalid value: "{size}": must be greater than zero')
    # what a cluster accepts is accepted: a pod restarting Always, a job OnFailure, a claim of 0.5Gi or 100m
    await api.create("v1/pods", NS, {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x"}],
                                                                        "initContainers": [{"name": "b", "image": "x"}]}})
    await api.create("batch/v1/jobs", NS, job("j", restartPolicy="OnFailure"))
    for name, size in (("half", "0.5Gi"), ("milli", "100m")):
        await api.create("v1/persistentvolumeclaims", NS, {"metadata": {"name": name}, "spec": {
            "resources": {"requests": {"storage": size}}}})


def test_local_run_refuses_an_invalid_name_in_one_line(tmp_path) -> None:
    """The pydantic models do not check names; the emulated API does, as a cluster would."""
    import subprocess
    import sys

    manifest = tmp_path / "bad.yaml"
    manifest.write_text("apiVersion: ckpt.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: Finetune_1}\n"
                        "spec: {template: {spec: {containers: [{name: c, command: ['true']}]}}}\n")
    result = subprocess.run([sys.executable, "-m", "checkpoint_operator", "local", "run", "-f", str(manifest),
                             "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        'error: TrainingJob.ckpt.dev "Finetune_1" is invalid: metadata.name: Invalid value: "Finetune_1": '
        "a lowercase RFC 1123 subdomain")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("resource", [CKPTS, CCKPTS])
async def test_a_max_size_that_is_no_quantity_is_refused_in_one_line_by_its_pattern(api: ApiClient, resource: str) -> None:
    """The size-limit rule reads the quantity only when it is one: the pattern names the mistake
    alone (no second line from a quantity() that cannot parse it)."""
    body = checkpoint("lots") if resource == CKPTS else {
        "apiVersion": "ckpt.dev/v1alpha1", "kind": "ClusterCheckpoint", "metadata": {"name": "lots"},
        "spec": {"source": {"huggingFace": {"repo": "org/tiny"}}}}
    body["spec"]["maxSize"] = "lots"
    error = await refused(api.create(resource, ns_of(body["kind"]), body))
    causes = error.body["details"]["causes"]
    assert [c["field"] for c in causes] == ["spec.maxSize"] and "should match" in causes[0]["message"]
    body["spec"]["maxSize"] = "99999999999999999999Ei"
    error = await refused(api.create(resource, ns_of(body["kind"]), body))
    assert "spec.maxSize must be a whole number of bytes above zero and below 8Ei" in str(error)
