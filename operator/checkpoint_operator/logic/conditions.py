"""kstatus-style conditions: one `Ready` condition, plus `Reconciling`/`Stalled` while they apply."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from checkpoint_operator.protocol.names import char_problem


def one_line_message(text: str) -> str:
    """A message for a condition, a status or an Event: one line whatever it quotes (a path, a
    server's words). What would break the line or hide in it (control, line-separating, bidi and
    invisible characters) is shown by its code point (hostile1 D11: `scanning c:/a` then `b` on a
    second line); a backslash is left as it is."""
    if (text.isascii() and text.isprintable()) or all(ch == "\\" or not char_problem(ch) for ch in text):
        return text
    return "".join("\\n" if ch == "\n" else ch if ch == "\\" or not char_problem(ch)
                   else (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}") for ch in text)


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(conditions: Optional[list[dict[str, Any]]], type_: str, status: str, reason: str, message: str,
                  generation: Optional[int], now: str) -> list[dict[str, Any]]:
    """Return the conditions with `type_` set; lastTransitionTime moves only when status changes."""
    out: list[dict[str, Any]] = []
    previous: Optional[dict[str, Any]] = None
    for condition in conditions or []:
        if condition.get("type") == type_:
            previous = condition
        else:
            out.append(condition)
    since = now if previous is None or previous.get("status") != status else previous.get("lastTransitionTime", now)
    condition = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": since}
    if generation is not None:
        condition["observedGeneration"] = generation
    out.append(condition)
    return sorted(out, key=lambda c: c["type"])


def remove_condition(conditions: Optional[list[dict[str, Any]]], type_: str) -> list[dict[str, Any]]:
    return [c for c in conditions or [] if c.get("type") != type_]


def get_condition(conditions: Optional[list[dict[str, Any]]], type_: str) -> Optional[dict[str, Any]]:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def kstatus_conditions(conditions: Optional[list[dict[str, Any]]], *, ready: bool, reason: str, message: str,
                       generation: Optional[int], now: str, reconciling: bool = False,
                       stalled: bool = False) -> list[dict[str, Any]]:
    """Ready plus Reconciling/Stalled as kstatus reads them: present only while True."""
    result = set_condition(conditions, "Ready", "True" if ready else "False", reason, message, generation, now)
    for type_, active in (("Reconciling", reconciling), ("Stalled", stalled)):
        if active:
            result = set_condition(result, type_, "True", reason, message, generation, now)
        else:
            result = remove_condition(result, type_)
    return result


def seconds_since(rfc3339: str, now: Optional[datetime] = None) -> float:
    then = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return max(0.0, ((now or datetime.now(timezone.utc)) - then).total_seconds())
