"""The unit tier keeps its promise (no test under tests/unit/ opens a network socket), and each tier
runs on as many pytest-xdist workers as it should."""

from __future__ import annotations

import os
import re
import socket
import sys
import tomllib
import types
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


@pytest.mark.parametrize("markexpr, in_process", [
    ("frameworks", True), (" frameworks ", True), ("image", True), ("containers", True), ("slow", True),
    ("not image and not containers and not frameworks and not slow", False), ("", False), ("unit", False),
    ("unit or slow", False),
])
def test_xdist_workers_for_each_tier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                                     markexpr: str, in_process: bool) -> None:
    """pyproject's addopts ask for `-n auto`: tests/conftest.py makes that no worker for the slow
    tier and the Podman and ML tiers (each test uses every core), and a worker per usable CPU for
    the default and unit tiers and any other selection."""
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    config = types.SimpleNamespace(option=types.SimpleNamespace(markexpr=markexpr))
    workers = request.config.hook.pytest_xdist_auto_num_workers(config=config)
    assert workers == (0 if in_process else len(os.sched_getaffinity(0)))


def test_xdist_workers_from_the_environment_still_win(request: pytest.FixtureRequest,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "3")
    config = types.SimpleNamespace(option=types.SimpleNamespace(markexpr="frameworks"))
    assert request.config.hook.pytest_xdist_auto_num_workers(config=config) == 3


def test_the_default_tier_asks_for_workers() -> None:
    """The README's command stays `python -m pytest`: the flag is in addopts, not on the command."""
    root = Path(__file__).parents[2]
    addopts = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert "-n auto" in addopts


def test_collection_writes_the_rewritten_modules_bytecode_and_then_restores_the_setting(
        request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where PYTHONDONTWRITEBYTECODE is set, pytest rewrote every test module's asserts at each
    run and in each worker (14 s of the collection's 19 s of CPU): tests/conftest.py lets the
    collection write them, and the tests run with the setting as it was."""
    tests_conftest = Path(__file__).parents[1] / "conftest.py"
    plugin = next(p for p in request.config.pluginmanager.get_plugins()
                  if getattr(p, "__file__", None) == str(tests_conftest))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    collection = plugin.pytest_collection(request.session)
    next(collection)
    assert sys.dont_write_bytecode is False  # while collecting
    with pytest.raises(StopIteration):
        collection.send(None)
    assert sys.dont_write_bytecode is True
