"""Where checkpoint bytes live. One interface (`Store`), two stores: `volume` (the default:
checkpoints stay on the PVCs they were written to, or in VolumeSnapshots of them with
`CKPT_VOLUME_SNAPSHOT_CLASS`) and `s3` (uploaded to object storage). The operator picks one for
the whole installation (`CKPT_STORAGE_TYPE`)."""

from __future__ import annotations

from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.storage.base import ForeignLocation, MissingUpload, Store


def store_for(config: OperatorConfig) -> Store:
    if config.storage_type == "s3":
        from checkpoint_operator.storage.s3 import S3Store
        return S3Store(config)
    from checkpoint_operator.storage.volume import SnapshotVolumeStore, VolumeStore
    return SnapshotVolumeStore(config) if config.volume_snapshot_class else VolumeStore(config)


__all__ = ["ForeignLocation", "MissingUpload", "Store", "store_for"]
