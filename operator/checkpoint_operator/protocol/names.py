"""What a valid file name of a checkpoint is: one rule for scan (skips), upload, download and
manifest validation (refuse).

A path is '/'-separated and relative to the checkpoint's root. It is valid when:
- it is UTF-8 (the manifest is JSON, Kubernetes statuses and S3 keys are UTF-8);
- it holds no NUL, no control character (C0, DEL, C1: they break lines in logs, tables and
  `sha256sum` output, and drive terminals) and no line/paragraph separator (U+2028/U+2029);
- it holds no backslash (a path separator on Windows and to most S3 tools; `sha256sum`
  escapes it, so the digest could no longer be checked with coreutils);
- it holds no bidirectional control character (U+061C, U+200E, U+200F, U+202A-U+202E,
  U+2066-U+2069): they reorder how the name is shown, so `model.safetensors` can display
  where another name is stored (the "Trojan Source" trick) in listings, events and reviews;
- it holds no invisible character: Unicode's Default_Ignorable_Code_Point (zero-width space
  and joiners, soft hyphen, word joiner, combining grapheme joiner, variation selectors, the
  BOM, Hangul fillers, tags): each displays as nothing, so `model\u200b.bin` shows exactly as
  `model.bin` beside it (hostile1 D12). The price: names that need one (a Persian name with a
  zero-width non-joiner, an emoji written with U+FE0F or a joiner sequence) are refused too;
- no component is empty, `.` or `..` (it must name one place, inside the root);
- each component is at most 255 bytes and the whole path at most 4096 bytes (NAME_MAX and
  PATH_MAX of Linux filesystems: what cannot be written back cannot be downloaded);
- no component starts with `.ckpt-download-` (download's temporary files: reserved, so a
  temporary name never collides with a file of the checkpoint).

And the names of one checkpoint are distinct after Unicode normalization (NFC): `café` with a
composed `é` and `café` with `e` + U+0301 are one name on macOS (APFS and HFS+ compare
normalized names), in many tools and to a reader, so two such files, or two such directories,
are refused rather than taken as two (`collisions`; protocol/manifest.py paths_clash). Case is not folded: Linux
filesystems and S3 keep `A` and `a` apart, and checkpoints may rely on it; a pull onto a
case-insensitive filesystem, where the two are one file, is refused instead (pull_target.py).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Optional

from checkpoint_operator.protocol.errors import AgentError

# Bidi_Control (Unicode PropList): each reorders the text around it when it is displayed.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Default_Ignorable_Code_Point (Unicode 15.1 DerivedCoreProperties.txt), as inclusive ranges; the
# bidi controls among them are reported as such. api/sources.py refuses the same in URLs and paths
# (a test keeps the two tables equal).
DEFAULT_IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
                     (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
                     (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
                     (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4096
TEMP_PREFIX = ".ckpt-download-"


class InvalidName(AgentError):
    pass


def char_problem(ch: str) -> Optional[str]:
    """Why one character may not be in a name (and breaks a line or a display), or None."""
    o = ord(ch)
    if o == 0:
        return "has a NUL byte"
    if 0xD800 <= o <= 0xDFFF:  # os.fsdecode's surrogateescape: bytes that are not UTF-8
        return "is not valid UTF-8"
    if ch == "\\":
        return "has a backslash"
    if ch in BIDI_CONTROLS:
        return f"has a bidirectional control character U+{o:04X} (it reorders how the name is displayed)"
    category = unicodedata.category(ch)
    if category == "Cc":
        return f"has a control character U+{o:04X}"
    if category in ("Zl", "Zp"):
        return f"has a line separator U+{o:04X}"
    if is_default_ignorable(o):
        return f"has an invisible character U+{o:04X} (it displays as nothing, so the name looks like another)"
    return None


def is_default_ignorable(code_point: int) -> bool:
    return any(low <= code_point <= high for low, high in DEFAULT_IGNORABLE)


# What char_problem refuses among ASCII characters: controls, DEL and the backslash.
_ASCII_REFUSED = re.compile(r"[\x00-\x1f\x7f\\]")
# An ASCII path's components that component_problem refuses for their shape: empty, '.' or
# '..', longer than MAX_COMPONENT_BYTES, starting with TEMP_PREFIX.
_ASCII_SHAPE = re.compile(r"(?:^|/)(?:/|$|\.\.?(?:/|$)|" + re.escape(TEMP_PREFIX) + r")|[^/]{%d}" % (MAX_COMPONENT_BYTES + 1))


def component_problem(name: str, chars_checked: bool = False) -> Optional[str]:
    """Why one path component (a file or directory name) is not valid, or None. `chars_checked`:
    its characters are known to be valid (path_problem checked the whole path at once)."""
    if name == "":
        return "has an empty component"
    if name in (".", ".."):
        return "has a '.' or '..' component"
    if not chars_checked:
        for ch in name:
            problem = char_problem(ch)
            if problem:
                return problem
    if len(name.encode("utf-8")) > MAX_COMPONENT_BYTES:  # UTF-8 is checked above
        return f"has a component longer than {MAX_COMPONENT_BYTES} bytes"
    if name.startswith(TEMP_PREFIX):
        return f"has a component starting with {TEMP_PREFIX!r} (reserved for download's temporary files)"
    return None


def path_problem(rel: str) -> Optional[str]:
    """Why a '/'-separated relative path is not a valid file name of a checkpoint, or None."""
    if rel == "":
        return "is empty"
    if rel.startswith("/"):
        return "is absolute"
    if len(rel) > MAX_PATH_BYTES or len(rel.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    # An ASCII path checked at once (regular expressions, not a call per character and per
    # component: a manifest's 4 KB paths are read by every download); the loop below names the
    # first problem of one that fails them.
    ascii_valid = rel.isascii() and not _ASCII_REFUSED.search(rel)
    if ascii_valid and not _ASCII_SHAPE.search(rel):
        return None
    for part in rel.split("/"):
        problem = component_problem(part, chars_checked=ascii_valid)
        if problem:
            return problem
    return None


def check_path(rel: str, where: str) -> str:
    """`rel` when valid, else InvalidName: one line naming the file, where it came from and the rule."""
    problem = path_problem(rel)
    if problem:
        raise InvalidName(f"{where}: file name '{printable(rel)}' {problem}")
    return rel


def printable(name: str) -> str:
    """`name` with what would break a line, a table or a terminal escaped (and `\\` doubled),
    for messages, events and tables."""
    out = []
    for ch in name:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif char_problem(ch):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def normalized(name: str) -> str:
    """The form two names are compared in: NFC (an ASCII name is its own)."""
    return name if name.isascii() else unicodedata.normalize("NFC", name)


def spelled(name: str) -> str:
    """`name` with every non-ASCII character as its code point, so two names that look the same
    (an NFC/NFD pair) read differently in a message."""
    return "".join(ch if ch.isascii() else f"\\u{ord(ch):04x}" for ch in printable(name))


def collisions(names: list[str]) -> dict[str, str]:
    """The entries of one directory whose names equal another's after normalization: each such
    name -> one it collides with. Empty when all are distinct (the usual case: no ASCII-only
    directory can have any)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        if not name.isascii():
            groups.setdefault(normalized(name), [])
    if not groups:
        return {}
    for name in names:
        key = normalized(name)
        if key in groups:
            groups[key].append(name)
    clashing: dict[str, str] = {}
    for members in groups.values():
        if len(members) > 1:
            for i, name in enumerate(members):
                clashing[name] = members[i - 1] if i else members[1]
    return clashing


def collision_problem(other: str) -> str:
    """Why a name that collides with `other` is refused (after "name '...'")."""
    return f"is the same name as '{spelled(other)}' after Unicode normalization (NFC); rename one of them"
