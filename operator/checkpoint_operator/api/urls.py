"""The URL rule of the CRD: what every URL field of a spec may hold, as CEL (RE2) patterns with
their Python twins. The agent refuses the same set with the same words (agent/urls.py, the rule
it applies to every URL before anything is fetched); tests/unit/api/test_url_rule.py feeds random
URLs to both and fails when they disagree. api/ cannot import the agent (they are independent
layers), so the tables below are copies, kept equal by that test.

Three rules per field (`url_rules`), each its own one-line message:
1. no control, line-separating, bidirectional or invisible character (Unicode's
   Default_Ignorable_Code_Point), as it is or percent-encoded as UTF-8 (`%0D%0A`, `%E2%80%AE`);
2. no credentials: no `user:password@` before the host, no query parameter that carries one
   (`sig`, `X-Amz-Signature`, `token`, ...; any case, letters possibly percent-encoded);
3. `scheme://host[:port]` then `/`, `?`, `#` or the end: a host of ASCII DNS labels, an IPv4
   address or a bracketed IPv6 literal (RFC 3986), a port of 0-65535.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

from checkpoint_operator.api.rules import Rule

# --- characters -----------------------------------------------------------------------------------
# Cc (C0, DEL, C1), Zl, Zp and Default_Ignorable_Code_Point (which holds every bidi control), as
# inclusive ranges (agent/names.py DEFAULT_IGNORABLE is the same table).
CONTROLS = ((0x00, 0x1F), (0x7F, 0x9F), (0x2028, 0x2029))
DEFAULT_IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
                     (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
                     (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
                     (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
FORBIDDEN = CONTROLS + DEFAULT_IGNORABLE


def _re2_char(code_point: int) -> str:
    return f"\\x{code_point:02x}" if code_point < 0x100 else f"\\x{{{code_point:X}}}"


def char_class(ranges: Iterable[tuple[int, int]]) -> str:
    """An RE2 character class of the ranges (Python's re reads it through `python_pattern`)."""
    return "[" + "".join(_re2_char(lo) if lo == hi else f"{_re2_char(lo)}-{_re2_char(hi)}" for lo, hi in ranges) + "]"


def _utf8_sequences(lo: int, hi: int) -> list[list[tuple[int, int]]]:
    """The code points lo..hi as sequences of byte ranges (each byte of a sequence ranging on its
    own), as RE2 compiles a Unicode class to bytes."""
    for limit in (0x7F, 0x7FF, 0xFFFF):
        if lo <= limit < hi:  # different encoded lengths: split at the boundary
            return _utf8_sequences(lo, limit) + _utf8_sequences(limit + 1, hi)
    first, last = chr(lo).encode(), chr(hi).encode()
    for i in range(1, len(first)):
        mask = (1 << (6 * i)) - 1  # the low i continuation bytes
        if lo & ~mask != hi & ~mask:
            if lo & mask:
                return _utf8_sequences(lo, lo | mask) + _utf8_sequences((lo | mask) + 1, hi)
            if hi & mask != mask:
                return _utf8_sequences(lo, (hi & ~mask) - 1) + _utf8_sequences(hi & ~mask, hi)
    return [[(a, b) for a, b in zip(first, last)]]


def _hex_digit(value: int) -> str:
    digit = f"{value:X}"
    return f"[{digit}{digit.lower()}]" if digit.isalpha() else digit


def _hex_range(lo: int, hi: int) -> str:
    """One hex digit in lo..hi, either case."""
    if lo == hi:
        return _hex_digit(lo)
    digits = [f"{v:X}" for v in range(lo, hi + 1)]
    letters = [d for d in digits if d.isalpha()]
    return "[" + "".join(d for d in digits if not d.isalpha()) + "".join(letters) + "".join(letters).lower() + "]"


def _percent_byte_range(lo: int, hi: int) -> str:
    """A percent-encoded byte in lo..hi (two hex digits, either case)."""
    high_lo, high_hi = lo >> 4, hi >> 4
    if high_lo == high_hi:
        return f"%{_hex_digit(high_lo)}{_hex_range(lo & 15, hi & 15)}"
    parts = [f"%{_hex_digit(high_lo)}{_hex_range(lo & 15, 15)}"]
    if high_hi - high_lo > 1:
        parts.append(f"%{_hex_range(high_lo + 1, high_hi - 1)}{_hex_range(0, 15)}")
    parts.append(f"%{_hex_digit(high_hi)}{_hex_range(0, hi & 15)}")
    return "(" + "|".join(parts) + ")"


def percent_encoded(ranges: Iterable[tuple[int, int]]) -> str:
    """An RE2 pattern of the code points of `ranges` percent-encoded as UTF-8."""
    sequences = [seq for lo, hi in ranges for seq in _utf8_sequences(lo, hi)]
    return "(" + "|".join("".join(_percent_byte_range(a, b) for a, b in seq) for seq in sequences) + ")"


FORBIDDEN_CHAR = f"{char_class(FORBIDDEN)}|{percent_encoded(FORBIDDEN)}"
# A file or directory name (agent/names.py): the same characters, and a backslash; a '%' is a '%'.
NAME_FORBIDDEN_CHAR = char_class(FORBIDDEN + ((0x5C, 0x5C),))
# Free text users write (a description): the same characters but tab and newline; no percent-decoding.
TEXT_FORBIDDEN_CHAR = char_class(((0x00, 0x08), (0x0B, 0x1F)) + CONTROLS[1:] + DEFAULT_IGNORABLE)

# --- credentials ------------------------------------------------------------------------------------
SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*"
USERINFO = rf"^{SCHEME}://[^/?#]*@"
CREDENTIAL_PARAMETERS = ("sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
                         "x-goog-signature", "x-goog-credential", "token", "access_token", "api_key", "apikey",
                         "password")


def _any_case_or_encoded(name: str) -> str:
    out = []
    for ch in name:
        forms = {ch.lower(), ch.upper()}
        literal = "[" + "".join(sorted(re.escape(f) for f in forms)) + "]" if len(forms) > 1 else re.escape(ch)
        encoded = "|".join(f"%{_hex_digit(ord(f) >> 4)}{_hex_digit(ord(f) & 15)}" for f in sorted(forms))
        out.append(f"({literal}|{encoded})")
    return "".join(out)


# The first '?' before any '#' starts the query; a parameter is a name up to '=' after '?' or '&'.
QUERY_CREDENTIAL = (r"^[^?#]*\?([^#]*&)?(" + "|".join(_any_case_or_encoded(n) for n in CREDENTIAL_PARAMETERS)
                    + ")=")

# --- shape --------------------------------------------------------------------------------------------
_H16 = r"[0-9A-Fa-f]{1,4}"
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_LS32 = rf"({_H16}:{_H16}|{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET})"
IPV6 = "(" + "|".join([
    rf"({_H16}:){{6}}{_LS32}",
    rf"::({_H16}:){{5}}{_LS32}",
    rf"({_H16})?::({_H16}:){{4}}{_LS32}",
    rf"(({_H16}:){{0,1}}{_H16})?::({_H16}:){{3}}{_LS32}",
    rf"(({_H16}:){{0,2}}{_H16})?::({_H16}:){{2}}{_LS32}",
    rf"(({_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
    rf"(({_H16}:){{0,4}}{_H16})?::{_LS32}",
    rf"(({_H16}:){{0,5}}{_H16})?::{_H16}",
    rf"(({_H16}:){{0,6}}{_H16})?::",
]) + ")"
_LABEL = r"[A-Za-z0-9_-]{1,63}"
PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9][0-9]|6[0-4][0-9][0-9][0-9]|[1-5][0-9][0-9][0-9][0-9]|[0-9]{1,4})"
AUTHORITY = rf"({_LABEL}(\.{_LABEL})*\.?|\[{IPV6}\])(:{PORT}?)?"
# (credentials before the host are the credentials rule's: the shape passes over them)
URL = rf"^{SCHEME}://([^/?#]*@)?{AUTHORITY}([/?#].*)?$"


