"""The operator's decisions for live sealing with a volume per worker (logic/live_unions.py): a
directory is assembled once every worker of the job has sealed its part."""

from __future__ import annotations

from checkpoint_operator.logic.live_unions import (Assemble, LeftToSnapshot, PartSeals, WaitForParts, decide,
                                                   next_union, part_line_problem, union_args, union_of_command)

A, B, C = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64


def seals(**by_worker: dict[str, str]) -> PartSeals:
    s = PartSeals()
    for worker, paths in by_worker.items():
        for path, digest in paths.items():
            s.seal(int(worker[1:]), path, digest)
    return s


def test_every_part_sealed_assembles_the_directory_from_the_sealed_parts():
    s = seals(w0={"step-1": A}, w1={"step-1": B})
    assert decide(2, s, published=set(), tried=set()) == [Assemble("step-1", ((0, A), (1, B)))]


def test_a_part_not_sealed_yet_is_waited_for_by_name():
    s = seals(w0={"step-1": A, "step-2": C}, w1={"step-1": B})
    decisions = decide(2, s, published=set(), tried=set())
    assert decisions == [Assemble("step-1", ((0, A), (1, B))), WaitForParts("step-2", (1,))]
    assert decisions[1].message == ("step-2: waiting for worker 1 to seal its part (a step a worker never writes is "
                                    "left to the snapshot at the end of the job)")
    assert next_union(decisions) == decisions[0]


def test_a_worker_that_has_not_sealed_its_part_is_waited_for_whether_its_pod_runs_or_not():
    """hostile9 H9-1: a worker whose pod has ended (it failed, and the restarted group's rank writes
    its part next; or it never writes that step) is waited for too: a union of fewer parts than the
    job's workers is never published live (published from worker 0's part alone, complete: false,
    the step counted as published and never assembled again once worker 1 wrote its part; the
    end-of-job union, another digest, then failed it as changed after sealing). A step a worker
    never writes is left to the end-of-job snapshot."""
    s = seals(w0={"step-2": C})
    assert decide(2, s, published=set(), tried=set()) == [WaitForParts("step-2", (1,))]
    s.seal(1, "step-2", B)  # the restarted group's worker 1 sealed its part
    assert decide(2, s, published=set(), tried=set()) == [Assemble("step-2", ((0, C), (1, B)))]


def test_a_part_changed_after_sealing_is_never_assembled_live():
    s = seals(w0={"step-1": A}, w1={"step-1": B})
    s.change(1, "step-1")
    [decision] = decide(2, s, published=set(), tried=set())
    assert decision == LeftToSnapshot("step-1", "worker 1's part changed after it was sealed")
    s.seal(1, "step-1", C)  # a restarted sidecar sealed it again: the bytes now
    assert decide(2, s, published=set(), tried=set()) == [Assemble("step-1", ((0, A), (1, C)))]


def test_published_and_tried_unions_are_not_assembled_again_but_new_parts_are():
    s = seals(w0={"step-1": A, "step-2": A}, w1={"step-1": B, "step-2": B})
    assert decide(2, s, published={"step-1"}, tried={("step-2", ((0, A), (1, B)))}) == []
    s.seal(1, "step-2", C)  # that worker's part is other bytes now: a new union to try
    assert decide(2, s, published={"step-1"}, tried={("step-2", ((0, A), (1, B)))}) == \
        [Assemble("step-2", ((0, A), (1, C)))]


def test_steps_are_decided_oldest_first():
    s = seals(w0={"step-10": A, "step-9": A, "final": A}, w1={"step-10": B, "step-9": B, "final": B})
    assert [d.path for d in decide(2, s, published=set(), tried=set())] == \
        ["step-9", "step-10", "final"]


def test_the_union_pod_s_flags_say_what_it_was_for_and_only_those():
    union = Assemble("ckpts/step-3", ((0, A), (1, B)))
    args = ["checkpoint-operator", "agent", "scan", "/checkpoint-output", "--parts", "2", *union_args(union)]
    assert union_args(union) == ["--only", "ckpts/step-3", "--expect", f"0={A}", "--expect", f"1={B}"]
    assert union_of_command(args) == ("ckpts/step-3", ((0, A), (1, B)))
    assert union_of_command(["scan", "/checkpoint-output", "--parts", "2"]) is None
    assert union_of_command(["--only", "x", "--expect", "0=sha256:bad"]) is None


