"""Shared fixtures: the emulated Kubernetes API and the local cluster (Job controller, kubelet, ...).

Layers, each usable alone (function scope: every test gets a fresh, empty API):

- ``emulator_server`` -> ``EmulatorServer``: the emulated API on 127.0.0.1 in its own thread/loop;
  ``emulator_server.url``; ``emulator_server.call(fn)`` runs ``fn`` in its loop (safe state access,
  e.g. ``emulator_server.call(lambda: emulator_server.emulator.pod_log("default", "p"))``);
- ``api_url`` -> ``str``: its base URL, for clients such as kopf or the kubernetes client;
- ``api`` -> ``ApiClient``: a small async client in the test's loop
  (``await api.create("v1/pods", "default", body)``, ``get``, ``list``, ``patch``, ``replace``,
  ``delete``, ``read_log``); HTTP errors raise ``ApiError`` with ``.status`` and ``.reason``;
- ``container_runner`` -> None: override it in a module to play the training code;
- ``cluster`` -> ``LocalCluster``: scheduler, storage, snapshot controller, Job and JobSet controllers
  (JobSet's published CRD installed: ``jobset_installed`` -> False leaves both out), Kueue stand-in,
  kubelets and GC, running in the test's loop against ``api_url`` with data under
  ``tmp_path / "cluster"``, on ``cluster_nodes`` nodes (1 unless a test overrides that fixture);
- ``wait_for`` -> ``async wait_for(predicate, timeout=10, interval=0.05)``: polls a sync or async
  predicate until it returns something truthy and returns that value.

Operator fixtures (kopf via ``checkpoint_operator.local.server.run_kopf_in_thread``) build on
``api_url`` and ``cluster``.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from checkpoint_operator.local.cluster import LocalCluster
from checkpoint_operator.local.server import ApiClient, EmulatorServer

# The servers' fixtures, registered once for the whole run: a session-scoped fixture imported into
# a test module is a fixture of that module, so each module started its own SeaweedFS and Azurite.
pytest_plugins = ["s3server", "azurite", "hubserver"]

UNIT_DIR = Path(__file__).parent / "unit"

# pytest-xdist: pyproject.toml's addopts ask for `-n auto`; this hook says how many that is.
# The default tier spends most of its wall time waiting (operator threads, agent processes,
# polls): 14 min 49 s -> 10 min 37 s, both under load 2-9 from other runs. The unit tier too,
# although pure CPU (each worker collects tests/unit/ again: ~38 s of CPU against ~29 s): side
# by side at the same load it took 50 s on workers and 74 s in-process with the modules' asserts
# rewritten (no bytecode cache, see pytest_collection), then 47 vs 35 s and 49 vs 50 s with the
# cache, at load ~3 where the other core is mostly busy; on a quiet machine two workers get
# both cores. In-process (no workers): the
# image, containers and frameworks tiers, whose every test already uses all cores (Podman,
# torch's threads), where two at once would only race their timeouts; the slow tier, whole
# scenarios timed as they always ran (not yet tried on workers). `-n N` on the command line, or
# PYTEST_XDIST_AUTO_NUM_WORKERS, still decide.
IN_PROCESS_MARKERS = {"slow", "image", "containers", "frameworks"}


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    if config.option.markexpr.strip() in IN_PROCESS_MARKERS:
        return 0
    return auto_workers(len(os.sched_getaffinity(0)))


def auto_workers(cpus: int) -> int:
    """One worker per CPU this process may run on (not xdist's physical-core count, which is 1
    on a 2-vCPU machine with hyper-threads), at least one."""
    return max(1, cpus)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Iterator[None]:
    """pytest caches each test module with its asserts rewritten (in __pycache__, gitignored), but
    not where PYTHONDONTWRITEBYTECODE is set (as on this project's machines): there every run, and
    every xdist worker, rewrote all ~330 test modules again, 14 s of the collection's 19 s of CPU
    (profiled). Bytecode is written while collecting (what is imported then, test modules and the
    package alike), as Python does by default; the setting holds again for the tests."""
    saved = sys.dont_write_bytecode
    sys.dont_write_bytecode = False
    try:
        return (yield)
    finally:
        sys.dont_write_bytecode = saved


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`-m unit`, the inner loop: its tests are exactly those under tests/unit/ (marked there by
    directory; tests/unit/test_tier.py checks that no other file asks for the marker), so the rest
    is not even imported: importing and collecting it was 4 s of the tier's 40 s of CPU."""
    if config.option.markexpr.strip() != "unit":
        return None
    if collection_path.is_relative_to(UNIT_DIR) or UNIT_DIR.is_relative_to(collection_path):
        return None
    return True


@pytest.fixture(scope="session")
def crds_built_once() -> Iterator[None]:
    """Every emulator generates the project's CRDs from the API models (local/emulator.py
    project_crds, 55 ms of CPU) and every local cluster parses external-snapshotter's CRDs from
    YAML (local/snapshots.py snapshot_crds, 70 ms); ~580 tests of the default tier start an
    emulator, ~250 a cluster. Here each is made once per run and every caller gets its own deep
    copy (2 ms): neither the models nor the files change during a run (tests/unit/api/test_crdgen.py,
    which changes the models, starts no emulator)."""
    from checkpoint_operator.local import emulator, snapshots
    makers = [(module, name, getattr(module, name)) for module, name in
              ((emulator, "project_crds"), (snapshots, "snapshot_crds"))]
    for module, name, make in makers:
        setattr(module, name, functools.partial(copy.deepcopy, make()))
    yield
    for module, name, make in makers:
        setattr(module, name, make)


@pytest.fixture
def emulator_server(crds_built_once: None) -> Iterator[EmulatorServer]:
    server = EmulatorServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api_url(emulator_server: EmulatorServer) -> str:
    return emulator_server.url


@pytest.fixture
async def api(api_url: str) -> AsyncIterator[ApiClient]:
    async with ApiClient(api_url) as client:
        yield client


@pytest.fixture
def container_runner() -> Any:
    """None: containers run their commands. Override to return ``async def runner(pod, container, env, mounts)``."""
    return None


@functools.lru_cache(maxsize=1)
def published_jobset_crd() -> dict:
    """JobSet's published CRD (tests/schemas/README.md): the emulated API validates every JobSet with it."""
    return yaml.load((Path(__file__).parent / "schemas" / "jobset.x-k8s.io_jobsets.yaml").read_text(),
                     Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@pytest.fixture
def cluster_nodes() -> int:
    """Nodes of the ``cluster``: 1 keeps most tests fast; override it (a module's fixture, or
    ``@pytest.mark.parametrize("cluster_nodes", [3])``) for tests of scheduling and attachment."""
    return 1


@pytest.fixture
def jobset_installed() -> bool:
    """Whether the local cluster has JobSet (its CRD and controller). Override to test without."""
    return True


@pytest.fixture
async def cluster(api_url: str, tmp_path: Any, container_runner: Any, cluster_nodes: int, jobset_installed: bool
                  ) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(api_url, tmp_path / "cluster", container_runner=container_runner, nodes=cluster_nodes,
                            jobset=jobset_installed, jobset_crd=copy.deepcopy(published_jobset_crd())) as local_cluster:
        yield local_cluster


async def _wait_for(predicate: Callable[[], Any], timeout: float = 10, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {getattr(predicate, '__name__', predicate)}")
        await asyncio.sleep(interval)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    return _wait_for


@pytest.fixture
def credential_watch(request) -> Iterator[Any]:
    """Fails the test when a credential it used appears in what the code wrote (tests/credentials.py)."""
    import credentials
    witness, handler = credentials.start()
    emulator = None
    if "emulator_server" in request.fixturenames:  # set up now: torn down after this fixture reads it
        emulator = request.getfixturevalue("emulator_server")
        credentials.watch_emulator(witness, emulator.emulator)
    try:
        yield witness
        if emulator is not None:
            credentials.emulator_objects(witness, emulator.call(emulator.emulator.export_state))
    finally:
        credentials.stop(handler)
    leaks = witness.leaks(credentials.SECRETS)
    assert not leaks, "credentials found in what the code wrote:\n" + "\n".join(leaks[:20])


# --- deep trees: tests build 1,000-deep directories; pytest's own cleanup of old numbered tmp
# directories uses a recursive rmtree that fails on them (RecursionError at exit), so every
# subtree past DEEP levels under this session's basetemp is removed without recursion here.
DEEP = 200


def pytest_sessionfinish(session: pytest.Session) -> None:
    import os

    from checkpoint_operator.agent import fstree
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    if basetemp is None or not os.path.isdir(basetemp):
        return
    base_depth = str(basetemp).rstrip(os.sep).count(os.sep)
    deep: list[str] = []
    for directory, subdirs, _files in fstree.walk(str(basetemp)):
        if directory.count(os.sep) - base_depth >= DEEP:
            deep.append(directory)
            subdirs[:] = []  # remove_tree takes the whole subtree
    for directory in deep:
        fstree.remove_tree(directory, ignore_errors=True, make_writable=True)
