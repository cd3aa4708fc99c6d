"""The unit tier keeps its promise: no test under tests/unit/ opens a network socket."""

from __future__ import annotations

import socket

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
