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


def test_the_end_of_the_training_containers_seals_what_is_there_but_leaves_an_incomplete_save_writable(tmp_path):
    """What the training containers left is sealed when they exit; a save the crash cut short (known
    incomplete) is not: sealed read-only, the retry that resumes from the latest complete one got
    PermissionError writing that step again, every retry (hostile8 R1). The end-of-job snapshot
    records it as incomplete if it is still there then."""
    out = tmp_path / "out"
    trainer_files(out / "checkpoint-20", state=False)  # killed before trainer_state.json
    write(out / "step-7" / "data.bin", b"d")
    w, lines = watcher(out)
    w.tick()
    w.finish()
    by_path = {line["checkpoint"]["path"]: line["checkpoint"] for line in lines.of("sealed")}
    assert set(by_path) == {"step-7"}
    assert by_path["step-7"]["sealReason"] == "the training containers exited"
    assert "left writable for a retry" in w.holds["checkpoint-20"]
    for f in (out / "checkpoint-20").rglob("*"):
        assert os.access(f, os.W_OK), f


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


def test_sealed_uri_of_the_root_files_has_no_dot_segment():
    """The root files' checkpoint (path "."): a `/./` key segment is refused by S3 stores (hostile5 H5)."""
    uri = sealed_uri("s3://b/p/ns/job-1234/", ".", "sha256:abc")
    assert uri == "s3://b/p/ns/job-1234/sealed/.root/abc/"
    assert "/./" not in uri and "//" not in uri.split("://", 1)[1]


def _forge_record(out: Path, source: str, path: str) -> None:
    """What a trainer can do to the watcher's state file on its own output volume (hostile5 H1):
    add a copy of a sealed checkpoint's record under another path, with that path's file stats."""
    state = out / LIVE_DIR / "sealed.json"
    records = json.loads(state.read_text())
    forged = json.loads(json.dumps(next(r for r in records if r["path"] == source)))
    forged["path"], forged["step"] = path, 99
    forged["summary"]["path"], forged["summary"]["step"] = path, 99
    forged["stats"] = []
    for rel, *_ in next(r for r in records if r["path"] == source)["stats"]:
        st = os.stat(out / path / rel)
        forged["stats"].append([rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    state.write_text(json.dumps(records + [forged]))


def test_a_forged_state_record_is_never_announced_with_a_digest_its_bytes_do_not_have(tmp_path):
    """hostile5 H1: a record the trainer wrote into `.ckpt-live/sealed.json` (step-1's digest under
    path step-99, which holds other bytes) made a restarted watcher announce step-99 as sealed with
    step-1's digest. Every record is hashed again at start: step-99 is reported as changed (its bytes
    are not that digest), step-1 is announced again with the digest of its bytes."""
    out = tmp_path / "out"
    write(out / "step-1" / "model.safetensors", safetensors_bytes({"w": 64}))
    w, lines = watcher(out)
    w.finish()
    step1 = lines.of("sealed")[0]["checkpoint"]
    evil = safetensors_bytes({"w": 64}).replace(b"\0" * 8, b"EVILEVIL")
    assert len(evil) == (out / "step-1" / "model.safetensors").stat().st_size
    write(out / "step-99" / "model.safetensors", evil)
    _forge_record(out, "step-1", "step-99")

    again, lines2 = watcher(out)
    again.announce()
    announced = {line["checkpoint"]["path"]: line["checkpoint"] for line in lines2.of("sealed")}
    assert set(announced) == {"step-1"}, announced
    assert announced["step-1"]["digest"] == step1["digest"] and announced["step-1"]["announced"] is True
    changed = lines2.of("changed")
    assert [(c["path"], c["digest"]) for c in changed] == [("step-99", step1["digest"])]
    assert changed[0]["found"] == scan_directory(out / "step-99", single=True).checkpoints[0].digest
    again.finish()
    assert all(line["checkpoint"]["digest"] != step1["digest"] for line in lines2.of("sealed")
               if line["checkpoint"]["path"] == "step-99")


def test_a_state_record_naming_a_path_outside_the_output_is_ignored(tmp_path):
    out = tmp_path / "out"
    write(out / "step-1" / "model.safetensors", safetensors_bytes({"w": 64}))
    write(tmp_path / "elsewhere" / "model.safetensors", safetensors_bytes({"w": 64}))
    w, lines = watcher(out)
    w.finish()
    state = out / LIVE_DIR / "sealed.json"
    records = json.loads(state.read_text())
    for path in ("../elsewhere", ".ckpt-live", "a/b/c"):
        records.append({**records[0], "path": path})
    state.write_text(json.dumps(records))
    again, lines2 = watcher(out)
    assert set(again.sealed) == {"step-1"}
    again.announce()
    assert [line["checkpoint"]["path"] for line in lines2.of("sealed")] == ["step-1"]
    assert stat.S_IMODE((tmp_path / "elsewhere").stat().st_mode) & 0o200, "never made read-only"


def test_a_sealed_directory_that_cannot_be_listed_is_a_change_at_once(tmp_path, monkeypatch):
    """hostile5 H2: the trainer (its owner) made a sealed directory unlistable (chmod 0o311) and
    added a file to it; the per-look check found the sealed files' stats unchanged and took the
    walk's PermissionError for "nothing added". Root ignores the mode bits, so the kernel's answer
    to the training container's user is given here by os.scandir for that directory."""
    out = tmp_path / "out"
    write(out / "step-1" / "model.safetensors", safetensors_bytes({"w": 64}))
    w, lines = watcher(out)
    w.finish()
    assert lines.sealed_paths() == ["step-1"] and lines.of("changed") == []
    hidden = str(out / "step-1")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == hidden:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    w.check_all()
    changed = lines.of("changed")
    assert [c["path"] for c in changed] == ["step-1"]
    assert "its directory cannot be listed (Permission denied)" in changed[0]["message"]
    assert "removed" not in changed[0]["message"]


def test_sealed_change_decisions():
    from checkpoint_operator.agent.live_sealing import Observed, sealed_change
    recorded = [("a.bin", 10, 1, 2, 3), ("sub/b.bin", 5, 1, 2, 4)]
    same = {"a.bin": (10, 1, 2, 3), "sub/b.bin": (5, 1, 2, 4)}
    assert sealed_change(recorded, Observed(same, frozenset(same))) is None
    added = sealed_change(recorded, Observed(same, frozenset(same) | {"sub/c.json"}))
    assert added is not None and added.message == "sub/c.json was added" and not added.final
    moved = sealed_change(recorded, Observed({**same, "a.bin": (10, 9, 2, 3)}, frozenset(same)))
    assert moved is not None and moved.message == "a.bin changed" and not moved.final
    gone = sealed_change(recorded, Observed({**same, "a.bin": None}, frozenset(same)))
    assert gone is not None and gone.message == "a.bin is missing"
    # Unlistable: a change whatever the stats say, and final (hashing cannot clear it).
    hidden = sealed_change(recorded, Observed(same, frozenset(), unlistable="sub cannot be listed (Permission denied)"))
    assert hidden is not None and hidden.final and hidden.message.startswith("sub cannot be listed")


@pytest.mark.parametrize("path, ok", [("step-1", True), ("ckpts/step-1", True), ("", False), (".", False),
                                      ("..", False), ("../x", False), (".ckpt-live", False), ("a/b/c", False),
                                      ("ckpts/.hidden", False), ("a//b", False)])
def test_paths_of_state_records(path, ok):
    from checkpoint_operator.agent.live_sealing import record_path_problem
    assert (record_path_problem(path) is None) is ok


def test_an_unlistable_sealed_directory_is_reported_at_the_next_look_and_stops_no_other_seal(tmp_path, monkeypatch):
    """hostile5 H2 as the run showed it: the output's listing failed as a whole on the unlistable
    step directory (`cannot list OUTPUT: Permission denied` at every look), so neither the stat
    checks (after the listing) nor any other directory's seal ran until the job ended, and a
    consumer read the added file meanwhile. Failed before."""
    out = tmp_path / "out"
    write(out / "step-1" / "model.safetensors", safetensors_bytes({"w": 64}))
    w, lines = watcher(out)
    w.finish()
    w = Watcher(str(out), emit=w._emit)  # the same run, looking on
    hidden = str(out / "step-1")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == hidden:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    write(out / "step-2" / "model.safetensors", safetensors_bytes({"w": 32}))
    write(out / "step-3" / "model.safetensors", safetensors_bytes({"w": 16}))  # step-2 is sealed by a newer step
    w.tick()
    assert [c["path"] for c in lines.of("changed")] == ["step-1"]
    assert not [line for line in lines.of("warning") if "cannot list" in line["message"]]
    w.tick()
    w.tick()
    assert "step-2" in lines.sealed_paths()


def test_a_restarted_watcher_never_points_the_resume_link_back_while_it_hashes_again(tmp_path):
    """Records are sealed again one by one at start (H1): the one the resume link names comes
    first, so a retried trainer reading the link meanwhile never gets an older step."""
    out = tmp_path / "out"
    for step in (100, 200, 300):
        write(out / f"step-{step}" / "model.safetensors", safetensors_bytes({"w": 8}))
        write(out / f"step-{step}" / "optimizer.pt", torch_zip_bytes({"state": {}, "param_groups": []}))
    w, _ = watcher(out)
    w.finish()
    link = out / LIVE_DIR / "resume"
    assert os.readlink(link).endswith("step-300")
    seen = []
    again = Watcher(str(out), emit=lambda event: seen.append(os.readlink(link)))
    again.announce()
    assert len(seen) == 3 and all(target.endswith("step-300") for target in seen), seen


def test_a_removal_that_fails_is_said_with_the_directory_it_names(tmp_path, monkeypatch):
    """The operator counts the removals a sidecar could not do (logic/live_sealing.removal_annotation puts
    them behind the others): the warning names the directory and digest, not only in its text."""
    from checkpoint_operator.agent import fstree
    out = tmp_path / "out"
    write(out / "step-1" / "model.bin", "1")
    annotations = tmp_path / "meta" / "annotations"
    w, lines = watcher(out, annotations_file=str(annotations))
    w.finish()
    digest = lines.of("sealed")[0]["checkpoint"]["digest"]
    monkeypatch.setattr(fstree, "remove_tree", lambda *a, **k: None)  # as a root trainer's files: left there
    write(annotations, f'{REMOVE_ANNOTATION}={json.dumps(json.dumps([{"path": "step-1", "digest": digest}]))}\n')
    w.tick()
    (warning,) = [line for line in lines.of("warning") if "step-1" in line["message"]]
    assert warning["notRemoved"] == {"path": "step-1", "digest": digest}
    assert warning["message"].startswith("could not remove step-1 (retention released it): ")
    assert not lines.of("removed")


def test_a_retired_name_holding_other_bytes_is_said_as_not_removed(tmp_path):
    """Other bytes under a retired name (sealed again since, or found by a restarted sidecar): not
    removed, and said with the directory it names, so the operator counts it and stops asking after a
    few (before, nothing was said: it kept its place at the head of the removal annotation)."""
    out = tmp_path / "out"
    write(out / "step-1" / "model.bin", "1")
    annotations = tmp_path / "meta" / "annotations"
    w, lines = watcher(out, annotations_file=str(annotations))
    w.finish()
    other = "sha256:" + "0" * 64
    write(annotations, f'{REMOVE_ANNOTATION}={json.dumps(json.dumps([{"path": "step-1", "digest": other}]))}\n')
    w.tick()
    (warning,) = [line for line in lines.of("warning") if "step-1" in line["message"]]
    assert warning["notRemoved"] == {"path": "step-1", "digest": other}
    assert "other bytes" in warning["message"] and (out / "step-1" / "model.bin").exists()
    restarted, again = watcher(out, annotations_file=str(annotations))  # its record lost: the bytes decide
    restarted.sealed.clear()
    restarted.tick()
    assert [line["notRemoved"] for line in again.of("warning") if line.get("notRemoved")] == \
        [{"path": "step-1", "digest": other}]
    assert (out / "step-1" / "model.bin").exists() and not again.of("removed")
