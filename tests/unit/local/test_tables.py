"""local/tables.py: the Table kube-apiserver answers `kubectl get` with (the CRDs' printer columns), the
JSONPath subset those columns use, and when a client asked for a Table at all."""

import datetime

import pytest

from checkpoint_operator.local.tables import build_table, cell, human_duration, jsonpath, printer_columns, table_version

KUBECTL = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
           "application/json")
NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
JOB = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob",
       "metadata": {"name": "tj1", "namespace": "default", "creationTimestamp": "2026-01-01T11:55:00Z",
                    "resourceVersion": "7"},
       "spec": {"output": {"size": "1Gi"}},
       "status": {"phase": "Running", "inputCount": 2, "restarts": 0,
                  "conditions": [{"type": "Ready", "reason": "Yes"}, {"type": "Complete", "reason": "NotChecked"}],
                  "outputCheckpoints": ["a", "b", "c"], "ok": True}}


@pytest.mark.parametrize("accept, version", [
    (KUBECTL, "v1"),
    ("application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json", "v1beta1"),
    ("application/json; as=Table; g=meta.k8s.io; v=v1", "v1"),  # spaces, any order of parameters
    ("application/json", None), (None, None), ("", None), ("*/*", None),
    ("application/json, application/json;as=Table;v=v1;g=meta.k8s.io", None),  # plain JSON comes first
    ("application/json;as=Table;v=v2;g=meta.k8s.io,application/json", None),  # no such Table version
    ("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json", None),
    ("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1;g=meta.k8s.io",
     "v1"),
])
def test_table_version_from_accept(accept, version):
    assert table_version(accept) == version


@pytest.mark.parametrize("path, found", [
    (".status.phase", ["Running"]),
    ("{.status.phase}", ["Running"]),
    ("$.status.inputCount", [2]),
    (".status.restarts", [0]),
    (".status.missing", []),
    (".status.phase.deeper", []),
    (".spec.output.size", ["1Gi"]),
    ('.status.conditions[?(@.type=="Complete")].reason', ["NotChecked"]),
    (".status.conditions[?(@.type=='Ready')].reason", ["Yes"]),
    ('.status.conditions[?(@.type!="Ready")].type', ["Complete"]),
    ('.status.conditions[?(@.type=="Nope")].reason', []),
    ('.status.missing[?(@.type=="Complete")].reason', []),
    (".status.outputCheckpoints[0]", ["a"]),
    (".status.outputCheckpoints[-1]", ["c"]),
    (".status.outputCheckpoints[3]", []),
    (".status.outputCheckpoints[*]", ["a", "b", "c"]),
    (".status.conditions[*].type", ["Ready", "Complete"]),
    (".metadata.name", ["tj1"]),
])
def test_jsonpath(path, found):
    assert jsonpath(JOB, path) == found


@pytest.mark.parametrize("path", [".status.conditions[?(@.type~'x')]", "status..phase", ".a[", ".a b"])
def test_jsonpath_outside_the_subset_is_refused(path):
    with pytest.raises(ValueError):
        jsonpath(JOB, path)


@pytest.mark.parametrize("seconds, shown", [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (119, "119s"), (120, "2m"), (150, "2m30s"), (600, "10m"),
    (179 * 60, "179m"), (3 * 3600, "3h"), (3 * 3600 + 120, "3h2m"), (8 * 3600, "8h"), (48 * 3600, "2d"),
    (50 * 3600, "2d2h"), (8 * 86400, "8d"), (730 * 86400, "2y"), (731 * 86400, "2y1d"), (9 * 365 * 86400, "9y"),
])
def test_human_duration_as_kubectl_shows_age(seconds, shown):
    assert human_duration(seconds) == shown


