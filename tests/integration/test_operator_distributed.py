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


GROUP_WORKER = """
import os, sys, time
out, index = os.environ["CHECKPOINT_OUTPUT_DIR"], os.environ["JOB_COMPLETION_INDEX"]
log = os.path.join(out, "workers.log")
attempt = sum(1 for line in open(log) if line.startswith(f"start {index}")) if os.path.exists(log) else 0
with open(log, "a") as f:
    f.write(f"start {index} attempt {attempt} rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} "
            f"at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} host {os.environ['HOSTNAME']}\\n")
if attempt == 0 and index == "1":
    time.sleep(1)
    sys.exit(3)  # worker 1 fails in the first attempt
if attempt == 0:
    time.sleep(60)  # worker 0 would wait in a collective: the group must stop it
with open(log, "a") as f:
    f.write(f"done {index} attempt {attempt}\\n")
"""


async def events_of(api, name):
    return [e for e in await api.list("v1/events", NS) if e.get("involvedObject", {}).get("name") == name]


async def test_a_failed_worker_stops_and_restarts_the_whole_group(api, operator, cluster, wait_for):
    await api.create(TJ, NS, training_job("group", replicas=2, backoffLimit=1, command=python(GROUP_WORKER)))
    tj = await wait_phase(api, wait_for, "group", ("Succeeded", "Failed"), timeout=90)
    status = tj["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["restarts"] == 1
    assert status["workerFailure"]["attempt"] == 0 and status["workerFailure"]["index"] == 1
    assert "exit code 3" in status["workerFailure"]["message"]
    claim = cluster.claim_dir(NS, status["outputClaim"])
    lines = (claim / "workers.log").read_text().splitlines()
    # worker 0 of the first attempt was stopped (it never finished its sleep); both ran again
    assert sorted(line for line in lines if line.startswith("done")) == ["done 0 attempt 1", "done 1 attempt 1"]
    starts = [line for line in lines if line.startswith("start")]
    assert len(starts) == 4
    port = status["rendezvous"].rsplit(":", 1)[1]
    assert all("of 2 at 127.0.0.1:" in line for line in starts)
    assert any(f"start 0 attempt 1 rank 0 of 2 at 127.0.0.1:{port} host group-0" in line for line in starts)
    assert any("start 1 attempt 1 rank 1" in line and "host group-1" in line for line in starts)
    restarts = [e for e in await events_of(api, "group") if e["reason"] == "GroupRestart"]
    assert len(restarts) == 1 and "worker 1" in restarts[0]["message"] and "restart 1 of 1" in restarts[0]["message"]
    service = await api.get("v1/services", NS, "group")
    assert service["spec"]["clusterIP"] == "None"


async def test_the_group_fails_when_its_restarts_are_used_up(api, operator, cluster, wait_for):
    code = "import os, sys, time; time.sleep(1); sys.exit(5 if os.environ['JOB_COMPLETION_INDEX'] == '1' else 0)"
    await api.create(TJ, NS, training_job("doomed", replicas=2, backoffLimit=1, output={"enabled": False},
                                          command=python(code)))
    tj = await wait_phase(api, wait_for, "doomed", ("Succeeded", "Failed"), timeout=90)
    status = tj["status"]
    assert status["phase"] == "Failed" and status["restarts"] == 1
    assert "exit code 5" in status["message"] and "after 1 group restart(s)" in status["message"]
    assert status["workerFailure"]["attempt"] == 1
