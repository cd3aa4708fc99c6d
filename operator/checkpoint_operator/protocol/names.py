"""What a valid file name of a checkpoint is: one rule for scan (skips), upload, download and
manifest validation (refuse).

A path is '/'-separated and relative to the checkpoint's root. It is valid when:
- it is UTF-8 (the manifest is JSON, Kubernetes statuses and S3 keys are UTF-8);
- it holds no NUL, no control character (C0, DEL, C1: they break lines in logs, tables and
  `sha256sum` output, and drive terminals) and no line/paragraph separator (U+2028/U+2029);
- it holds no backslash (a path separator on Windows and to most S3 tools; `sha256sum`
  escapes it, so the digest could no longer be checked with coreutils);
- no component is empty, `.` or `..` (it must name one place, inside the root);
- each component is at most 255 bytes and the whole path at most 4096 bytes (NAME_MAX and
  PATH_MAX of Linux filesystems: what cannot be written back cannot be downloaded);
- no component starts with `.ckpt-download-` (download's temporary files: reserved, so a
  temporary name never collides with a file of the checkpoint).
"""

from __future__ import annotations

import unicodedata
from typing import Optional

from checkpoint_operator.protocol.errors import AgentError

MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4096
TEMP_PREFIX = ".ckpt-download-"


class InvalidName(AgentError):
    pass


def _char_problem(ch: str) -> Optional[str]:
    o = ord(ch)
    if o == 0:
        return "has a NUL byte"
    if 0xD800 <= o <= 0xDFFF:  # os.fsdecode's surrogateescape: bytes that are not UTF-8
        return "is not valid UTF-8"
    if ch == "\\":
        return "has a backslash"
    category = unicodedata.category(ch)
    if category == "Cc":
        return f"has a control character U+{o:04X}"
    if category in ("Zl", "Zp"):
        return f"has a line separator U+{o:04X}"
    return None


def component_problem(name: str) -> Optional[str]:
    """Why one path component (a file or directory name) is not valid, or None."""
    if name == "":
        return "has an empty component"
    if name in (".", ".."):
        return "has a '.' or '..' component"
    for ch in name:
        problem = _char_problem(ch)
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
    for part in rel.split("/"):
        problem = component_problem(part)
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
        elif _char_problem(ch):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)
