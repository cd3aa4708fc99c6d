"""Transfer progress on stderr: a bar on a terminal, otherwise a log line every few seconds."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Optional, TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """Thread-safe byte counter with a reporter thread. Use as a context manager."""

    def __init__(self, label: str, total: int, *, stream: Optional[TextIO] = None,
                 interval: Optional[float] = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        default_interval = 0.2 if self.tty else float(os.environ.get("CKPT_PROGRESS_INTERVAL", "5"))
        self.interval = interval if interval is not None else default_interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread: Optional[threading.Thread] = None

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n

    def add_total(self, n: int) -> None:
        with self._lock:
            self.total += n

    def __enter__(self) -> "Progress":
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if exc_type is None:
            self._report(final=True)
        elif self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def rate(self) -> float:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        return self.done / elapsed

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._report(final=False)

    def _report(self, final: bool) -> None:
        done, total, rate = self.done, self.total, self.rate()
        try:
            if self.tty:
                width = 30
                frac = done / total if total else 1.0
                bar = "#" * int(width * frac) + "-" * (width - int(width * frac))
                end = "\n" if final else ""
                self.stream.write(f"\r{self.label} [{bar}] {frac * 100:5.1f}% {human_bytes(done)}/"
                                  f"{human_bytes(total)} {human_bytes(rate)}/s{end}")
            else:
                word = "done" if final else "progress"
                self.stream.write(f"{self.label}: {word} {human_bytes(done)} of {human_bytes(total)} "
                                  f"({done} of {total} bytes) at {human_bytes(rate)}/s\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed: progress is best effort
