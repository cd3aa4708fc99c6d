"""The generated CRDs: fresh, structural, as DESIGN §1 describes them, and accepting every example."""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import jsonschema
import pydantic
import pytest
import yaml

from checkpoint_operator.api import crdgen
from checkpoint_operator.api.checkpoint import SOURCE_KINDS, Checkpoint, CheckpointSpec
from checkpoint_operator.api.rules import Description
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint
from checkpoint_operator.api.trainingjob import TrainingJob
from .test_rules import CASES, CRD_FILES, ROOT, apply_defaults, evaluate_rules, load_crd, open_api_schema

MODELS = {"Checkpoint": Checkpoint, "TrainingJob": TrainingJob, "ClusterCheckpoint": ClusterCheckpoint}
EXAMPLES = ROOT / "examples"


# --- freshness --------------------------------------------------------------------------------

def test_committed_crds_are_up_to_date() -> None:
    result = subprocess.run([sys.executable, "-m", "checkpoint_operator", "crds", "--check"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_check_fails_on_an_edited_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "crds"
    assert crdgen.crds_command(output_dir=str(out), chart_dir=None, check=False) == 0
    assert crdgen.crds_command(output_dir=str(out), chart_dir=None, check=True) == 0
    capsys.readouterr()
    edited = out / "ckpt.dev_trainingjobs.yaml"
    edited.write_text(edited.read_text().replace("shortNames:\n    - tj", "shortNames:\n    - tjob"))
    assert crdgen.crds_command(output_dir=str(out), chart_dir=None, check=True) == 1
    err = capsys.readouterr().err
    assert f"stale: {edited}" in err and "ckpt.dev_checkpoints.yaml" not in err

    (out / "ckpt.dev_checkpoints.yaml").unlink()
    assert crdgen.crds_command(output_dir=str(out), chart_dir=None, check=True) == 1
    assert "ckpt.dev_checkpoints.yaml" in capsys.readouterr().err


def test_check_fails_after_a_model_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "crds"
    assert crdgen.crds_command(output_dir=str(out), chart_dir=None, check=False) == 0
    changed = pydantic.create_model(
        "CheckpointSpec", __base__=CheckpointSpec,
        license=(Optional[Description], pydantic.Field(None, description="License of the weights.")))
    monkeypatch.setattr(crdgen, "CRDS", (dataclasses.replace(crdgen.CHECKPOINT, spec_model=changed),
                                         crdgen.TRAINING_JOB))
    capsys.readouterr()
    assert crdgen.crds_command(output_dir=str(out), chart_dir=None, check=True) == 1
    err = capsys.readouterr().err
    assert "ckpt.dev_checkpoints.yaml" in err and "ckpt.dev_trainingjobs.yaml" not in err
    assert "License of the weights." in crdgen.render_crd_yaml(crdgen.CRDS[0])


# --- bounds: what the API server's CEL cost estimate needs ---------------------------------------

def fresh_schema(kind: str) -> dict:
    """The schema the models generate now (unchecked), so a model change is caught before `crds` runs."""
    (definition,) = [d for d in crdgen.CRDS if d.kind == kind]
    return open_api_schema(crdgen.build_crd(definition, check_bounds=False))


def models_of(kind: str) -> dict:
    (definition,) = [d for d in crdgen.CRDS if d.kind == kind]
    return {"spec": definition.spec_model, "status": definition.status_model}


def problems(kind: str, schema: dict, roots: tuple[str, ...], strings_only: bool = False,
             rule_scopes: bool = False) -> list[str]:
    """Unbounded strings, lists and maps under `roots` (or, with rule_scopes, under every rule's node)."""
    starts = []
    for root in roots:
        node = schema["properties"][root]
        if rule_scopes:
            starts += [(path, sub) for path, sub in crdgen.declared_nodes(node, root)
                       if sub.get("x-kubernetes-validations")]
        else:
            starts.append((root, node))
    found = {}
    for start, node in starts:
        for path, sub in crdgen.declared_nodes(node, start):
            what = crdgen.unbounded(sub)
            if what and (what == "string" or not strings_only):
                why = f"(reached by the CEL rules at {start})" if rule_scopes else f"(in {start})"
                found.setdefault(path, str(crdgen.UnboundedField(kind, path, what, why,
                                                                 crdgen._model_field(models_of(kind), path))))
    return list(found.values())


@pytest.mark.parametrize("kind", CRD_FILES)
@pytest.mark.parametrize("which", ["committed", "generated now"])
def test_every_string_list_and_map_a_rule_reaches_is_bounded(kind: str, which: str) -> None:
    """What a rule can reach from self and oldSelf: the declared subtree of the node carrying it."""
    schema = open_api_schema(load_crd(kind)) if which == "committed" else fresh_schema(kind)
    rule_nodes = [p for p, n in crdgen.declared_nodes(schema["properties"]["spec"], "spec")
                  if n.get("x-kubernetes-validations")]
    assert rule_nodes  # both kinds have rules (so the walk below walks something)
    found = problems(kind, schema, ("spec", "status"), rule_scopes=True)
    assert not found, "unbounded fields under CEL rules:\n" + "\n".join(found)


@pytest.mark.parametrize("kind", CRD_FILES)
@pytest.mark.parametrize("which", ["committed", "generated now"])
def test_every_string_list_and_map_of_a_spec_and_every_string_of_a_status_is_bounded(kind: str, which: str) -> None:
    schema = open_api_schema(load_crd(kind)) if which == "committed" else fresh_schema(kind)
    found = problems(kind, schema, ("spec",)) + problems(kind, schema, ("status",), strings_only=True)
    assert not found, "unbounded fields:\n" + "\n".join(found)


def test_an_unbounded_field_is_named_with_how_to_bound_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """What another workstream sees when it adds a field without a bound (the tests above, and `crds`)."""
    from checkpoint_operator.api.trainingjob import OutputSpec, TrainingJobSpec
    output = pydantic.create_model("OutputSpec", __base__=OutputSpec,
                                   tags=(Optional[list[Description]], pydantic.Field(None, description="Tags.")),
                                   owner=(Optional[str], pydantic.Field(None, description="Owner.")))
    spec = pydantic.create_model("TrainingJobSpec", __base__=TrainingJobSpec,
                                 output=(output, pydantic.Field(default_factory=output, description="Output.")))
    changed = dataclasses.replace(crdgen.TRAINING_JOB, spec_model=spec)
    schema = open_api_schema(crdgen.build_crd(changed, check_bounds=False))
    monkeypatch.setattr(crdgen, "CRDS", (crdgen.CHECKPOINT, changed))
    found = problems("TrainingJob", schema, ("spec",), rule_scopes=True)
    assert found == [
        "TrainingJob spec.output.tags (model field OutputSpec.tags): a list without maxItems (reached by the CEL "
        "rules at spec); give the list field Field(max_length=N) (it becomes maxItems)",
        "TrainingJob spec.output.owner (model field OutputSpec.owner): a string without maxLength (reached by the "
        "CEL rules at spec); declare the field with a bounded type of checkpoint_operator.api.rules (Name, Uid, "
        "FileName, Path, Uri, Description, Message, Reason, Short, Timestamp, Digest) or with Field(max_length=N)"]
    # The generator refuses it too, with the same words.
    assert crdgen.crds_command(output_dir=str(tmp_path / "crds"), chart_dir=None, check=False) == 1
    err = capsys.readouterr().err
    assert "error: TrainingJob spec.output.tags (model field OutputSpec.tags): a list without maxItems" in err
    assert "error: TrainingJob spec.output.owner (model field OutputSpec.owner): a string without maxLength" in err
    assert not (tmp_path / "crds").exists()


def test_a_spec_integer_without_a_maximum_is_refused() -> None:
    """hostile5 F3: activeDeadlineSeconds had no maximum; 99999999999999999999 passed local admission."""
    from checkpoint_operator.api.trainingjob import TrainingJobSpec
    spec = pydantic.create_model("TrainingJobSpec", __base__=TrainingJobSpec,
                                 timeoutSeconds=(Optional[int], pydantic.Field(None, ge=1, description="Timeout.")))
    changed = dataclasses.replace(crdgen.TRAINING_JOB, spec_model=spec)
    with pytest.raises(crdgen.UnboundedFieldsError) as refused:
        crdgen.build_crd(changed)
    assert [str(p) for p in refused.value.problems] == [
        "TrainingJob spec.timeoutSeconds (model field TrainingJobSpec.timeoutSeconds): a spec number without maximum "
        "(a spec's numbers have the maximum of what they mirror: an int64, an int32 of a Job's field, or less); give "
        "the field Field(le=N): INT64_MAX of checkpoint_operator.api.rules at most, less where the Kubernetes field "
        "it is copied to is smaller"]
    deadline = open_api_schema(load_crd("TrainingJob"))["properties"]["spec"]["properties"]["activeDeadlineSeconds"]
    assert deadline["maximum"] == 2 ** 63 - 1


def test_enum_strings_are_bounded_by_their_longest_value() -> None:
    layout = open_api_schema(load_crd("TrainingJob"))["properties"]["spec"]["properties"]["output"]["properties"][
        "layout"]
    assert layout["maxLength"] == max(len(v) for v in layout["enum"]) == len("directories")


# --- structure --------------------------------------------------------------------------------

FORBIDDEN_KEYS = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "title", "const", "discriminator"}


def schema_nodes(node: dict, path: str = "") -> Iterator[tuple[str, dict]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from schema_nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", CRD_FILES)
def test_schema_is_structural(kind: str) -> None:
    schema = open_api_schema(load_crd(kind))
    for path, node in schema_nodes(schema):
        assert not FORBIDDEN_KEYS & node.keys(), f"{kind}{path}: {sorted(FORBIDDEN_KEYS & node.keys())}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields") is True \
            or node.get("x-kubernetes-int-or-string") is True, f"{kind}{path} has no type"
        if path:  # every property and list item below the root, except the list items' own text
            assert node.get("description") or path.endswith("[]"), f"{kind}{path} has no description"
        assert not ("properties" in node and "additionalProperties" in node), f"{kind}{path}"
        assert not isinstance(node.get("additionalProperties"), bool), f"{kind}{path}: boolean additionalProperties"
        assert node.get("x-kubernetes-preserve-unknown-fields", True) is True
        if "default" in node:  # defaults must be valid (the API server refuses the CRD otherwise)
            jsonschema.validate(node["default"], to_json_schema(node))
        for required in node.get("required", []):
            assert required in node.get("properties", {}), f"{kind}{path}: required {required} is not a property"


@pytest.mark.parametrize("kind, columns, short_names", [
    ("Checkpoint", ["Phase", "Format", "Step", "Complete", "Size", "Used-By", "Age"], ["ckpt", "ckpts"]),
    ("TrainingJob", ["Phase", "Inputs", "Outputs", "Age"], ["tj"]),
])
def test_names_columns_and_subresources(kind: str, columns: list[str], short_names: list[str]) -> None:
    crd = load_crd(kind)
    spec = crd["spec"]
    assert spec["group"] == "ckpt.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == kind and spec["names"]["shortNames"] == short_names
    assert spec["names"]["categories"] == ["ml"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.ckpt.dev"
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    printed = version["additionalPrinterColumns"]
    assert [c["name"] for c in printed if not c.get("priority")] == columns  # the default `kubectl get` view
    schema = version["schema"]["openAPIV3Schema"]
    for column in printed:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        node = schema
        # A condition's field: `.status.conditions[?(@.type=="Complete")].reason` (kubectl's JSONPath filter).
        path = re.sub(r'\[\?\(@\.type=="[A-Za-z]+"\)\]', "[]", column["jsonPath"])
        for name in path.lstrip(".").split("."):
            node = node["properties"][name.removesuffix("[]")]
            if name.endswith("[]"):
                node = node["items"]
        assert node["type"] == column["type"], f"{kind} column {column['name']}"


def test_template_accepts_any_pod_spec() -> None:
    schema = open_api_schema(load_crd("TrainingJob"))
    template = schema["properties"]["spec"]["properties"]["template"]
    assert template.get("x-kubernetes-preserve-unknown-fields") is True
    assert template["properties"]["spec"].get("x-kubernetes-preserve-unknown-fields") is True
    assert template["properties"]["spec"]["properties"]["containers"]["items"].get(
        "x-kubernetes-preserve-unknown-fields") is True
    (case,) = [c for c in CASES if c.id == "template-full-pod"]
    obj = copy.deepcopy(case.obj)
    assert prune(schema, copy.deepcopy(obj)) == obj, "the API server would drop parts of the pod template"


def test_pruning_drops_unknown_fields() -> None:
    """prune() really prunes (so the test above could fail)."""
    schema = open_api_schema(load_crd("TrainingJob"))
    obj = {"spec": {"template": {"spec": {}}, "output": {"sizee": "1Gi"}, "typo": 1}}
    assert prune(schema, obj) == {"spec": {"template": {"spec": {}}, "output": {}}}


def test_status_has_no_defaults() -> None:
    # The operator owns status; defaults there would make every update look like a change.
    for kind in CRD_FILES:
        status = open_api_schema(load_crd(kind))["properties"]["status"]
        assert not [p for p, n in schema_nodes(status) if "default" in n]


# --- OpenAPI -> JSON Schema, pruning, the examples ---------------------------------------------

def to_json_schema(node: Any) -> Any:
    """OpenAPI v3 (structural) -> JSON Schema, strict about unknown fields as `kubectl apply`
    (server-side field validation Strict) is: drop x-kubernetes-*, forbid undeclared properties
    unless the node preserves them."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) if k in ("items", "additionalProperties") else v
           for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "properties"}
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    return out


def prune(schema: dict, value: Any, root: bool = True) -> Any:
    """What the API server keeps of an object: undeclared fields go unless preserved (the
    root's metadata is the API server's own business)."""
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for key in [k for k in value if k not in schema.get("properties", {})]:
            del value[key]
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value and not (root and key == "metadata"):
                prune(sub, value[key], root=False)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            prune(schema["items"], item, root=False)
    return value


def example_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(EXAMPLES.rglob("*.yaml")) + sorted(EXAMPLES.rglob("*.yml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("ckpt.dev/"):
                docs.append((f"{path.relative_to(EXAMPLES)}#{i}", doc))
    return docs


EXAMPLE_DOCS = example_documents()


def test_examples_exist() -> None:
    names = {name.split("#")[0] for name, _ in EXAMPLE_DOCS}
    assert {"checkpoint-s3.yaml", "checkpoint-http.yaml", "checkpoint-volume.yaml", "trainingjob.yaml",
            "trainingjob-two-inputs.yaml", "trainingjob-distributed.yaml"} <= names
    kinds = {doc["kind"] for _, doc in EXAMPLE_DOCS}
    assert kinds == {"Checkpoint", "TrainingJob", "ClusterCheckpoint"}


def test_every_source_a_user_writes_has_an_example() -> None:
    """So that the admission tests (here and tests/local/test_admission.py) check one of each; trainingJob
    is written by the operator only."""
    checkpoints = [doc for _, doc in EXAMPLE_DOCS if doc["kind"] == "Checkpoint"]
    assert {kind for doc in checkpoints for kind in doc["spec"]["source"]} == set(SOURCE_KINDS) - {"trainingJob"}
    urls = [doc["spec"]["source"]["http"]["url"] for doc in checkpoints if "http" in doc["spec"]["source"]]
    assert any(url.startswith(("ftp://", "ftps://")) for url in urls), urls


@pytest.mark.parametrize("name, doc", EXAMPLE_DOCS, ids=[n for n, _ in EXAMPLE_DOCS])
def test_example_is_accepted_by_the_crd_and_the_models(name: str, doc: dict) -> None:
    assert doc["apiVersion"] == "ckpt.dev/v1alpha1" and doc["kind"] in MODELS, doc["kind"]
    assert "namespace" not in doc.get("metadata", {}), "examples are namespace-less"
    schema = open_api_schema(load_crd(doc["kind"]))
    defaulted = apply_defaults(schema, copy.deepcopy(doc))
    jsonschema.validate(defaulted, to_json_schema(schema))
    assert prune(schema, copy.deepcopy(defaulted)) == defaulted, "the API server would drop fields of the example"
    refused = [f"{e.path}: {e.rule['message']}" for e in evaluate_rules(schema, defaulted) if e.ok is False]
    assert not refused
    wire = MODELS[doc["kind"]].model_validate(doc).to_wire()
    assert wire == defaulted


def test_openapi_part_of_the_schema() -> None:
    """The rule cases that the OpenAPI part (types, maxLength, required) refuses as well, and only those."""
    validators = {kind: jsonschema.Draft202012Validator(to_json_schema(open_api_schema(load_crd(kind))))
                  for kind in CRD_FILES}
    wrong = {}
    for case in CASES:
        defaulted = apply_defaults(open_api_schema(load_crd(case.kind)), copy.deepcopy(case.obj))
        errors = [e.message for e in validators[case.kind].iter_errors(defaulted)]
        if (not errors) != case.openapi_valid:
            wrong[case.id] = errors
    assert not wrong
    assert sum(not c.openapi_valid for c in CASES) >= 3
