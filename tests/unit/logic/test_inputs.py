"""Resolution of inputs from the indexes, selection policies (contract 3) and the live check."""

from checkpoint_operator import PROTECTION_FINALIZER
from checkpoint_operator.api.checkpoint import CheckpointHead
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.logic.inputs import (Candidate, CheckpointInfo, InputWait, ResolvedInput, check_live_input,
                                              resolve_inputs, select_output)
from factories import checkpoint, indexes, training_job


def resolve(refs, checkpoints=(), jobs=(), pinned=None):
    tj = training_job("consumer", checkpoints=refs)
    if pinned is not None:
        tj["status"] = {"inputs": pinned}
    return resolve_inputs(TrainingJob.model_validate(tj), indexes(list(checkpoints), list(jobs)))


def info(name, **kw):
    return CheckpointInfo.from_body(checkpoint(name, **kw))


def test_latest_prefers_highest_step_then_newest_and_skips_unusable():
    items = [info("a", step=100), info("b", step=300), info("c", step=300, created="2026-02-01T00:00:00Z"),
             info("e", step=1000, phase="Failed"), info("f", step=2000, deleting=True),
             info("g", step=5000, complete=False)]
    assert select_output(items, "latest").name == "c"


def test_latest_ranks_checkpoints_with_steps_above_those_without():
    items = [info("final", created="2026-03-01T00:00:00Z"), info("s", step=5)]
    assert select_output(items, "latest").name == "s"


def test_the_root_files_are_latest_only_when_the_job_wrote_nothing_else():
    # A root torch.save file may record a step (here above every checkpoint's, and newer): still
    # the final model, never what `latest` or `latestResumable` resumes from beside other outputs.
    root = info("t-final", directory=".", step=900, resumable=True, created="2026-03-01T00:00:00Z")
    steps = [info("t-checkpoint-5", directory="checkpoint-5", step=5, resumable=True),
             info("t-best", directory="best", resumable=True)]
    assert select_output([root, *steps], "latest").name == "t-checkpoint-5"
    assert select_output([root, *steps], "latestResumable").name == "t-checkpoint-5"
    assert select_output([root, steps[1]], "latest").name == "t-best"
    assert select_output([root], "latest").name == "t-final"
    assert select_output([root, info("t-broken", directory="b", step=9, complete=False)], "latest").name == "t-final"
    assert select_output([root, *steps], "final").name == "t-final"


def test_latest_resumable_and_final():
    items = [info("w", step=9, resumable=False), info("r", step=5, resumable=True),
             info("r-incomplete", step=7, resumable=True, complete=False),
             info("t-final", directory=".", produced_by="t")]
    assert select_output(items, "latestResumable").name == "r"
    assert select_output(items, "final").name == "t-final"
    assert select_output([info("w", step=9)], "final") is None
    assert select_output([info("w", step=9, resumable=False)], "latestResumable") is None


def test_resolve_by_name_uid_and_latest_of_this_incarnation():
    base = checkpoint("base")
    produced = checkpoint("t-step-5", step=5, produced_by="t")
    earlier = checkpoint("t-step-9", step=9, produced_by="t")
    earlier["status"]["producedBy"]["uid"] = "an-earlier-run"
    jobs = [training_job("t", phase="Succeeded")]
    res = resolve([{"name": "base"}, {"fromTrainingJob": "t", "select": "latest"}], [base, produced, earlier], jobs)
    assert not res.waits and [c.name for c in res.candidates] == ["base", "t-step-5"]
    res = resolve([{"uid": base["metadata"]["uid"], "mountName": "m"}], [base])
    assert res.candidates == [Candidate("base", base["metadata"]["uid"], "m")]


def test_pinned_inputs_are_kept_by_uid():
    old = checkpoint("t-step-5", step=5, produced_by="t")
    newer = checkpoint("t-step-9", step=9, produced_by="t")
    pinned = [{"name": "t-step-5", "uid": old["metadata"]["uid"]}]
    res = resolve([{"fromTrainingJob": "t"}], [old, newer], [training_job("t", phase="Succeeded")], pinned=pinned)
    assert [c.name for c in res.candidates] == ["t-step-5"]


def test_waits_name_the_input_and_the_reason():
    cases = [
        ([{"name": "missing"}], [], [], "InputNotFound", "missing"),
        ([{"name": "c"}], [checkpoint("c", phase="Importing")], [], "InputNotReady", "Importing"),
        ([{"name": "c"}], [checkpoint("c", deleting=True)], [], "InputDeleting", "being deleted"),
        ([{"fromTrainingJob": "t"}], [], [training_job("t", phase="Running")], "WaitingForTrainingJob", "Running"),
        ([{"fromTrainingJob": "t"}], [], [], "InputNotFound", "does not exist"),
        ([{"fromTrainingJob": "t", "select": "final"}], [checkpoint("t-step-1", step=1, produced_by="t")],
         [training_job("t", phase="Succeeded")], "InputNotFound", "final checkpoint of TrainingJob t"),
    ]
    for refs, ckpts, jobs, reason, fragment in cases:
        res = resolve(refs, ckpts, jobs)
        assert res.waits and res.waits[0].reason == reason, (refs, res.waits)
        assert fragment in res.waits[0].message


def test_two_inputs_on_the_same_mount_directory_are_refused():
    a = checkpoint("a")
    res = resolve([{"name": "a"}, {"uid": a["metadata"]["uid"]}], [a])
    assert res.waits and res.waits[0].reason == "DuplicateInput" and "mountName" in res.waits[0].message
    assert res.waits[0].terminal


def test_failed_inputs_are_terminal_waits():
    res = resolve([{"name": "c"}], [checkpoint("c", phase="Failed")])
    assert res.waits[0].reason == "InputFailed" and res.waits[0].terminal
    assert not resolve([{"name": "x"}]).waits[0].terminal


