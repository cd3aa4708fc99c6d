"""`checkpoint-operator local run`: the operator, an emulated API and a host 'kubelet' in one process."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import threading
import time


def add_local_parser(sub: argparse._SubParsersAction) -> None:
    local = sub.add_parser("local", help="try training code against the checkpoint contract without a cluster")
    cmds = local.add_subparsers(dest="local_command", required=True, metavar="LOCAL_COMMAND")
    run = cmds.add_parser(
        "run", help="apply manifests to an emulated cluster and run them on this machine",
        description="Start an emulated Kubernetes API, a local kubelet and the real operator; apply the manifests "
                    "in order; wait until every TrainingJob has finished and every Checkpoint has settled; print "
                    "them. With a container engine (podman or docker) every pod runs as containers of its images, "
                    "read-only mounts enforced; with the process runtime, pod commands run as host processes in a "
                    "view of the pod's mounts (images ignored, nothing isolated). The first line of output says "
                    "which runtime and why. A development aid, not a runtime.")
    run.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                     help="manifest file or directory (repeatable; applied in order)")
    run.add_argument("--state-dir", default=".local-state",
                     help="keeps objects, volumes and the logs of failed pods between runs (default: ./.local-state; "
                          "see --fresh)")
    run.add_argument("-o", "--output", choices=["table", "json"], default="table")
    run.add_argument("--runtime", choices=["process", "podman", "docker"], default=None,
                     help="how pods run (default: podman or docker when one is installed and runs the agent image, "
                          "else process)")
    run.add_argument("--agent-image", default=None, metavar="IMAGE",
                     help="image of the operator's agent pods with a container engine "
                          "(default: localhost/checkpoint-operator:dev, built by e2e/image/build.sh)")
    run.add_argument("--store", choices=["volume", "s3"], default="volume",
                     help="where checkpoints live: volume (claims, default) or s3 (SeaweedFS started on 127.0.0.1 "
                          "with its data in <state-dir>/s3/, when `weed` is on PATH; or --s3-endpoint/--s3-bucket)")
    run.add_argument("--s3-endpoint", default=None, metavar="URL",
                     help="--store s3: use this S3-compatible store instead of starting SeaweedFS (credentials: "
                          "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
    run.add_argument("--s3-bucket", default=None, metavar="NAME",
                     help="--store s3: the bucket (default: checkpoints; made when missing)")
    run.add_argument("--timeout", type=_seconds, default=600, metavar="SECONDS",
                     help="how long to wait for every TrainingJob to finish and every Checkpoint to settle (default "
                          "600); past it, the tables show where each one is and the exit code is 1. A job that can "
                          "never finish (an input nothing makes, a cycle, ...) is reported at once and does not hold "
                          "the run")
    run.add_argument("--fresh", action="store_true",
                     help="start clean: remove what earlier runs left in the state directory (objects, volumes, "
                          "logs) first; refused for a directory that holds anything else")
    run.add_argument("--nodes", type=_node_count, default=1, metavar="N",
                     help="nodes of the local cluster (default 1): pods are scheduled onto them, and a ReadWriteOnce "
                          "volume of the block StorageClasses is attached to one node at a time, as on EKS, GKE, AKS")
    run.add_argument("--storage-class", default=None, metavar="NAME",
                     help="StorageClass of output and import volumes (the operator's storage.storageClassName): "
                          "standard (the default: a shared filesystem, every access mode), block (ReadWriteOnce "
                          "block devices with volume snapshots) or block-multireader (ReadOnlyMany too)")
    run.add_argument("--volume-snapshot-class", default=None, metavar="NAME",
                     help="take a VolumeSnapshot of each output with this VolumeSnapshotClass and give each consumer a "
                          "volume restored from it (the operator's storage.volume.snapshotClassName; the local "
                          "cluster's class is block-snapshots, for the block StorageClasses)")
    run.add_argument("--serve", action="store_true",
                     help="then keep the cluster and the operator running (until Ctrl-C), reachable with kubectl and "
                          "kubectl ckpt through <state-dir>/kubeconfig")
    run.set_defaults(func=_run_local)


def _node_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= 64:
        raise argparse.ArgumentTypeError(f"--nodes {text}: a whole number from 1 to 64")
    return count


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


# What `pip install 'checkpoint-operator[local]'` adds (pyproject.toml), by import name.
LOCAL_EXTRA_MODULES = ("kmock", "cel", "jsonpatch")


def _run_local(args: argparse.Namespace) -> int:
    # Checked before anything is imported: local_run imports what each step needs as it goes.
    missing = [name for name in LOCAL_EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        print(f"error: local mode needs the 'local' extra (not installed: {', '.join(missing)}): "
              "pip install 'checkpoint-operator[local]' (from a checkout: pip install -e '.[local]')",
              file=sys.stderr)
        return 2
    from checkpoint_operator.local.run import local_run
    code = local_run(args)
    exit_even_if_blocked(code)
    return code


BLOCKED_THREADS_GRACE = 5.0  # seconds the run's threads get to end once it has stopped what it started


def exit_even_if_blocked(code: int) -> None:
    """The run has stopped what it started and said why it ended (--timeout included); a thread
    still blocked in a system call (a kubelet thread in open() of a FIFO, hostile4 D13) would keep
    the interpreter from exiting for good: after a short grace, the process exits anyway."""
    deadline = time.monotonic() + BLOCKED_THREADS_GRACE
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    blocked = [t.name for t in threading.enumerate()
               if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if blocked:
        print(f"warning: {len(blocked)} thread(s) still blocked ({', '.join(blocked[:5])}): exiting anyway",
              file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
