"""The pydantic models refuse what the CRD refuses, with the CRD's message, and default like it."""

from __future__ import annotations

import copy

import jsonschema
import pydantic
import pytest

from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointSpec, VolumeSource
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint
from checkpoint_operator.api.trainingjob import OutputSpec, TrainingJob, TrainingJobSpec
from .test_rules import (CASES, Case, apply_defaults, checkpoint, iter_schema_rules, load_crd, open_api_schema,
                             training_job)
from .test_crdgen import to_json_schema

MODELS = {"Checkpoint": Checkpoint, "TrainingJob": TrainingJob, "ClusterCheckpoint": ClusterCheckpoint}


def crd_messages(case: Case) -> list[str]:
    """The full messages of the rules a case is refused by (not the transition rule: no oldSelf here)."""
    schema = open_api_schema(load_crd(case.kind))
    return [rule["message"] for _, _, rule in iter_schema_rules(schema)
            if "oldSelf" not in rule["rule"] and any(rule["message"].startswith(p) for p in case.rejected_by)]


REFUSED = [c for c in CASES if c.rejected_by and c.old is None and not c.api_server_only]
ACCEPTED = [c for c in CASES if not c.rejected_by]


def test_models_refuse_what_the_crd_refuses() -> None:
    wrong = {}
    for case in REFUSED:
        try:
            MODELS[case.kind].model_validate(copy.deepcopy(case.obj))
            wrong[case.id] = "accepted"
            continue
        except pydantic.ValidationError as error:
            text = str(error)
        # with openapi_valid=False the field's own constraint (maxLength, required) speaks first
        messages = crd_messages(case)
        if case.openapi_valid and not (messages and any(m in text for m in messages)):
            wrong[case.id] = f"expected one of {messages}, got {text}"
    assert not wrong
    assert len(REFUSED) >= 50


def test_models_accept_and_default_like_the_crd() -> None:
    wrong = {}
    for case in ACCEPTED:
        defaulted = apply_defaults(open_api_schema(load_crd(case.kind)), copy.deepcopy(case.obj))
        try:
            wire = MODELS[case.kind].model_validate(copy.deepcopy(case.obj)).to_wire()
        except pydantic.ValidationError as error:
            wrong[case.id] = str(error)
            continue
        if wire != defaulted:
            wrong[case.id] = f"{wire} != {defaulted}"
    assert not wrong
    assert len(ACCEPTED) >= 25


def test_immutability_is_left_to_the_api_server() -> None:
    # A transition rule needs the stored object: the model accepts each version on its own.
    for case in [c for c in CASES if c.old is not None]:
        model = MODELS[case.kind]
        model.model_validate(case.obj)
        model.model_validate(case.old)


@pytest.mark.parametrize("model, data, where", [
    (CheckpointSpec, {"source": {"s3": {"uri": "s3://b/"}}, "sorce": {}}, "sorce"),
    (CheckpointSpec, {"source": {"s3": {"uri": "s3://b/", "bucket": "b"}}}, "bucket"),
    (CheckpointSpec, {"source": {"volume": {"claimName": "c", "subPath": "x"}}}, "subPath"),
    (TrainingJobSpec, {"template": {"spec": {"containers": [{"name": "t"}]}}, "input_dir": "/in"}, "input_dir"),
    (TrainingJobSpec, {"template": {"spec": {"containers": [{"name": "t"}]}}, "output": {"keepLast": 2}}, "keepLast"),
    (TrainingJobSpec, {"template": {"spec": {"containers": [{"name": "t"}]}}, "checkpoints": [{"name": "a", "tag": "x"}]},
     "tag"),
])
def test_unknown_fields_are_refused(model, data, where) -> None:
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted") as raised:
        model.model_validate(data)
    assert where in str(raised.value)


def test_pod_template_keeps_unknown_fields() -> None:
    template = {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "t", "image": "i"}],
                                                             "hostIPC": False}}
    spec = TrainingJobSpec.model_validate({"template": template})
    assert spec.to_wire()["template"] == template


