"""Distributed TrainingJobs (issue 19.7): the real operator process against the emulated API, as
bench/scale.py runs it (the emulator and `checkpoint-operator run` each in a process of their own,
the local cluster with its Job and JobSet controllers in this one). Two figures:

- `restart`: the time from a worker's failure to the group's restart. Each worker is a real process
  (`python -c`) that writes its start time and, in the first attempt, worker 1 its exit time before it
  exits 1; worker 0 would run on (it waits in a "collective"): the group must stop it. The figure
  is the first start of attempt 2 minus that exit, per run; what it holds: the Job controller stops
  the other worker (SIGTERM, it exits at once), the Job is Failed once none is left, the operator
  records the failure and deletes the Job (engine Job) or JobSet restarts its child Job (engine
  JobSet), the Job is created again, its pods are bound and started. Median and max over --runs.
- `requests`: the operator's own API requests (its `checkpoint_operator_api_requests_total`) per
  lifecycle of a job with 1, 4 and 16 replicas (create -> Succeeded with 2 checkpoints, the workers
  played in-process), and per worker.

    python bench/distributed.py                 # both figures
    python bench/distributed.py --only restart --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import NS, TJ, WORKER, Bench, Watch  # noqa: E402

WORKER_CODE = """
import os, sys, time
d, index, attempt = os.environ["TIMES"], os.environ["JOB_COMPLETION_INDEX"], int(os.environ["ATTEMPT"])
open(os.path.join(d, f"start-{index}-{attempt}"), "w").write(repr(time.time()))
if attempt == 0 and index == "1":
    open(os.path.join(d, "failed"), "w").write(repr(time.time()))
    sys.exit(1)
if attempt == 0:
    time.sleep(120)
"""


# The group's restart attempt, from the pod's own label (downward API): a worker whose pod of an
# earlier attempt was stopped before it ran still knows which attempt it belongs to.
ATTEMPT_LABEL = {"Job": "ckpt.dev/restart-attempt", "JobSet": "jobset.sigs.k8s.io/restart-attempt"}


def distributed_job(name: str, replicas: int, *, engine: str = "Job", command: list[str] | None = None,
                    env: dict | None = None, checkpoints: int = 2) -> dict:
    container = {"name": "trainer", "image": "trainer:1", "command": command or ["train"],
                 "env": [{"name": k, "value": v} for k, v in {"BENCH_CHECKPOINTS": str(checkpoints),
                                                             **(env or {})}.items()]}
    if replicas > 1:
        container["env"].append({"name": "ATTEMPT", "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.labels['{ATTEMPT_LABEL[engine]}']"}}})
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": replicas, "engine": engine, "backoffLimit": 1, "output": {"size": "1Gi"},
                     "template": {"spec": {"containers": [container]}}}}


class FirstWorkerWrites:
    """Played workers for `requests`: worker 0 writes the checkpoints, the others exit 0."""

    async def __call__(self, pod: dict, container: dict, env: dict, mounts: dict) -> int | None:
        labels = pod["metadata"].get("labels") or {}
        if labels.get("ckpt.dev/component") != WORKER:
            return None
        if env.get("JOB_COMPLETION_INDEX", "0") == "0":
            for step in range(1, int(env.get("BENCH_CHECKPOINTS", "0")) + 1):
                directory = Path(env["CHECKPOINT_OUTPUT_DIR"]) / f"step-{step}"
                directory.mkdir(parents=True, exist_ok=True)
                (directory / "model.safetensors").write_bytes(b"w" * 64)
        return 0


async def restart(engine: str, runs: int) -> dict:
    delays = []
    async with Bench(f"restart-{engine.lower()}") as bench:
        bench.cluster.set_container_runner(None)  # real processes: the Job controller's SIGTERM stops them
        bench.start_operator()
        async with Watch(bench.emulator.url, TJ) as watch:
            for run in range(runs):
                times = Path(tempfile.mkdtemp(dir=bench.work, prefix="times-"))
                name = f"restart-{run}"
                await bench.api.create(TJ, NS, distributed_job(
                    name, 2, engine=engine, command=[sys.executable, "-c", WORKER_CODE], env={"TIMES": str(times)},
                    checkpoints=0))
                if not await watch.until([name], ("Succeeded", "Failed"), 180):
                    raise SystemExit(f"{name} did not finish: {watch.phases.get(name)}")
                body = watch.bodies[name]
                if body["status"].get("phase") != "Succeeded" or body["status"].get("restarts") != 1:
                    raise SystemExit(f"{name}: {body['status']}")
                failed = float((times / "failed").read_text())
                second = min(float((times / f"start-{i}-1").read_text()) for i in (0, 1))
                delays.append(second - failed)
    return {"engine": engine, "runs": runs, "median": statistics.median(delays), "max": max(delays),
            "all": [round(d, 2) for d in delays]}


async def requests(replicas: list[int], jobs: int) -> list[dict]:
    results = []
    async with Bench("requests") as bench:
        bench.cluster.set_container_runner(FirstWorkerWrites())
        operator = bench.start_operator()
        async with Watch(bench.emulator.url, TJ) as watch:
            for count in replicas:
                await operator.settle()
                before = operator.requests()
                for i in range(jobs):
                    name = f"r{count}-{i}"
                    await bench.api.create(TJ, NS, distributed_job(name, count))
                    if not await watch.until([name], ("Succeeded", "Failed"), 300) or \
                            watch.phases[name] != "Succeeded":
                        raise SystemExit(f"{name}: {watch.bodies.get(name, {}).get('status')}")
                await operator.settle()
                per_job = (operator.requests() - before) / jobs
                results.append({"replicas": count, "per_lifecycle": per_job, "per_worker": per_job / count})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="restart,requests", help="restart, requests (comma-separated)")
    parser.add_argument("--runs", type=int, default=5, help="restarts measured per engine")
    parser.add_argument("--jobs", type=int, default=3, help="jobs per size for the request counts")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if "restart" in only:
        for engine in ("Job", "JobSet"):
            r = asyncio.run(restart(engine, args.runs))
            print(f"distributed: restart ({engine}): a worker's failure to the group's restart: median "
                  f"{r['median']:.2f} s, max {r['max']:.2f} s over {r['runs']} runs {r['all']}", flush=True)
    if "requests" in only:
        for r in asyncio.run(requests([1, 4, 16], args.jobs)):
            print(f"distributed: requests: {r['replicas']:>2} replica(s): {r['per_lifecycle']:.1f} API requests per "
                  f"lifecycle, {r['per_worker']:.1f} per worker", flush=True)
    print(json.dumps({"load_average": [round(x, 1) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
