"""What `kubectl ckpt` prints (plugin/views.py), from Checkpoint objects."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from checkpoint_operator.plugin import views

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


def ckpt(name, uid=None, parents=(), *, phase="Ready", step=None, job=None, source=None, digest=None, **status):
    body = {"metadata": {"name": name, "uid": uid or f"uid-{name}", "namespace": "ns",
                         "creationTimestamp": (NOW - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")},
            "spec": {"source": source or ({"trainingJob": {"name": job, "uid": "j", "directory": "d"}} if job
                                          else {"upload": {}})},
            "status": {"phase": phase, "step": step, "digest": digest or f"sha256:{name:0<64}"[:71],
                       "parents": [{"name": p, "uid": f"uid-{p}", "digest": f"sha256:{p}"} for p in parents],
                       **status}}
    if job:
        body["status"]["producedBy"] = {"name": job, "uid": "j"}
    return views.read_checkpoint(body)


def test_objects_of_another_version_are_read_as_far_as_this_one_knows_them():
    body = {"metadata": {"name": "new", "uid": "u"}, "spec": {"source": {"upload": {}}, "someNewField": 1},
            "status": {"phase": "Ready", "digest": "sha256:" + "0" * 64, "aNewStatusField": {"x": 1}}}
    assert views.read_checkpoint(body).status.digest == "sha256:" + "0" * 64  # unknown fields ignored
    assert views.producer(views.read_checkpoint(body)) == "upload"
    body["spec"]["source"] = {"aNewSource": {}}  # a spec this version cannot read: the head remains
    head = views.read_checkpoint(body)
    assert head.phase == "Ready" and views.producer(head) == "-"
    body["status"]["phase"] = "APhaseFromTheFuture"  # a status it cannot read: the metadata remains
    assert views.read_checkpoint(body).metadata.name == "new"


def test_age_reads_like_kubectl():
    def ago(**delta):
        return views.age((NOW - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ"), NOW)
    assert [ago(seconds=45), ago(minutes=12), ago(hours=3), ago(days=6), ago(days=800)] == ["45s", "12m", "3h",
                                                                                           "6d", "2y"]
    assert views.age(None) == "<unknown>"


def test_ls_rows_have_the_columns_and_show_users_and_producers():
    items = [ckpt("b-step-2", job="train", step=2, format="torch", size="10 MiB",
                  usedBy=[{"name": "eval"}, {"name": "tune"}, {"name": "x"}], usedByCount=4),
             ckpt("a-import", source={"s3": {"uri": "s3://b/k/"}}, phase="Failed")]
    lines = views.ls_table(items, now=NOW).splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "FORMAT", "STEP", "SIZE", "USED-BY", "PRODUCER", "AGE"]
    assert lines[1].split() == ["a-import", "Failed", "-", "-", "-", "-", "s3", "5m"]
    assert lines[2].split() == ["b-step-2", "Ready", "torch", "2", "10", "MiB", "eval,tune+2", "tj/train", "5m"]
    wide = views.ls_table(items, wide=True, namespaces=True, now=NOW).splitlines()
    assert wide[0].split()[0] == "NAMESPACE" and wide[0].split()[-1] == "DIGEST"


def test_lineage_walks_up_a_dag_and_down_across_jobs():
    items = [ckpt("base"), ckpt("other-base"),
             ckpt("pre-10", parents=["base", "other-base"], job="pre", step=10),
             ckpt("tune-20", parents=["pre-10"], job="tune", step=20),
             ckpt("eval-1", parents=["tune-20", "pre-10"], job="eval"),
             ckpt("orphan", parents=["deleted-one"], job="j2")]
    lineage = views.build_lineage(items, "tune-20")
    assert [p.name for p in lineage.parents] == ["pre-10"]
    assert [p.name for p in lineage.parents[0].children] == ["base", "other-base"]
    assert [d.name for d in lineage.descendants] == ["eval-1"]
    text = views.render_lineage(lineage).splitlines()
    assert text[0].startswith("tune-20  Ready  sha256:tune-2") and text[0].endswith("step 20  tj/tune")
    assert text[2].startswith("└── pre-10") and text[3].startswith("    ├── base") and text[4].startswith("    └── other")
    down = views.build_lineage(items, "pre-10").descendants
    assert [d.name for d in down] == ["eval-1", "tune-20"]
    assert down[1].children[0].name == "eval-1" and down[1].children[0].repeated  # a DAG: shown once
    gone = views.build_lineage(items, "orphan")
    assert gone.parents[0].gone and "deleted; pinned sha256:deleted-one" in views.render_lineage(gone)
    assert views.build_lineage(items, "nope") is None
    as_json = views.build_lineage(items, "base").to_json()
    assert as_json["checkpoint"]["name"] == "base" and as_json["descendants"][0]["name"] == "pre-10"


def test_lineage_ends_loops_in_a_malformed_history():
    items = [ckpt("a", parents=["b"]), ckpt("b", parents=["a"])]
    lineage = views.build_lineage(items, "a")
    assert lineage.parents[0].name == "b" and lineage.parents[0].children[0].repeated
    assert [d.name for d in lineage.descendants] == ["b"] and lineage.descendants[0].children[0].repeated


def test_a_catalog_parent_is_found_in_the_catalog_not_reported_deleted():
    entry = {"metadata": {"name": "gpt2", "uid": "u-gpt2"}, "status": {"phase": "Ready", "digest": "sha256:" + "c" * 64}}
    child = {"metadata": {"name": "tuned", "uid": "u-tuned", "namespace": "team-a"},
             "status": {"phase": "Ready", "digest": "sha256:" + "d" * 64,
                        "parents": [{"name": "gpt2", "uid": "u-gpt2", "digest": "sha256:" + "c" * 64,
                                     "kind": "ClusterCheckpoint"}]}}
    lineage = views.build_lineage([views.read_checkpoint(child)], "tuned", [views.read_catalog_entry(entry)])
    (parent,) = lineage.parents
    assert (parent.name, parent.gone, parent.producer) == ("gpt2", False, "catalog")
    assert "gpt2  Ready  sha256:cccccccccccc  catalog" in views.render_lineage(lineage)
    gone = views.build_lineage([views.read_checkpoint(child)], "tuned", [])
    assert gone.parents[0].gone and "(deleted; pinned" in views.render_lineage(gone)
    # A Checkpoint of the namespace with the entry's uid is never taken for it.
    namesake = {**entry, "metadata": {**entry["metadata"], "namespace": "team-a"}}
    assert views.build_lineage(map(views.read_checkpoint, [child, namesake]), "tuned", []).parents[0].gone


def test_lineage_expands_each_parent_once_however_many_paths_reach_it():
    """hostile6 R3: parents were expanded once per path, so a ladder of jobs each taking both Checkpoints
    of the previous job printed 2^layers lines (17 layers: 131,074 lines, 140 MiB)."""
    items, previous = [], []
    for layer in range(30):
        current = [f"l{layer}-{side}" for side in "ab"]
        items += [ckpt(name, parents=previous) for name in current]
        previous = current
    lineage = views.build_lineage(items, "l29-a")
    text = views.render_lineage(lineage)
    assert len(text.splitlines()) < 4 * 30 + 5  # two lines a layer (one expanded, one "shown above"), not 2^30
    assert sum(1 for line in text.splitlines() if "l0-a" in line) == 2  # once expanded, once "shown above"
