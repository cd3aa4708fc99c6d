"""The local cluster alone (no operator): how fast N Jobs of trivial pods run to Complete.

Each Job runs one pod whose container is an agent command (``checkpoint-operator agent scan`` of a
tiny directory, what the operator's snapshot pods run) or a shell command (``--command shell``),
through the emulated API and ``LocalCluster``. Prints the wall time and the time per pod. With the
process runtime the agent command runs in this interpreter's package (the kubelet's zygote forks it:
``local/runtime.py`` ``host_command``), never a ``checkpoint-operator`` found on PATH.

    python bench/local_cluster.py --jobs 120 [--command agent|shell] [--runtime process|podman]

To compare with another checkout's cluster, run it with that checkout first on PYTHONPATH
(``PYTHONPATH=/path/to/other/operator python bench/local_cluster.py``): the script uses only
``LocalCluster(api_url, data_dir)`` and ``EmulatorServer``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from checkpoint_operator.local.cluster import LocalCluster
from checkpoint_operator.local.server import ApiClient, EmulatorServer

NS = "default"


def job(name: str, command: list[str], data: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {"template": {"spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "localhost/checkpoint-operator:dev", "command": command,
                        "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}]}],
        "volumes": [{"name": "data", "hostPath": {"path": data}}]}}}}


async def run(jobs: int, command: str, runtime_name: str) -> float:
    work = Path(tempfile.mkdtemp(prefix="bench-local-cluster-"))
    (work / "data" / "step-1").mkdir(parents=True)
    (work / "data" / "step-1" / "w.bin").write_bytes(b"w" * 1024)
    argv = (["checkpoint-operator", "agent", "scan", "/data", "--json"] if command == "agent"
            else ["sh", "-c", "ls \"$0\" > /dev/null", "/data"])
    runtime = None
    if runtime_name != "process":
        from checkpoint_operator.local.engine import container_runtime
        runtime = container_runtime(runtime_name)
    kwargs = {"runtime": runtime} if runtime is not None else {}
    with EmulatorServer() as server:
        async with ApiClient(server.url) as api, LocalCluster(server.url, work / "cluster", [NS], **kwargs):
            started = time.monotonic()
            for i in range(jobs):
                await api.create("batch/v1/jobs", NS, job(f"j{i:04d}", argv, str(work / "data")))
            while True:
                done = [j for j in await api.list("batch/v1/jobs", NS)
                        if any(c["status"] == "True" for c in j.get("status", {}).get("conditions") or [])]
                if len(done) == jobs:
                    break
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
            failed = [j["metadata"]["name"] for j in done if j["status"].get("failed")]
            if failed:
                raise SystemExit(f"{len(failed)} jobs failed: {failed[:5]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--command", choices=["agent", "shell"], default="agent")
    parser.add_argument("--runtime", default="process")
    args = parser.parse_args()
    elapsed = asyncio.run(run(args.jobs, args.command, args.runtime))
    print(f"local cluster: {args.jobs} jobs ({args.command} pods, {args.runtime} runtime) complete in "
          f"{elapsed:.1f} s, {elapsed / args.jobs * 1000:.0f} ms per pod")


if __name__ == "__main__":
    main()
