#!/usr/bin/env python3
"""Benchmark of `checkpoint-operator agent scan` against coreutils and against the machine.

Builds a synthetic output directory (a few large shards and small JSON files per checkpoint)
or takes --dir, then measures in the same run, RUNS times each, the median wall time of:
  (a) `checkpoint-operator agent scan DIR --json`;
  (b) `find DIR -type f -print0 | xargs -0 sha256sum` (what a user would otherwise run);
  (c) the machine's limit: min(reading the files in parallel with no work, `cat` > /dev/null
      one process per core; hashlib's in-memory sha256 rate on one core x cores).
The page cache cannot be dropped without privileges, so every file is read once before the
runs and all tools see a warm cache: the figures compare CPU cost, not disk speed.

    python bench/scan.py --size 1GiB
    python bench/scan.py --quick

It also prints the agent's start-up (a scan of an empty directory, process start included)
beside `python -c pass` of the same interpreter, and their ratio.

The last two lines are always `scan ratio vs sha256sum: Z.ZZ` (scan rate / sha256sum rate)
and `scan fraction of limit: F.FF` (scan rate / limit).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
         "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected a number with an optional unit such as 64MiB, 2GiB")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def build_tree(root: Path, total: int, checkpoints: int = 2, shards: int = 4) -> None:
    """`checkpoints` Transformers-like directories, each `shards` equal safetensors shards that
    together make `total` bytes, plus small JSON files."""
    block = os.urandom(16 << 20)
    shard_size = max(1, total // (checkpoints * shards))
    for c in range(checkpoints):
        ckpt = root / f"checkpoint-{(c + 1) * 1000}"
        ckpt.mkdir(parents=True)
        for name, doc in {"config.json": {"model_type": "llama", "hidden_size": 4096},
                          "generation_config.json": {"do_sample": True},
                          "tokenizer_config.json": {"model_max_length": 4096},
                          "special_tokens_map.json": {"bos_token": "<s>"},
                          "trainer_state.json": {"global_step": (c + 1) * 1000, "log_history": [{"loss": 1.0}] * 200},
                          }.items():
            (ckpt / name).write_text(json.dumps(doc))
        index = {"weight_map": {}}
        for s in range(shards):
            name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            index["weight_map"][f"layer.{s}"] = name
            with open(ckpt / name, "wb") as f:
                f.write(f"{c}-{s}".encode())  # every shard differs
                left = shard_size - f.tell()
                while left > 0:
                    f.write(block[: min(left, len(block))])
                    left -= min(left, len(block))
        (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))


def files_of(root: Path) -> list[Path]:
    return [Path(d, n) for d, _, names in os.walk(root) for n in names]


def warm(files: list[Path]) -> None:
    buf = bytearray(8 << 20)
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def median_seconds(run, runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def shell(command: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"})


def scan_command() -> list[str]:
    # The console script next to this interpreter: a pyenv/asdf shim in front of it would add
    # a shell start to every run and measure the shim, not the scan.
    script = Path(sys.executable).parent / "checkpoint-operator"
    if script.exists():
        return [str(script)]
    found = shutil.which("checkpoint-operator")
    return [found] if found else [sys.executable, "-m", "checkpoint_operator"]


def compile_bytecode() -> None:
    """Write the package's bytecode, as the image does (Dockerfile: compileall): an editable
    install run with PYTHONDONTWRITEBYTECODE compiles every module from source at each start,
    which no agent pod does (30 ms of a 150 ms start here)."""
    spec = importlib.util.find_spec("checkpoint_operator")
    if spec and spec.submodule_search_locations:
        for where in spec.submodule_search_locations:
            subprocess.run([sys.executable, "-m", "compileall", "-q", where], stdout=subprocess.DEVNULL, check=False)


def startup_seconds(command: list[str], runs: int) -> tuple[float, float]:
    """Median wall seconds of `command` and of `python -c pass`, run in turn (so drift in the
    machine's speed touches both alike)."""
    agent, bare = [], []
    for _ in range(runs + 1):  # the first pair warms the page cache
        for times, argv in ((agent, command), (bare, [sys.executable, "-c", "pass"])):
            start = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    return statistics.median(agent[1:]), statistics.median(bare[1:])


def sha256_core_rate(seconds: float = 0.5) -> float:
    """Bytes/s hashlib's sha256 reaches on one core over an in-memory buffer (median of 3)."""
    data = memoryview(bytes(64 << 20))
    chunk = 1 << 20
    rates = []
    for _ in range(3):
        digest, done, start = hashlib.sha256(), 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for i in range(0, len(data), chunk):
                digest.update(data[i:i + chunk])
            done += len(data)
        rates.append(done / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="scan this directory instead of a synthetic one")
    parser.add_argument("--size", type=parse_size, default=2 << 30, help="synthetic tree size (default 2GiB)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the tree (default: a temp dir)")
    args = parser.parse_args()
    size = 64 << 20 if args.quick else args.size
    compile_bytecode()
    n = cores()

    tmp = None
    if args.dir:
        root = args.dir
    else:
        tmp = Path(tempfile.mkdtemp(prefix="scan-bench-", dir=args.workdir))
        root = tmp / "output"
        print(f"building {size / 2**20:.0f} MiB synthetic tree in {root} ...", flush=True)
        build_tree(root, size)
    try:
        files = files_of(root)
        total = sum(p.stat().st_size for p in files)
        warm(files)
        scan = scan_command()
        empty = Path(tempfile.mkdtemp(prefix="scan-bench-empty-"))
        q = lambda p: "'" + str(p).replace("'", "'\\''") + "'"  # noqa: E731

        def run_scan() -> None:
            out = subprocess.run([*scan, "agent", "scan", str(root), "--json"], check=True,
                                 capture_output=True).stdout
            json.loads(out)

        rows = []
        measured = {}
        for label, run in [
            ("checkpoint-operator agent scan --json", run_scan),
            ("find | xargs -0 sha256sum", lambda: shell(f"find {q(root)} -type f -print0 | xargs -0 sha256sum")),
            (f"find | xargs -0 -P{n} -n1 sha256sum (info)",
             lambda: shell(f"find {q(root)} -type f -print0 | xargs -0 -P{n} -n1 sha256sum")),
            (f"find | xargs -0 -P{n} -n1 cat >/dev/null",
             lambda: shell(f"find {q(root)} -type f -print0 | xargs -0 -P{n} -n1 cat")),
        ]:
            med, times = median_seconds(run, args.runs)
            measured[label] = total / med
            rows.append((label, f"{med:.3f}", f"{total / med / 1e6:.0f}", " ".join(f"{t:.3f}" for t in times)))
        startup, bare = startup_seconds([*scan, "agent", "scan", str(empty), "--json"], max(args.runs, 15))
        os.rmdir(empty)
        core_rate = sha256_core_rate()
        cat_rate = measured[f"find | xargs -0 -P{n} -n1 cat >/dev/null"]
        limit = min(cat_rate, core_rate * n)
        scan_rate = measured["checkpoint-operator agent scan --json"]
        sha_rate = measured["find | xargs -0 sha256sum"]

        print(f"data: {len(files)} files, {total / 1e6:.0f} MB in {root}; {n} cores; warm page cache "
              f"(every file read once before the runs; dropping the cache needs root)")
        print(f"scan command: {' '.join(scan)}")
        width = max(len(r[0]) for r in rows) + 2
        print(f"{'tool':<{width}}{'median s':>10}{'MB/s':>8}   runs (s)")
        for label, med, rate, times in rows:
            print(f"{label:<{width}}{med:>10}{rate:>8}   {times}")
        print(f"{'hashlib sha256 in memory, 1 core':<{width}}{'':>10}{core_rate / 1e6:>8.0f}")
        print(f"{f'limit = min(parallel cat, sha256 x {n} cores)':<{width}}{'':>10}{limit / 1e6:>8.0f}")
        print(f"{'scan of an empty dir (process start)':<{width}}{startup:>10.3f}")
        print(f"{'python -c pass (same interpreter)':<{width}}{bare:>10.3f}")
        print(f"agent start-up: {startup:.3f} s, {startup / bare:.1f}x python -c pass (goal: 0.1 s, within 8x)")
        without_start = total / max(1e-9, total / scan_rate - startup)
        print(f"{'scan rate without process start':<{width}}{'':>10}{without_start / 1e6:>8.0f}"
              f"   fraction of limit {without_start / limit:.2f}")
        print(f"scan ratio vs sha256sum: {scan_rate / sha_rate:.2f}")
        print(f"scan fraction of limit: {scan_rate / limit:.2f}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
