"""Container directories of step checkpoints (agent/containers.py) and how `agent scan` uses them."""

from __future__ import annotations

import pytest

from checkpoint_operator.agent.containers import Entry, Split, split_container
from checkpoint_operator.agent.scan import scan_directory
from checkpoint_operator.logic.naming import checkpoint_name
from formats_files import safetensors_bytes, torch_zip_bytes, write


def dirs(*names: str) -> list[Entry]:
    return [Entry(n, "dir") for n in names]


@pytest.mark.parametrize("name, entries, expected", [
    ("checkpoints", dirs("checkpoint_0", "checkpoint_1", "checkpoint_10"),
     Split(["checkpoint_0", "checkpoint_1", "checkpoint_10"], [])),
    ("orbax", dirs("100", "200", "300.orbax-checkpoint-tmp-17"),
     Split(["100", "200"], [("300.orbax-checkpoint-tmp-17", "name marks an unfinished write ('tmp')")])),
    ("runs", [*dirs("step-1"), Entry(".DS_Store", "file"), Entry(".cache", "dir")],
     Split(["step-1"], [(".DS_Store", "hidden name"), (".cache", "hidden name")])),
    ("ckpts", dirs("5.orbax-checkpoint-tmp-1"), Split([], [("5.orbax-checkpoint-tmp-1", "name marks an unfinished write ('tmp')")])),
    # stays one checkpoint:
    ("step-100", dirs("0", "1"), None),                                   # its own name has a step
    ("deepspeed", [*dirs("global_step10", "global_step20"), Entry("latest", "file")], None),  # a file beside
    ("megatron", [*dirs("iter_0000100"), Entry("latest_checkpointed_iteration.txt", "file")], None),
    ("model", dirs("params", "opt_state"), None),                        # children without steps
    ("mixed", dirs("step-1", "best"), None),
    ("links", [*dirs("step-1"), Entry("step-2", "other")], None),
    ("empty", [], None),
    ("hidden-only", dirs(".git"), None),
])
def test_split_container(name, entries, expected):
    assert split_container(name, entries) == expected


def test_scan_makes_one_checkpoint_per_step_child_and_names_them(tmp_path):
    for n in range(3):
        write(tmp_path / "checkpoints" / f"checkpoint_{n}" / "model.safetensors", safetensors_bytes({"w": 4}))
        write(tmp_path / "checkpoints" / f"checkpoint_{n}" / "optimizer.bin", torch_zip_bytes({"state": {}}))
        write(tmp_path / "checkpoints" / f"checkpoint_{n}" / "random_states_0.pkl", torch_zip_bytes({}))
    write(tmp_path / "checkpoints" / "checkpoint_3.tmp" / "model.safetensors", b"partial")
    write(tmp_path / "ds" / "latest", "global_step1")
    write(tmp_path / "ds" / "global_step1" / "mp_rank_00_model_states.pt", torch_zip_bytes({}))
    result = scan_directory(tmp_path)
    found = {m.path: m for m in result.checkpoints}
    assert list(found) == ["checkpoints/checkpoint_0", "checkpoints/checkpoint_1", "checkpoints/checkpoint_2", "ds"]
    for n in range(3):
        m = found[f"checkpoints/checkpoint_{n}"]
        assert (m.format, m.step, m.resumable, m.complete, m.fileCount) == ("safetensors", n, True, True, 3)
        assert [f.path for f in m.files] == ["model.safetensors", "optimizer.bin", "random_states_0.pkl"]
    assert (found["ds"].format, found["ds"].step, found["ds"].complete) == ("deepspeed", 1, True)
    assert {s.path: s.reason for s in result.skipped} == {
        "checkpoints/checkpoint_3.tmp": "name marks an unfinished write ('tmp')"}
    assert checkpoint_name("job", "checkpoints/checkpoint_1").startswith("job.checkpoints-checkpoint-1.")
    assert checkpoint_name("job", "ds") == "job.ds"


def test_layout_directories_splits_containers_too_and_files_layout_never_looks_inside(tmp_path):
    write(tmp_path / "runs" / "step-1" / "a.pt", torch_zip_bytes({}))
    write(tmp_path / "model.pt", torch_zip_bytes({}))
    assert [m.path for m in scan_directory(tmp_path, "directories").checkpoints] == ["runs/step-1"]
    assert [m.path for m in scan_directory(tmp_path, "files").checkpoints] == ["model.pt"]


def test_a_container_is_listed_within_the_scan_entry_bound(tmp_path):
    from checkpoint_operator.agent.tree import TooManyEntries
    for n in range(30):
        write(tmp_path / "shelf" / f"step-{n}" / "a.pt", torch_zip_bytes({}))
    assert len(scan_directory(tmp_path, max_entries=100).checkpoints) == 30
    with pytest.raises(TooManyEntries):
        scan_directory(tmp_path, max_entries=20)
