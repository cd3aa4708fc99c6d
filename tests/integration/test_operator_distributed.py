"""Multi-worker TrainingJobs through the real operator and the local cluster: rendezvous, group
failure and restarts, JobSet, Kueue. The workers' commands run for real (host processes)."""

from __future__ import annotations

import sys

import pytest

from conftest import NS, TJ, training_job

pytestmark = pytest.mark.timeout(120)


async def wait_phase(api, wait_for, name, phases, timeout=60):
    phases = (phases,) if isinstance(phases, str) else phases

    async def reached():
        obj = await api.get(TJ, NS, name)
        return obj if obj and obj.get("status", {}).get("phase") in phases else None
    return await wait_for(reached, timeout=timeout)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_two_workers_that_exit_1_fail_the_job(api, operator, cluster, wait_for):
    """Issue 18.7: replicas 2, backoffLimit 0, both workers exit 1 a second after start. The job
    fails at once (before: Running until its timeout, the Job Failed with `terminating: 1`)."""
    await api.create(TJ, NS, training_job("pair", replicas=2, backoffLimit=0, output={"enabled": False},
                                          command=python("import time, sys; time.sleep(1); sys.exit(1)")))
    tj = await wait_phase(api, wait_for, "pair", ("Succeeded", "Failed"), timeout=30)
    assert tj["status"]["phase"] == "Failed"
    assert "exit code 1" in tj["status"]["message"]
