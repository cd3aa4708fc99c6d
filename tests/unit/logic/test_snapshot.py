from checkpoint_operator.protocol.manifest import FileEntry, Manifest, digest_of
from checkpoint_operator.protocol.results import CheckpointSummary, ScanReport, Skipped
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.api.checkpoint import Location, SealedData
from checkpoint_operator.api.common import ObjectRef
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.logic.inputs import CheckpointInfo
from checkpoint_operator.logic.snapshot import (conflict_wait, not_stored, plan_snapshot, ready_change,
                                                sealed_ready_change, skipped_message, storable)
from checkpoint_operator.storage.volume import VolumeStore
from factories import training_job


def ScanResult(found: list[CheckpointSummary], skipped: list[Skipped]) -> ScanReport:  # noqa: N802 (the old name)
    return ScanReport(checkpoints=found, skipped=skipped, skippedCount=len(skipped))


def plan(tj: dict, scan: ScanReport, existing: list[dict] = ()):
    """plan_snapshot with a look-up over `existing` bodies, as the index answers it."""
    by_name = {c["metadata"]["name"]: CheckpointInfo.from_body(c) for c in existing}
    return plan_snapshot(TrainingJob.model_validate(tj), scan, by_name.get, location)


def manifest(path, step=None, files=("model.pt",)) -> CheckpointSummary:
    """A checkpoint as the scan reports it: its summary (the root files name their items)."""
    entries = [FileEntry(path=f, size=1, sha256="0" * 64) for f in files]
    full = Manifest(path=path, files=entries, sizeBytes=len(entries), fileCount=len(entries),
                    digest=digest_of(entries), format="torch", step=step, resumable=False)
    return CheckpointSummary.of(full, items=list(files) if path == "." else None)


ONE_VOLUME = TrainingJob.model_validate(training_job("train"))


def location(m):
    return VolumeStore(OperatorConfig()).snapshot_location(ONE_VOLUME, "train-output", m, "auto")


def test_plan_names_lineage_and_keep():
    tj = training_job("train", output={"keep": 2})
    tj["status"] = {"inputs": [{"name": "base", "uid": "u-base", "digest": "sha256:b"}]}
    scan = ScanResult([manifest("step-100", 100), manifest("step-300", 300), manifest("step-200", 200),
                       manifest(".", None, files=("config.json",))], [])
    result = plan(tj, scan)
    assert [p.name for p in result.checkpoints] == ["train.step-300", "train.step-200", "train"]
    assert result.dropped == ["step-100"]
    first = result.checkpoints[0]
    source = first.body["spec"]["source"]["trainingJob"]
    assert {k: source[k] for k in ("name", "uid", "directory")} == {"name": "train", "uid": "u-train",
                                                                   "directory": "step-300"}
    # The sealed data goes into the Checkpoint's spec: its own reconcile derives the same Ready status from it.
    sealed = SealedData.model_validate(source["sealed"])
    assert (sealed.step, sealed.location, sealed.parents[0].name) == (300, first.location, "base")
    assert sealed_ready_change(sealed, owned=True, produced_by=ObjectRef(name="train", uid="u-train"),
                               event=None) == first.ready
    fields = first.ready.fields.to_wire()
    assert fields["parents"] == [{"name": "base", "uid": "u-base", "digest": "sha256:b"}]
    assert fields["producedBy"] == {"name": "train", "uid": "u-train"}
    assert fields["step"] == 300 and first.ready.phase == "Ready" and first.ready.ready and fields["owned"] is True
    assert fields["location"] == {"volume": {"claimName": "train-output", "path": "step-300"}}
    assert first.location == first.ready.fields.location
    assert "complete" not in fields and first.ready.conditions[0].type == "Complete"  # no verdict: not checked
    assert (first.ready.conditions[0].status, first.ready.conditions[0].reason) == ("Unknown", "NotChecked")
    root = result.checkpoints[2]
    assert root.ready.fields.to_wire()["location"]["volume"] == {"claimName": "train-output", "path": ".",
                                                                 "items": ["config.json"]}


def test_plan_is_idempotent_against_its_own_earlier_checkpoints_and_avoids_foreign_names():
    tj = training_job("train")
    scan = ScanResult([manifest("step-1", 1)], [])
    first = plan(tj, scan)
    ours = {**first.checkpoints[0].body, "metadata": {**first.checkpoints[0].body["metadata"], "uid": "x"}}
    again = plan(tj, scan, [ours])
    assert again.checkpoints[0].name == "train.step-1" and not again.conflicts


