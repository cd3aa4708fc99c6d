"""Live sealing: the time from a checkpoint directory being complete to its Checkpoint being Ready.

Local mode's parts in one process, with the operator's default settings (the sidecar looks at
the output every 0.25 s, the operator reads its log every 1 s): the emulated API, the local
cluster (process runtime: the sealing sidecar is a real `checkpoint-operator agent watch`
beside the trainer) and the real operator. One TrainingJob with `publish: Continuous` runs a
trainer that writes --checkpoints checkpoints, one every --every seconds, and records the
moment each is complete (`--writer rename`: right after `step-N.tmp` is renamed to `step-N`;
`--writer trainer`: files written in place, right after `trainer_state.json`, the Trainer's
last file). The bench lists the Checkpoints every 20 ms and notes when each turns Ready, and
prints where the slowest one spent its time (the sidecar, or the operator).

    python bench/live_seal.py [--checkpoints 40] [--every 0.5] [--writer rename|trainer] [--size 1MiB]

Prints each latency, then `live: complete to Ready p50 X s p99 Y s (N checkpoints, ...)`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CKPT_RECONCILE_INTERVAL", "0.3")

import kopf  # noqa: E402

from checkpoint_operator import main as operator_main  # noqa: E402
from checkpoint_operator.config import OperatorConfig  # noqa: E402
from checkpoint_operator.reconcile.context import Context  # noqa: E402
from checkpoint_operator.kube import Kube  # noqa: E402
from checkpoint_operator.local.cluster import LocalCluster  # noqa: E402
from checkpoint_operator.local.server import ApiClient, EmulatorServer, run_kopf_in_thread  # noqa: E402

NS = "default"
WRITER = r"""
import json, os, pickle, struct, sys, time, zipfile
out, log = os.environ["CHECKPOINT_OUTPUT_DIR"], os.environ["BENCH_LOG"]
count, every, size, mode = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for step in range(1, count + 1):
    time.sleep(every)
    final = os.path.join(out, f"step-{step}")
    d = final + ".tmp" if mode == "rename" else final
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write("{}")
    with open(os.path.join(d, "model.safetensors"), "wb") as f:  # valid: random bytes can read as a
        header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
        header += b" " * (-len(header) % 8)                      # corrupt header, which holds the directory
        f.write(struct.pack("<Q", len(header)) + header + os.urandom(size))
    with zipfile.ZipFile(os.path.join(d, "optimizer.pt"), "w") as z:  # a torch.save file is a zip
        z.writestr("optimizer/data.pkl", pickle.dumps({"state": {}, "param_groups": []}))
    with open(os.path.join(d, "trainer_state.json"), "w") as f:
        f.write(json.dumps({"global_step": step}))
    if mode == "rename":
        os.rename(d, final)
    with open(log, "a") as f:
        f.write(json.dumps({"step": step, "complete": time.time()}) + "\n")
"""


def size_bytes(text: str) -> int:
    units = {"KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[:-len(unit)]) * factor)
    return int(text)


async def run(args) -> list[float]:
    work = Path(tempfile.mkdtemp(prefix="bench-live-"))
    log = work / "complete.jsonl"
    job = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "live", "namespace": NS},
           "spec": {"output": {"publish": "Continuous"}, "template": {"spec": {"containers": [{
               "name": "trainer", "image": "bench", "command": [
                   "python", "-c", WRITER, str(args.checkpoints), str(args.every), str(size_bytes(args.size)),
                   args.writer],
               "env": [{"name": "BENCH_LOG", "value": str(log)}]}]}}}}
    ready: dict[int, float] = {}
    with EmulatorServer() as server:
        async with ApiClient(server.url) as api, LocalCluster(server.url, work / "cluster", [NS], workdir=str(work)):
            settings = kopf.OperatorSettings()
            operator_main.configure_settings(settings)
            ctx = Context(kube=Kube.from_url(server.url), config=OperatorConfig(agent_image="bench"))
            handle = await asyncio.to_thread(run_kopf_in_thread, kopf.get_default_registry(), settings, [NS],
                                             server.url, memo=operator_main.make_memo(ctx))
            try:
                await api.create("ckpt.dev/v1alpha1/trainingjobs", NS, job)
                deadline = time.monotonic() + args.checkpoints * args.every + 120
                while len(ready) < args.checkpoints and time.monotonic() < deadline:
                    for c in await api.list("ckpt.dev/v1alpha1/checkpoints", NS):
                        step = (c.get("status") or {}).get("step")
                        if c.get("status", {}).get("phase") == "Ready" and step not in ready:
                            ready[step] = time.time()
                    await asyncio.sleep(0.02)
                sealed_at = await _sealed_times(api)
            finally:
                await asyncio.to_thread(handle.stop)
    complete = {e["step"]: e["complete"] for e in map(json.loads, log.read_text().splitlines())}
    missing = sorted(set(complete) - set(ready))
    if missing:
        raise SystemExit(f"never Ready: steps {missing}")
    steps = sorted(complete)
    sealing = [sealed_at[s] - complete[s] for s in steps if s in sealed_at]
    publishing = [ready[s] - sealed_at[s] for s in steps if s in sealed_at]
    if sealing:
        print(f"of which: complete to sealed (the sidecar) p50 {statistics.median(sealing):.2f} s, "
              f"sealed to Ready (the operator) p50 {statistics.median(publishing):.2f} s")
    worst = max(steps, key=lambda s: ready[s] - complete[s])
    if worst in sealed_at:
        print(f"slowest: step {worst}, {ready[worst] - complete[worst]:.2f} s: complete to sealed "
              f"{sealed_at[worst] - complete[worst]:.2f} s, sealed to Ready {ready[worst] - sealed_at[worst]:.2f} s")
    return [ready[s] - complete[s] for s in steps]


async def _sealed_times(api) -> dict[int, float]:
    """When the sidecar sealed each step (its log lines carry sealedAt)."""
    out: dict[int, float] = {}
    for pod in await api.list("v1/pods", NS):
        if pod["metadata"].get("labels", {}).get("ckpt.dev/component") != "worker":
            continue
        for line in (await api.read_log(NS, pod["metadata"]["name"], "ckpt-live")).splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            checkpoint = event.get("checkpoint") or {}
            if event.get("event") == "sealed" and checkpoint.get("sealedAt") and checkpoint.get("step") is not None:
                out.setdefault(checkpoint["step"], checkpoint["sealedAt"])
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=40)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between two checkpoints")
    parser.add_argument("--writer", choices=["rename", "trainer"], default="rename")
    parser.add_argument("--size", default="1MiB", help="size of each checkpoint's weight file")
    args = parser.parse_args()
    latencies = asyncio.run(run(args))
    print("latencies (s): " + " ".join(f"{v:.2f}" for v in latencies))
    print(f"live: complete to Ready p50 {statistics.median(latencies):.2f} s p99 {percentile(latencies, 0.99):.2f} s "
          f"({len(latencies)} checkpoints, writer {args.writer}, every {args.every} s, {args.size}; command: "
          f"python bench/live_seal.py {' '.join(sys.argv[1:])})")


if __name__ == "__main__":
    main()
