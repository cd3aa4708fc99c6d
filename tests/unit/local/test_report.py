"""local/report.py: `local run`'s tables and JSON show each Checkpoint's completeness with its reason
(issue 18 item 8f) and a Checkpoint being deleted as Terminating, never Ready (issue 18 item 14)."""

from checkpoint_operator.local.report import build_report, render_table
from factories import checkpoint


def with_status(name, **status):
    body = checkpoint(name)
    body["status"] = {**body.get("status", {}), **status}
    return body


def test_completeness_and_its_reason_in_json_and_table():
    incomplete = with_status("t.checkpoint-5", complete=False, conditions=[
        {"type": "Complete", "status": "False", "reason": "Incomplete", "lastTransitionTime": "t",
         "message": "missing trainer_state.json (a Trainer checkpoint writes it last)"}])
    complete = with_status("t.step-1", complete=True, conditions=[
        {"type": "Complete", "status": "True", "reason": "Complete", "lastTransitionTime": "t", "message": "complete"}])
    unchecked = with_status("t.notes", complete=None)
    report = build_report([incomplete, complete, unchecked], [])
    by_name = {c["name"]: c for c in report["checkpoints"]}
    assert (by_name["t.checkpoint-5"]["complete"], by_name["t.checkpoint-5"]["completeReason"]) == (
        False, "missing trainer_state.json (a Trainer checkpoint writes it last)")
    assert by_name["t.step-1"]["complete"] is True and by_name["t.notes"]["complete"] is None
    table = render_table(report)
    header, *rows = table.split("\n\n")[1].splitlines()
    assert header.split()[:7] == ["CHECKPOINT", "PHASE", "FORMAT", "STEP", "RESUMABLE", "COMPLETE", "SIZE"]
    at = header.index("COMPLETE")
    complete_column = {row.split()[0]: row[at:at + len("COMPLETE")].strip() for row in rows}
    assert complete_column == {"t.checkpoint-5": "NO", "t.notes": "-", "t.step-1": "yes"}
    assert table.endswith("incomplete (1):\n  t.checkpoint-5  missing trainer_state.json (a Trainer checkpoint "
                          "writes it last)")


def test_a_checkpoint_being_deleted_is_terminating_not_ready():
    deleting = with_status("t.step-1", phase="Ready")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    report = build_report([deleting], [])
    [entry] = report["checkpoints"]
    assert entry["phase"] == "Ready" and entry["terminating"] is True  # JSON: what the status says, and the flag
    header, row = render_table(report).split("\n\n")[1].splitlines()
    at = header.index("PHASE")
    assert row.startswith("t.step-1") and row[at:].split()[0] == "Terminating"


def test_no_checkpoints_no_checkpoint_table():
    """An empty CHECKPOINT table (its header alone) stood between a job's two `can never finish` lines."""
    job = {"metadata": {"name": "byname"}, "status": {"phase": "Pending"}}
    table = render_table(build_report([], [job]))
    assert table.splitlines()[0].split() == ["TRAININGJOB", "PHASE", "INPUTS", "OUTPUTS"]
    assert "CHECKPOINT" not in table and not table.endswith("\n") and "\n\n" not in table
