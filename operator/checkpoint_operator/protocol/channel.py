"""How an agent's result travels to the operator: one line on the pod's log, read back bounded.

The agent writes its result as the last line of its output (`write`): JSON that starts with
its `kind` and `version` (`{"kind":"scan","version":1,...}`), at most `MAX_RESULT_BYTES`
(protocol/results.py) or it fails with one line naming the limit. The pod's service account
needs no permission: the log is the channel.

The operator reads a bounded tail of the log (`limitBytes`, `tailLines`: reconcile/agent_runs.py)
and finds the last line of the kind it expects (`find_result`). A line cut by the byte limit is
refused unread (`ResultError` naming the limit), as is an unknown kind, a newer version (an
agent image newer than the operator) or a line the model refuses: one line each, for a status.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Iterator, Optional, TypeVar

from pydantic import ValidationError

from checkpoint_operator.protocol.errors import AgentError
from checkpoint_operator.protocol.results import KINDS, MAX_RESULT_BYTES, RESULT_VERSION, Report

R = TypeVar("R", bound=Report)
LINE_START = '{"kind":"'
# Lines of the log's tail the operator looks at for a result: the agent writes it last, but a
# runtime may add a line of its own after it (a Python warning at exit).
RESULT_TAIL_LINES = 20
# What the operator reads of that tail: one result at its largest, and room for the lines around it.
RESULT_READ_BYTES = MAX_RESULT_BYTES + 256 * 1024


class ResultTooLarge(AgentError):
    """The agent's result would pass MAX_RESULT_BYTES: the agent fails instead of writing it."""


class ResultError(ValueError):
    """A result the operator cannot use, as one line for a status message."""


def encode(report: Report) -> str:
    """The result as its one line (no newline): kind and version first, None fields left out."""
    body = report.model_dump(mode="json", exclude_none=True)
    ordered = {"kind": body.pop("kind"), "version": body.pop("version"), **body}
    try:
        line = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(line.encode("utf-8"))
    except UnicodeEncodeError:  # a name that is not UTF-8 (printable() escapes them; belt and braces)
        line = json.dumps(ordered, separators=(",", ":"), allow_nan=False)
        size = len(line)
    if size > MAX_RESULT_BYTES:
        raise ResultTooLarge(f"the {report.kind} result is {size} bytes, more than the {MAX_RESULT_BYTES} a result may "
                             f"have (it names each checkpoint, not its files: use fewer checkpoint directories, or "
                             f"shorter names)")
    return line


def write(report: Report, stream: Optional[IO[str]] = None) -> None:
    """Write the result line, after everything else this process wrote (stderr flushed first:
    a kubelet interleaves both streams into one log, and the operator reads its tail)."""
    line = encode(report) + "\n"
    sys.stderr.flush()
    out = stream or sys.stdout
    out.write(line)
    out.flush()


def decode(line: str, expected: tuple[type[R], ...]) -> R:
    """One result line as one of the `expected` models; ResultError (one line) otherwise."""
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise ResultError(f"the agent's result is not JSON ({exc})") from None
    except RecursionError:  # the JSON decoder recurses once per level of nesting
        raise ResultError("the agent's result is nested too deeply to be a result") from None
    if not isinstance(data, dict):
        raise ResultError("the agent's result is not a JSON object")
    kind, version = data.get("kind"), data.get("version")
    wanted = " or ".join(m.model_fields["kind"].default for m in expected)
    if not isinstance(kind, str) or kind not in KINDS:
        raise ResultError(f"the agent's result has an unknown kind {str(kind)[:40]!r} (expected {wanted})")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ResultError(f"the agent's {kind} result has no valid version ({str(version)[:40]!r})")
    if version > RESULT_VERSION:
        raise ResultError(f"the agent's {kind} result is version {version}, newer than this operator understands "
                          f"({RESULT_VERSION}): run the agent image of the operator's own version")
    model = KINDS[kind]
    if model not in expected:
        raise ResultError(f"the agent wrote a {kind} result where a {wanted} result was expected")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ResultError(f"the agent's {kind} result is invalid: {first_error(exc)}") from None


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err.get("loc", ())) or "result"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err.get('msg', 'invalid')}{more}"


def _lines(text: str, cut_at_limit: bool) -> tuple[list[str], Optional[str]]:
    """(the complete lines, the last line when the read's byte limit cut it)."""
    lines = text.split("\n")
    last = lines.pop()  # '' when the text ends with a newline
    if not last:
        return lines, None
    if cut_at_limit:
        return lines, last
    return [*lines, last], None  # a log may end without a newline


def _kind_prefixes(expected: tuple[type[Report], ...]) -> tuple[str, ...]:
    return tuple(f'{LINE_START}{m.model_fields["kind"].default}"' for m in expected)


def find_result(text: str, expected: tuple[type[R], ...], *, limit_bytes: int, what: str = "the log") -> R:
    """The last line of one of the `expected` kinds in `text`, a read of at most `limit_bytes`
    bytes (a last line the limit cut off is refused unread). ResultError when there is none."""
    prefixes = _kind_prefixes(expected)
    cut_at_limit = len(text.encode("utf-8", "replace")) >= limit_bytes
    lines, cut = _lines(text, cut_at_limit)
    for line in reversed(lines):
        if line.startswith(prefixes):
            return decode(line, expected)
    kinds = " or ".join(m.model_fields["kind"].default for m in expected)
    if cut is not None and cut.startswith(prefixes):
        raise ResultError(f"the agent's {kinds} result in {what} is longer than the {limit_bytes} bytes the operator "
                          f"reads: refused unread (a result has at most {MAX_RESULT_BYTES} bytes)")
    if cut is not None:
        raise ResultError(f"no {kinds} result in {what}: its last lines are longer than the {limit_bytes} bytes the "
                          f"operator reads")
    raise ResultError(f"no {kinds} result in {what} (the agent writes it as its last line)")


def iter_results(text: str, expected: tuple[type[R], ...]) -> Iterator[R | ResultError]:
    """Every line of the `expected` kinds in `text`, in order (a stream of events, e.g. the live
    sidecar's): each a model, or the ResultError that refused it."""
    prefixes = _kind_prefixes(expected)
    for line in text.split("\n"):
        if line.startswith(prefixes):
            try:
                yield decode(line, expected)
            except ResultError as exc:
                yield exc
