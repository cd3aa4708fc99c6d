"""Orbax: CheckpointManager's default single-item save, a composite save, an interrupted async save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from frameworks_support import agent_scan, materialize, summary


def _state():
    params = {"w": jnp.arange(12.0).reshape(4, 3), "b": jnp.zeros((3,))}
    return {"params": params, "opt_state": optax.adam(1e-3).init(params)}


def test_default_single_item_save_is_resumable_and_restores(tmp_path):
    out = tmp_path / "out"
    state = _state()
    with ocp.CheckpointManager(out) as manager:
        for step in (1, 2):
            manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()

    found = agent_scan(out)
    assert not any(p.startswith("2/opt_state") for p in found)
    for step in (1, 2):
        assert summary(found[str(step)]) == ("orbax", step, True, True)
    assert found["2"]["completeReason"].startswith("committed (_CHECKPOINT_METADATA commit_timestamp_nsecs)")
    assert not any(f["path"].startswith("opt_state/") for f in found["2"]["files"])  # keys only in _METADATA

    # A second job restores the checkpoint as mounted: under the Checkpoint's name, so it opens the
    # item directly (a CheckpointManager knows steps only by their bare numbers).
    mounted = materialize(found["2"], out / "2", tmp_path / "input-checkpoint" / "job-2")
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(mounted / "default", state)
    assert np.array_equal(restored["params"]["w"], state["params"]["w"])
    assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(state["opt_state"])


def test_composite_save_in_a_subdirectory_is_a_container_of_steps(tmp_path):
    out = tmp_path / "out"
    state = _state()
    with ocp.CheckpointManager(out / "orbax") as manager:
        manager.save(3, args=ocp.args.Composite(params=ocp.args.StandardSave(state["params"]),
                                                opt_state=ocp.args.StandardSave(state["opt_state"])))
        manager.save(4, args=ocp.args.Composite(params=ocp.args.StandardSave(state["params"])))
        manager.wait_until_finished()
    found = agent_scan(out)
    assert summary(found["orbax/3"]) == ("orbax", 3, True, True)
    assert summary(found["orbax/4"]) == ("orbax", 4, False, True)
    mounted = materialize(found["orbax/3"], out / "orbax" / "3", tmp_path / "input-checkpoint" / "job-orbax-3")
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(mounted / "params", state["params"])
        opt_state = checkpointer.restore(mounted / "opt_state", state["opt_state"])
    assert np.array_equal(params["b"], state["params"]["b"])
    assert jax.tree.structure(opt_state) == jax.tree.structure(state["opt_state"])


INTERRUPTED = textwrap.dedent('''
    import sys, time
    import jax.numpy as jnp, optax, orbax.checkpoint as ocp
    from orbax.checkpoint._src.path import atomicity

    async def never_finishes(self):  # the commit of step 2 hangs: the process dies before it
        open(sys.argv[2], "w").close()
        time.sleep(600)

    params = {"w": jnp.ones((4, 3))}
    state = {"params": params, "opt_state": optax.adam(1e-3).init(params)}
    manager = ocp.CheckpointManager(sys.argv[1], options=ocp.CheckpointManagerOptions(enable_async_checkpointing=True))
    manager.save(1, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    atomicity.AtomicRenameTemporaryPath.finalize = never_finishes
    manager.save(2, args=ocp.args.StandardSave(state))
    time.sleep(600)
''')


def test_interrupted_async_save_leaves_a_tmp_directory_that_is_skipped(tmp_path):
    out, committing = tmp_path / "out", tmp_path / "committing"
    script = tmp_path / "save.py"
    script.write_text(INTERRUPTED)
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(committing)], env={**os.environ},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not committing.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the async save never reached its commit"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()

    tmp_dirs = [p.name for p in out.iterdir() if ".orbax-checkpoint-tmp" in p.name]
    assert len(tmp_dirs) == 1 and tmp_dirs[0].startswith("2.")
    found = agent_scan(out)
    assert [p for p in found if p != "__skipped__"] == ["1"]
    assert summary(found["1"]) == ("orbax", 1, True, True)
    assert found["__skipped__"] == {tmp_dirs[0]: "name marks an unfinished write ('tmp')"}
