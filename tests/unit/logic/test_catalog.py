"""The catalog's pure decisions (logic/catalog.py) and a catalog entry as an input (logic/inputs.py)."""

from __future__ import annotations

import copy

from checkpoint_operator import PROTECTION_FINALIZER
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpointHead
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic import catalog
from checkpoint_operator.logic.import_sources import import_spec_of, pinned_source
from checkpoint_operator.logic.inputs import Candidate, InputWait, ResolvedInput, check_live_input, resolve_inputs
from factories import checkpoint, indexes, training_job
from pod_shapes import READY_ENTRY_STATUS, cluster_checkpoint

COMMIT = "a" * 40


def entry_body(name: str = "gpt2", *, phase: str = "Ready", deleting: bool = False, uid: str = "uid-gpt2") -> dict:
    meta: dict = {"name": name, "uid": uid, "finalizers": [PROTECTION_FINALIZER], "resourceVersion": "3"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-02T00:00:00Z"
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "ClusterCheckpoint", "metadata": meta,
            "spec": {"source": {"huggingFace": {"repo": "org/gpt2"}}},
            "status": {"phase": phase, "digest": "sha256:gpt2", "sizeBytes": 10,
                       "location": {"s3": {"uri": "s3://b/p/_catalog/gpt2-uid/"}}}}


def resolve(refs, entries=(), checkpoints=(), pinned=None):
    tj = training_job("consumer", checkpoints=refs)
    if pinned is not None:
        tj["status"] = {"inputs": pinned}
    return resolve_inputs(TrainingJob.model_validate(tj), indexes(list(checkpoints), [], entries=list(entries)))


def test_a_catalog_entry_resolves_by_name_in_any_namespace():
    resolution = resolve([{"clusterCheckpoint": "gpt2"}, {"name": "gpt2"}], [entry_body()], [checkpoint("gpt2")])
    # A namespace's Checkpoint of the same name is another input: both resolve, to different objects...
    assert [(c.name, c.cluster) for c in resolution.candidates] == [("gpt2", True), ("gpt2", False)]
    # ...mounted at the same directory unless one is renamed.
    assert [w.reason for w in resolution.waits] == ["DuplicateInput"]
    renamed = resolve([{"clusterCheckpoint": "gpt2", "mountName": "base"}, {"name": "gpt2"}], [entry_body()],
                      [checkpoint("gpt2")])
    assert not renamed.waits and renamed.candidates[0].mount_name == "base"


def test_a_catalog_entry_waits_like_a_checkpoint_and_says_what_it_is():
    assert resolve([{"clusterCheckpoint": "nope"}]).waits == [InputWait(
        "InputNotFound", "input ClusterCheckpoint nope does not exist (kubectl ckpt ls --catalog lists the catalog)")]
    importing = resolve([{"clusterCheckpoint": "gpt2"}], [entry_body(phase="Importing")])
    assert importing.waits == [InputWait("InputNotReady", "input ClusterCheckpoint gpt2 is not Ready (phase Importing)")]
    deleting = resolve([{"clusterCheckpoint": "gpt2"}], [entry_body(deleting=True)])
    assert deleting.waits[0].reason == "InputDeleting"


def test_a_pinned_catalog_entry_is_kept_by_uid():
    pinned = [{"name": "gpt2", "uid": "uid-old", "digest": "sha256:gpt2", "kind": "ClusterCheckpoint"}]
    # Deleted and re-created under the same name: the job does not switch to the namesake.
    resolution = resolve([{"clusterCheckpoint": "gpt2"}], [entry_body(uid="uid-new")], pinned=pinned)
    assert resolution.waits == [InputWait("InputNotFound", "input ClusterCheckpoint gpt2 (uid uid-old) no longer exists")]
    same = resolve([{"clusterCheckpoint": "gpt2"}], [entry_body(uid="uid-old")], pinned=pinned)
    assert same.candidates == [Candidate("gpt2", "uid-old", "gpt2", True)]


def live(body: dict) -> ClusterCheckpointHead:
    return ClusterCheckpointHead.model_validate({k: v for k, v in body.items() if k != "spec"})


def test_the_live_check_of_a_catalog_entry():
    candidate = Candidate("gpt2", "uid-gpt2", "gpt2", cluster=True)
    resolved = check_live_input(candidate, live(entry_body()))
    assert isinstance(resolved, ResolvedInput) and resolved.cluster and resolved.digest == "sha256:gpt2"
    assert resolved.pinned().to_wire() == {"name": "gpt2", "uid": "uid-gpt2", "digest": "sha256:gpt2", "sizeBytes": 10,
                                           "kind": "ClusterCheckpoint"}
    unprotected = entry_body()
    unprotected["metadata"]["finalizers"] = []
    assert check_live_input(candidate, live(unprotected)).reason == "InputNotProtected"
    assert check_live_input(candidate, live(entry_body(deleting=True))).message == \
        "input ClusterCheckpoint gpt2 is being deleted"