def test_the_live_read_decides():
    body = checkpoint("c")
    body["metadata"]["finalizers"] = [PROTECTION_FINALIZER]
    candidate = Candidate("c", body["metadata"]["uid"], "c")
    ok = check_live_input(candidate, CheckpointHead.model_validate(body))
    assert isinstance(ok, ResolvedInput) and ok.digest == "sha256:c" and ok.location.volume.claimName == "data"
    deleting = {**body, "metadata": {**body["metadata"], "deletionTimestamp": "2026-01-02T00:00:00Z"}}
    unprotected = {**body, "metadata": {**body["metadata"], "finalizers": []}}
    replaced = {**body, "metadata": {**body["metadata"], "uid": "another"}}
    for live, reason in ((deleting, "InputDeleting"), (unprotected, "InputNotProtected"), (replaced, "InputNotFound"),
                         (None, "InputNotFound")):
        wait = check_live_input(candidate, CheckpointHead.model_validate(live) if live else None)
        assert isinstance(wait, InputWait) and wait.reason == reason


def test_latest_takes_a_checkpoint_found_complete_over_a_newer_one_not_checked():
    # complete: True (checked, whole), None (nothing could be checked), False (a check failed).
    checked = info("t-step-100", directory="step-100", step=100, complete=True, resumable=True)
    unchecked = info("t-step-200", directory="step-200", step=200)  # e.g. a save that died before any weights
    broken = info("t-step-300", directory="step-300", step=300, complete=False, resumable=True)
    assert select_output([checked, unchecked, broken], "latest").name == "t-step-100"
    assert select_output([checked, unchecked, broken], "latestResumable").name == "t-step-100"
    # A job whose format has no check at all still gets its latest.
    older = info("t-step-50", directory="step-50", step=50)
    assert select_output([older, unchecked, broken], "latest").name == "t-step-200"
    assert select_output([broken], "latest") is None
    # The root's files stay below the other outputs whatever their checks say.
    root = info("t-final", directory=".", step=400, complete=True)
    assert select_output([root, unchecked], "latest").name == "t-step-200"
    assert select_output([root, broken], "latest").name == "t-final"


def test_best_ranks_among_the_checkpoints_found_complete_first():
    def scored(name, loss, complete):
        body = checkpoint(name, directory=name, step=int(name.rsplit("-", 1)[1]), complete=complete)
        body["status"]["metrics"] = {"eval_loss": loss}
        return CheckpointInfo.from_body(body)
    items = [scored("t-1", 0.5, True), scored("t-2", 0.1, None), scored("t-3", 0.05, False)]
    assert select_output(items, "best", ("eval_loss", "min")).name == "t-1"
    assert select_output(items[1:], "best", ("eval_loss", "min")).name == "t-2"


def test_an_input_with_only_incomplete_outputs_says_so():
    jobs = [training_job("pretrain", phase="Succeeded")]
    broken = checkpoint("pretrain-step-9", step=9, complete=False, produced_by="pretrain")
    res = resolve([{"fromTrainingJob": "pretrain"}], [broken], jobs)
    (wait,) = res.waits
    assert wait.reason == "InputNotFound"
    assert wait.message.endswith("produced no such Ready checkpoint (1 Ready one was found incomplete, such as "
                                 "pretrain-step-9: its Complete condition says why; name it in "
                                 "spec.checkpoints[].name to use it anyway)")


def test_an_input_on_the_other_store_is_named_not_raised():
    """hostile3 F9: a state dir made with --store s3 run without it (or a store switched under existing
    Checkpoints): the volume store raised ValueError in a retry loop, the job had no status."""
    from checkpoint_operator.api.checkpoint import Location, S3Location, VolumeLocation
    from checkpoint_operator.logic.inputs import input_on_other_store
    on_s3 = ResolvedInput(name="pretrain-step-300", uid="u", digest="sha256:" + "a" * 64, mount_name="p",
                          location=Location(s3=S3Location(uri="s3://b/default/x/")))
    on_volume = ResolvedInput(name="base", uid="v", digest="sha256:" + "b" * 64, mount_name="b",
                              location=Location(volume=VolumeLocation(claimName="c", path=".")))
    from checkpoint_operator.api.checkpoint import SnapshotLocation
    in_snapshot = ResolvedInput(name="snap", uid="s", digest="sha256:" + "d" * 64, mount_name="s",
                                location=Location(snapshot=SnapshotLocation.model_validate(
                                    {"volumeSnapshotName": "vs", "path": "."})))
    assert input_on_other_store([on_volume, in_snapshot], "volume") is None  # the volume store's snapshots
    in_parts = ResolvedInput(name="vpw.step-1", uid="p", digest="sha256:" + "e" * 64, mount_name="v",
                             location=Location(volumeParts=[VolumeLocation(claimName="c-0", path="step-1"),
                                                            VolumeLocation(claimName="c-1", path="step-1")]))
    assert input_on_other_store([in_parts], "volume") is None  # assembled across workers' volumes
    assert "is on the volume store; this operator runs the s3 store" in input_on_other_store([in_parts], "s3")
    assert input_on_other_store([on_volume], "volume") is None
    assert input_on_other_store([on_s3], "s3") is None
    assert input_on_other_store([on_volume, on_s3], "volume") == (
        "input Checkpoint pretrain-step-300 is on the s3 store; this operator runs the volume store and reads only "
        "Checkpoints stored there")
    assert "is on the volume store; this operator runs the s3 store" in input_on_other_store([on_volume], "s3")
    nowhere = ResolvedInput(name="n", uid="w", digest="sha256:" + "c" * 64, mount_name="n", location=Location())
    assert "nowhere this operator can read" in input_on_other_store([nowhere], "volume")
