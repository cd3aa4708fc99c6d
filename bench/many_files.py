"""Outputs of many files and many checkpoints through the real operator (issue 18 item 4, issue
23 item 1): the agent's result does not grow with the files, and nothing a tenant writes takes
the operator's memory with it.

The emulator and the operator (`checkpoint-operator run`) each run in a process of their own
(bench/scale.py's harness), so each peak RSS (VmHWM) is its own; this process hosts the local
cluster and plays the training containers in-process, and the operator's agent pods run for real
(children of the local kubelet's zygote: their peak RSS is sampled while they run).

    python bench/many_files.py                      # the goal sizes: 1,000,000 files (minutes), 5,000 checkpoints, worst
    python bench/many_files.py --quick              # small sizes: a smoke run
    python bench/many_files.py --only files --files 200000

Scenarios:
- `files`: one job whose output holds N files (4 checkpoint directories, 1,000 files per subdirectory);
- `checkpoints`: one job whose output holds C step directories (2 files each);
- `worst`: a tenant at its worst, one job each: an output of 60,000 files with ~3,700-byte paths
  (the old result line: ~220 MB), a training container that prints 300 MB and fails (its log
  is read for the failure's last line), and a snapshot pod whose log holds a 100 MB forged
  result. The operator's peak RSS is the figure (the chart's memory limit is 512Mi).

Each prints one `many_files:` JSON line: seconds to Ready, the result's size in bytes (the
operator's `checkpoint_operator_agent_result_bytes`), the agent's and the operator's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402  (bench/scale.py: the emulator and operator processes, the local cluster)

NS = scale.NS
TJ, CKPT = scale.TJ, scale.CKPT
PER_DIR = 1000
CHART_MEMORY_LIMIT_MB = 512


class Output:
    """Training containers, played in-process: what each job (by name) writes, and how it ends."""

    def __init__(self) -> None:
        self.writers: dict[str, object] = {}
        self.forged_snapshot: dict[str, int] = {}  # job -> bytes of the forged result its snapshot pod "writes"
        self.api_url = ""

    async def __call__(self, pod: dict, container: dict, env: dict, mounts: dict) -> int | None:
        labels = pod["metadata"].get("labels") or {}
        job = labels.get("ckpt.dev/trainingjob", "")
        if labels.get("ckpt.dev/component") == "snapshot" and job in self.forged_snapshot:
            await self._forge(pod, container, self.forged_snapshot[job])
            return 0
        if labels.get("ckpt.dev/component") != scale.WORKER or job not in self.writers:
            return None  # the operator's agent pods (and commands of their own) run for real
        return await asyncio.to_thread(self.writers[job], env["CHECKPOINT_OUTPUT_DIR"])

    async def _forge(self, pod: dict, container: dict, size: int) -> None:
        from checkpoint_operator.local.server import ApiClient
        entry = '{"path":"step-%d","digest":"sha256:' + "0" * 64 + '","sizeBytes":1,"fileCount":1},'
        piece = "".join(entry % i for i in range(2000))
        async with ApiClient(self.api_url) as api:
            await api.write_log(NS, pod["metadata"]["name"], container["name"],
                                '{"kind":"scan","version":1,"checkpoints":[')
            for _ in range(max(1, size // len(piece))):
                await api.write_log(NS, pod["metadata"]["name"], container["name"], piece, append=True)
            await api.write_log(NS, pod["metadata"]["name"], container["name"], "]}\n", append=True)


def many_files(count: int, directories: int = 4):
    def write(out: str) -> int:
        per_checkpoint = -(-count // directories)
        for i in range(count):
            checkpoint, index = divmod(i, per_checkpoint)
            sub = os.path.join(out, f"step-{checkpoint + 1}", f"shard-{index // PER_DIR:04d}")
            if index % PER_DIR == 0:
                os.makedirs(sub, exist_ok=True)
            with open(os.path.join(sub, f"part-{index:07d}.bin"), "wb") as f:
                f.write(b"%d" % i)
        return 0
    return write


def many_checkpoints(count: int):
    def write(out: str) -> int:
        for step in range(1, count + 1):
            directory = os.path.join(out, f"step-{step}")
            os.makedirs(directory, exist_ok=True)
            for name in ("model.safetensors", "config.json"):
                with open(os.path.join(directory, name), "wb") as f:
                    f.write(b"%d" % step)
        return 0
    return write


def long_paths(count: int):
    """`count` files whose paths are ~3,700 bytes (14 directories of 250-character names)."""
    def write(out: str) -> int:
        deep = os.path.join(out, "step-1", *[f"{d:02d}" + "d" * 248 for d in range(14)])
        os.makedirs(deep, exist_ok=True)
        for i in range(count):
            with open(os.path.join(deep, f"{i:06d}" + "f" * 150), "wb") as f:
                f.write(b"x")
        return 0
    return write


def loud_job(name: str, megabytes: int) -> dict:
    """A training container that prints `megabytes` MB to stdout, then fails (its log is read)."""
    body = scale.training_job(name, checkpoints=0)
    body["spec"]["template"]["spec"]["containers"][0]["command"] = [
        "python", "-c", f"import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range({megabytes * 1024}):\n"
                        f"    sys.stdout.write(line)\nsys.exit(1)"]
    return body


class AgentPeak:
    """The highest VmHWM of the zygote's children (the agent pods) while it runs."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "AgentPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.1):
            zygotes = [p for p in _children(me) if b"checkpoint_operator.local.zygote" in _cmdline(p)]
            for child in (c for z in zygotes for c in _children(z)):
                peak = scale.rss_mb(child, "VmHWM") if os.path.exists(f"/proc/{child}/status") else 0.0
                if peak == peak:  # not NaN
                    self.peak_mb = max(self.peak_mb, peak)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def result_bytes(operator: scale.Operator) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    return int(sum(float(v) for v in re.findall(
        r'^checkpoint_operator_agent_result_bytes_sum\{task="scan"\} (\S+)$', text, re.M)))


