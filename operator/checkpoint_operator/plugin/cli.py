"""The command line of `kubectl ckpt ...` and `checkpoint-operator ckpt ...` (one definition).

kubectl plugin conventions: -n/--namespace, --context, --kubeconfig, -o json|yaml|wide,
anywhere on the line; exit 0 done, 1 failed (one `error:` line naming the object), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, TextIO

DESCRIPTION = ("Checkpoints from the command line: list them (and the catalog), trace their lineage, verify their "
               "data where it lives, pull them to a directory, push a directory as a new Checkpoint, see what they "
               "cost (du).")


def _common_flags() -> argparse.ArgumentParser:
    """Flags every command takes, before or after it (SUPPRESS: a later level never resets them)."""
    common = argparse.ArgumentParser(add_help=False)
    s = argparse.SUPPRESS
    common.add_argument("-n", "--namespace", default=s, help="the namespace (default: the context's, else default)")
    common.add_argument("--context", default=s, help="the kubeconfig context to use")
    common.add_argument("--kubeconfig", default=s, help="path of the kubeconfig (default: $KUBECONFIG, ~/.kube/config)")
    common.add_argument("-o", "--output", default=s, choices=["json", "yaml", "wide"],
                        help="json or yaml: the objects; wide: more columns (ls)")
    return common


def add_commands(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """The commands, under a parser made with `parents=[common]` (the flags also after a command)."""
    from checkpoint_operator.agent.formats import FORMATS  # light: the agent imports it anyway
    cmds = parser.add_subparsers(dest="ckpt_command", required=True, metavar="COMMAND")

    ls = cmds.add_parser("ls", parents=[common], help="list Checkpoints",
                         description="List the Checkpoints of the namespace with phase, format, step, size, the "
                                     "jobs using them (USED-BY), what made them (PRODUCER) and age.")
    ls.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    ls.add_argument("--job", metavar="NAME", help="only the Checkpoints written by this TrainingJob")
    ls.add_argument("--catalog", action="store_true",
                    help="the catalog: the ClusterCheckpoints every namespace may use ({clusterCheckpoint: NAME}), "
                         "with license and source (-A lists them too, after every namespace's Checkpoints)")

    du = cmds.add_parser("du", parents=[common], help="bytes stored against bytes referenced, per namespace",
                         description="For the namespace (-A: each namespace): REFERENCED, the total size of its Ready "
                                     "Checkpoints; STORED, what the store holds for it (s3: a listing of the "
                                     "namespace's prefix with your credentials; volumes: the capacity of the claims "
                                     "holding its Checkpoints and its copies of catalog entries); SAVED, the "
                                     "difference (files stored once for several Checkpoints). --catalog adds the "
                                     "catalog's row.")
    du.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace, and the catalog")
    du.add_argument("--catalog", action="store_true", help="add the catalog (ClusterCheckpoints)")
    du.add_argument("--endpoint-url", default=None, help="s3 store: the S3 endpoint (default AWS_ENDPOINT_URL)")

    lineage = cmds.add_parser("lineage", parents=[common], help="the parents and descendants of a Checkpoint",
                              description="The tree of parents (the inputs of the job that wrote it, recursively) "
                                          "and of descendants (Checkpoints written by jobs that used it), across "
                                          "jobs, with their digests. One LIST of the namespace.")
    lineage.add_argument("name", help="the Checkpoint")

    verify = cmds.add_parser("verify", parents=[common], help="re-read a Checkpoint's data and check every file",
                             description="Ask the operator to re-read the data where it lives and check every file "
                                         "against the manifest; wait, print the result and record it as the "
                                         "condition Verified. Exit 0 when verified.")
    verify.add_argument("name")
    verify.add_argument("--local", action="store_true",
                        help="s3 store: read the objects yourself with your AWS credentials (not recorded)")
    verify.add_argument("--endpoint-url", default=None, help="--local: the S3 endpoint (default AWS_ENDPOINT_URL)")
    verify.add_argument("--timeout", type=float, default=600, help="seconds to wait for the operator (default 600)")

    pull = cmds.add_parser("pull", parents=[common], help="download a Checkpoint into a directory, verified",
                           description="Download NAME into DIR, every file checked against the manifest and the "
                                       "digest pinned (s3 store: from the bucket with your credentials; volume "
                                       "store: streamed out of a pod the operator starts). A rerun of an "
                                       "interrupted s3 pull resumes it. DIR must be new, empty, or hold only an earlier pull of the same checkpoint "
                                       "(see --clean).")
    pull.add_argument("name")
    pull.add_argument("dir")
    pull.add_argument("--endpoint-url", default=None, help="s3 store: the S3 endpoint (default AWS_ENDPOINT_URL)")
    pull.add_argument("--timeout", type=float, default=600, help="seconds to wait for the operator's pod")
    pull.add_argument("--clean", action="store_true",
                      help="remove what DIR holds that is not part of this checkpoint (other files, directories, "
                           "links) before pulling, only in a directory a pull wrote (its manifest, parts or files); "
                           "without it a pull into such a directory is refused, naming them")

    push = cmds.add_parser("push", parents=[common], help="push a directory as a new Checkpoint (an upload)",
                           description="Create the upload Checkpoint NAME (or take the one waiting for this data), "
                                       "send DIR's files (s3 store: into the bucket with your credentials; volume "
                                       "store: streamed into a pod the operator starts), then wait until the "
                                       "operator has verified them and the Checkpoint is Ready. An interrupted "
                                       "push resumes when run again.")
    push.add_argument("dir")
    push.add_argument("--name", required=True, help="the Checkpoint's name")
    push.add_argument("--format", choices=FORMATS, default=None, help="the format (default: detected from the files)")
    push.add_argument("--description", default=None, help="spec.description")
    push.add_argument("--endpoint-url", default=None, help="s3 store: the S3 endpoint (default AWS_ENDPOINT_URL, "
                                                           "else the operator's)")
    push.add_argument("--timeout", type=float, default=600,
                      help="seconds to wait for the operator at each step (not counting the transfer itself)")


def add_ckpt_parser(sub: argparse._SubParsersAction) -> None:
    common = _common_flags()
    ckpt = sub.add_parser("ckpt", parents=[common], help="kubectl ckpt: ls, lineage, verify, pull, push, du",
                          description=DESCRIPTION)
    add_commands(ckpt, common)
    ckpt.set_defaults(func=run)


def build_kubectl_parser() -> argparse.ArgumentParser:
    common = _common_flags()
    parser = argparse.ArgumentParser(prog="kubectl ckpt", description=DESCRIPTION, parents=[common])
    add_commands(parser, common)
    return parser


def run(args: argparse.Namespace, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    from checkpoint_operator.protocol.errors import AgentError
    from checkpoint_operator.plugin.client import PluginError, connect
    from checkpoint_operator.plugin.commands import COMMANDS, Io
    io = Io(out or sys.stdout, err or sys.stderr)
    for name in ("namespace", "context", "kubeconfig", "output"):
        if not hasattr(args, name):
            setattr(args, name, None)
    try:
        cluster = connect(args.kubeconfig, args.context, args.namespace)
        return COMMANDS[args.ckpt_command](cluster, args, io)
    except (PluginError, AgentError) as exc:
        io.note(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        io.note(f"error: kubectl ckpt {args.ckpt_command} interrupted" +
                ("; run it again to resume" if args.ckpt_command in ("push", "pull") else ""))
        return 130


def main(argv: Optional[list[str]] = None, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """`kubectl ckpt ...` (the console script kubectl-ckpt)."""
    return run(build_kubectl_parser().parse_args(argv), out, err)
