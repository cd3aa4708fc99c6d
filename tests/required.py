"""What a test does when a server or tool it needs is missing: skip saying why, or, with
CKPT_SOURCE_SERVERS=required (.ci/run sets it, after installing them), fail."""

from __future__ import annotations

import os

import pytest


def servers_required() -> bool:
    return os.environ.get("CKPT_SOURCE_SERVERS") == "required"


def unavailable(reason: str):
    if servers_required():
        pytest.fail(f"{reason} (CKPT_SOURCE_SERVERS=required)")
    pytest.skip(reason)
