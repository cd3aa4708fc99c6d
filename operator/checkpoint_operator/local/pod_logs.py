"""When a pod of a `local run` fails, show the end of its log, as `kubectl logs --tail` would,
and keep the whole of it in a file (issue 18 item 8d).

Each failed container's log (what the kubelet kept: the end of its stdout, then of its stderr)
is written once to `<state-dir>/logs/<namespace>/<pod>/<container>.log`, and its last lines are
printed: at most TAIL_LINES lines of at most LINE_CHARS characters, control characters escaped
(a log is the pod's output: it must not drive the terminal).
"""

from __future__ import annotations

import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

TAIL_LINES = 20
LINE_CHARS = 500
MAX_REPORTED = 50  # failed pods told about in one run (a crash-looping Job makes many)


@dataclass(frozen=True)
class FailedContainer:
    name: str
    exit_code: Optional[int]
    reason: str  # Error, OOMKilled, ErrImagePull, ...
    message: str = ""

    def describe(self) -> str:
        if self.exit_code is not None:
            return f"container {self.name} exited with code {self.exit_code} ({self.reason})"
        return f"container {self.name} did not start ({self.reason}{': ' + self.message if self.message else ''})"


def failed_containers(pod: dict[str, Any]) -> list[FailedContainer]:
    """The containers (init containers first) that ended with a non-zero code or could not start."""
    status = pod.get("status") or {}
    found = []
    for item in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        state = item.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated and terminated.get("exitCode") not in (0, None):
            found.append(FailedContainer(item.get("name", "?"), terminated["exitCode"],
                                         terminated.get("reason") or "Error"))
        elif waiting and waiting.get("reason") not in (None, "PodInitializing", "ContainerCreating"):
            found.append(FailedContainer(item.get("name", "?"), None, waiting["reason"], waiting.get("message", "")))
    return found


def safe_line(line: str) -> str:
    """A log line as it may reach a terminal: control characters (but tab) escaped, cut to LINE_CHARS."""
    out = []
    for ch in line[:LINE_CHARS]:
        if ch != "\t" and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out) + ("..." if len(line) > LINE_CHARS else "")


def tail(text: str, lines: int = TAIL_LINES) -> list[str]:
    return [safe_line(line) for line in text.splitlines()[-lines:]]


class PodFailureReporter:
    """Tells once about each failed pod: why, the end of each failed container's log, and where
    the whole log is."""

    def __init__(self, read_log: Callable[[str, str, str], str], logs_dir: Path, out: TextIO = sys.stderr) -> None:
        self.read_log = read_log  # (namespace, pod, container) -> the log
        self.logs_dir = logs_dir
        self.out = out
        self.seen: set[str] = set()

    def report(self, pods: list[dict[str, Any]]) -> None:
        for pod in pods:
            meta = pod.get("metadata") or {}
            uid = meta.get("uid", "")
            if (pod.get("status") or {}).get("phase") != "Failed" or uid in self.seen:
                continue
            self.seen.add(uid)
            if len(self.seen) > MAX_REPORTED:
                if len(self.seen) == MAX_REPORTED + 1:
                    print(f"(more pods failed: their logs are under {self.logs_dir})", file=self.out, flush=True)
                continue
            self._report_pod(meta.get("namespace", ""), meta.get("name", ""), pod)

    def _report_pod(self, namespace: str, name: str, pod: dict[str, Any]) -> None:
        failed = failed_containers(pod)
        status = pod.get("status") or {}
        if not failed:
            why = status.get("message") or status.get("reason") or "no container failed"
            print(f"pod {name} failed: {safe_line(why)}", file=self.out, flush=True)
            return
        for container in failed:
            print(f"pod {name} failed: {container.describe()}", file=self.out, flush=True)
            if container.exit_code is None:
                continue
            try:
                log = self.read_log(namespace, name, container.name)
            except Exception as exc:  # noqa: BLE001 - the pod may be gone already: say so, go on
                print(f"  (its log could not be read: {safe_line(str(exc))})", file=self.out, flush=True)
                continue
            path = self.logs_dir / namespace / name / f"{container.name}.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(log)
            lines = tail(log)
            if lines:
                print(f"  the last {len(lines)} lines of its log:", file=self.out)
                for line in lines:
                    print(f"  | {line}", file=self.out)
            else:
                print("  (its log is empty)", file=self.out)
            print(f"  full log: {path}", file=self.out, flush=True)