async def run_job(bench: scale.Bench, body: dict, timeout: float) -> dict:
    name = body["metadata"]["name"]
    await bench.api.create(TJ, NS, body)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = await bench.api.get(TJ, NS, name) or {}
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return obj
        await asyncio.sleep(0.5)
    raise SystemExit(f"{name} did not finish within {timeout:.0f} s")


async def scenario(name: str, jobs: list[tuple[dict, object]], output: Output, timeout: float,
                   forged: dict[str, int] | None = None) -> dict:
    bench = scale.Bench(f"many-{name}")
    bench.trainer = output
    output.api_url = bench.emulator.url
    output.forged_snapshot = forged or {}
    async with bench:
        operator = bench.start_operator()
        results = []
        with AgentPeak() as agents:
            for body, writer in jobs:
                if writer is not None:
                    output.writers[body["metadata"]["name"]] = writer
                started = time.monotonic()
                done = await run_job(bench, body, timeout)
                status = done["status"]
                ready = [c for c in await bench.api.list(CKPT, NS)
                         if c["spec"]["source"].get("trainingJob", {}).get("name") == body["metadata"]["name"]
                         and (c.get("status") or {}).get("phase") == "Ready"]
                results.append({"job": body["metadata"]["name"], "phase": status["phase"],
                                "seconds": round(time.monotonic() - started, 1), "ready": len(ready),
                                "files": sum(c["status"]["fileCount"] for c in ready),
                                "message": status.get("message", "")[:300]})
        return {"scenario": name, "jobs": results, "result_bytes": result_bytes(operator),
                "agent_peak_rss_mb": round(agents.peak_mb, 1),
                "operator_peak_rss_mb": round(scale.rss_mb(operator.proc.pid, "VmHWM"), 1),
                "emulator_peak_rss_mb": round(scale.rss_mb(bench.emulator.proc.pid, "VmHWM"), 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", default="files,checkpoints,worst")
    parser.add_argument("--files", type=int, default=None, help="files of the `files` output (default 1,000,000)")
    parser.add_argument("--checkpoints", type=int, default=None, help="checkpoints of the `checkpoints` output "
                                                                      "(default 5,000)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--serve-emulator", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_emulator:
        scale.serve_emulator(args.serve_emulator)
        return
    files = args.files or (20_000 if args.quick else 1_000_000)
    checkpoints = args.checkpoints or (300 if args.quick else 5_000)
    only = set(args.only.split(","))
    output = Output()
    lines: list[dict] = []

    def report(line: dict) -> None:
        lines.append(line)
        print("many_files: " + json.dumps(line), flush=True)
    if "files" in only:
        report(await scenario("files", [(scale.training_job("files", checkpoints=1), many_files(files))],
                                    output, args.timeout))
    if "checkpoints" in only:
        report(await scenario("checkpoints", [(scale.training_job("ckpts", checkpoints=1),
                                                     many_checkpoints(checkpoints))], output, args.timeout))
    if "worst" in only:
        count, megabytes, forged = (6_000, 30, 10_000_000) if args.quick else (60_000, 300, 100_000_000)
        report(await scenario("worst", [
            (scale.training_job("long-paths", checkpoints=1), long_paths(count)),
            (loud_job("loud", megabytes), None),
            (scale.training_job("forged", checkpoints=1), many_checkpoints(1)),
        ], output, args.timeout, forged={"forged": forged}))
    worst = next((line for line in lines if line["scenario"] == "worst"), None)
    if worst is not None and worst["operator_peak_rss_mb"] > CHART_MEMORY_LIMIT_MB:
        raise SystemExit(f"the operator peaked at {worst['operator_peak_rss_mb']} MB, past the chart's "
                         f"{CHART_MEMORY_LIMIT_MB}Mi limit")


if __name__ == "__main__":
    asyncio.run(main())
