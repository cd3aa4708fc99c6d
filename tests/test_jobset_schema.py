"""Every JobSet the operator builds is valid against JobSet's published CRD (tests/schemas/, from
kubernetes-sigs/jobset 08dfbdfd): its v1alpha2 structural schema, made strict so that a field the
API server would prune (a typo, a field of another version) is an error here. The integration
tests also install that CRD in the emulated API, whose admission applies it to every JobSet the
operator creates."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from checkpoint_operator.api.checkpoint import Location, S3Location
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import rendezvous, workload
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.storage import store_for
from factories import training_job

JOBSET_CRD = Path(__file__).parent / "schemas" / "jobset.x-k8s.io_jobsets.yaml"


def _strict(node):
    """A structural schema in which a field the API server would prune is an error."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@lru_cache(maxsize=1)
def jobset_schema() -> dict:
    crd = yaml.load(JOBSET_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2")
    return _strict(version["schema"]["openAPIV3Schema"])


def validate_jobset(obj: dict) -> None:
    jsonschema.validate({k: v for k, v in obj.items() if k != "metadata"}, jobset_schema())


VOLUME = OperatorConfig()


def build(config: OperatorConfig = VOLUME, inputs: list | None = None, **fields) -> dict:
    labels = fields.pop("labels", None)
    body = training_job(fields.pop("name", "train"), **fields)
    if labels:
        body["metadata"]["labels"] = labels
    tj = TrainingJob.model_validate(body)
    inputs = inputs or []
    store = store_for(config)
    sidecar = workload.build_live_sidecar(tj, config, store.live_upload_prefix(tj), store.agent_env()) \
        if (tj.spec.output.publish == "Continuous") else None
    return workload.build_workload(tj, inputs, store.input_volumes(tj, inputs), sidecar,
                                   rendezvous_at=rendezvous.rendezvous_of(tj)).job


def test_the_copy_is_jobset_s_crd_and_a_wrong_field_is_caught():
    crd = yaml.load(JOBSET_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["metadata"]["name"] == "jobsets.jobset.x-k8s.io"
    bad = build(engine="JobSet", replicas=2)
    bad["spec"]["failurePolicy"]["maxRestart"] = 3  # a typo: pruned by the API server, refused here
    with pytest.raises(jsonschema.ValidationError):
        validate_jobset(bad)


S3 = OperatorConfig(storage_type="s3", s3_bucket="b", s3_endpoint="http://s3:9000", s3_secret_name="creds")
INPUT = ResolvedInput(name="base", uid="u", digest="sha256:x", mount_name="base",
                      location=Location(s3=S3Location(uri="s3://b/ckpt/default/base/")))


@pytest.mark.parametrize("fields", [
    {"replicas": 2},
    {"replicas": 16, "nprocPerNode": 8, "backoffLimit": 3, "activeDeadlineSeconds": 3600},
    {"replicas": 1},
    {"replicas": 4, "labels": {"kueue.x-k8s.io/queue-name": "q", "kueue.x-k8s.io/priority-class": "high"}},
    {"replicas": 2, "output": {"publish": "Continuous"}},
    {"replicas": 2, "name": "7b.sft-" + "x" * 80},
], ids=["two", "sixteen-nproc-deadline", "one", "kueue", "live-sealing", "long-dotted-name"])
def test_every_jobset_the_operator_builds_is_valid(fields):
    validate_jobset(build(engine="JobSet", **fields))


def test_a_jobset_with_s3_inputs_and_live_sealing_is_valid():
    validate_jobset(build(S3, [INPUT], engine="JobSet", replicas=2, output={"publish": "Continuous"}))