# --- CEL's matches() in Python -------------------------------------------------------------------------

def python_pattern(pattern: str) -> str:
    """An RE2 pattern in Python's syntax: `\\x{HHHH}` as `\\uHHHH` / `\\UHHHHHHHH`."""
    def char(match: re.Match[str]) -> str:
        value = int(match.group(1), 16)
        return f"\\u{value:04x}" if value <= 0xFFFF else f"\\U{value:08x}"
    return re.sub(r"\\x\{([0-9A-Fa-f]+)\}", char, pattern)


def cel_matches(pattern: str, value: str) -> bool:
    """CEL's `matches` (RE2, a search) in Python. An anchored pattern is matched with fullmatch on
    what lies between the anchors: Python's `$` also matches before a trailing newline, RE2's not."""
    pattern = python_pattern(pattern)
    if pattern.startswith("^") and pattern.endswith("$") and not pattern.endswith("\\$"):
        return re.fullmatch(pattern[1:-1], value) is not None
    return re.search(pattern, value) is not None


def cel_string(pattern: str) -> str:
    """A pattern as a CEL string literal (single-quoted: backslashes doubled)."""
    return "'" + pattern.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --- the rules --------------------------------------------------------------------------------------------

def url_ok(value: str) -> bool:
    """The Python twin of all three rules together (for callers outside a model)."""
    return not cel_matches(FORBIDDEN_CHAR, value) and not cel_matches(USERINFO, value) \
        and not cel_matches(QUERY_CREDENTIAL, value) and cel_matches(URL, value)


def url_rules(field: str, field_path: str, optional: bool = False) -> tuple[Rule, Rule, Rule]:
    """The URL rule of spec.source.<field_path>.<field> (see the module doc)."""
    guard = f"!has(self.{field}) || " if optional else ""
    where = f"spec.source.{field_path}.{field}"

    def check(predicate: Callable[[str], bool]) -> Callable[[dict[str, Any]], bool]:
        return lambda s: field not in s or predicate(s[field])
    return (
        Rule(f"{guard}!self.{field}.matches({cel_string(FORBIDDEN_CHAR)})",
             f"{where} must not hold control characters or invisible ones (a newline, a NUL, a bidirectional "
             "control, a zero-width space...), as they are or percent-encoded (%0D%0A, %E2%80%8B)",
             check(lambda v: not cel_matches(FORBIDDEN_CHAR, v)), field_path=f".{field}"),
        Rule(f"{guard}(!self.{field}.matches({cel_string(USERINFO)}) "
             f"&& !self.{field}.matches({cel_string(QUERY_CREDENTIAL)}))",
             f"{where} must not carry credentials (user:password@, or a query parameter such as sig=, "
             "X-Amz-Signature=, X-Goog-Signature=, token=): put them in a Secret named by secretRef",
             check(lambda v: not cel_matches(USERINFO, v) and not cel_matches(QUERY_CREDENTIAL, v)),
             field_path=f".{field}"),
        Rule(f"{guard}self.{field}.matches({cel_string(URL)})",
             f"{where} must be scheme://host[:port]/...: a host of ASCII DNS labels (letters, digits, '-', '_'; an "
             "internationalized name in its xn-- form), an IPv4 address or a bracketed IPv6 literal, a port of 0-65535",
             check(lambda v: cel_matches(URL, v)), field_path=f".{field}"),
    )
