"""The s3 store: checkpoints live in S3-compatible object storage.

A snapshot pod uploads each checkpoint (manifest last: the commit marker); the output PVC is
released unless something in it was not stored. Inputs are downloaded by init containers into
an emptyDir (sized after the inputs) that the training containers mount read-only, verified
against the manifest and pinned to the digest recorded when the job started.

Credentials (docs/guarantees.md, the credential model): every byte a namespace's agent pods read
or write lies under `namespace_prefix(ns)` = `s3://<bucket>/<prefix>/<ns>/`, so the store
Secret of each namespace (CKPT_S3_SECRET_NAME, provisioned by the platform) needs, and should
have, access to that prefix only: a tenant who reads its own namespace's Secret can then
neither write nor read another's checkpoints. The operator's own credentials (its
environment) reach the whole prefix; they never go into a pod, and they only check commits
and delete owned data, never outside the namespace the Checkpoint lives in."""

from __future__ import annotations

import posixpath
from typing import Any, Optional

from checkpoint_operator.protocol.results import CheckpointSummary
from checkpoint_operator.api.checkpoint import Checkpoint, CheckpointStatus, Location, S3Location
from checkpoint_operator.api.upload import UploadStatus
from checkpoint_operator.api.trainingjob import TrainingJob
from checkpoint_operator.logic import agent_commands, node_cache
from checkpoint_operator.logic.agent_pods import (STAGING_MOUNT, STAGING_VOLUME, InputVolumes, agent_container,
                                                  download_container, staging_size_limit)
from checkpoint_operator.logic.inputs import ResolvedInput
from checkpoint_operator.logic.parts import parts_count
from checkpoint_operator.api.clustercheckpoint import ClusterCheckpoint, ClusterCheckpointStatus
from checkpoint_operator.logic.import_sources import ImportSpec, import_spec, import_spec_of
from checkpoint_operator.logic.workload import import_data_dir
from checkpoint_operator.logic.catalog import CATALOG_DIRECTORY
from checkpoint_operator.logic.transfers import UploadRequest, build_upload_check_pod
from checkpoint_operator.logic.volume_snapshots import Taken, TakenSnapshot
from checkpoint_operator.storage.base import ForeignLocation, MissingUpload, PodParts, Store, UploadPod


def _under(uri: str, prefix: str) -> bool:
    """Is `uri` inside `prefix`? Some S3-compatible servers map keys onto file paths, so a `..`
    segment counts as leaving it."""
    return uri.startswith(prefix) and ".." not in uri[len(prefix):].split("/")


