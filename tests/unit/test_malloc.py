"""malloc.py: glibc's malloc_trim and mallinfo2 through ctypes; nothing where they are missing."""

from __future__ import annotations

import asyncio
import platform

import pytest

from checkpoint_operator import malloc
from checkpoint_operator.logic.memory_trim import TrimPolicy

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_the_process_glibc_trims_and_says_what_is_free():
    libc = malloc.Glibc.load()
    assert libc is not None
    junk = [bytearray(4096) for _ in range(4096)]  # 16 MB in malloc, then freed
    del junk
    free = libc.free_bytes()
    assert free is not None and free > 0
    assert isinstance(libc.trim(), bool)


class NoTrim:
    """A C library without malloc_trim (musl, macOS)."""


def test_no_malloc_trim_no_trimmer():
    assert malloc.Glibc.load(NoTrim()) is None  # type: ignore[arg-type]


class FakeGlibc(malloc.Glibc):
    def __init__(self) -> None:
        self.trims = 0

    def free_bytes(self) -> int:
        return 64 * 1024 * 1024

    def trim(self) -> bool:
        self.trims += 1
        return True


async def test_the_trimmer_trims_once_work_is_over_and_not_again_while_idle():
    libc, activity = FakeGlibc(), malloc.Activity()
    policy = TrimPolicy(check_every=0.001, quiet=0.01, min_interval=0.0)
    task = malloc.start_trimmer(activity, policy, libc)
    assert task is not None
    try:
        activity.tick()
        while libc.trims == 0:
            await asyncio.sleep(0.005)
        for _ in range(50):  # idle: many looks, no second trim
            await asyncio.sleep(0.002)
        assert libc.trims == 1
    finally:
        task.cancel()


async def test_without_glibc_no_task(monkeypatch):
    monkeypatch.setattr(malloc.Glibc, "load", classmethod(lambda cls, libc=None: None))
    assert malloc.start_trimmer(malloc.Activity(), TrimPolicy()) is None


@pytest.mark.skipif(platform.system() != "Linux", reason="/proc")
def test_rss_is_read():
    rss = malloc.rss_bytes()
    assert rss is not None and rss > 10 * 1024 * 1024
