"""The control plane at scale (issue 10): the real operator process against the emulated API.

The emulator and the operator (`checkpoint-operator run`, started as `python -m checkpoint_operator`
with this interpreter: run the bench with the venv of the code to measure) each run in a process
of their own, so each RSS is its own; this process hosts the local cluster (Job controller, kubelet, binder) and
plays the training containers in-process (each writes two tiny checkpoints and exits), so that
the control plane is what is measured. The operator's own agent pods run for real, as commands
forked from the local kubelet's zygote (local/zygote.py). Prints a table, then one `scale:` line
per figure of issue 10:

    python bench/scale.py                    # the goal sizes (several minutes)
    python bench/scale.py --quick            # small sizes: a smoke run
    python bench/scale.py --only requests,rss --checkpoints 10000

Scenarios: `lifecycle` (N TrainingJobs, each writing 2 checkpoints, to Succeeded), `hot` (N jobs
on one input Checkpoint), `requests` (the operator's own API requests per TrainingJob lifecycle
with 10 and with C Checkpoints in the namespace; the same run gives `rss`, the operator's RSS
with C Checkpoints indexed), `latency` (a training pod's end to its Checkpoints being Ready, jobs
started a few at a time so that nothing queues), `localrun` (`checkpoint-operator local run` on
120 trivial jobs, local mode, docs/local-mode.md), `memory` (--memory N: N TrainingJob lifecycles,
each created, run to Succeeded with live sealing on every other job, then deleted with its
Checkpoints, a few at a time: the operator's RSS after 1,000 and after N lifecycles, and the
slope between, which is flat when nothing is kept of objects that are gone; issue 21 item 6).
Requests are counted by the operator itself (`checkpoint_operator_api_requests_total`); the
watch streams (kopf's and the operator's informer's, with their LISTs) are not among them.

    python bench/scale.py --memory 10000     # the operator's RSS over 10,000 lifecycles (long)
    python bench/scale.py --memory 3000 --trace DIR   # ... under tracemalloc: traced totals, snapshots in DIR
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

NS = "default"
TJ = "ckpt.dev/v1alpha1/trainingjobs"
CKPT = "ckpt.dev/v1alpha1/checkpoints"
WORKER = "worker"


# --- the processes -----------------------------------------------------------------------------------

def serve_emulator(url_file: str) -> None:
    """`bench/scale.py --serve-emulator FILE`: the emulator process (until stdin closes)."""
    from checkpoint_operator.local.server import EmulatorServer
    with EmulatorServer() as server:
        Path(url_file).write_text(server.url)
        sys.stdin.read()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Emulator:
    def __init__(self, work: Path, script: str = __file__):
        self.work = work
        url_file = work / "emulator-url"
        self.proc = subprocess.Popen([sys.executable, script, "--serve-emulator", str(url_file)],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=open(work / "emulator.log", "wb"))
        deadline = time.monotonic() + 60
        while not url_file.exists() or not url_file.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the emulator did not start; see {work / 'emulator.log'}")
            time.sleep(0.05)
        self.url = url_file.read_text()

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Operator:
    """`checkpoint-operator run` against the emulator, with its default settings."""

    def __init__(self, work: Path, api_url: str, name: str, extra_env: dict | None = None):
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "local",
            "clusters": [{"name": "local", "cluster": {"server": api_url}}],
            "users": [{"name": "local", "user": {"token": "local"}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local", "namespace": NS}}]}))
        self.metrics_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CKPT_")}
        env.update(KUBECONFIG=str(kubeconfig), CKPT_AGENT_IMAGE="localhost/checkpoint-operator:dev", **(extra_env or {}))
        self.log = work / f"operator-{name}.log"
        # The interpreter running the bench, so the operator is the code the bench runs with (the
        # `checkpoint-operator` first on PATH may be another checkout's).
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "checkpoint_operator", "run", "--namespace", NS, "--standalone", "--log-format", "text",
             "--metrics-port", str(self.metrics_port), "--liveness-port", "0"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 60
        while self.requests() is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the operator did not start; see {self.log}")
            time.sleep(0.2)
        # SCALE_PROFILE=DIR: py-spy samples the operator process (the thread holding the GIL: its CPU) into
        # DIR/operator-<name>.txt, collapsed stacks (flamegraph.pl or speedscope read them).
        profile = os.environ.get("SCALE_PROFILE")
        self.profiler = subprocess.Popen(
            ["py-spy", "record", "--pid", str(self.proc.pid), "--format", "raw", "--rate", "200", "--nonblocking", "--gil",
             "-o", str(Path(profile) / f"operator-{name or 'main'}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if profile else None

    def requests(self) -> int | None:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        except OSError:
            return None
        return int(sum(float(v) for v in re.findall(r'^checkpoint_operator_api_requests_total\{[^}]*\} (\S+)$',
                                                    text, re.M)))

    def cpu_seconds(self) -> float:
        """The operator process's own CPU time (user + system, all its threads): not the emulator's,
        nor the local cluster's (this process), nor the agent pods' (forked by the local kubelet)."""
        return process_cpu_seconds(self.proc.pid)

    def watch_events(self) -> float:
        """Watch events the operator handled (checkpoint_operator_watch_events_total, every kind)."""
        return sum(v for k, v in self.watch_events_by_kind().items() if not k.startswith("reconcile "))

    def watch_events_by_kind(self) -> dict[str, float]:
        """kind -> watch events the operator handled (checkpoint_operator_watch_events_total), and
        `reconcile <kind>` -> the reconcile passes run (checkpoint_operator_reconciles_total)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return {**{k: float(v) for k, v in re.findall(
            r'^checkpoint_operator_watch_events_total\{kind="([^"]*)"\} (\S+)$', text, re.M)},
            **{f"reconcile {k}": float(v) for k, v in re.findall(
                r'^checkpoint_operator_reconciles_total\{kind="([^"]*)"\} (\S+)$', text, re.M)}}

    def requests_by_target(self) -> dict[str, float]:
        """`METHOD target` -> requests (checkpoint_operator_api_requests_by_target)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return {f"{m} {t}": float(v) for m, t, v in re.findall(
            r'^checkpoint_operator_api_requests_by_target_total\{method="([^"]*)",target="([^"]*)"\} (\S+)$', text, re.M)}

    async def settle(self, quiet: float = 2.0, timeout: float = 600) -> None:
        """Until neither its request count nor its watch events have moved for `quiet` seconds (its
        start-up work is done). Requests alone were not enough: the initial list of 10,000 settled
        Checkpoints makes no request, and its events were still being handled, at about 1 ms of CPU
        each, while the lifecycles were measured (755 ms per lifecycle "at 10,000 Checkpoints")."""
        last: Any = None
        since, deadline = time.monotonic(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                now = (self.requests(), self.watch_events())
            except OSError:
                now = None
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            await asyncio.sleep(0.2)

    async def snapshot(self, directory: Path, number: int, timeout: float = 300) -> float:
        """SIGUSR2: the operator (run with CKPT_TRACEMALLOC=directory) writes tracemalloc snapshot
        `number`; the traced total then, in MB."""
        summary = directory / f"snapshot-{number}.json"
        self.proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while not summary.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the operator wrote no {summary}; see {self.log}")
            await asyncio.sleep(0.2)
        return json.loads(summary.read_text())["traced"] / 1e6

    def stop(self) -> None:
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            self.profiler.wait(30)
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- the cluster and the training code ---------------------------------------------------------------

class Trainer:
    """Training containers, played in-process: write `checkpoints` step directories, exit 0."""

    def __init__(self) -> None:
        self.finished: dict[str, float] = {}

    async def __call__(self, pod: dict, container: dict, env: dict, mounts: dict) -> int | None:
        labels = pod["metadata"].get("labels") or {}
        if labels.get("ckpt.dev/component") != WORKER:
            return None  # the operator's agent pods run for real
        out = env.get("CHECKPOINT_OUTPUT_DIR")
        for step in range(1, int(env.get("BENCH_CHECKPOINTS", "0")) + 1):
            directory = Path(out) / f"step-{step}"
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "model.safetensors").write_bytes(b"w" * 64)
        self.finished[labels.get("ckpt.dev/trainingjob", "")] = time.monotonic()
        return 0


def training_job(name: str, *, checkpoints: int = 2, inputs: list | None = None, publish: str | None = None) -> dict:
    spec: dict[str, Any] = {"template": {"spec": {"containers": [{
        "name": "trainer", "image": "trainer:1", "command": ["train"],
        "env": [{"name": "BENCH_CHECKPOINTS", "value": str(checkpoints)}]}]}}}
    if inputs:
        spec["checkpoints"] = inputs
    if not checkpoints:
        spec["output"] = {"enabled": False}
    elif publish:
        spec["output"] = {"publish": publish}
    return {"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name, "namespace": NS},
            "spec": spec}


class Watch:
    """The phases of one resource's objects as a watch stream delivers them, with arrival times."""

    def __init__(self, api_url: str, resource: str):
        self.url = f"{api_url}/apis/{resource.rsplit('/', 1)[0]}/namespaces/{NS}/{resource.rsplit('/', 1)[1]}"
        self.phases: dict[str, str] = {}
        self.reached: dict[tuple[str, str], float] = {}  # (name, phase) -> first seen
        self.bodies: dict[str, dict] = {}
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "Watch":
        import aiohttp
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready))
        await asyncio.wait_for(ready.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        await self._session.close()

    async def _run(self, ready: asyncio.Event) -> None:
        async with self._session.get(self.url, params={"watch": "true"}) as response:
            ready.set()
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                body = event.get("object") or {}
                name = body.get("metadata", {}).get("name", "")
                if event.get("type") == "DELETED":
                    self.phases.pop(name, None)
                    continue
                phase = (body.get("status") or {}).get("phase") or "Pending"
                self.phases[name] = phase
                self.bodies[name] = body
                self.reached.setdefault((name, phase), time.monotonic())

    def count(self, names: list[str], phases: tuple[str, ...]) -> int:
        return sum(1 for n in names if self.phases.get(n) in phases)

    async def until(self, names: list[str], phases: tuple[str, ...], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count(names, phases) < len(names):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True


async def create_all(api, bodies: list[dict], concurrency: int = 32, resource: str = TJ) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(body):
        async with gate:
            await api.create(resource, NS, body)
    await asyncio.gather(*(one(b) for b in bodies))


class Bench:
    """One emulator, one operator and the local cluster, in a fresh work directory."""

    def __init__(self, name: str):
        self.name = name
        self.work = Path(tempfile.mkdtemp(prefix=f"bench-scale-{name}-"))
        self.emulator = Emulator(self.work)
        self.trainer = Trainer()
        self.operator: Operator | None = None

    async def __aenter__(self) -> "Bench":
        from checkpoint_operator.local.cluster import LocalCluster
        from checkpoint_operator.local.server import ApiClient
        self.api = await ApiClient(self.emulator.url).__aenter__()
        self.cluster = LocalCluster(self.emulator.url, self.work / "cluster", [NS], container_runner=self.trainer)
        await self.cluster.__aenter__()
        return self

    def start_operator(self, name: str = "", extra_env: dict | None = None) -> Operator:
        self.operator = Operator(self.work, self.emulator.url, name or self.name, extra_env)
        return self.operator

    async def __aexit__(self, *exc: object) -> None:
        if self.operator is not None:
            self.operator.stop()
        await self.cluster.__aexit__(None, None, None)
        await self.api.close()
        self.emulator.stop()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {self.work}", file=sys.stderr)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


# --- the scenarios -----------------------------------------------------------------------------------

async def lifecycle(jobs: int, timeout: float) -> dict:
    async with Bench("lifecycle") as bench:
        operator = bench.start_operator()
        names = [f"job-{i:05d}" for i in range(jobs)]
        async with Watch(bench.emulator.url, TJ) as watch:
            started = time.monotonic()
            await create_all(bench.api, [training_job(n) for n in names])
            done = await watch.until(names, ("Succeeded", "Failed"), timeout)
            elapsed = time.monotonic() - started
        failed = [n for n in names if watch.phases.get(n) != "Succeeded"]
        ready = [c for c in await bench.api.list(CKPT, NS) if (c.get("status") or {}).get("phase") == "Ready"]
        return {"jobs": jobs, "seconds": elapsed, "finished": done, "failed": len(failed), "checkpoints": len(ready),
                "operator_cpu_ms_per_job": operator.cpu_seconds() * 1000 / jobs,
                "emulator_cpu_ms_per_job": process_cpu_seconds(bench.emulator.proc.pid) * 1000 / jobs,
                "cluster_cpu_ms_per_job": (resource.getrusage(resource.RUSAGE_SELF).ru_utime +
                                           resource.getrusage(resource.RUSAGE_SELF).ru_stime) * 1000 / jobs,
                "operator_rss_mb": rss_mb(operator.proc.pid, "VmHWM"),
                "emulator_rss_mb": rss_mb(bench.emulator.proc.pid, "VmHWM"), "requests": operator.requests()}


async def hot(jobs: int, timeout: float) -> dict:
    async with Bench("hot") as bench:
        operator = bench.start_operator()
        async with Watch(bench.emulator.url, TJ) as watch:
            await bench.api.create(TJ, NS, training_job("src", checkpoints=1))
            await watch.until(["src"], ("Succeeded",), 120)
            names = [f"hot-{i:05d}" for i in range(jobs)]
            started = time.monotonic()
            await create_all(bench.api, [training_job(n, checkpoints=0, inputs=[{"name": "src.step-1"}])
                                         for n in names])
            done = await watch.until(names, ("Succeeded", "Failed"), timeout)
            elapsed = time.monotonic() - started
        failed = [n for n in names if watch.phases.get(n) == "Failed"]
        unfinished = [n for n in names if watch.phases.get(n) not in ("Succeeded", "Failed")]
        return {"jobs": jobs, "seconds": elapsed, "finished": done, "failed": len(failed),
                "unfinished": len(unfinished), "requests": operator.requests()}


def ready_checkpoint(name: str) -> tuple[dict, dict]:
    body = {"apiVersion": "ckpt.dev/v1alpha1", "kind": "Checkpoint",
            "metadata": {"name": name, "namespace": NS, "finalizers": ["ckpt.dev/in-use-protection"]},
            "spec": {"source": {"volume": {"claimName": "preloaded", "path": f"/{name}"}}}}
    status = {"phase": "Ready", "owned": False, "digest": "sha256:" + "0" * 64, "fileCount": 1, "sizeBytes": 64,
              "step": 1, "complete": True,
              "location": {"volume": {"claimName": "preloaded", "path": name}},
              "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "preloaded",
                              "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    return body, status


async def preload(api, start: int, stop: int) -> float:
    """Ready Checkpoints that are settled (protected, no users): nothing for the operator to do."""
    began = time.monotonic()
    gate = asyncio.Semaphore(32)

    async def one(i):
        body, status = ready_checkpoint(f"pre-{i:05d}")
        async with gate:
            await api.create(CKPT, NS, body)
            await api.patch(CKPT, NS, body["metadata"]["name"], {"status": status}, subresource="status")
    await asyncio.gather(*(one(i) for i in range(start, stop)))
    return time.monotonic() - began


async def measure_lifecycles(bench: Bench, operator: Operator, prefix: str, jobs: int) -> dict:
    """The operator's own requests and CPU per TrainingJob lifecycle (create -> Succeeded with its 2
    Checkpoints Ready), jobs run a few at a time, counted once it is quiet again; and which requests."""
    await operator.settle()
    before, cpu_before, targets_before = operator.requests(), operator.cpu_seconds(), operator.requests_by_target()
    events_before = operator.watch_events_by_kind()
    async with Watch(bench.emulator.url, TJ) as watch, Watch(bench.emulator.url, CKPT) as checkpoints:
        names = [f"{prefix}-{i:03d}" for i in range(jobs)]
        for batch in range(0, jobs, 5):
            group = names[batch:batch + 5]
            await create_all(bench.api, [training_job(n) for n in group])
            await watch.until(group, ("Succeeded", "Failed"), 300)
            await checkpoints.until([f"{n}.step-{k}" for n in group for k in (1, 2)], ("Ready",), 300)
    await operator.settle()
    targets = operator.requests_by_target()
    return {"requests": (operator.requests() - before) / jobs, "cpu_ms": (operator.cpu_seconds() - cpu_before) * 1000 / jobs,
            "watch_events": (operator.watch_events() - sum(v for k, v in events_before.items()
                                                           if not k.startswith("reconcile "))) / jobs,
            "watch_events_by_kind": {k: (v - events_before.get(k, 0)) / jobs
                                     for k, v in sorted(operator.watch_events_by_kind().items())
                                     if v > events_before.get(k, 0)},
            "by_target": {k: (v - targets_before.get(k, 0)) / jobs for k, v in sorted(targets.items())
                          if v > targets_before.get(k, 0)}}


async def requests_and_rss(checkpoints: int, jobs: int) -> dict:
    async with Bench("requests") as bench:
        await bench.api.create("v1/persistentvolumeclaims", NS, {"metadata": {"name": "preloaded"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
        await preload(bench.api, 0, 10)
        small = bench.start_operator("small")
        measured_small = await measure_lifecycles(bench, small, "small", jobs)
        per_small = measured_small["requests"]
        small_rss = rss_mb(small.proc.pid)
        small.stop()
        preload_seconds = await preload(bench.api, 10, checkpoints)
        big = bench.start_operator("big")
        started = time.monotonic()
        # Start-up is over once every listed Checkpoint's event was handled: kopf first indexes them
        # all (no metric moves meanwhile), then runs the event handlers; settling on quiet metrics
        # alone counted those 10,000 events into the lifecycles measured next.
        listed = len(await bench.api.list(CKPT, NS))
        while big.watch_events_by_kind().get("Checkpoint", 0) < listed:
            if time.monotonic() - started > 1800:
                raise SystemExit(f"the operator did not handle the {listed} Checkpoints' events; see {big.log}")
            await asyncio.sleep(0.2)
        await big.settle()
        startup = time.monotonic() - started
        # Its steady RSS: once it has been quiet long enough to give back what the start-up freed (it
        # trims once nothing was handled for 10 s; operator/checkpoint_operator/logic/memory_trim.py).
        await big.settle(quiet=15.0)
        big_rss = rss_mb(big.proc.pid)
        measured_big = await measure_lifecycles(bench, big, "big", jobs)
        per_big = measured_big["requests"]
        return {"checkpoints": checkpoints, "jobs": jobs, "per_lifecycle_small": per_small, "per_lifecycle_big": per_big,
                "cpu_ms_small": measured_small["cpu_ms"], "cpu_ms_big": measured_big["cpu_ms"],
                "watch_events_small": measured_small["watch_events"],
                "watch_events_by_kind_small": measured_small["watch_events_by_kind"],
                "watch_events_big": measured_big["watch_events"],
                "watch_events_by_kind_big": measured_big["watch_events_by_kind"],
                "by_target_small": measured_small["by_target"],
                "rss_small_mb": small_rss, "rss_big_mb": big_rss, "rss_big_hwm_mb": rss_mb(big.proc.pid, "VmHWM"),
                "emulator_rss_mb": rss_mb(bench.emulator.proc.pid), "preload_seconds": preload_seconds,
                "startup_seconds": startup}


async def latency(jobs: int, at_once: int) -> dict:
    async with Bench("latency") as bench:
        bench.start_operator()
        names = [f"lat-{i:04d}" for i in range(jobs)]
        delays = []
        async with Watch(bench.emulator.url, CKPT) as checkpoints, Watch(bench.emulator.url, TJ) as training:
            for batch in range(0, jobs, at_once):
                group = names[batch:batch + at_once]
                await create_all(bench.api, [training_job(n) for n in group])
                await training.until(group, ("Succeeded", "Failed"), 120)
            for name in names:
                ready = [t for (ckpt, phase), t in checkpoints.reached.items()
                         if phase == "Ready" and ckpt in (f"{name}.step-1", f"{name}.step-2")]
                if name in bench.trainer.finished and len(ready) == 2:
                    delays.append(max(ready) - bench.trainer.finished[name])
        delays.sort()
        p = (lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]) if delays else (lambda q: float("nan"))
        return {"jobs": jobs, "measured": len(delays), "p50": p(0.5), "p99": p(0.99), "max": max(delays or [0]),
                "mean": statistics.mean(delays) if delays else float("nan")}


async def memory(lifecycles: int, at_once: int, timeout: float, trace: str | None = None) -> dict:
    """The operator's RSS over many job lifecycles (create, Succeeded, deleted with its Checkpoints):
    sampled every 1,000 once the first 1,000 are done (the warm-up: imports, caches, pools). With
    `trace` (a directory), the operator runs under tracemalloc (operator/checkpoint_operator/memtrace.py)
    and each sample also takes a snapshot there and prints the traced total (Python objects alone:
    RSS that grows while it does not is the allocator's)."""
    async with Bench("memory") as bench:
        operator = bench.start_operator(extra_env={"CKPT_TRACEMALLOC": str(Path(trace).resolve())} if trace else None)
        samples: list[tuple[int, float]] = []
        traced: list[tuple[int, float]] = []
        failed = done = 0
        started = time.monotonic()
        async with Watch(bench.emulator.url, TJ) as jobs, Watch(bench.emulator.url, CKPT) as checkpoints:
            while done < lifecycles:
                names = [f"mem-{i:05d}" for i in range(done, min(done + at_once, lifecycles))]
                await create_all(bench.api, [training_job(n, checkpoints=1, publish="Continuous" if i % 2 else None)
                                             for i, n in enumerate(names, done)])
                if not await jobs.until(names, ("Succeeded", "Failed"), timeout):
                    raise SystemExit(f"memory: {names} did not finish in {timeout:.0f} s; see {operator.log}")
                failed += jobs.count(names, ("Failed",))
                made = [c for c, body in list(checkpoints.bodies.items()) if c in checkpoints.phases
                        and ((body.get("spec") or {}).get("source") or {}).get("trainingJob", {}).get("name") in names]
                await asyncio.gather(*(bench.api.delete(TJ, NS, n) for n in names),
                                     *(bench.api.delete(CKPT, NS, c) for c in made))
                deadline = time.monotonic() + timeout
                while any(n in jobs.phases for n in names) or any(c in checkpoints.phases for c in made):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"memory: {names} were not deleted in {timeout:.0f} s")
                    await asyncio.sleep(0.05)
                done += len(names)
                if done % 1000 == 0 or done == lifecycles:
                    await operator.settle(quiet=1.0)
                    samples.append((done, rss_mb(operator.proc.pid)))
                    if trace:
                        traced.append((done, await operator.snapshot(Path(trace).resolve(), len(traced) + 1)))
                    print(f"memory: {done} lifecycles, operator RSS {samples[-1][1]:.1f} MB, "
                          + (f"traced {traced[-1][1]:.2f} MB, " if trace else "")
                          + f"{time.monotonic() - started:.0f} s", flush=True)
        after = [(n, mb) for n, mb in samples if n >= min(1000, lifecycles)]
        slope = _slope(after) * 1000 if len(after) > 1 else float("nan")
        return {"lifecycles": lifecycles, "failed": failed, "seconds": time.monotonic() - started,
                "rss_first_mb": after[0][1] if after else float("nan"), "first_at": after[0][0] if after else 0,
                "rss_last_mb": samples[-1][1] if samples else float("nan"), "slope_mb_per_1000": slope,
                "samples": samples, "traced": traced, "operator_hwm_mb": rss_mb(operator.proc.pid, "VmHWM"),
                "requests": operator.requests()}


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of (x, y) points."""
    mean_x = statistics.mean(x for x, _ in points)
    mean_y = statistics.mean(y for _, y in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)


def localrun(jobs: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-scale-localrun-"))
    script = ("import os, pathlib; d = pathlib.Path(os.environ['CHECKPOINT_OUTPUT_DIR'], 'step-1'); "
              "d.mkdir(parents=True, exist_ok=True); (d / 'model.safetensors').write_bytes(b'w' * 64)")
    docs = [{"apiVersion": "ckpt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": f"job-{i:04d}"},
             "spec": {"output": {"size": "1Gi"}, "template": {"spec": {"containers": [
                 {"name": "trainer", "image": "python:3.11", "command": ["python", "-c", script]}]}}}}
            for i in range(jobs)]
    (work / "jobs.yaml").write_text("\n---\n".join(json.dumps(d) for d in docs))
    started = time.monotonic()
    # This checkout's CLI, as the operator above (the `checkpoint-operator` first on PATH may be another's).
    proc = subprocess.run([sys.executable, "-m", "checkpoint_operator", "local", "run", "-f", str(work / "jobs.yaml"),
                           "-o", "json",
                           "--runtime", "process", "--state-dir", str(work / "state")],
                          capture_output=True, text=True, cwd=work, timeout=3600)
    elapsed = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    succeeded = proc.stdout.count('"Succeeded"')
    shutil.rmtree(work, ignore_errors=True)
    return {"jobs": jobs, "seconds": elapsed, "exit": proc.returncode, "succeeded_mentions": succeeded,
            "peak_rss_mb": peak, "stderr_tail": proc.stderr.strip().splitlines()[-3:]}


# --- main --------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-emulator", metavar="URL_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", default="lifecycle,hot,requests,latency,localrun",
                        help="comma-separated scenarios (rss comes with requests)")
    parser.add_argument("--jobs", type=int, help="TrainingJobs of the lifecycle scenario (1000)")
    parser.add_argument("--hot", type=int, help="jobs on one input (1000)")
    parser.add_argument("--checkpoints", type=int, help="Checkpoints in the namespace for requests/rss (10000)")
    parser.add_argument("--lifecycles", type=int, default=20, help="lifecycles counted at each size (20)")
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--local-jobs", type=int, help="jobs of `local run` (120)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--memory", type=int, metavar="N",
                        help="the memory scenario alone: the operator's RSS over N job lifecycles (10000)")
    parser.add_argument("--trace", metavar="DIR", help="the memory scenario under tracemalloc: a snapshot in DIR and "
                        "the traced total at each sample (slower; RSS then holds tracemalloc's own)")
    parser.add_argument("--at-once", type=int, default=20, help="jobs per wave of the memory scenario (20)")
    args = parser.parse_args()
    if args.serve_emulator:
        return serve_emulator(args.serve_emulator)
    quick = args.quick
    jobs = args.jobs or (50 if quick else 1000)
    hot_jobs = args.hot or (50 if quick else 1000)
    checkpoints = args.checkpoints or (500 if quick else 10000)
    local_jobs = args.local_jobs or (20 if quick else 120)
    lifecycles = 5 if quick else args.lifecycles
    only = set(args.only.split(","))
    if args.memory:
        only = {"memory"}
    results: dict[str, dict] = {}
    if "lifecycle" in only:
        results["lifecycle"] = asyncio.run(lifecycle(jobs, args.timeout))
        print("lifecycle", json.dumps(results["lifecycle"]), flush=True)
    if "hot" in only:
        results["hot"] = asyncio.run(hot(hot_jobs, args.timeout))
        print("hot", json.dumps(results["hot"]), flush=True)
    if "requests" in only or "rss" in only:
        results["requests"] = asyncio.run(requests_and_rss(checkpoints, lifecycles))
        print("requests", json.dumps(results["requests"]), flush=True)
    if "latency" in only:
        results["latency"] = asyncio.run(latency(10 if quick else args.latency_jobs, 4))
        print("latency", json.dumps(results["latency"]), flush=True)
    if "memory" in only:
        results["memory"] = asyncio.run(memory(args.memory or (200 if quick else 10000), args.at_once, 600, args.trace))
        print("memory", json.dumps(results["memory"]), flush=True)
    if "localrun" in only:
        results["localrun"] = localrun(local_jobs)
        print("localrun", json.dumps(results["localrun"]), flush=True)

    print()
    print(f"{'figure':52} {'value':>24}   goal")
    lines = []
    if "lifecycle" in results:
        r = results["lifecycle"]
        print(f"{'trainingjobs to Succeeded (2 checkpoints each)':52} {r['jobs']:>10} in {r['seconds']:>8.1f} s   < 60 s")
        print(f"{'  of them not Succeeded':52} {r['failed']:>24}")
        print(f"{'  operator / emulator peak RSS':52} {r['operator_rss_mb']:>10.0f} / {r['emulator_rss_mb']:.0f} MB")
        print(f"{'  cpu per job: operator / emulator / cluster':52} {r['operator_cpu_ms_per_job']:>10.1f} / "
              f"{r['emulator_cpu_ms_per_job']:.1f} / {r['cluster_cpu_ms_per_job']:.1f} ms")
        lines.append(f"scale: {r['jobs']} trainingjobs to Succeeded in {r['seconds']:.1f} s")
    if "hot" in results:
        r = results["hot"]
        print(f"{'jobs on one input: failed / unfinished':52} {r['failed']:>10} / {r['unfinished']:<5} {r['seconds']:>6.1f} s   0 failed")
        lines.append(f"scale: hot input {r['jobs']} jobs on one checkpoint: {r['failed']} failed, {r['seconds']:.1f} s")
    if "requests" in results:
        r = results["requests"]
        print(f"{'requests per lifecycle at 10 / ' + str(r['checkpoints']) + ' checkpoints':52} "
              f"{r['per_lifecycle_small']:>10.1f} / {r['per_lifecycle_big']:<10.1f}   B <= 1.1 A")
        print(f"{'operator RSS with 10 / ' + str(r['checkpoints']) + ' checkpoints':52} "
              f"{r['rss_small_mb']:>10.0f} / {r['rss_big_mb']:.0f} MB   < 250 MB")
        print(f"{'  its high-water mark (VmHWM)':52} {r['rss_big_hwm_mb']:>21.0f} MB   < 250 MB")
        print(f"{'  operator start-up with them (indexing)':52} {r['startup_seconds']:>22.1f} s")
        print(f"{'operator cpu per lifecycle at 10 / ' + str(r['checkpoints']) + ' checkpoints':52} "
              f"{r['cpu_ms_small']:>10.1f} / {r['cpu_ms_big']:<7.1f} ms   <= 10 ms")
        print(f"{'  watch events the operator handled per lifecycle':52} {r['watch_events_small']:>10.1f} / "
              f"{r['watch_events_big']:.1f}")
        kinds = sorted(set(r["watch_events_by_kind_small"]) | set(r["watch_events_by_kind_big"]),
                       key=lambda k: (k.startswith("reconcile "), -r["watch_events_by_kind_small"].get(k, 0)))
        for kind in kinds:
            print(f"    {kind:48} {r['watch_events_by_kind_small'].get(kind, 0):>8.2f} / "
                  f"{r['watch_events_by_kind_big'].get(kind, 0):.2f}")
        print("  requests per lifecycle, by what they touch (10 checkpoints):")
        for target, count in sorted(r["by_target_small"].items(), key=lambda kv: -kv[1]):
            print(f"    {target:48} {count:>8.2f}")
        lines.append(f"scale: operator cpu per trainingjob lifecycle: {r['cpu_ms_small']:.1f} ms")
        lines.append(f"scale: requests per trainingjob lifecycle at 10 / {r['checkpoints']} checkpoints: "
                     f"{r['per_lifecycle_small']:.1f} / {r['per_lifecycle_big']:.1f}")
        lines.append(f"scale: operator rss with {r['checkpoints']} checkpoints: {r['rss_big_mb']:.0f} MB "
                     f"(high-water {r['rss_big_hwm_mb']:.0f} MB)")
    if "latency" in results:
        r = results["latency"]
        print(f"{'pod finished to checkpoints ready p50 / p99':52} {r['p50']:>10.2f} / {r['p99']:.2f} s   p99 < 1 s")
        lines.append(f"scale: pod finished to checkpoints ready: p50 {r['p50']:.2f} s p99 {r['p99']:.2f} s")
    if "memory" in results:
        r = results["memory"]
        print(f"{'operator RSS after ' + str(r['first_at']) + ' / ' + str(r['lifecycles']) + ' lifecycles':52} "
              f"{r['rss_first_mb']:>10.1f} / {r['rss_last_mb']:.1f} MB   flat")
        print(f"{'  slope (least squares over the samples)':52} {r['slope_mb_per_1000']:>18.2f} MB/1000")
        print(f"{'  of them not Succeeded':52} {r['failed']:>24}")
        lines.append(f"scale: operator rss after {r['first_at']} / {r['lifecycles']} lifecycles: "
                     f"{r['rss_first_mb']:.1f} / {r['rss_last_mb']:.1f} MB, slope {r['slope_mb_per_1000']:.2f} MB "
                     f"per 1000")
    if "localrun" in results:
        r = results["localrun"]
        print(f"{'local run (exit ' + str(r['exit']) + ')':52} {r['jobs']:>10} in {r['seconds']:>8.1f} s   < 60 s")
        print(f"{'  its peak RSS':52} {r['peak_rss_mb']:>21.0f} MB")
        lines.append(f"scale: local run {r['jobs']} jobs: {r['seconds']:.1f} s")
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
