"""logic/memory_trim.py: a trim once work is over and enough was freed, never while idle after it."""

from __future__ import annotations

from checkpoint_operator.logic.memory_trim import MIB, Memory, TrimPolicy, TrimTracker, trim_due

BURST_OVER = Memory(rss=260 * MIB, free=33 * MIB)  # after the start-up with 10,000 Checkpoints
POLICY = TrimPolicy(check_every=1.0, quiet=10.0, min_free=16 * MIB, min_interval=30.0, max_wait=600.0)


class Looks:
    """A tracker driven by a fake clock, one look per second, counting the memory reads."""

    def __init__(self, memory: Memory = BURST_OVER):
        self.tracker, self.now, self.memory, self.reads = TrimTracker(POLICY), 0.0, memory, 0

    def measure(self) -> Memory:
        self.reads += 1
        return self.memory

    def look(self, activity: int) -> bool:
        self.now += 1.0
        due = self.tracker.look(now=self.now, activity=activity, measure=self.measure)
        if due:
            self.tracker.trimmed(now=self.now, rss=self.memory.rss - (self.memory.free or 0))
        return due

    def run(self, activities: list[int]) -> list[float]:
        """The times of the trims over these looks."""
        return [self.now for activity in activities if self.look(activity)]


def test_trim_due_needs_enough_free_and_growth_since_the_last_trim():
    assert trim_due(POLICY, Memory(rss=260 * MIB, free=33 * MIB), None)
    assert not trim_due(POLICY, Memory(rss=260 * MIB, free=7 * MIB), None)  # little free: nothing to give back
    assert trim_due(POLICY, Memory(rss=260 * MIB, free=None), None)  # no mallinfo2: not a reason to wait
    # Given back last time and still free: not worth another trim until the RSS grew again.
    assert not trim_due(POLICY, Memory(rss=235 * MIB, free=33 * MIB), 230 * MIB)
    assert trim_due(POLICY, Memory(rss=250 * MIB, free=33 * MIB), 230 * MIB)


def test_a_burst_then_quiet_trims_once_quiet_long_enough():
    looks = Looks()
    burst = list(range(1, 21))  # 20 s of work, the count moving at every look
    trims = looks.run(burst + [20] * 60)  # then a minute with nothing handled
    assert trims == [30.0]  # 10 s (quiet) after the last change at 20 s, and only once
    assert looks.reads == 1  # memory read only then: an idle look is a comparison


def test_no_trim_while_work_goes_on_nor_before_it_has_been_quiet():
    looks = Looks()
    assert looks.run(list(range(1, 100))) == []
    assert looks.run([99] * 9) == []  # 9 s quiet: kopf's workers may still hold their objects
    assert looks.reads == 0


def test_little_freed_reads_once_and_does_not_trim():
    looks = Looks(Memory(rss=80 * MIB, free=4 * MIB))
    assert looks.run(list(range(1, 5)) + [4] * 100) == []
    assert looks.reads == 1


def test_a_second_burst_soon_after_a_trim_waits_for_the_interval():
    looks = Looks(Memory(rss=300 * MIB, free=60 * MIB))  # each trim leaves 240 MB: 60 MB regrown each time
    first = looks.run([1, 2, 3] + [3] * 10)
    assert first == [13.0]
    # A burst right after, over at 17 s: quiet at 27 s, still within 30 s of the trim at 13 s.
    second = looks.run([4, 5, 6, 7] + [7] * 40)
    assert second == [43.0]  # decided once the interval passed, not dropped


def test_work_that_never_pauses_is_trimmed_after_max_wait():
    looks = Looks(Memory(rss=300 * MIB, free=60 * MIB))
    trims = looks.run(list(range(1, 1300)))
    assert trims == [601.0, 1202.0]  # one max_wait after the work began, then after the next


def test_the_first_look_counts_as_work():
    """The trimmer starts with kopf: what the start-up lists and indexes comes after it."""
    looks = Looks()
    assert looks.run([0] * 10) == []  # the first look at 1 s: quiet from there
    assert looks.run([0]) == [11.0]
