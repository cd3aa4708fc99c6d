from checkpoint_operator.logic.retention import apply_keep


def test_keep_n_highest_steps_and_always_the_stepless():
    entries = [("a", 100), ("b", 300), ("final", None), ("c", 200)]
    kept, dropped = apply_keep(entries, 2, lambda e: e[1])
    assert [e[0] for e in kept] == ["b", "final", "c"]
    assert [e[0] for e in dropped] == ["a"]


def test_keep_unset_keeps_all():
    entries = [("a", 1), ("b", 2)]
    assert apply_keep(entries, None, lambda e: e[1]) == (entries, [])


# --- retention policies (logic/retention.decide) ------------------------------------------------

from checkpoint_operator.logic.retention import Entry, Policy, decide  # noqa: E402


def steps(*numbers, **metrics):
    return [Entry(f"step-{n}", n, {"eval_loss": metrics[f"s{n}"]} if f"s{n}" in metrics else None) for n in numbers]


def kept_keys(entries, policy):
    kept, dropped = decide(entries, policy)
    assert {e.key for e in kept} | {e.key for e in dropped} == {e.key for e in entries}
    return sorted((e.step for e in kept), key=lambda s: (s is None, s))


def test_no_rule_keeps_everything():
    assert kept_keys(steps(1, 2, 3), Policy()) == [1, 2, 3]


def test_keep_latest_and_keep_every_combine():
    entries = steps(100, 200, 300, 400, 500, 600, 700)
    assert kept_keys(entries, Policy(keep_latest=2)) == [600, 700]
    assert kept_keys(entries, Policy(keep_latest=2, keep_every=300)) == [300, 600, 700]


def test_keep_every_alone_still_keeps_the_newest():
    assert kept_keys(steps(100, 150, 250), Policy(keep_every=100)) == [100, 250]


def test_keep_best_by_min_and_max_among_those_that_record_the_metric():
    entries = steps(1, 2, 3, 4, 5, s1=0.9, s2=0.4, s3=0.7, s4=0.5)  # step 5 has no eval
    assert kept_keys(entries, Policy(best_metric="eval_loss", best_mode="min", best_count=2)) == [2, 4, 5]
    assert kept_keys(entries, Policy(best_metric="eval_loss", best_mode="max", best_count=1)) == [1, 5]
    assert kept_keys(entries, Policy(keep_latest=1, best_metric="eval_loss", best_count=1)) == [2, 5]


def test_ties_of_a_metric_go_to_the_later_step():
    entries = steps(1, 2, 3, s1=0.5, s2=0.5, s3=0.9)
    assert kept_keys(entries, Policy(keep_latest=1, best_metric="eval_loss", best_count=1)) == [2, 3]


def test_exempt_and_stepless_entries_are_always_kept():
    entries = [*steps(1, 2, 3), Entry("final", None), Entry("step-0", 0, exempt=True)]
    assert kept_keys(entries, Policy(keep_latest=1)) == [0, 3, None]


def test_the_root_files_are_always_kept_and_take_no_place_of_a_step():
    # A root torch.save file may record a step: the final model is kept all the same, and the
    # newest and the keepLatest places still go to the steps of the run.
    entries = [*steps(1, 2, 3), Entry(".", 1)]
    kept, dropped = decide(entries, Policy(keep_latest=1))
    assert [e.key for e in kept] == ["step-3", "."] and [e.key for e in dropped] == ["step-1", "step-2"]
    kept, _ = decide([*steps(1, 2), Entry(".", 9)], Policy(keep_latest=2))
    assert [e.key for e in kept] == ["step-1", "step-2", "."]


def test_decisions_are_stable_as_checkpoints_arrive():
    """What retention dropped while the run went on is dropped again at the end (the end-of-job
    snapshot never brings a retired checkpoint back)."""
    policy = Policy(keep_latest=2, keep_every=4, best_metric="eval_loss", best_count=1)
    losses = {1: 0.9, 2: 0.3, 3: 0.8, 4: 0.6, 5: 0.7, 6: 0.2, 7: 0.65, 8: 0.61}
    dropped_ever: set[str] = set()
    for n in range(1, 9):
        entries = [Entry(f"step-{s}", s, {"eval_loss": losses[s]}) for s in range(1, n + 1)]
        kept, dropped = decide(entries, policy)
        assert not dropped_ever & {e.key for e in kept}
        dropped_ever |= {e.key for e in dropped}
    assert sorted(e.step for e in kept) == [4, 6, 7, 8]


def test_policy_from_the_spec_keep_is_keep_latest():
    from checkpoint_operator.api.trainingjob import OutputSpec
    assert Policy.of(OutputSpec(keep=3)) == Policy(keep_latest=3)
    spec = OutputSpec(retention={"keepLatest": 2, "keepEvery": 10, "keepBest": {"metric": "acc", "mode": "max"}})
    assert Policy.of(spec) == Policy(keep_latest=2, keep_every=10, best_metric="acc", best_mode="max", best_count=1)


def test_retention_never_drops_what_latest_would_resume_from():
    from checkpoint_operator.logic.retention import Entry, Policy, decide

    entries = [Entry("step-100", 100, complete=True, resumable=True), Entry("step-200", 200, complete=True),
               Entry("step-300", 300, complete=None, resumable=True), Entry("step-400", 400, complete=False)]
    kept, dropped = decide(entries, Policy(keep_latest=1))
    # step-400 is the newest (kept as always); step-200 is what select: latest picks and step-100 what
    # latestResumable picks (complete ones first): neither may go because a newer save broke.
    assert [e.key for e in kept] == ["step-100", "step-200", "step-400"]
    assert [e.key for e in dropped] == ["step-300"]
    unchecked = [Entry("a", 1), Entry("b", 2), Entry("c", 3, complete=False)]
    assert [e.key for e in decide(unchecked, Policy(keep_latest=1))[0]] == ["b", "c"]
