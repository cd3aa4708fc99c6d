"""A git credential helper (`git credential` protocol) that answers from a mounted Secret.

git runs it as `... get` with the request (protocol, host, path) on stdin. It answers with the
files username and password of CKPT_SOURCE_SECRET_DIR, and only for the host the import fetches
from (CKPT_GIT_CREDENTIAL_HOST, set by git.py): a redirect or an LFS endpoint on another host
gets nothing. `store` and `erase` do nothing: the Secret is the only store.
"""

from __future__ import annotations

import sys

from checkpoint_operator.agent.sources.base import read_secret_dir


def answer(request: dict[str, str], allowed_host: str, login: tuple[str, str] | None) -> str:
    if login is None or request.get("host", "").lower() != allowed_host.lower():
        return ""
    if request.get("protocol") not in ("https", "http"):
        return ""
    username, password = login
    return f"username={username}\npassword={password}\n"


def main(argv: list[str]) -> int:
    import os

    from checkpoint_operator.agent.sources.git import CREDENTIAL_HOST_ENV
    if len(argv) < 2 or argv[1] != "get":
        return 0
    request = {}
    for line in sys.stdin.read().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            request[key] = value
    try:
        login = read_secret_dir("git credential helper")
    except Exception as exc:  # noqa: BLE001 - git shows our stderr; never the secret itself
        print(f"checkpoint-operator git credential helper: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(answer(request, os.environ.get(CREDENTIAL_HOST_ENV, ""), login))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
