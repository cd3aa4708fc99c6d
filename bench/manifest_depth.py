#!/usr/bin/env python3
"""Reading a manifest back (`parse_manifest`: every download, pull, verify and push receive) as
its paths get deeper: FILES files in one directory at depth D, for a few D. The paths rule
(protocol/manifest.py paths_clash) must stay linear in the paths' total length; before hostile4
D5 it was depth² per path (2,000 files at depth 1,000: 17 s).

    python bench/manifest_depth.py            # FILES=2000, depths 10 100 1000 2000

Prints per depth the manifest's size, the CPU seconds of one parse and the CPU per MB of
manifest; the last line is `depth 2000 / depth 10 cost per MB: R.RR` (about 1 when linear).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

from checkpoint_operator.protocol.manifest import FileEntry, digest_of, parse_manifest


def manifest_text(depth: int, files: int) -> str:
    prefix = "/".join(["a"] * depth)
    entries = [FileEntry(f"{prefix}/f{i}", 0, hashlib.sha256(b"").hexdigest()) for i in range(files)]
    return json.dumps({"version": 1, "path": ".", "files": [e.model_dump() for e in entries], "sizeBytes": 0,
                       "fileCount": files, "digest": digest_of(entries)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--depths", type=int, nargs="+", default=[10, 100, 1000, 2000])
    args = parser.parse_args()
    per_mb = {}
    for depth in args.depths:
        text = manifest_text(depth, args.files)
        start = time.process_time()
        parse_manifest(text, "bench")
        cpu = time.process_time() - start
        per_mb[depth] = cpu / (len(text) / 1e6)
        print(f"depth {depth:5d}: {len(text) / 1e6:7.1f} MB, {cpu:6.3f} s CPU, {per_mb[depth]:.4f} s per MB")
    first, last = min(per_mb), max(per_mb)
    print(f"depth {last} / depth {first} cost per MB: {per_mb[last] / per_mb[first]:.2f}")


if __name__ == "__main__":
    main()
