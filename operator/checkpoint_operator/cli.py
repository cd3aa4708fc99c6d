"""The `checkpoint-operator` command: one entry point for the operator, the agent and tools.

Subcommands import their modules lazily so that `agent` pods start fast and need no kopf.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from typing import Callable, Optional


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The whole command line, or with `only` (a command's name) just that command's part: an
    agent pod parses its own arguments without building (and importing) local mode's and the
    plugin's, which cost more than the agent's whole parser (bench/scan.py: start-up)."""
    parser = argparse.ArgumentParser(
        prog="checkpoint-operator",
        description="Kubernetes operator that makes ML training checkpoints immutable cluster objects.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add in _COMMANDS.items():
        if only is None or only == name:
            add(sub)
    if not sub.choices:  # `only` is not in this install (the image has no local mode): the error lists all
        for add in _COMMANDS.values():
            add(sub)
    return parser


def _add_crds_parser(sub: argparse._SubParsersAction) -> None:
    crds = sub.add_parser("crds", help="generate the CRD YAML from the API models",
                          description="Write crds/*.yaml (and the Helm chart's copy) from the pydantic models.")
    crds.add_argument("--output-dir", default=None,
                      help="directory for the CRD files (default: crds/ of the project)")
    crds.add_argument("--chart-dir", default=None,
                      help="Helm chart whose templates/ gets the CRD copy (default: charts/checkpoint-operator "
                           "when it exists beside --output-dir)")
    crds.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 and name each file that differs from what the models generate")
    crds.set_defaults(func=_run_crds)


def _add_run_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the operator (kopf) against the current cluster",
                         description="Run the operator. Settings come from CKPT_* environment variables "
                                     "(see docs/install.md); flags override them.")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=None, metavar="NS", type=namespace_name,
                       help="watch only this namespace (repeatable; a name, not a pattern)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch the whole cluster (default)")
    run.add_argument("--metrics-port", type=int, default=None, help="port of /metrics (0 disables; default 8080)")
    run.add_argument("--liveness-port", type=int, default=None, help="port of /healthz (default 8081)")
    run.add_argument("--log-format", choices=["text", "json"], default=None, help="log format (default text)")
    run.add_argument("--standalone", action="store_true", help="no peering: do not coordinate with standby replicas")
    run.set_defaults(func=_run_operator)


NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # a DNS-1123 label, as the chart's watchNamespaces


def namespace_name(value: str) -> str:
    """A namespace as `--namespace` takes it: a name. kopf would take a glob ('team-*') or a
    negation ('!kube-system'), but the operator's own watches (reconcile/informer.py) list each
    namespace by name: a pattern would be watched as a namespace that does not exist, and every
    reconcile there would wait for its first list, forever."""
    if len(value) <= 63 and NAMESPACE.fullmatch(value):
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r} is not a namespace name: a lowercase DNS-1123 label (a-z, 0-9, '-', at most 63 "
        "characters); patterns ('*', '!') are not taken: name each namespace")


def _add_agent_parser(sub: argparse._SubParsersAction) -> None:
    from checkpoint_operator.agent.cli import add_agent_parser
    add_agent_parser(sub)


def _add_local_parser(sub: argparse._SubParsersAction) -> None:
    try:
        from checkpoint_operator.local.cli import add_local_parser
    except ModuleNotFoundError as absent:
        # The operator image ships without local mode (its .dockerignore leaves local/ out).
        if absent.name != "checkpoint_operator.local":
            raise
    else:
        add_local_parser(sub)


def _add_ckpt_parser(sub: argparse._SubParsersAction) -> None:
    from checkpoint_operator.plugin.cli import add_ckpt_parser
    add_ckpt_parser(sub)


# Each top-level command, in --help's order, and what adds its parser.
_COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "crds": _add_crds_parser, "run": _add_run_parser, "agent": _add_agent_parser, "local": _add_local_parser,
    "ckpt": _add_ckpt_parser,
}


def _run_crds(args: argparse.Namespace) -> int:
    from checkpoint_operator.api.crdgen import crds_command
    return crds_command(output_dir=args.output_dir, chart_dir=args.chart_dir, check=args.check)


def _run_operator(args: argparse.Namespace) -> int:
    from checkpoint_operator.config import ConfigError
    try:
        from checkpoint_operator.main import run_operator
        return run_operator(args)
    except ConfigError as exc:  # a setting of the chart or the environment: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The top level has no options but -h: a known first word is the command (others get the whole parser).
    only = argv[0] if argv and argv[0] in _COMMANDS else None
    args = build_parser(only).parse_args(argv)
    if args.command != "agent":  # agent commands take SIGTERM once their handler is set (agent/cli.py)
        accept_sigterm()
    return int(args.func(args) or 0)


def accept_sigterm() -> None:
    """Deliver SIGTERM from here on: local mode's zygote starts a command with it held, so that
    one sent while the command starts waits for the command's own handler (elsewhere a no-op)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def kubectl_ckpt(argv: list[str] | None = None) -> int:
    """The console script `kubectl-ckpt`: kubectl finds it on PATH as the plugin `kubectl ckpt`."""
    from checkpoint_operator.plugin.cli import main as plugin_main
    return plugin_main(argv)


if __name__ == "__main__":
    sys.exit(main())
