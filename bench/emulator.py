#!/usr/bin/env python3
"""Requests per second of the emulated Kubernetes API (checkpoint_operator.local.emulator), and its memory.

The emulator runs in a child process (``EmulatorServer``, as in local mode), seeded through its state
file with N Checkpoints (a realistic ~2 KB status each) and N/10 TrainingJobs in namespace ``bulk``;
namespace ``probe`` holds 10 Checkpoints. One client (aiohttp, one connection, requests in sequence)
then measures, for each configuration of N objects and P prior requests:

- ``get``: GET of one Checkpoint;
- ``list``: LIST of the 10 Checkpoints of ``probe`` (the 10,000 of ``bulk`` must not cost anything);
- ``list-selector``: LIST of ``probe`` Checkpoints with a label selector matching 1;
- ``patch``: a JSON merge patch of one Checkpoint's status (a new resourceVersion each time);
- ``list-all``: LIST of every Checkpoint of ``bulk`` (objects per second, not requests).

and the child's RSS after seeding and after the runs (VmRSS, VmHWM from /proc).

    python bench/emulator.py                   # 100 and 10,000 objects x 0 and 50,000 prior requests
    python bench/emulator.py --quick           # 100 and 2,000 objects x 0 and 5,000 prior requests
    python bench/emulator.py --objects 100 --prior 0,2000   # other sizes (the old emulator needs small ones)

Against another checkout (the figures before a change): ``PYTHONPATH=/path/to/old/operator python
bench/emulator.py ...`` (the child process imports ``checkpoint_operator`` from there).

It ends with one line per figure:
``emulator: get/list/patch req/s at 100 objects, 0 prior: A/B/C; at 10000 objects, 50000 prior: D/E/F``
and ``emulator: rss with 10000 checkpoints and 1000 trainingjobs: X MB``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

CKPTS = "/apis/ckpt.dev/v1alpha1/namespaces/{ns}/checkpoints"
TJS = "/apis/ckpt.dev/v1alpha1/namespaces/{ns}/trainingjobs"


def checkpoint(ns: str, name: str, rv: int, labels: dict[str, str]) -> dict:
    """A Checkpoint as the operator leaves it: Ready, with lineage, users and three conditions (~2 KB)."""
    digest = "sha256:" + uuid.uuid4().hex + uuid.uuid4().hex
    condition = {"status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1}
    return {
        "apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
        "metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4()), "resourceVersion": str(rv),
                     "generation": 1, "creationTimestamp": "2025-01-01T00:00:00Z", "labels": labels,
                     "finalizers": ["ckpt.dev/in-use-protection"],
                     "ownerReferences": [{"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob",
                                          "name": "producer", "uid": str(uuid.uuid4())}]},
        "spec": {"source": {"trainingJob": {"name": "producer", "uid": str(uuid.uuid4()), "directory": name}}},
        "status": {
            "phase": "Ready", "message": f"{name}: 12 files, 14.2 GiB, format huggingface, step 1500, resumable; "
                                         f"snapshot of producer/{name} by pod {name}-snapshot-x7k2p, uploaded in "
                                         f"41 s (352 MB/s); parents base-0, base-1, base-2; complete: "
                                         f"trainer_state.json and every file it lists are present",
            "location": {"s3": {"uri": f"s3://checkpoints/{ns}/{name}/{uuid.uuid4()}/"}}, "owned": True,
            "sizeBytes": 15246847590, "size": "14.2Gi", "fileCount": 12, "digest": digest,
            "format": "huggingface", "step": 1500, "resumable": True,
            "producedBy": {"name": "producer", "uid": str(uuid.uuid4())},
            "parents": [{"name": f"base-{i}", "uid": str(uuid.uuid4()), "digest": digest} for i in range(3)],
            "usedBy": [{"name": f"consumer-{i}", "uid": str(uuid.uuid4())} for i in range(2)], "usedByCount": 2,
            "conditions": [
                {**condition, "type": "Ready", "reason": "Stored",
                 "message": f"stored at s3://checkpoints/{ns}/{name}/ with digest {digest}"},
                {**condition, "type": "Complete", "reason": "FormatComplete",
                 "message": "trainer_state.json and every file it lists are present"},
                {**condition, "type": "Reconciling", "status": "False", "reason": "Done", "message": ""},
            ],
            "observedGeneration": 1,
        },
    }


def training_job(ns: str, name: str, rv: int) -> dict:
    return {
        "apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4()), "resourceVersion": str(rv),
                     "generation": 1, "creationTimestamp": "2025-01-01T00:00:00Z",
                     "finalizers": ["ckpt.dev/in-use-protection"]},
        "spec": {"checkpoints": [{"name": "base"}],
                 "output": {"enabled": True, "layout": "auto", "keep": 3, "namePrefix": name},
                 "inputDir": "/input-checkpoint", "outputDir": "/output-checkpoint", "replicas": 1,
                 "template": {"metadata": {"labels": {"team": "nlp"}}, "spec": {
                     "restartPolicy": "Never", "containers": [{
                         "name": "trainer", "image": "ghcr.io/example/llm-trainer:1.4.0",
                         "command": ["python", "-m", "trainer.sft"], "args": ["--save-steps=500"],
                         "resources": {"requests": {"cpu": "8", "memory": "64Gi"}}}]}}},
        "status": {"phase": "Succeeded", "message": "kept 2 checkpoints", "jobName": f"{name}-run",
                   "outputClaim": f"{name}-output", "inputs": [{"name": "base", "uid": str(uuid.uuid4()),
                                                                "digest": "sha256:" + uuid.uuid4().hex * 2}],
                   "inputCount": 1, "outputCheckpoints": [f"{name}.step-1", f"{name}.step-2"], "outputCount": 2,
                   "jobSucceeded": True, "startTime": "2025-01-01T00:00:00Z",
                   "completionTime": "2025-01-01T00:10:00Z", "observedGeneration": 1,
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "done",
                                   "lastTransitionTime": "2025-01-01T00:10:00Z", "observedGeneration": 1}]},
    }


def write_state(state_dir: Path, objects: int) -> None:
    """The emulator's state file (export_state's format) with the seeded objects."""
    items, rv = [], 1
    for i in range(objects):
        items.append({"resource": "ckpt.dev/v1alpha1/checkpoints",
                      "object": checkpoint("bulk", f"ckpt-{i:06d}", rv, {"app": "bulk", "shard": str(i % 100)})})
        rv += 1
    for i in range(objects // 10):
        items.append({"resource": "ckpt.dev/v1alpha1/trainingjobs", "object": training_job("bulk", f"tj-{i:05d}", rv)})
        rv += 1
    for i in range(10):
        items.append({"resource": "ckpt.dev/v1alpha1/checkpoints",
                      "object": checkpoint("probe", f"probe-{i}", rv, {"app": "probe", "index": str(i)})})
        rv += 1
    for ns in ("bulk", "probe"):
        items.append({"resource": "v1/namespaces", "object": {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "uid": str(uuid.uuid4()),
                                                                  "resourceVersion": str(rv)}}})
        rv += 1
    state_dir.mkdir(parents=True, exist_ok=True)
    # JSON Lines (format 2, read one object at a time) and the format-1 document an older emulator reads.
    with (state_dir / "api-objects.jsonl").open("w") as out:
        out.write(json.dumps({"format": 2, "resourceVersion": rv, "podLogs": []}) + "\n")
        out.writelines(json.dumps(item) + "\n" for item in items)
    (state_dir / "api-objects.json").write_text(json.dumps(
        {"format": 1, "resourceVersion": rv, "resources": {}, "objects": items, "podLogs": []}))


SERVE = """
import sys, time
from checkpoint_operator.local.server import EmulatorServer
server = EmulatorServer(state_dir=sys.argv[1])
server.start(timeout=600)
server.state_file = None  # measure serving, not saving the state
print(server.url, flush=True)
sys.stdin.read()
"""


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def rate(session: aiohttp.ClientSession, method: str, url: str, seconds: float, body=None,
               content_type: str | None = None, per_response=None) -> tuple[float, int]:
    """Requests per second of one sequential client over ``seconds`` (and the last response's item count)."""
    count, items, started = 0, 0, time.perf_counter()
    headers = {"Content-Type": content_type} if content_type else {}
    while True:
        data = json.dumps(body(count) if callable(body) else body).encode() if body is not None else None
        async with session.request(method, url, data=data, headers=headers) as response:
            payload = await response.read()
            if response.status >= 400:
                raise RuntimeError(f"{method} {url}: {response.status} {payload[:300]!r}")
            if per_response:
                items = per_response(payload)
        count += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count / elapsed, items


async def prior_requests(session: aiohttp.ClientSession, base: str, count: int) -> float:
    started = time.perf_counter()
    url = base + CKPTS.format(ns="probe") + "/probe-0"

    async def worker(n: int) -> None:
        for _ in range(n):
            async with session.get(url) as response:
                await response.read()

    workers = 8
    await asyncio.gather(*(worker(count // workers) for _ in range(workers)))
    return time.perf_counter() - started


async def measure(base: str, prior: int, seconds: float) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:
        result: dict[str, float] = {}
        if prior:
            result["prior_s"] = await prior_requests(session, base, prior)
        probe = base + CKPTS.format(ns="probe")
        result["get"], _ = await rate(session, "GET", probe + "/probe-1", seconds)
        result["list"], _ = await rate(session, "GET", probe, seconds)
        result["list-selector"], _ = await rate(session, "GET", probe + "?labelSelector=index%3D3", seconds)
        result["patch"], _ = await rate(
            session, "PATCH", probe + "/probe-2/status", seconds,
            body=lambda i: {"status": {"message": f"patched {i}", "usedByCount": i % 7}},
            content_type="application/merge-patch+json")
        per_second, items = await rate(session, "GET", base + CKPTS.format(ns="bulk"), seconds,
                                       per_response=lambda raw: len(json.loads(raw)["items"]))
        result["list-all objects/s"] = per_second * items
        return result


def run_config(objects: int, prior: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as tmp:
        write_state(Path(tmp), objects)
        child = subprocess.Popen([sys.executable, "-c", SERVE, tmp], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        try:
            url = child.stdout.readline().strip()
            if not url:
                raise RuntimeError("the emulator did not start")
            seeded_rss, _ = rss_mb(child.pid)
            result = asyncio.run(measure(url, prior, seconds))
            rss, peak = rss_mb(child.pid)
            result.update({"rss seeded MB": seeded_rss, "rss after MB": rss, "rss peak MB": peak})
            return result
        finally:
            child.stdin.close()
            child.kill()
            child.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 and 2,000 objects, 0 and 5,000 prior requests")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each rate measurement")
    parser.add_argument("--objects", help="comma-separated object counts (default 100,10000; --quick 100,2000)")
    parser.add_argument("--prior", help="comma-separated prior request counts (default 0,50000; --quick 0,5000)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.objects.split(",")] if args.objects else [100, 2000 if args.quick else 10000]
    priors = [int(x) for x in args.prior.split(",")] if args.prior else [0, 5000 if args.quick else 50000]
    large, prior = max(sizes), max(priors)
    configs = [(objects, prior_count) for objects in sizes for prior_count in priors]
    columns = ["get", "list", "list-selector", "patch", "list-all objects/s", "rss seeded MB", "rss peak MB"]
    print(f"{'objects':>8} {'prior':>7} " + " ".join(f"{c:>18}" for c in columns))
    results = {}
    for objects, prior_count in configs:
        result = run_config(objects, prior_count, args.seconds)
        results[(objects, prior_count)] = result
        print(f"{objects:>8} {prior_count:>7} " + " ".join(f"{result[c]:>18.1f}" for c in columns), flush=True)
    small, big = results[(min(sizes), min(priors))], results[(large, prior)]
    fmt = lambda r: "/".join(f"{r[k]:.0f}" for k in ("get", "list", "patch"))  # noqa: E731
    print(f"emulator: get/list/patch req/s at {min(sizes)} objects, {min(priors)} prior: {fmt(small)}; "
          f"at {large} objects, {prior} prior: {fmt(big)}")
    print(f"emulator: rss with {large} checkpoints and {large // 10} trainingjobs: "
          f"{results[(large, min(priors))]['rss peak MB']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
