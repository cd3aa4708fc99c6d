"""The import sources beyond s3:// and http(s)://, one module each, behind one interface.

`open_source(uri, options)` gives the `Source` for a URI (None for s3:// and http(s)://, which
importer.py fetches itself). A source fetches into the import's staging directory: a tree
source writes the checkpoint's files into `tree`; a one-file source writes one file into
`downloads` and returns it (the importer extracts it when it is an archive). Every source
checks the names (protocol/names.py) and the limits on what it lists before any byte moves, and
bounds what it writes while bytes move; the importer commits the staging directory only on
success. Provider libraries are imported by the module that needs them, when it is used.

| scheme                                  | module          | what it fetches                              |
| --------------------------------------- | --------------- | -------------------------------------------- |
| hf://[datasets/]org/name[@rev]          | huggingface.py  | the files of one commit of a Hub repository  |
| git+https://, git+http://, git:// (@rev)| git.py          | the files of one commit (LFS with --lfs)     |
| gs://bucket/prefix/ or gs://bucket/obj  | gcs.py          | a tree or one object (S3-compatible XML API) |
| az://account/container/prefix/ or /blob | azure.py        | a tree or one blob                           |
| ftp://host/path, ftps://host/path       | ftp.py          | one file (archives are extracted)            |
"""

from __future__ import annotations

import importlib
from typing import Optional

from checkpoint_operator.agent.sources.base import Fetched, Limits, Options, Source

# scheme prefix -> module (imported when used)
SCHEMES = {
    "hf://": "huggingface",
    "git+https://": "git",
    "git+http://": "git",
    "git://": "git",
    "gs://": "gcs",
    "az://": "azure",
    "ftp://": "ftp",
    "ftps://": "ftp",
}


def open_source(uri: str, options: Optional[Options] = None) -> Optional[Source]:
    """The Source for `uri` (it parses and checks the URI, refusing a bad one with AgentError), or
    None for the schemes importer.py handles itself (s3://, http://, https://)."""
    for prefix, module in SCHEMES.items():
        if uri.startswith(prefix):
            mod = importlib.import_module(f"checkpoint_operator.agent.sources.{module}")
            return mod.SOURCE(uri, options or Options())
    return None


__all__ = ["Fetched", "Limits", "Options", "SCHEMES", "Source", "open_source"]
