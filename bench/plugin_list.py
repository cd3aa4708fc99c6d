"""`kubectl ckpt ls/lineage/du` against a namespace of N Checkpoints: the plugin's time and peak RSS.

A small API server on 127.0.0.1 answers the Checkpoint LIST with N copies of one Checkpoint (a JSON
file: a real one from a local cluster), paged as kube-apiserver pages (``limit``/``continue``; a
request without ``limit`` gets everything in one body, as before the plugin paged), and discovery,
the namespace and empty lists for the rest. Each command runs as its own process under
/usr/bin/time. Usage:

    python bench/plugin_list.py CHECKPOINT.json 10000 100000

Prints, per N and command: seconds, peak RSS (MiB) and MiB per 1,000 Checkpoints.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


def make_items(template: dict, count: int) -> list[bytes]:
    items = []
    for i in range(count):
        body = copy.deepcopy(template)
        body["metadata"]["name"] = f"job{i // 10}.step-{i}"
        body["metadata"]["uid"] = f"{i:08d}-0000-0000-0000-000000000000"
        body.setdefault("status", {})["step"] = i
        items.append(json.dumps(body).encode())
    return items


def serve(items: list[bytes]) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            path = url.path
            if path.endswith("/checkpoints"):
                start = int(json.loads(base64.b64decode(query["continue"]))) if query.get("continue") else 0
                limit = int(query.get("limit") or 0) or len(items)
                end = min(len(items), start + limit)
                meta = {"resourceVersion": "1"}
                if end < len(items):
                    meta["continue"] = base64.b64encode(str(end).encode()).decode()
                data = (b'{"kind":"CheckpointList","apiVersion":"ckpt.dev/v1alpha1","metadata":'
                        + json.dumps(meta).encode() + b',"items":[' + b",".join(items[start:end]) + b"]}")
            elif path.startswith("/apis/ckpt.dev/v1alpha1") and path.count("/") <= 3:
                data = json.dumps({"kind": "APIResourceList", "groupVersion": "ckpt.dev/v1alpha1", "resources": [
                    {"name": "checkpoints", "namespaced": True, "kind": "Checkpoint", "verbs": ["list"]}]}).encode()
            elif path.endswith(("/trainingjobs", "/persistentvolumeclaims", "/pods", "/clustercheckpoints")):
                data = b'{"kind":"List","metadata":{},"items":[]}'
            elif path.startswith("/api/v1/namespaces/"):
                data = json.dumps({"kind": "Namespace", "metadata": {"name": path.split("/")[4]}}).encode()
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def measure(kubeconfig: Path, argv: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one plugin command."""
    plugin = shutil.which("kubectl-ckpt") or sys.exit("kubectl-ckpt is not on PATH (pip install -e .)")
    done = subprocess.run(["/usr/bin/time", "-f", "%e %M", plugin, "--kubeconfig", str(kubeconfig), *argv],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
    seconds, kib = done.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kib) / 1024


def main() -> None:
    template = json.loads(Path(sys.argv[1]).read_text())
    print(f"load: {os.getloadavg()[0]:.1f}")
    for count in map(int, sys.argv[2:]):
        server = serve(make_items(template, count))
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = Path(tmp, "config")
            kubeconfig.write_text(json.dumps({
                "apiVersion": "v1", "kind": "Config", "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "default"}}]}))
            for argv in (["ls"], ["lineage", "job0.step-1"], ["du"]):
                seconds, mib = measure(kubeconfig, argv)
                print(f"{count:>7} Checkpoints  {' '.join(argv):<20} {seconds:6.1f} s  {mib:7.0f} MiB  "
                      f"{mib / count * 1000:6.1f} MiB per 1,000", flush=True)
        server.shutdown()


if __name__ == "__main__":
    main()