class S3Store(Store):
    name = "s3"
    keeps_output_claim = False
    import_needs_claim = False
    snapshot_writes_output = False
    later_writes_reach_checkpoints = False

    def agent_env(self) -> list[dict[str, Any]]:
        config = self.config
        env: list[dict[str, Any]] = []
        if config.s3_endpoint:
            env.append({"name": "AWS_ENDPOINT_URL", "value": config.s3_endpoint})
        if config.s3_region:
            env.append({"name": "AWS_DEFAULT_REGION", "value": config.s3_region})
        if config.s3_secret_name:
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": config.s3_secret_name, "key": key}}})
        return env

    def namespace_prefix(self, namespace: str) -> str:
        """s3://<bucket>/<prefix>/<namespace>/: all a namespace's data, and its credentials' scope."""
        parts = [p for p in (self.config.s3_prefix.strip("/"), namespace) if p]
        return f"s3://{self.config.s3_bucket}/" + "/".join(parts) + "/"

    def prefix_for(self, namespace: str, name: str, uid: str) -> str:
        """<namespace_prefix>/<name>-<uid8>/: unique even for re-created namesakes."""
        return self.namespace_prefix(namespace) + f"{name}-{uid[:8]}/"

    @staticmethod
    def _uploaded(uri: str, prefix: str, what: str) -> Location:
        """An upload the agent reported, which must lie under the prefix the operator gave it."""
        if not _under(uri, prefix):
            raise MissingUpload(f"{what} was reported uploaded to {uri}, outside {prefix}; refused")
        return Location(s3=S3Location(uri=uri))

    def input_volumes(self, tj: TrainingJob, inputs: list[ResolvedInput]) -> InputVolumes:
        """Each input from the node cache where it can be (logic/node_cache.py), else downloaded into the
        pod's own emptyDir."""
        cached = [(index, item) for index, item in enumerate(inputs) if node_cache.cacheable(item, self.config)]
        result = node_cache.cache_parts(tj.metadata.namespace, tj.spec.inputDir, cached, self.config,
                                        self.agent_env(), node_cache.verify_mode(tj.metadata.annotations, self.config))
        private = [(index, item) for index, item in enumerate(inputs) if not node_cache.cacheable(item, self.config)]
        if not private:
            return result
        sizes = [i.size_bytes for _, i in private]
        total = None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
        limit = staging_size_limit(total, self.config.max_checkpoint_bytes * len(private))
        result.volumes.append({"name": STAGING_VOLUME, "emptyDir": {"sizeLimit": limit}})
        for index, item in private:
            result.mounts.append({"name": STAGING_VOLUME, "readOnly": True, "subPath": item.mount_name,
                                  "mountPath": posixpath.join(tj.spec.inputDir, item.mount_name)})
            if item.location.s3 is None:
                raise ValueError(f"input {item.name} is not in object storage (status.location has no s3)")
            command = agent_commands.download(item.location.s3.uri, posixpath.join(STAGING_MOUNT, item.mount_name),
                                              digest=item.digest)
            result.init_containers.append(agent_container(
                download_container(index), command, self.config,
                mounts=[{"name": STAGING_VOLUME, "mountPath": STAGING_MOUNT}], env=self.agent_env()))
        return result

    def snapshot_command(self, tj: TrainingJob, output_dir: str) -> list[str]:
        meta = tj.metadata
        return agent_commands.snapshot(output_dir, self.prefix_for(meta.namespace, meta.name, meta.uid),
                                       layout=tj.spec.output.layout, reuse_sealed=tj.publishes_live,
                                       parts=parts_count(tj), per_worker=bool(tj.spec.output.perWorker))

    def live_upload_prefix(self, tj: TrainingJob) -> str:
        meta = tj.metadata
        return self.prefix_for(meta.namespace, meta.name, meta.uid)

    def live_sealed_prefix(self, tj: TrainingJob) -> str:
        return self.live_upload_prefix(tj) + "sealed/"

    def live_location(self, tj: TrainingJob, claim: str, manifest: CheckpointSummary,
                      taken: Optional[TakenSnapshot] = None) -> Location:
        if not manifest.uri:
            raise MissingUpload(f"the sealing sidecar did not upload {manifest.path!r}")
        # The sidecar runs in the user's pod: its lines are believed only under the job's own prefix.
        return self._uploaded(manifest.uri, self.live_sealed_prefix(tj), repr(manifest.path))

    def snapshot_location(self, tj: TrainingJob, claim: str, manifest: CheckpointSummary, layout: str,
                          taken: Optional[Taken] = None) -> Location:
        if not manifest.uri:
            raise MissingUpload(f"the snapshot pod did not upload {manifest.path!r}")
        meta = tj.metadata
        return self._uploaded(manifest.uri, self.prefix_for(meta.namespace, meta.name, meta.uid), repr(manifest.path))

    def import_containers(self, checkpoint: Checkpoint, max_size: int) -> PodParts:
        meta = checkpoint.metadata
        return self._import_parts(import_spec(checkpoint), self.prefix_for(meta.namespace, meta.name, meta.uid),
                                  max_size)

    # --- the catalog (ClusterCheckpoints) --------------------------------------------------------

    def catalog_prefix(self) -> str:
        """s3://<bucket>/<prefix>/_catalog/: every namespace's credentials may read it, none may write it
        (`_catalog` is no namespace's name: a namespace name has no '_'). The catalog's import pod, in the
        operator's namespace, writes it with that namespace's store Secret."""
        parts = [p for p in (self.config.s3_prefix.strip("/"), CATALOG_DIRECTORY) if p]
        return f"s3://{self.config.s3_bucket}/" + "/".join(parts) + "/"

    def catalog_entry_prefix(self, entry: ClusterCheckpoint) -> str:
        return self.catalog_prefix() + f"{entry.metadata.name}-{entry.metadata.uid[:8]}/"

    def catalog_import_containers(self, entry: ClusterCheckpoint, max_size: int) -> PodParts:
        return self._import_parts(import_spec_of(entry.spec.source), self.catalog_entry_prefix(entry), max_size)

    def catalog_import_location(self, entry: ClusterCheckpoint, claim: str, manifest: CheckpointSummary) -> Location:
        if not manifest.uri:
            raise MissingUpload("the import pod did not upload the catalog entry")
        return self._uploaded(manifest.uri, self.catalog_entry_prefix(entry), "the catalog entry")

    def delete_catalog_data(self, status: ClusterCheckpointStatus) -> Optional[str]:
        """A deleted entry's data, never outside the catalog prefix (whatever its status says)."""
        uri = status.location.s3.uri if status.location and status.location.s3 else None
        if not (status.owned and uri):
            return None
        if not _under(uri, self.catalog_prefix()):
            raise ForeignLocation(f"{uri} is outside the catalog prefix {self.catalog_prefix()}: not deleted")
        from checkpoint_operator.objectstore.s3 import delete_prefix
        released = self._released(uri)
        delete_prefix(uri, endpoint_url=self.config.s3_endpoint, client=self._client())
        self.collect_blobs(self.catalog_prefix(), released)
        return uri

    def _client(self) -> Any:
        """One botocore client for the store's deletions (made once: a client costs most of a second
        to make, which delayed a deletion's first request behind it)."""
        client = getattr(self, "_s3_client", None)
        if client is None:
            from checkpoint_operator.objectstore.s3 import make_client
            client = self._s3_client = make_client(self.config.s3_endpoint)
        return client

    def _released(self, uri: str) -> set[bytes]:
        """The blobs the manifest at `uri` names, read before the prefix goes (best effort)."""
        from checkpoint_operator.objectstore.blobs import released_blobs
        try:
            return released_blobs(self._client(), uri)
        except Exception:  # noqa: BLE001 - they then wait for the grace period
            return set()

    def collect_blobs(self, prefix: str, released: Optional[set[bytes]] = None) -> None:
        """The blobs under `prefix` (a namespace's, or the catalog's) that no manifest there names any
        more and that are past the grace period (objectstore/blobs.py: why uploads in flight are safe).
        A manifest it cannot read stops it (nothing deleted), with one line in the operator's log."""
        import logging

        from checkpoint_operator.objectstore.blobs import collect
        from checkpoint_operator.objectstore.s3 import describe_error
        try:
            done = collect(self._client(), prefix, released=released or set())
        except Exception as exc:  # noqa: BLE001 - the Checkpoint's own data is gone; blobs wait for the next deletion
            logging.getLogger(__name__).warning("unused blobs under %s not collected: %s", prefix,
                                                describe_error(exc, prefix, self.config.s3_endpoint))
            return
        for problem in done.problems:
            logging.getLogger(__name__).warning("unused blobs under %s: %s", prefix, problem)
        if done.deleted:
            logging.getLogger(__name__).info("deleted %d unused blobs under %s (%d kept: referenced or young)",
                                             len(done.deleted), prefix, done.blobs - len(done.deleted))

    def _import_parts(self, source: ImportSpec, upload_to: str, max_size: int) -> PodParts:
        """Fetch with the source's credentials (init container), upload with the store's; the
        staging emptyDir is capped at the size limit."""
        data_dir = import_data_dir()
        mount = [{"name": "data", "mountPath": posixpath.dirname(data_dir)}]
        fetch = agent_container("import", agent_commands.import_(source.uri, data_dir, max_size=max_size,
                                                                 source_args=source.args),
                                self.config, mounts=mount + source.mounts, env=source.env)
        upload = agent_container("upload", agent_commands.snapshot(data_dir, upload_to, single=True),
            self.config, mounts=mount, env=self.agent_env())
        volumes = [{"name": "data", "emptyDir": {"sizeLimit": staging_size_limit(None, max_size)}}, *source.volumes]
        return [fetch], [upload], volumes

    def import_location(self, checkpoint: Checkpoint, claim: str, manifest: CheckpointSummary,
                        taken: Optional[TakenSnapshot] = None) -> Location:
        if not manifest.uri:
            raise MissingUpload("the import pod did not upload the checkpoint")
        meta = checkpoint.metadata
        return self._uploaded(manifest.uri, self.prefix_for(meta.namespace, meta.name, meta.uid), "the checkpoint")

    def upload_target(self, checkpoint: Checkpoint) -> UploadStatus:
        """A prefix of the store, owned by the Checkpoint from the moment it is assigned."""
        meta = checkpoint.metadata
        return UploadStatus(store="s3", uri=self.prefix_for(meta.namespace, meta.name, meta.uid),
                            endpoint=self.config.s3_endpoint or None)

    def upload_pod(self, checkpoint: Checkpoint, request: UploadRequest, max_size: int) -> UploadPod:
        """The data is already under the prefix: a pod checks every object against the manifest."""
        target = self.upload_target(checkpoint)
        uri = target.uri or ""
        pod = build_upload_check_pod(checkpoint, self.config, request, uri, self.agent_env(), max_size)
        return UploadPod(pod, target, Location(s3=S3Location(uri=uri)), f"verifying the pushed data at {uri}")

    def is_committed(self, location: Location) -> bool:
        """The manifest is written last: without it the upload does not exist."""
        from checkpoint_operator.objectstore.s3 import manifest_exists
        if location.s3 is None:
            return False
        return manifest_exists(location.s3.uri, endpoint_url=self.config.s3_endpoint)

    def sealed_upload_refusal(self, location: Location, namespace: str, job_name: str, job_uid: str) -> Optional[str]:
        """Only a committed upload under the job's own prefix (a spec names it: never another's data)."""
        if location.s3 is None:
            return "the sealed location is not in object storage, where this store keeps every checkpoint"
        prefix = self.prefix_for(namespace, job_name, job_uid)
        if not _under(location.s3.uri, prefix):
            return f"the sealed location {location.s3.uri} is outside the job's prefix {prefix}"
        if not self.is_committed(location):
            return f"{location.s3.uri} has no manifest in the store: the upload did not complete"
        return None

    def delete_unused_uploads(self, tj: TrainingJob, uris: list[str]) -> list[str]:
        from checkpoint_operator.objectstore.s3 import delete_prefix
        own = self.live_upload_prefix(tj) + "dirs/"  # only the snapshot's own uploads, never a sealed copy
        deleted: list[str] = []
        released: set[bytes] = set()
        for uri in uris:
            if uri.startswith(own):
                released |= self._released(uri)
                delete_prefix(uri, endpoint_url=self.config.s3_endpoint, client=self._client())
                deleted.append(uri)
        if deleted:
            self.collect_blobs(self.namespace_prefix(tj.metadata.namespace), released)
        return deleted

    def delete_owned_data(self, status: CheckpointStatus, namespace: str) -> Optional[str]:
        """Everything under the Checkpoint's prefix (a second delete of gone data succeeds), then the
        namespace's blobs no other manifest names, with the operator's own credentials: so never
        outside the Checkpoint's namespace's prefix."""
        # An upload's prefix is the operator's from the moment it is assigned (status.upload).
        uri = (status.location.s3.uri if status.location and status.location.s3 else None) \
            or (status.upload.uri if status.upload else None)
        if not (status.owned and uri):
            return None  # data it merely points to is never deleted
        if not _under(uri, self.namespace_prefix(namespace)):
            raise ForeignLocation(f"{uri} is outside {self.namespace_prefix(namespace)}, where this namespace's "
                                  "data lives: not deleted")
        from checkpoint_operator.objectstore.s3 import delete_prefix
        released = self._released(uri)
        delete_prefix(uri, endpoint_url=self.config.s3_endpoint, client=self._client())
        # Its files' blobs are shared with the namespace's other checkpoints: only those nothing names go.
        self.collect_blobs(self.namespace_prefix(namespace), released)
        return uri
