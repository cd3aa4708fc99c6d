"""`kubectl ckpt du`'s arithmetic (plugin/usage.py): referenced from the Checkpoints, stored measured at the
store, so that files shared by several Checkpoints (content-addressed blobs, later) show as saved."""

from __future__ import annotations

from checkpoint_operator.plugin import usage


def ckpt(namespace: str, name: str, size: int, location: dict, phase: str = "Ready") -> dict:
    return {"metadata": {"namespace": namespace, "name": name},
            "status": {"phase": phase, "sizeBytes": size, "location": location}}


def test_the_namespace_prefix_is_found_wherever_the_store_puts_things_below_it():
    assert usage.namespace_prefix("s3://b/checkpoints/team-a/run-1234abcd/", "team-a") == "s3://b/checkpoints/team-a/"
    # a manifest beside blobs (the content-addressed layout): the same namespace prefix
    assert usage.namespace_prefix("s3://b/checkpoints/team-a/manifests/sha256/ab/", "team-a") == \
        "s3://b/checkpoints/team-a/"
    assert usage.namespace_prefix("s3://b/team-a/x/", "team-a") == "s3://b/team-a/"
    assert usage.namespace_prefix("s3://b/checkpoints/team-b/x/", "team-a") is None
    assert usage.namespace_prefix("s3://b/checkpoints/team-a", "team-a") is None  # not a prefix under it
    assert usage.catalog_prefix("s3://b/checkpoints/_catalog/gpt2-1234abcd/") == "s3://b/checkpoints/_catalog/"
    # A store prefix named like the namespace is not its prefix (that would count every namespace's bytes)...
    assert usage.namespace_prefix("s3://b/team-a/team-a/run-1234abcd/", "team-a") == "s3://b/team-a/team-a/"
    # ...nor is a sub-path of a job's sealed output that happens to be named so.
    assert usage.namespace_prefix("s3://b/ckpts/team-a/tj-0badc0de/sealed/team-a/step-1/", "team-a") == \
        "s3://b/ckpts/team-a/"


def test_referenced_counts_ready_checkpoints_and_where_they_are():
    rows = usage.referenced([
        ckpt("team-a", "a", 100, {"s3": {"uri": "s3://b/p/team-a/a-1/"}}),
        ckpt("team-a", "b", 50, {"s3": {"uri": "s3://b/p/team-a/b-2/"}}),
        ckpt("team-a", "c", 999, {"s3": {"uri": "s3://b/p/team-a/c-3/"}}, phase="Importing"),
        ckpt("team-b", "d", 10, {"volume": {"claimName": "train-output-abcde", "path": "step-1"}}),
        ckpt("team-b", "e", 20, {"volume": {"claimName": "train-output-abcde", "path": "step-2"}}),
    ])
    assert (rows["team-a"].checkpoints, rows["team-a"].referenced) == (2, 150)
    assert rows["team-a"].s3_prefixes == ["s3://b/p/team-a/"]
    assert (rows["team-b"].referenced, rows["team-b"].claims) == (30, ["train-output-abcde"])
    catalog = usage.referenced([{"metadata": {"name": "gpt2"}, "status": {
        "phase": "Ready", "sizeBytes": 7, "location": {"s3": {"uri": "s3://b/p/_catalog/gpt2-1/"}}}}])
    assert catalog[usage.CATALOG_ROW].s3_prefixes == ["s3://b/p/_catalog/"]


def test_saved_is_what_is_referenced_but_not_stored_again():
    shared = usage.Usage("team-a", checkpoints=2, referenced=200, stored_s3=120)
    assert shared.saved == 80
    assert "80B (40%)" in usage.du_table([shared])
    copied = usage.Usage("team-b", checkpoints=1, referenced=100, stored_s3=110)
    assert copied.saved == -10 and usage.du_table([copied]).splitlines()[1].split()[4] == "-"
    unmeasured = usage.Usage("team-c", checkpoints=1, referenced=100)
    assert unmeasured.stored is None and unmeasured.saved is None
    both = usage.Usage("team-d", referenced=10, stored_s3=5, claim_bytes=1024)
    assert both.stored == 1029


def test_a_claim_costs_its_capacity():
    assert usage.claim_capacity({"status": {"capacity": {"storage": "1Gi"}},
                                 "spec": {"resources": {"requests": {"storage": "500Mi"}}}}) == 1024 ** 3
    assert usage.claim_capacity({"spec": {"resources": {"requests": {"storage": "500Mi"}}}}) == 500 * 1024 ** 2
    assert usage.claim_capacity({"spec": {}}) is None