def test_a_name_held_by_another_object_is_a_conflict_never_another_name():
    """Before, the plan gave a hashed name when the plain one was taken at that moment, so a
    name could mean different data in different runs (issue 18 item 11)."""
    tj = training_job("train")
    scan = ScanResult([manifest("step-1", 1), manifest("step-2", 2)], [])
    foreign = {"metadata": {"name": "train.step-1"}, "spec": {"source": {"volume": {"claimName": "c"}}}}
    result = plan(tj, scan, [foreign])
    assert [p.name for p in result.checkpoints] == ["train.step-2"]
    [conflict] = result.conflicts
    assert (conflict.directory, conflict.name) == ("step-1", "train.step-1")
    assert "output 'step-1' would be Checkpoint train.step-1, which exists" in conflict.message
    assert "delete it, or give this job another spec.output.namePrefix" in conflict.message
    wait = conflict_wait(result.conflicts)
    assert wait.reason == "NameConflict" and wait.stalled and wait.requeue_after
    assert "train.step-1" in wait.message


def test_a_rerun_under_the_same_name_conflicts_with_the_first_runs_checkpoints():
    tj = training_job("train")
    first_run = {"metadata": {"name": "train.step-1", "uid": "u-old"},
                 "spec": {"source": {"trainingJob": {"name": "train", "uid": "u-old-job", "directory": "step-1"}}},
                 "status": {"phase": "Ready"}}
    [conflict] = plan(tj, ScanResult([manifest("step-1", 1)], []), [first_run]).conflicts
    assert "written by TrainingJob train (uid u-old-job) from 'step-1'" in conflict.message
    deleting = {**first_run, "metadata": {**first_run["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    result = plan(tj, ScanResult([manifest("step-1", 1)], []), [deleting])
    assert "it is being deleted" in result.conflicts[0].message
    assert not conflict_wait(result.conflicts).stalled  # it ends by itself


def test_no_conflict_no_wait():
    assert conflict_wait([]) is None


def test_the_end_of_job_retention_keeps_a_sealed_checkpoint_labelled_keep_that_it_finds_again():
    """Live sealing made step-1 (labelled ckpt.dev/keep=true) and step-2; the end-of-job scan finds
    both directories again beside step-3: keepLatest 1 retires step-2 only."""
    tj = TrainingJob.model_validate(training_job("train", output={"retention": {"keepLatest": 1}}))
    found = [manifest("step-1", 1), manifest("step-2", 2), manifest("step-3", 3)]

    def sealed(m, **labels):
        return CheckpointInfo.from_body({
            "metadata": {"name": f"train.{m.path}", "uid": f"u-{m.path}", "labels": labels},
            "spec": {"source": {"trainingJob": {"name": "train", "uid": "u-train", "directory": m.path}}},
            "status": {"phase": "Ready", "step": m.step, "digest": m.digest}})
    existing = [sealed(found[0], **{"ckpt.dev/keep": "true"}), sealed(found[1])]
    result = plan_snapshot(tj, ScanResult(found, []), lambda n: None, location, existing=existing)
    assert [c.name for c in result.retire] == ["train.step-2"]
    assert sorted(p.directory for p in result.checkpoints) == ["step-1", "step-3"]


def test_name_prefix():
    tj = training_job("train", output={"namePrefix": "llama"})
    assert plan(tj, ScanResult([manifest("step-1", 1)], [])).checkpoints[0].name == "llama.step-1"


def test_completeness_from_the_manifest_contract_2():
    m = manifest("checkpoint-10", 10)
    unchecked = ready_change(m, Location(), owned=True)  # no verdict: not checked, never complete
    assert unchecked.fields.complete is None and unchecked.conditions[0].status == "Unknown"
    assert unchecked.message.endswith("; not checked: no completeness check applies (format torch)")
    complete = m.model_copy(update={"complete": True, "completeReason": "trainer_state.json is present"})
    assert ready_change(complete, Location(), owned=True).fields.complete is True

    incomplete = m.model_copy(update={"complete": False, "completeReason": "missing trainer_state.json"})
    change = ready_change(incomplete, Location(), owned=True)
    assert change.fields.complete is False and "incomplete" in change.message
    (condition,) = change.conditions
    assert (condition.type, condition.status, condition.reason) == ("Complete", "False", "Incomplete")
    assert condition.message == "missing trainer_state.json"


def test_one_aggregated_message_for_all_skipped_entries():
    skipped = [Skipped(path=f"link-{i}", reason="symlink leaves the output") for i in range(3000)]
    message = skipped_message(skipped)
    assert message.startswith("3000 output entries skipped: 'link-0': symlink leaves the output")
    assert message.endswith("and 2995 more") and message.count("link-") == 5


def test_what_was_not_stored_keeps_the_volume():
    assert not_stored(ScanResult([manifest("step-1", 1)], []), created=1) is None
    assert "1 output entry skipped" in not_stored(ScanResult([], [Skipped(path="x.tmp", reason="temporary")]), 0)
    assert not_stored(ScanResult([manifest("step-1", 1)], []), created=0) == \
        "no checkpoint was created from a non-empty output"


def test_root_files_too_many_to_mount_one_by_one_are_not_stored_and_say_why():
    """The volume store mounts the root files one by one (status.location.volume.items): more
    than the result's bound of names is not a checkpoint there; the rest of the output is."""
    root = manifest(".", files=("a", "b")).model_copy(update={"items": None, "fileCount": 300})
    scan = ScanResult([manifest("step-1", 1), root], [Skipped(path="x.tmp", reason="temporary")])
    kept = storable(scan, location)
    assert [m.path for m in kept.checkpoints] == ["step-1"]
    assert kept.skippedCount == 2 and kept.skipped[0].path == "."
    assert "300 files at the root of the output" in kept.skipped[0].reason and "at most 256" in kept.skipped[0].reason
    assert storable(ScanResult([manifest("step-1", 1)], []), location).skippedCount == 0


def test_a_stored_manifest_is_named_in_the_volume_location():
    stored = manifest("step-1", 1).model_copy(update={"manifestStored": True})
    volume = location(stored).to_wire()["volume"]
    assert volume == {"claimName": "train-output", "path": "step-1",
                      "manifest": f".ckpt-manifests/{stored.digest.replace(':', '-')}.json"}


def test_a_sealed_directory_the_final_scan_could_not_read_is_not_called_removed():
    """hostile5 H2: an unreadable sealed directory was reported as "removed after it was sealed"."""
    from checkpoint_operator.logic.snapshot import missing_message
    from checkpoint_operator.protocol.results import Skipped
    skipped = [Skipped(path="step-10", reason="x"), Skipped(path="step-1", reason="cannot be listed: Permission denied")]
    assert missing_message("step-1", skipped) == \
        "step-1 changed after it was sealed: step-1: cannot be listed: Permission denied"
    assert missing_message("ckpts/step-2", [Skipped(path="ckpts/step-2/x.bin", reason="a fifo")]) == \
        "ckpts/step-2 changed after it was sealed: ckpts/step-2/x.bin: a fifo"
    assert "was removed" in missing_message("step-2", skipped)


def test_a_retired_directory_is_never_planned_again_whatever_its_bytes_now():
    """H10-1: checkpoint-20's Checkpoint was deleted (retired) and its removal failed in part: what is
    left (one file: another digest) must not become a new Checkpoint under the deleted one's name; nor
    does a directory written again under a retired name. Other directories are planned as before."""
    tj = TrainingJob.model_validate(training_job("train"))
    was = manifest("checkpoint-20", 20, files=("config.json", "model.safetensors"))
    left = manifest("checkpoint-20", 20, files=("config.json",))
    assert left.digest != was.digest
    result = plan_snapshot(tj, ScanResult([left, manifest("checkpoint-30", 30)], []), lambda n: None, location,
                           retired=[("checkpoint-20", was.digest)])
    assert [p.directory for p in result.checkpoints] == ["checkpoint-30"]
    assert result.gone == ["checkpoint-20"]


def test_a_directory_written_again_after_its_retired_one_was_removed_is_never_planned():
    """trust2 A: checkpoint-20's Checkpoint was deleted and the sidecar removed its directory: it left
    status.live.retired for status.live.retiredPaths. Failed before (nothing remembered the removed
    name): the trainer's new checkpoint-20 was planned as Checkpoint train.checkpoint-20, the deleted
    one's name, with other bytes. Now never_again keeps it out, whatever its bytes."""
    from checkpoint_operator.api.trainingjob import LiveStatus
    from checkpoint_operator.logic.live_sealing import never_again
    tj = TrainingJob.model_validate(training_job("train"))
    live = LiveStatus(retiredPaths=["checkpoint-20"])
    result = plan_snapshot(tj, ScanResult([manifest("checkpoint-20", 20), manifest("checkpoint-30", 30)], []),
                           lambda n: None, location, retired=never_again(live))
    assert [p.name for p in result.checkpoints] == ["train.checkpoint-30"]
    assert result.gone == ["checkpoint-20"]
