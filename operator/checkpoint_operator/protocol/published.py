"""The resume step's published directories in ONE argument (`--published-list=VALUE`), whatever
their count: the operator (logic/agent_commands.resume_parts) encodes, the agent
(agent/resume_parts.py) decodes.

Before, each directory was one `--published=DIR` argument, and the admission policy admits at most
300 arguments per agent container (its `argIndexes`: the bound that keeps its CEL cost estimate
under the API server's budget): a group with ~290 published Checkpoints could no longer restart.

VALUE is the sorted, distinct directories as a JSON list, zlib-compressed, in unpadded base64url:
one argument of the alphabet `[A-Za-z0-9_-]` (never taken for a flag, nothing a shell or the policy
must quote). Names of one job share their shape (`checkpoint-1200`): 3,000 of them take about
9 KB, 30,000 about 88 KB (3,000 random 32-character names: 78 KB). The value is bounded: at most MAX_ARGUMENT characters (well under Linux's 128 KiB per
argument, MAX_ARG_STRLEN, and a small part of a pod object's ~1.5 MiB); a list that does not fit
is not passed at all: the operator passes `--keep-sealed` instead (nothing is given back this
time; resume_args). The agent refuses a value that is not such a list of checkpoint directories
(decoded at most MAX_DECODED bytes: no decompression bomb), so a broken value fails the step
instead of reading as "nothing published", which would give published parts back.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from typing import Iterable

MAX_ARGUMENT = 96 * 1024       # characters of the encoded value
MAX_DECODED = 4 * 1024 * 1024  # bytes of the JSON list it may expand to
MAX_PATH = 4096
# What the agent builds from a list is bounded by its entries and their depth, not only its bytes
# (the resume step keeps every prefix of every directory: hostile13 H13-1, 1,000 paths 4 KB deep
# took more than 1 GiB): the operator's lists hold directories one or two levels deep.
MAX_ENTRIES = 50_000
MAX_DEPTH = 16  # components of one directory
FLAG = "--published-list"
KEEP_SEALED = "--keep-sealed"  # the list did not fit: the resume step gives nothing back
ALPHABET = re.compile(r"[A-Za-z0-9_-]+")
# A checkpoint directory of the output (the policy's former `--published=DIR` pattern): relative,
# no component empty or hidden.
DIRECTORY = re.compile(r"[^./\x00][^/\x00]*(/[^./\x00][^/\x00]*)*")


class PublishedListError(ValueError):
    """A value that is not an encoded list of checkpoint directories."""


def encode(directories: Iterable[str]) -> str:
    """The value for `--published-list=`: deterministic (sorted, distinct; zlib level 9), so the pod
    built twice for one restart is the same pod."""
    text = json.dumps(sorted(set(directories)), separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(zlib.compress(text.encode("utf-8"), 9)).decode("ascii").rstrip("=")


def decode(value: str) -> list[str]:
    """The directories of an encoded value; PublishedListError for anything else."""
    if len(value) > MAX_ARGUMENT or not ALPHABET.fullmatch(value):
        raise PublishedListError(f"{FLAG}: not an encoded list (at most {MAX_ARGUMENT} characters of [A-Za-z0-9_-])")
    try:
        packed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        inflate = zlib.decompressobj()
        text = inflate.decompress(packed, MAX_DECODED)
        if inflate.unconsumed_tail or not inflate.eof:
            raise PublishedListError(f"{FLAG}: expands past {MAX_DECODED} bytes, or is cut")
        if inflate.unused_data:  # one list, one encoding (encode's): nothing after the stream
            raise PublishedListError(f"{FLAG}: bytes after the compressed list")
        directories = json.loads(text.decode("utf-8"))
    except (binascii.Error, zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PublishedListError(f"{FLAG}: not an encoded list ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(directories, list) or len(directories) > MAX_ENTRIES:
        raise PublishedListError(f"{FLAG}: not a list of at most {MAX_ENTRIES} checkpoint directories")
    if not all(isinstance(d, str) and len(d.encode("utf-8")) <= MAX_PATH and d.count("/") < MAX_DEPTH
               and DIRECTORY.fullmatch(d) for d in directories):
        raise PublishedListError(f"{FLAG}: holds something that is not a checkpoint directory of the output "
                                 f"(relative, at most {MAX_DEPTH} components and {MAX_PATH} bytes)")
    return directories


def resume_args(directories: Iterable[str]) -> list[str]:
    """The resume step's arguments for the published directories: none for none, else the one
    `--published-list=VALUE`, or `--keep-sealed` when the agent would not take VALUE (longer than
    MAX_ARGUMENT, more than MAX_ENTRIES, deeper than MAX_DEPTH, past MAX_DECODED)."""
    listed = list(directories)
    if not listed:
        return []
    value = encode(listed)
    try:
        decode(value)  # what the agent takes (length, entries, depth, bytes), or nothing is passed
    except PublishedListError:
        return [KEEP_SEALED]
    return [f"{FLAG}={value}"]
