"""`checkpoint-operator local run`: the operator, an emulated API and a host 'kubelet' in one process."""

from __future__ import annotations

import argparse
import importlib.util
import sys


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
                     help="keeps objects and data between runs (default: ./.local-state)")
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
    run.add_argument("--fresh", action="store_true",
                     help="start from an empty state: delete what an earlier run kept in --state-dir first")
    run.add_argument("--timeout", type=float, default=600, help="seconds to wait for everything to settle")
    run.add_argument("--serve", action="store_true",
                     help="then keep the cluster and the operator running (until Ctrl-C), reachable with kubectl and "
                          "kubectl ckpt through <state-dir>/kubeconfig")
    run.set_defaults(func=_run_local)


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
    return local_run(args)