@pytest.mark.parametrize("kind, values, shown", [
    ("string", ["Running"], "Running"), ("string", [3], "3"), ("string", [True], "true"),
    ("string", [{"a": 1}], '{"a":1}'), ("string", [["x", "y"]], '["x","y"]'), ("string", [], None),
    ("string", [None], None), ("string", ["a", "b"], "a"),  # the first value found
    ("integer", [3], 3), ("integer", [3.0], 3), ("integer", ["3"], None), ("integer", [True], None),
    ("number", [1.5], 1.5), ("number", [2], 2), ("number", ["x"], None),
    ("boolean", [False], False), ("boolean", ["true"], None),
    ("date", ["2026-01-01T11:55:00Z"], "5m"), ("date", ["yesterday"], "<invalid>"), ("date", [5], None),
    ("date", [], None),
])
def test_cells_by_column_type(kind, values, shown):
    assert cell(kind, values, NOW) == shown


def test_crd_table_has_name_and_the_printer_columns_in_order():
    columns = [{"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "the phase"},
               {"name": "Inputs", "type": "integer", "jsonPath": ".status.inputCount"},
               {"name": "Complete", "type": "string", "priority": 1,
                "jsonPath": '.status.conditions[?(@.type=="Complete")].reason'},
               {"name": "Job", "type": "string", "priority": 1, "jsonPath": ".status.jobName"},
               {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    table = build_table([JOB], columns=columns, list_meta={"resourceVersion": "9"}, now=NOW)
    assert (table["kind"], table["apiVersion"], table["metadata"]) == ("Table", "meta.k8s.io/v1", {"resourceVersion": "9"})
    assert [(c["name"], c["type"], c["priority"]) for c in table["columnDefinitions"]] == [
        ("Name", "string", 0), ("Phase", "string", 0), ("Inputs", "integer", 0), ("Complete", "string", 1),
        ("Job", "string", 1), ("Age", "date", 0)]
    assert table["columnDefinitions"][0]["format"] == "name"
    assert table["columnDefinitions"][1]["description"] == "the phase"
    [row] = table["rows"]
    assert row["cells"] == ["tj1", "Running", 2, "NotChecked", None, "5m"]  # no jobName: an empty cell
    assert row["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": JOB["metadata"]}


def test_include_object_and_version():
    whole = build_table([JOB], columns=None, list_meta={}, include_object="Object", version="v1beta1", now=NOW)
    assert whole["apiVersion"] == "meta.k8s.io/v1beta1" and whole["rows"][0]["object"] == JOB
    assert build_table([JOB], columns=None, list_meta={}, include_object="None")["rows"][0]["object"] is None
    with pytest.raises(ValueError, match="includeObject"):
        build_table([JOB], columns=None, list_meta={}, include_object="Everything")


def test_default_table_is_name_and_created_at():
    table = build_table([JOB, {"metadata": {"name": "bare"}}], columns=None, list_meta={}, now=NOW)
    assert [(c["name"], c["type"]) for c in table["columnDefinitions"]] == [("Name", "string"), ("Created At", "date")]
    assert [r["cells"] for r in table["rows"]] == [["tj1", "2026-01-01T11:55:00Z"], ["bare", "0001-01-01T00:00:00Z"]]


def test_a_bad_jsonpath_is_an_empty_cell_not_an_error():
    table = build_table([JOB], columns=[{"name": "X", "type": "string", "jsonPath": ".a[?(@.b~1)]"}], list_meta={})
    assert table["rows"][0]["cells"] == ["tj1", None]


def test_printer_columns_of_a_crd_version():
    crd = {"spec": {"versions": [{"name": "v1", "additionalPrinterColumns": [{"name": "P", "jsonPath": ".p"}]},
                                 {"name": "v2"}]}}
    assert printer_columns(crd, "v1") == [{"name": "P", "jsonPath": ".p"}]
    assert [c["name"] for c in printer_columns(crd, "v2")] == ["Age"]  # none declared: Age, as the API server serves
    assert printer_columns(None, "v1") is None and printer_columns(crd, "v3") is None
