"""The unit tier keeps its promise: no test under tests/unit/ opens a network socket."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest


def test_a_unit_test_cannot_serve_or_reach_the_network() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        with pytest.raises(AssertionError, match="move it out of tests/unit/"):
            server.bind(("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        with pytest.raises(AssertionError, match="opened a network socket"):
            client.connect(("127.0.0.1", 9))
    left, right = socket.socketpair()  # what an event loop uses to wake itself: allowed
    left.close()
    right.close()


def test_this_file_is_in_the_unit_tier(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None


def test_no_test_outside_tests_unit_asks_for_the_unit_marker() -> None:
    """`-m unit` collects only tests/unit/ (tests/conftest.py pytest_ignore_collect): a test elsewhere
    marked `unit` would silently not run in the tier."""
    tests = Path(__file__).parents[1]
    unit = Path(__file__).parent
    marked = [str(path.relative_to(tests)) for path in tests.rglob("*.py")
              if not path.is_relative_to(unit) and re.search(r"mark\.unit\b", path.read_text(encoding="utf-8"))]
    assert not marked, f"marked `unit` outside tests/unit/ (move them there): {marked}"
