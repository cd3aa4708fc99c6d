"""Live sealing (`agent watch`) on real files: the watcher is driven tick by tick here (no sleeps,
no timing), exactly as its loop drives it, and its JSON lines are collected."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from formats_files import dcp_metadata_bytes, ocdbt_bytes, safetensors_bytes, torch_zip_bytes, write

from checkpoint_operator.agent.scan import scan_directory
from checkpoint_operator.agent.live_sealing import LIVE_DIR
from checkpoint_operator.agent.live_watch import REMOVE_ANNOTATION, Watcher, read_annotation_file, sealed_uri


class Lines(list):
    def of(self, event: str) -> list[dict]:
        return [line for line in self if line["event"] == event]

    def sealed_paths(self) -> list[str]:
        return [line["checkpoint"]["path"] for line in self.of("sealed")]


def watcher(root: Path, **kwargs) -> tuple[Watcher, Lines]:
    """A watcher whose typed events (protocol/results.py) are kept as the dicts of their lines."""
    lines = Lines()

    def keep(event) -> None:
        lines.append({"event": event.kind, **event.model_dump(mode="json", exclude={"kind", "version"},
                                                              exclude_none=True)})
    return Watcher(str(root), emit=keep, **kwargs), lines


def ticks(w: Watcher, n: int = 2) -> None:
    for _ in range(n):
        w.tick()


def trainer_files(directory: Path, *, state: bool) -> None:
    write(directory / "config.json", json.dumps({"model_type": "gpt2"}))
    write(directory / "model.safetensors", safetensors_bytes({"w": 64}))
    write(directory / "optimizer.pt", torch_zip_bytes({"state": {}, "param_groups": []}))
    if state:
        write(directory / "trainer_state.json", json.dumps({"global_step": 10, "log_history": [
            {"step": 10, "loss": 1.5}, {"step": 10, "eval_loss": 0.75, "epoch": 1.0}], "best_metric": 0.75}))


def test_a_slow_trainer_checkpoint_is_sealed_only_after_its_last_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    w, lines = watcher(out)
    trainer_files(out / "checkpoint-10", state=False)  # the first half: weights and optimizer
    ticks(w, 5)  # a long pause: the listing is stable, but trainer_state.json (written last) is missing
    assert lines.sealed_paths() == []
    assert "missing trainer_state.json" in w.holds["checkpoint-10"]

    trainer_files(out / "checkpoint-10", state=True)  # the rest
    w.tick()
    assert lines.sealed_paths() == [], "a listing that just changed is never sealed"
    w.tick()
    assert lines.sealed_paths() == ["checkpoint-10"]
    sealed = lines.of("sealed")[0]["checkpoint"]
    full = scan_directory(out).checkpoints[0]
    assert sealed["digest"] == full.digest and sealed["fileCount"] == 4
    assert (sealed["format"], sealed["step"], sealed["resumable"], sealed["complete"]) == ("huggingface", 10, True, True)
    assert sealed["sealReason"].startswith("complete: trainer_state.json")
    assert sealed["metrics"] == {"best_metric": 0.75, "eval_loss": 0.75, "loss": 1.5}


def test_whole_weight_files_alone_do_not_seal_a_directory_still_being_filled(tmp_path):
    out = tmp_path / "out"
    write(out / "step-1" / "model.safetensors", safetensors_bytes({"w": 32}))  # whole, but more may follow
    w, lines = watcher(out)
    ticks(w, 4)
    assert lines.sealed_paths() == []
    assert "no sign yet" in w.holds["step-1"]
    write(out / "step-1" / "optimizer.safetensors", safetensors_bytes({"m": 32}))
    ticks(w, 3)
    assert lines.sealed_paths() == []
    (out / "step-2").mkdir()  # the framework moved on to the next step
    w.tick()
    assert lines.sealed_paths() == ["step-1"]
    line = lines.of("sealed")[0]["checkpoint"]
    assert line["fileCount"] == 2 and "a newer step (2) appeared" in line["sealReason"]


def test_a_half_written_safetensors_file_holds_even_beside_a_newer_step(tmp_path):
    out = tmp_path / "out"
    whole = safetensors_bytes({"w": 4096})
    write(out / "step-1" / "model.safetensors", whole[:200])
    (out / "step-2").mkdir()
    w, lines = watcher(out)
    ticks(w, 3)
    assert lines.sealed_paths() == [] and "incomplete" in w.holds["step-1"]
    write(out / "step-1" / "model.safetensors", whole)
    ticks(w, 2)
    assert lines.sealed_paths() == ["step-1"]


def test_a_directory_renamed_into_place_is_sealed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    w, lines = watcher(out)
    write(out / "step-3.tmp" / "weights.bin", b"w" * 100)
    write(out / "step-3.tmp" / "state.json", "{}")
    w.tick()
    (out / "step-3.tmp").rename(out / "step-3")
    ticks(w, 2)
    assert lines.sealed_paths() == ["step-3"]
    assert lines.of("sealed")[0]["checkpoint"]["sealReason"] == "renamed into place from step-3.tmp"


def _back_in_time(*paths: Path) -> None:
    """Move mtimes a second back, so that the next metadata change (rename, chmod) is certainly
    later: the file system's clock is coarse, and an equal ctime is not "later"."""
    for path in paths:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10 ** 9))


