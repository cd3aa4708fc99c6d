"""Container logs as a kubelet keeps and serves them, for the emulated API (local/emulator.py).

Each line is stamped when it arrives (RFC 3339 with nanoseconds, as the CRI log format). A log
keeps at most `MAX_LOG_BYTES`: older lines go first, as a kubelet rotates a container's log
(containerd's default containerLogMaxSize is 10 MiB; `kubectl logs` reads the current file only).

A read honours what the real API passes to the kubelet (pkg/kubelet/kuberuntime/logs/logs.go):
`tailLines` (the last N lines), `sinceTime`/`sinceSeconds` (lines at or after it; the API server
passes sinceTime on in whole seconds, so it is cut to the second here too), `timestamps`
(each line prefixed with its stamp and a space) and `limitBytes` (the output cut there, in the
middle of a line if need be; the prefixes count). A reader of the real API must therefore
handle a cut last line, repeated lines within the second of sinceTime, and rotated beginnings.
"""

from __future__ import annotations

import time
from collections import deque
from datetime import datetime, timezone
from typing import Mapping, Optional

MAX_LOG_BYTES = 10 * 1024 * 1024


class LogQueryError(ValueError):
    """A parameter of a log read that the API server would refuse (400)."""


def stamp(ns: int) -> str:
    """RFC 3339 with nanoseconds, trailing zeros dropped (Go's time.RFC3339Nano)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{base}{fraction.rstrip('.')}Z"


class ContainerLog:
    """The lines of one container's log, each with the nanosecond it arrived."""

    def __init__(self) -> None:
        self._lines: deque[tuple[int, str]] = deque()
        self._bytes = 0
        self._last_ns = 0

    def _now(self) -> int:
        # Strictly increasing: two lines never share a stamp (a real runtime stamps each line as read).
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return self._last_ns

    def append(self, text: str) -> None:
        """Add output; each line gets its own stamp. Text that continues a line the last append
        left open (no newline yet) joins it, as a kubelet joins a runtime's partial lines."""
        lines = _lines_of(text)
        if lines and self._lines and not self._lines[-1][1].endswith("\n"):
            ns, open_line = self._lines.pop()
            self._lines.append((ns, open_line + lines[0]))
            self._bytes += len(lines[0].encode("utf-8", "replace"))
            lines = lines[1:]
        for line in lines:
            size = len(line.encode("utf-8", "replace"))
            self._lines.append((self._now(), line))
            self._bytes += size
        while self._bytes > MAX_LOG_BYTES and len(self._lines) > 1:
            _, dropped = self._lines.popleft()
            self._bytes -= len(dropped.encode("utf-8", "replace"))

    def replace(self, text: str) -> None:
        self._lines.clear()
        self._bytes = 0
        self.append(text)

    @property
    def text(self) -> str:
        return "".join(line for _, line in self._lines)

    def read(self, params: Mapping[str, str]) -> str:
        """What GET .../pods/NAME/log answers for these query parameters."""
        limit = _positive(params, "limitBytes")
        tail = _positive(params, "tailLines", allow_zero=True)
        since_ns = _since(params)
        with_stamps = params.get("timestamps") in ("true", "1", "True")
        lines = list(self._lines) if tail is None else list(self._lines)[-tail:] if tail else []
        out: list[str] = []
        size = 0
        for ns, line in lines:
            if since_ns is not None and ns < since_ns:
                continue
            text = f"{stamp(ns)} {line}" if with_stamps else line
            out.append(text)
            size += len(text)
            if limit is not None and size >= limit:
                break
        body = "".join(out)
        if limit is not None:
            encoded = body.encode("utf-8", "replace")
            if len(encoded) > limit:
                body = encoded[:limit].decode("utf-8", "ignore")
        return body


def _lines_of(text: str) -> list[str]:
    """Lines as a kubelet cuts them: at "\n" only (each kept with it; a last one may have none)."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    return lines + [parts[-1]] if parts[-1] else lines


def _positive(params: Mapping[str, str], key: str, allow_zero: bool = False) -> Optional[int]:
    raw = params.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise LogQueryError(f"{key}: {raw!r} is not an integer") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise LogQueryError(f"{key}: must be greater than {'or equal to ' if allow_zero else ''}0")
    return value


def _since(params: Mapping[str, str]) -> Optional[int]:
    if params.get("sinceTime"):
        raw = params["sinceTime"]
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise LogQueryError(f"sinceTime: {raw!r} is not an RFC 3339 time") from None
        if moment.tzinfo is None:
            raise LogQueryError(f"sinceTime: {raw!r} has no time zone")
        return int(moment.timestamp()) * 1_000_000_000  # the API server passes it on in whole seconds
    seconds = _positive(params, "sinceSeconds")
    if seconds is not None:
        return (time.time_ns() // 1_000_000_000 - seconds) * 1_000_000_000
    return None
