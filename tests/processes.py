"""What every server a test starts shares: it dies with the test process."""
from __future__ import annotations

import ctypes
import os
import signal
import threading
from typing import Callable


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn making a server die with the test process (Linux prctl PR_SET_PDEATHSIG): a killed
    or timed-out pytest leaves no server behind (a shared machine had dozens of orphan SeaweedFS,
    Azurite and git daemons). The signal is tied to the starting thread, so only a start from the
    main thread asks for it."""
    if not os.path.exists("/proc/self") or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    return preexec