def _grow_past(path: Path, moment_ns: int) -> None:
    """Append to a file until its mtime is not earlier than `moment_ns` (a writer still writing;
    a write in the same clock tick as the chmod is not known to be earlier either)."""
    with open(path, "ab") as f:
        while path.stat().st_mtime_ns < moment_ns:
            f.write(b"x" * 64)
            f.flush()


def test_a_directory_renamed_into_place_between_two_looks_is_sealed_by_its_ctime(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    w, lines = watcher(out)
    w.tick()
    tmp = out / "step-6.tmp"
    write(tmp / "default" / "shard-0.bin", b"w" * 100)  # nested, as Orbax's default/ or NeMo's weights/
    write(tmp / "state.json", "{}")
    _back_in_time(tmp / "default" / "shard-0.bin", tmp / "default", tmp / "state.json", tmp)
    tmp.rename(out / "step-6")  # the watcher never listed step-6.tmp
    ticks(w, 2)
    assert lines.sealed_paths() == ["step-6"]
    assert "its ctime is later than every change in it" in lines.of("sealed")[0]["checkpoint"]["sealReason"]


def test_a_rename_right_after_the_last_write_is_sealed_by_its_ctime(tmp_path):
    """The common writer: files into step-N.tmp, then a rename, all within one tick of the
    file system's coarse clock (the ctime equals the last write's mtime), between two looks."""
    out = tmp_path / "out"
    out.mkdir()
    w, lines = watcher(out)
    w.tick()
    write(out / "step-9.tmp" / "weights.bin", b"w" * 100)
    write(out / "step-9.tmp" / "state.json", "{}")
    (out / "step-9.tmp").rename(out / "step-9")
    ticks(w, 2)
    assert lines.sealed_paths() == ["step-9"]


def test_a_chmod_on_a_step_directory_still_being_written_is_not_a_rename(tmp_path):
    """A metadata change (chmod, chown, xattr) moves a directory's ctime as a rename does. The
    writer goes on in a nested directory, then pauses: two identical looks must not seal it."""
    out = tmp_path / "out"
    shard = out / "step-7" / "default" / "shard-0.bin"
    write(shard, b"w" * 100)
    w, lines = watcher(out)
    w.tick()  # listed as it is written in place
    _back_in_time(out / "step-7", out)  # made a while ago: the chmod does not touch the parent
    os.chmod(out / "step-7", 0o750)
    _grow_past(shard, (out / "step-7").stat().st_ctime_ns)
    ticks(w, 4)  # the writer pauses
    assert lines.sealed_paths() == []
    assert "no sign yet" in w.holds["step-7"]


def test_a_chmod_before_the_first_look_is_not_a_rename_while_a_nested_file_grows_after_it(tmp_path):
    """As above, but the watcher first lists the directory after the chmod (a restarted sidecar):
    a file in it changed after the directory's ctime, so the ctime was not a rename into place."""
    out = tmp_path / "out"
    shard = out / "step-8" / "weights" / "shard-0.bin"
    write(shard, b"w" * 100)
    _back_in_time(out / "step-8", out)
    os.chmod(out / "step-8", 0o750)
    _grow_past(shard, (out / "step-8").stat().st_ctime_ns)
    w, lines = watcher(out)
    ticks(w, 4)
    assert lines.sealed_paths() == []
    assert "no sign yet" in w.holds["step-8"]


def test_torch_dcp_metadata_is_its_completion_marker(tmp_path):
    out = tmp_path / "out"
    write(out / "step-4" / "__0_0.distcp", b"\0" * 100)
    w, lines = watcher(out)
    ticks(w, 3)
    assert lines.sealed_paths() == [] and ".metadata" in w.holds["step-4"]
    write(out / "step-4" / ".metadata", dcp_metadata_bytes(["model.w", "optim.state.w.exp_avg"],
                                                          [("__0_0.distcp", 0, 100)]))
    ticks(w, 2)
    assert lines.sealed_paths() == ["step-4"]
    line = lines.of("sealed")[0]["checkpoint"]
    assert (line["format"], line["resumable"]) == ("torch-dcp", True) and ".metadata" in line["sealReason"]


def test_orbax_commit_marker_in_a_container_of_steps(tmp_path):
    out = tmp_path / "out"
    item = out / "orbax" / "100" / "default"
    write(item / "_METADATA", json.dumps({"tree_metadata": {}}))
    write(item / "d" / "chunk", b"x" * 10)
    write(item / "manifest.ocdbt", ocdbt_bytes())
    w, lines = watcher(out)
    ticks(w, 3)
    assert lines.sealed_paths() == []
    write(out / "orbax" / "100" / "_CHECKPOINT_METADATA", json.dumps({"commit_timestamp_nsecs": 1}))
    ticks(w, 2)
    assert lines.sealed_paths() == ["orbax/100"]
    assert lines.of("sealed")[0]["checkpoint"]["step"] == 100


def test_a_directory_the_framework_rotates_away_before_sealing_is_forgotten(tmp_path):
    out = tmp_path / "out"
    write(out / "checkpoint-5" / "model.safetensors", safetensors_bytes({"w": 8}))
    w, lines = watcher(out)
    ticks(w, 2)
    assert "checkpoint-5" in w.holds
    for f in (out / "checkpoint-5").iterdir():
        f.unlink()
    (out / "checkpoint-5").rmdir()  # save_total_limit's rotation
    ticks(w, 2)
    w.finish()
    assert lines == [] and w.holds == {}


def test_the_end_of_the_training_containers_seals_what_is_there_incomplete_included(tmp_path):
    out = tmp_path / "out"
    trainer_files(out / "checkpoint-20", state=False)  # killed before trainer_state.json
    write(out / "step-7" / "data.bin", b"d")
    w, lines = watcher(out)
    w.tick()
    w.finish()
    by_path = {line["checkpoint"]["path"]: line["checkpoint"] for line in lines.of("sealed")}
    assert set(by_path) == {"checkpoint-20", "step-7"}
    assert by_path["checkpoint-20"]["complete"] is False
    assert by_path["checkpoint-20"]["sealReason"] == "the training containers exited"


def test_a_shared_output_is_not_sealed_by_one_pods_end(tmp_path):
    out = tmp_path / "out"
    write(out / "step-7" / "data.bin", b"d")
    w, lines = watcher(out, shared=True)
    w.finish()
    assert lines.sealed_paths() == []


def test_sealed_files_lose_their_write_bits_and_a_change_is_reported(tmp_path):
    out = tmp_path / "out"
    write(out / "step-1" / "weights.bin", b"w" * 10)
    write(out / "step-1" / "sub" / "more.bin", b"m")
    w, lines = watcher(out)
    w.tick()
    w.finish()
    assert lines.sealed_paths() == ["step-1"]
    assert lines.of("sealed")[0]["checkpoint"]["readOnly"] is True
    for p in [out / "step-1", out / "step-1" / "sub", out / "step-1" / "weights.bin", out / "step-1" / "sub" / "more.bin"]:
        assert stat.S_IMODE(p.stat().st_mode) & 0o222 == 0, p
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            (out / "step-1" / "weights.bin").write_bytes(b"x")
        return
    # Root ignores the bits (as a root training container would): the change is found.
    (out / "step-1" / "weights.bin").write_bytes(b"W" * 10)
    w.check_all()
    changed = lines.of("changed")
    assert len(changed) == 1 and changed[0]["path"] == "step-1" and changed[0]["found"] not in (None, changed[0]["digest"])
    assert "weights.bin changed" in changed[0]["message"]
    w.check_all()
    assert len(lines.of("changed")) == 1, "reported once"


def test_a_touched_but_unchanged_file_is_not_a_change(tmp_path):
    out = tmp_path / "out"
    write(out / "step-1" / "weights.bin", b"w")
    w, lines = watcher(out)
    w.finish()
    os.utime(out / "step-1" / "weights.bin", ns=(1, 1))
    w.check_all()
    assert lines.of("changed") == []


def test_state_resume_link_and_a_second_watcher_announces_without_resealing(tmp_path):
    out = tmp_path / "out"
    for step, optimizer in ((100, True), (200, True), (300, False)):
        write(out / f"step-{step}" / "model.safetensors", safetensors_bytes({"w": 8}))
        if optimizer:
            write(out / f"step-{step}" / "optimizer.pt", torch_zip_bytes({"state": {}, "param_groups": []}))
    w, lines = watcher(out)
    w.finish()
    assert sorted(lines.sealed_paths()) == ["step-100", "step-200", "step-300"]
    link = out / LIVE_DIR / "resume"
    assert os.readlink(link) == os.path.join("..", "step-200")  # the latest with optimizer state
    assert (link / "optimizer.pt").read_bytes() == (out / "step-200" / "optimizer.pt").read_bytes()
    assert not any(s.path == LIVE_DIR for s in scan_directory(out).skipped), "the state dir is not reported"
    assert [m.path for m in scan_directory(out).checkpoints] == ["step-100", "step-200", "step-300"]

    again, lines2 = watcher(out)
    again.announce()
    again.finish()
    assert sorted(line["checkpoint"]["path"] for line in lines2.of("sealed")) == ["step-100", "step-200", "step-300"]
    assert all(line["checkpoint"].get("announced") for line in lines2.of("sealed"))


def test_removal_requested_through_the_annotations_file(tmp_path):
    out = tmp_path / "out"
    for step in (1, 2):
        write(out / f"step-{step}" / "model.bin", str(step))
        write(out / f"step-{step}" / "optimizer.pt", torch_zip_bytes({"state": {}, "param_groups": []}))
    annotations = tmp_path / "meta" / "annotations"
    w, lines = watcher(out, annotations_file=str(annotations))
    w.finish()
    digests = {line["checkpoint"]["path"]: line["checkpoint"]["digest"] for line in lines.of("sealed")}
    assert os.readlink(out / LIVE_DIR / "resume").endswith("step-2")
    request = json.dumps([{"path": "step-2", "digest": digests["step-2"]},
                          {"path": "step-1", "digest": "sha256:" + "0" * 64}])  # not its digest: kept
    write(annotations, f'a="b"\n{REMOVE_ANNOTATION}={json.dumps(request)}\n')
    assert read_annotation_file(str(annotations))[REMOVE_ANNOTATION] == request
    w.tick()
    assert not (out / "step-2").exists() and (out / "step-1").exists()
    assert lines.of("removed") == [{"event": "removed", "path": "step-2", "digest": digests["step-2"]}]
    assert os.readlink(out / LIVE_DIR / "resume").endswith("step-1")
    w.tick()  # the same file again: nothing more to do
    assert len(lines.of("removed")) == 1


def test_sealed_uri_is_named_by_the_digest():
    assert sealed_uri("s3://b/p/ns/job-1234/", "step-1", "sha256:abc") == "s3://b/p/ns/job-1234/sealed/step-1/abc/"


SIGTERM_WHILE_STARTING = r"""
import importlib, os, signal, sys
from checkpoint_operator.cli import main
real = importlib.import_module
def import_module(name, *args, **kwargs):
    if name == "checkpoint_operator.agent.live_watch":
        os.kill(os.getpid(), signal.SIGTERM)  # the training container exited while the sidecar was starting
    return real(name, *args, **kwargs)
importlib.import_module = import_module
sys.exit(main(["agent", "watch", sys.argv[1]]))
"""


def test_a_sigterm_while_the_watcher_is_starting_still_seals_what_is_there(tmp_path):
    out = tmp_path / "out"
    trainer_files(out / "checkpoint-10", state=True)
    result = subprocess.run([sys.executable, "-c", SIGTERM_WHILE_STARTING, str(out)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    sealed = [line["checkpoint"] for line in lines if line["kind"] == "sealed"]
    assert [s["path"] for s in sealed] == ["checkpoint-10"]
    assert sealed[0]["sealReason"] == "the training containers exited"
