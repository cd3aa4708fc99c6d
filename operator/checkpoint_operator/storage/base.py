"""The store interface: everything that differs between keeping checkpoints on volumes and
in object storage. Pure methods that build manifests; no API calls."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional

from checkpoint_operator.agent.manifest import Manifest
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.logic.inputs import ResolvedInput

IMPORT_DIR = "data"


@dataclass
class InputVolumes:
    """What a training pod needs to see its inputs at <inputDir>/<name>, read-only."""

    volumes: list[dict] = field(default_factory=list)
    mounts: list[dict] = field(default_factory=list)            # added to every training container
    init_containers: list[dict] = field(default_factory=list)   # run before the training code


class MissingUpload(ValueError):
    pass


class Store(ABC):
    name: str
    keeps_output_claim: bool   # volume: the output PVC becomes the Checkpoints' storage
    import_needs_claim: bool   # volume: an import lands on a PVC of its own

    def __init__(self, config: OperatorConfig):
        self.config = config

    def agent_env(self) -> list[dict]:
        """Environment of agent pods that talk to the store."""
        return []

    @abstractmethod
    def input_volumes(self, spec: dict, inputs: list[ResolvedInput]) -> InputVolumes: ...

    @abstractmethod
    def snapshot_command(self, tj: dict, output_dir: str, layout: str) -> list[str]: ...

    @abstractmethod
    def snapshot_location(self, claim: str, manifest: Manifest, layout: str, uploads: dict[str, str]) -> dict: ...

    @abstractmethod
    def import_containers(self, checkpoint: dict, fetch_command: list[str], data_dir: str,
                          source_env: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
        """(init containers, containers, volumes) of the pod that imports `checkpoint`."""

    @abstractmethod
    def import_location(self, checkpoint: dict, claim: str, uploads: dict[str, str]) -> dict: ...

    def is_committed(self, location: dict) -> bool:
        """Is the data at `location` complete? Checked before a Checkpoint is marked Ready."""
        return True

    def delete_owned_data(self, status: dict) -> Optional[str]:
        """Delete the data of a deleted Checkpoint that the operator owns; return where it was.
        Idempotent. Volume data goes with its PVC (owner references), so nothing to do there."""
        return None
