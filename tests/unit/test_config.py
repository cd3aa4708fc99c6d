"""Operator settings refused in one line naming the variable (config.py ConfigError), at `run`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from checkpoint_operator.config import ConfigError, OperatorConfig


@pytest.mark.parametrize("env, line", [
    ({"CKPT_PUBLISH_TIMEOUT": "-1"}, "CKPT_PUBLISH_TIMEOUT=-1: input should be greater than 0"),
    ({"CKPT_PUBLISH_TIMEOUT": "soon"}, "CKPT_PUBLISH_TIMEOUT=soon: input should be a valid number"),
    ({"CKPT_RESYNC_INTERVAL": "0"}, "CKPT_RESYNC_INTERVAL=0: input should be greater than 0"),
    ({"CKPT_AGENT_RESOURCES": "{nope"}, "CKPT_AGENT_RESOURCES: not JSON"),
    ({"CKPT_STORAGE_TYPE": "s3"}, "CKPT_S3_BUCKET must be set when CKPT_STORAGE_TYPE is s3"),
])
def test_a_refused_setting_is_one_line_naming_it(env: dict[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as refused:
        OperatorConfig.from_env(env)
    assert str(refused.value).startswith(line) and "\n" not in str(refused.value)


def test_the_publish_timeout_is_a_setting_with_the_old_bound_as_default() -> None:
    assert OperatorConfig.from_env({}).publish_timeout == 600.0
    assert OperatorConfig.from_env({"CKPT_PUBLISH_TIMEOUT": "90"}).publish_timeout == 90.0


def test_run_with_a_refused_setting_exits_with_its_line_not_a_traceback() -> None:
    """Before: a pydantic traceback of several lines."""
    env = {**os.environ, "CKPT_PUBLISH_TIMEOUT": "0"}
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "run", "--standalone"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: CKPT_PUBLISH_TIMEOUT=0: input should be greater than 0"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