def test_a_sealed_line_counts_as_the_part_of_the_worker_its_pod_is_never_what_the_line_says():
    assert part_line_problem(1, 1, 2) is None
    assert part_line_problem(1, 0, 2) == "it names part 0, its pod is worker 1's"
    assert part_line_problem(1, None, 2) == "it names part None, its pod is worker 1's"
    assert part_line_problem(None, 0, 2) == "its pod has no worker index of this job"
    assert part_line_problem(2, 2, 2) == "its pod has no worker index of this job"


def test_retention_asks_each_worker_to_remove_its_own_part_by_its_part_s_digest():
    from checkpoint_operator.logic.live_unions import part_removals, removed_everywhere
    union = "sha256:" + "9" * 64
    s = seals(w0={"step-1": A, "step-2": A}, w1={"step-1": B})
    retired = [("step-1", union), ("step-2", union)]
    assert part_removals(0, s, retired, kept=set()) == [("step-1", A), ("step-2", A)]
    assert part_removals(1, s, retired, kept=set()) == [("step-1", B)]  # it has no part of step-2
    assert part_removals(0, s, retired, kept={("step-1", union)}) == [("step-2", A)]  # its Checkpoint is still there
    assert not removed_everywhere("step-1", s)
    s.remove(0, "step-1", C)  # another digest: a part sealed anew since, not the one asked about
    assert part_removals(0, s, retired, kept=set())[0] == ("step-1", A)
    s.remove(0, "step-1", A)
    assert not removed_everywhere("step-1", s)  # worker 1 still holds its part
    s.remove(1, "step-1", B)
    assert removed_everywhere("step-1", s) and not removed_everywhere("step-2", s)
    assert decide(2, s, published=set(), tried=set()) == [WaitForParts("step-2", (1,))]


def test_the_end_of_job_snapshot_never_publishes_a_retired_directory_again_whatever_is_left_of_it():
    """A retired union whose parts only some workers removed before the end is some workers' parts
    (another digest): not a checkpoint to publish again (it was, before this)."""
    from checkpoint_operator.logic.live_unions import without_retired
    from checkpoint_operator.protocol.results import CheckpointSummary, ScanReport
    left = CheckpointSummary(path="step-1", digest=C, sizeBytes=1, fileCount=1)
    kept = CheckpointSummary(path="step-2", digest=B, sizeBytes=1, fileCount=1)
    scan = ScanReport(checkpoints=[left, kept])
    assert without_retired(scan, [("step-1", A)]).checkpoints == [kept]
    assert without_retired(scan, []) == scan


def test_parts_a_resume_step_gave_back_are_forgotten_so_no_union_of_them_is_assembled():
    """H9-3: worker 0's part of step-2 (never published: worker 1 died before its part) is writable again
    after the resume step; a union with its old digest must not be assembled when the restarted worker 1
    seals its part (worker 0 may be writing step-2 again): it waits for worker 0 to seal anew."""
    seals = PartSeals()
    seals.seal(0, "step-1", "sha256:" + "a" * 64)
    seals.seal(1, "step-1", "sha256:" + "b" * 64)
    seals.seal(0, "step-2", "sha256:" + "c" * 64)
    seals.change(0, "step-2")
    seals.reopened(["step-1"])
    assert seals.sealed == {0: {"step-1": "sha256:" + "a" * 64}, 1: {"step-1": "sha256:" + "b" * 64}}
    assert seals.changed == {0: set()}
    seals.seal(1, "step-2", "sha256:" + "d" * 64)
    assert [type(d).__name__ for d in decide(2, seals, ["step-1"], set())] == ["WaitForParts"]


def test_a_directory_named_like_an_option_is_left_to_the_end_of_job_snapshot():
    """H10-5: the scan takes a directory named '--ckpt-5' as a checkpoint; a union pod's `--only --ckpt-5`
    would not parse (nor pass admission): it is left to the end-of-job snapshot, which needs no --only."""
    s = seals(w0={"--ckpt-5": A, "step-6": A}, w1={"--ckpt-5": B, "step-6": B})
    decisions = decide(2, s, published=set(), tried=set())
    assert [type(d).__name__ for d in decisions] == ["LeftToSnapshot", "Assemble"]
    assert decisions[0].path == "--ckpt-5" and "'-'" in decisions[0].reason