def test_a_namespace_copy_is_verified_only_for_this_entry_and_its_digest():
    entry = cluster_checkpoint({"huggingFace": {"repo": "org/model"}}, status=READY_ENTRY_STATUS)
    claim = catalog.build_copy_claim(entry, OperatorConfig(), "team-a")
    assert claim["metadata"]["ownerReferences"][0] == {
        "apiVersion": "ckpt.dev/v1alpha1", "kind": "ClusterCheckpoint", "name": "tiny", "uid": entry.metadata.uid,
        "controller": True, "blockOwnerDeletion": True}
    assert not catalog.copy_is_verified(claim, entry)  # made, not yet checked
    claim["metadata"]["annotations"] = {catalog.COPIED_DIGEST_ANNOTATION: READY_ENTRY_STATUS["digest"]}
    assert catalog.copy_is_verified(claim, entry)
    other = copy.deepcopy(claim)
    other["metadata"]["annotations"][catalog.COPIED_DIGEST_ANNOTATION] = "sha256:" + "b" * 64
    assert not catalog.copy_is_verified(other, entry)
    namesake = copy.deepcopy(claim)
    namesake["metadata"]["ownerReferences"][0]["uid"] = "an-earlier-entry"
    assert not catalog.copy_is_verified(namesake, entry)
    assert not catalog.copy_is_verified(None, entry)
    # Sized after the entry, with a margin.
    assert claim["spec"]["resources"]["requests"]["storage"] == str(int(4096 * 1.1) + catalog.COPY_MARGIN)


def test_only_an_unverified_copy_the_entry_alone_owns_is_discarded():
    """hostile3 F4: a copy that failed or did not verify is deleted so that the next job copies into
    an empty claim; never a verified one, one a Checkpoint adopted, a namesake, or one already going."""
    entry = cluster_checkpoint({"huggingFace": {"repo": "org/model"}}, status=READY_ENTRY_STATUS)
    claim = catalog.build_copy_claim(entry, OperatorConfig(), "team-a")
    assert catalog.copy_discardable(claim, entry)
    verified = copy.deepcopy(claim)
    verified["metadata"]["annotations"] = {catalog.COPIED_DIGEST_ANNOTATION: "sha256:" + "b" * 64}
    assert not catalog.copy_discardable(verified, entry)
    adopted = copy.deepcopy(claim)
    adopted["metadata"]["ownerReferences"].append({"kind": "Checkpoint", "name": "adopted", "uid": "ckpt-uid"})
    assert not catalog.copy_discardable(adopted, entry)
    namesake = copy.deepcopy(claim)
    namesake["metadata"]["ownerReferences"] = []
    assert not catalog.copy_discardable(namesake, entry)
    going = copy.deepcopy(claim)
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not catalog.copy_discardable(going, entry)
    assert not catalog.copy_discardable(None, entry)


def test_a_copy_fetches_the_commit_the_entry_recorded():
    entry = cluster_checkpoint({"huggingFace": {"repo": "org/model", "revision": "main"}}, status=READY_ENTRY_STATUS)
    pinned = pinned_source(entry.spec.source, COMMIT)
    assert import_spec_of(pinned).uri == f"hf://org/model@{COMMIT}"
    assert entry.spec.source.huggingFace.revision == "main"  # the entry itself is not changed
    git = cluster_checkpoint({"git": {"url": "https://git.example/m.git"}})
    assert import_spec_of(pinned_source(git.spec.source, COMMIT)).uri == f"git+https://git.example/m.git@{COMMIT}"
    http = cluster_checkpoint({"http": {"url": "https://example.com/m.tgz"}})
    assert pinned_source(http.spec.source, COMMIT) is http.spec.source  # no commit: the digest check catches changes


def test_an_entry_that_needs_a_secret_is_not_copied():
    with_secret = cluster_checkpoint({"huggingFace": {"repo": "org/model", "secretRef": {"name": "hf"}}})
    assert "needs a Secret of the operator's namespace" in (catalog.copy_refusal(with_secret) or "")
    assert catalog.copy_refusal(cluster_checkpoint({"huggingFace": {"repo": "org/model"}})) is None


def test_the_readable_status_counts_users_and_names_none():
    """hostile3 F7: every authenticated identity reads the entry; its status named other tenants' jobs
    (usedBy, the deletion message). Now counts only; the names go to an Event of the operator's
    namespace. Failed before (usedBy listed them)."""
    users = [("team-b", "train", "u2"), ("team-a", "train", "u1"), ("team-a", "train", "u1")]
    assert catalog.used_by_status(users).to_wire() == {"usedByCount": 2}
    assert "usedBy" in catalog.used_by_status(users).model_fields_set  # set to None: a written list is removed
    message = catalog.deletion_blocked_message([("team-b", "train"), ("team-a", "eval"), ("team-a", "x")])
    assert message.startswith("deletion waits: in use by 3 TrainingJob(s) in 2 namespace(s);"), message
    assert "team-" not in message and "train" not in message
    named = catalog.deletion_blocked_by([("team-b", "train"), ("team-a", "eval")])
    assert named.startswith("deletion waits: in use by TrainingJob(s) team-a/eval, team-b/train")


def test_only_a_job_whose_spec_names_the_entry_uses_it():
    """hostile3 F8: a tenant's label `uses.ckpt.dev/<uid>` on any job held the entry's deletion forever.
    Failed before (the label was all that was counted and checked)."""
    from checkpoint_operator.reconcile.clustercheckpoint import blocking_users
    label = {"uses.ckpt.dev/uid-gpt2": "true"}
    naming = training_job("real", checkpoints=[{"clusterCheckpoint": "gpt2"}])
    squatter = training_job("holder", checkpoints=[{"name": "never"}])
    finished = training_job("done", phase="Succeeded", checkpoints=[{"clusterCheckpoint": "gpt2"}])
    for body in (naming, squatter, finished):
        body["metadata"]["labels"] = dict(label)
    squatter["metadata"]["namespace"] = "team-x"
    found = indexes(jobs=[naming, squatter, finished])
    assert [(u.namespace, u.name) for u in found.users_of_cluster_checkpoint("uid-gpt2", "gpt2")] == [
        ("default", "real")]
    assert blocking_users([naming, squatter, finished], "gpt2") == [("default", "real")]
    assert blocking_users([squatter], "gpt2") == []
