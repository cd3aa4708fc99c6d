"""The volume store (default): a snapshot freezes checkpoints where the job wrote them.

Checkpoints point at (claim, path); inputs mount that claim read-only with subPath; the
output PVC's owner references move from the job to its Checkpoints, so Kubernetes deletes
it with the last of them. Nothing but a StorageClass is needed."""

from __future__ import annotations

import posixpath

from checkpoint_operator.agent.manifest import Manifest
from checkpoint_operator.logic.agent_pods import agent_container
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.storage.base import IMPORT_DIR, InputVolumes, Store

INPUT_VOLUME_PREFIX = "ckpt-in-"


class VolumeStore(Store):
    name = "volume"
    keeps_output_claim = True
    import_needs_claim = True

    def input_volumes(self, spec: dict, inputs: list[ResolvedInput]) -> InputVolumes:
        """Each input's PVC, read-only, with subPath at <inputDir>/<name>; one volume per claim."""
        volumes: dict[str, dict] = {}
        mounts = []
        for item in inputs:
            location = item.location["volume"]
            claim = location["claimName"]
            volume_name = volumes.setdefault(claim, {
                "name": f"{INPUT_VOLUME_PREFIX}{len(volumes)}",
                "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})["name"]
            base = posixpath.join(spec["inputDir"], item.mount_name)
            sub_path = posixpath.normpath(location.get("path", ".").lstrip("/") or ".")
            for rel in location.get("items") or [None]:  # items: only these files (e.g. the root files)
                path = sub_path if rel is None else posixpath.join(sub_path, rel)
                mounts.append({"name": volume_name, "readOnly": True,
                               "mountPath": base if rel is None else posixpath.join(base, rel),
                               "subPath": "" if path == "." else posixpath.normpath(path)})
        return InputVolumes(volumes=list(volumes.values()), mounts=mounts)

    def snapshot_command(self, tj: dict, output_dir: str, layout: str) -> list[str]:
        return ["checkpoint-operator", "agent", "scan", output_dir, "--layout", layout, "--json"]

    def snapshot_location(self, claim: str, manifest: Manifest, layout: str, uploads: dict[str, str]) -> dict:
        """The root files (and, in the `files` layout, each file) share their directory with
        other checkpoints, so only their own files are listed as items (mounted one by one)."""
        if manifest.path == "." or layout == "files":
            return {"volume": {"claimName": claim, "path": ".", "items": [f.path for f in manifest.files]}}
        return {"volume": {"claimName": claim, "path": manifest.path}}

    def import_containers(self, checkpoint: dict, fetch_command: list[str], data_dir: str,
                          source_env: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
        from checkpoint_operator.logic.workload import import_claim_name
        mount = [{"name": "data", "mountPath": posixpath.dirname(data_dir)}]
        # Import onto the Checkpoint's own PVC, then scan it: one container, paths passed as
        # arguments (never inside the script) so every runtime can rewrite them.
        script = 'checkpoint-operator agent import "$0" "$1" && checkpoint-operator agent scan "$1" --single --json'
        fetch = agent_container("import", ["sh", "-c", script, fetch_command[3], data_dir], self.config,
                                mounts=mount, env=source_env)
        return [], [fetch], [{"name": "data", "persistentVolumeClaim": {"claimName": import_claim_name(checkpoint)}}]

    def import_location(self, checkpoint: dict, claim: str, uploads: dict[str, str]) -> dict:
        return {"volume": {"claimName": claim, "path": IMPORT_DIR}}
