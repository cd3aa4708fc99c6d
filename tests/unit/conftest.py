"""The unit tier: `python -m pytest -m unit`, the inner loop (well under 30 s).

Every test under tests/unit/ is marked `unit` here, by directory: the pure, fast tests of one
module each, laid out as the package is (tests/unit/logic/test_naming.py tests logic/naming.py).
They start no server and no operator (a test that opens a network socket fails); a few run
the agent's CLI once in a subprocess. What needs
SeaweedFS, an import-source server, the emulated API or the real operator lives beside them
(tests/agent/, tests/local/, tests/integration/, ...) and runs in the default suite.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

UNIT_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(UNIT_DIR):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A unit test serves nothing and reaches nothing over the network (an event loop's own
    socketpair is not the network); one that needs to belongs beside the module, outside unit/."""
    real_bind, real_connect = socket.socket.bind, socket.socket.connect

    def refuse_network(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"a unit test opened a network socket ({address!r}): move it out of tests/unit/")

    def bind(self: socket.socket, address: Any) -> None:
        refuse_network(self, address)
        real_bind(self, address)

    def connect(self: socket.socket, address: Any) -> None:
        refuse_network(self, address)
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "bind", bind)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield
