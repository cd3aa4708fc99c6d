"""local/pod_logs.py: a failed pod of a `local run` shows the end of its log and where the whole of
it is (issue 18 item 8d)."""

import io

from checkpoint_operator.local.pod_logs import LINE_CHARS, TAIL_LINES, PodFailureReporter, failed_containers, tail


def failed_pod(name="train-abc", containers=(("trainer", 1, "Error"),), uid="u1"):
    return {"metadata": {"name": name, "namespace": "default", "uid": uid},
            "status": {"phase": "Failed", "containerStatuses": [
                {"name": c, "state": {"terminated": {"exitCode": code, "reason": reason}}}
                for c, code, reason in containers]}}


def test_the_end_of_the_log_once_with_where_the_whole_log_is(tmp_path):
    log = "".join(f"line {i}\n" for i in range(100)) + "\x1b[31mred\x1b[0m\nValueError: boom\n"
    out = io.StringIO()
    reads = []

    def read_log(namespace, pod, container):
        reads.append((namespace, pod, container))
        return log
    reporter = PodFailureReporter(read_log, tmp_path / "logs", out)
    reporter.report([failed_pod(), failed_pod()])
    reporter.report([failed_pod()])  # told once
    text = out.getvalue()
    assert reads == [("default", "train-abc", "trainer")]
    assert text.startswith("pod train-abc failed: container trainer exited with code 1 (Error)\n")
    assert f"the last {TAIL_LINES} lines of its log:" in text
    printed = [line[4:] for line in text.splitlines() if line.startswith("  | ")]
    assert printed[-1] == "ValueError: boom" and printed[-2] == "\\x1b[31mred\\x1b[0m" and len(printed) == TAIL_LINES
    full = tmp_path / "logs" / "default" / "train-abc" / "trainer.log"
    assert f"full log: {full}" in text and full.read_text() == log


def test_lines_are_bounded_and_a_container_that_did_not_start_says_why(tmp_path):
    assert tail("x" * 10_000) == ["x" * LINE_CHARS + "..."]
    pod = {"metadata": {"name": "p", "namespace": "default", "uid": "u2"}, "status": {"phase": "Failed",
           "containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "ErrImagePull", "message": "no image"}}}]}}
    assert [c.describe() for c in failed_containers(pod)] == ["container c did not start (ErrImagePull: no image)"]
    out = io.StringIO()
    PodFailureReporter(lambda *a: "", tmp_path, out).report([pod])
    assert out.getvalue() == "pod p failed: container c did not start (ErrImagePull: no image)\n"


def test_a_log_that_cannot_be_read_is_said_and_the_run_goes_on(tmp_path):
    def gone(*_):
        raise RuntimeError("pods \"train-abc\" not found")
    out = io.StringIO()
    PodFailureReporter(gone, tmp_path, out).report([failed_pod()])
    assert "(its log could not be read: pods \"train-abc\" not found)" in out.getvalue()
