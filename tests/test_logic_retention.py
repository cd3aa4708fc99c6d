from checkpoint_operator.logic.retention import apply_keep


def test_keep_n_highest_steps_and_always_the_stepless():
    entries = [("a", 100), ("b", 300), ("final", None), ("c", 200)]
    kept, dropped = apply_keep(entries, 2, lambda e: e[1])
    assert [e[0] for e in kept] == ["b", "final", "c"]
    assert [e[0] for e in dropped] == ["a"]


def test_keep_unset_keeps_all():
    entries = [("a", 1), ("b", 2)]
    assert apply_keep(entries, None, lambda e: e[1]) == (entries, [])