def test_defaults_match_the_crd() -> None:
    spec = open_api_schema(load_crd("TrainingJob"))["properties"]["spec"]
    wire = TrainingJobSpec.model_validate({"template": {"spec": {"containers": [{"name": "t"}]}}}).to_wire()
    assert wire["inputDir"] == spec["properties"]["inputDir"]["default"] == "/input-checkpoint"
    assert wire["outputDir"] == spec["properties"]["outputDir"]["default"] == "/output-checkpoint"
    assert wire["replicas"] == spec["properties"]["replicas"]["default"] == 1
    assert wire["checkpoints"] == spec["properties"]["checkpoints"]["default"] == []
    output = spec["properties"]["output"]
    # no size default: an omitted size takes the operator's (Helm value storage.defaultSize)
    assert wire["output"] == OutputSpec().to_wire() == {"enabled": True, "layout": "auto"}
    assert wire["output"] == {k: v["default"] for k, v in output["properties"].items() if "default" in v}
    # the CRD defaults `output` to {}, so an omitted output gets the same fields from the API server
    assert apply_defaults(spec, {"template": {"spec": {"containers": [{"name": "t"}]}}})["output"] == wire["output"]
    volume = open_api_schema(load_crd("Checkpoint"))["properties"]["spec"]["properties"]["source"][
        "properties"]["volume"]
    assert VolumeSource(claimName="c").path == volume["properties"]["path"]["default"] == "/"


@pytest.mark.parametrize("obj", [
    # (not replicas: "2": pydantic's lax mode turns it into 2 where the API server refuses it)
    training_job(replicas=1.5),
    training_job(output={"keep": 1.5}),
    training_job(output={"size": "ten"}),
    training_job(output={"layout": "flat"}),
    training_job(checkpoints=[{"name": f"c{i}"} for i in range(65)]),
    checkpoint(format="onnx"),
    checkpoint(source={"volume": {"claimName": ""}}),
    # hostile6 R4: names and keys the API server refuses in the import pod, refused where they are given
    checkpoint(source={"http": {"url": "ftp://example.com/m.tgz", "secretRef": {"name": "../x"}}}),
    checkpoint(source={"http": {"url": "https://example.com/m.tgz", "caConfigMap": {"name": "My CA"}}}),
    checkpoint(source={"http": {"url": "https://example.com/m.tgz",
                                "caConfigMap": {"name": "ca", "key": "../../var/run/secrets/token"}}}),
    checkpoint(source={"http": {"url": "https://example.com/m.tgz", "caConfigMap": {"name": "ca", "key": ".."}}}),
], ids=["replicas-float", "keep-float", "size", "layout", "too-many-inputs", "format", "empty-claim",
        "secret-name-path", "configmap-name-space", "ca-key-path", "ca-key-dots"])
def test_models_refuse_what_the_openapi_schema_refuses(obj: dict) -> None:
    schema = open_api_schema(load_crd(obj["kind"]))
    errors = list(jsonschema.Draft202012Validator(to_json_schema(schema)).iter_errors(
        apply_defaults(schema, copy.deepcopy(obj))))
    assert errors, "the CRD accepts it: this case tests nothing"
    with pytest.raises(pydantic.ValidationError):
        MODELS[obj["kind"]].model_validate(obj)


def test_refusals_are_one_clean_line_that_says_what_is_allowed() -> None:
    """hostile3 F11: local mode's refusals of ClusterCheckpoints read `spec.: Value error, spec.license ...`
    and `spec.source.volume: Extra inputs are not permitted`. Failed before (local/run.py's formatter)."""
    import pydantic
    import pytest
    from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint, ClusterCheckpointSpec
    from checkpoint_operator.api.messages import describe
    from checkpoint_operator.reconcile.objects import InvalidObject, parse

    def refusal(spec: dict) -> str:
        with pytest.raises(pydantic.ValidationError) as refused:
            ClusterCheckpointSpec.model_validate(spec)
        return describe(refused.value, ClusterCheckpointSpec, "spec")
    http = {"http": {"url": "https://h/x.tar"}}
    assert refusal({"license": "ftp://x/LICENSE", "source": http}).startswith("spec.license must be an http://")
    for kind, verb in (("volume", "adopted"), ("upload", "pushed"), ("trainingJob", "produced")):
        message = refusal({"source": {kind: {}}})
        assert message.startswith(f"spec.source.{kind}: a ClusterCheckpoint is imported: set one of huggingFace, "
                                  f"s3, http, git, gcs, azureBlob; a catalog entry is never {verb}"), message
    assert refusal({"source": http, "colour": "red"}).startswith("spec.colour: is not a field here (allowed: source,")
    for message in (refusal({"license": "ftp://x", "source": http}), refusal({"source": {"volume": {}}})):
        assert "Value error" not in message and "spec.:" not in message and "\n" not in message
    # The operator's status for a stored object that does not validate reads the same.
    with pytest.raises(InvalidObject) as invalid:
        parse(ClusterCheckpoint, {"apiVersion": "ckpt.dev/v1alpha1", "kind": "ClusterCheckpoint",
                                  "metadata": {"name": "x"}, "spec": {"source": {"upload": {}}}})
    assert invalid.value.message().startswith("spec.source.upload: a ClusterCheckpoint is imported")
