"""Making sure written bytes are on the disk before a volume snapshot is taken of them.

A CSI VolumeSnapshot is crash-consistent: it holds what the storage has, not what a node still
keeps in its page cache. Before the operator takes one, the agent that read the data (the end-of-job
snapshot pod, or the live-sealing sidecar once it has sealed a directory) calls syncfs(2) on the
filesystem that holds it: every dirty page of that filesystem, whoever wrote it, reaches the disk
(on Kubernetes a pod's mount of a claim is a bind mount of the node's one mount of the volume, so
a read-only mount syncs the writers' pages too). Its result says so (``"synced": "syncfs"``), and
the operator takes no snapshot of data whose result does not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

SYNCED = "syncfs"  # logic/volume_snapshots.SYNCED: what the operator requires


def sync_filesystem(path: str) -> str:
    """syncfs(2) on the filesystem that holds `path`; returns what was done (`syncfs`). Raises
    OSError when the kernel refuses (the caller then reports nothing synced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY if os.path.isdir(path) else os.O_RDONLY)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs({path}): {os.strerror(error)}")
    finally:
        os.close(fd)
    return SYNCED
