"""The operator's look-ups, kept by kopf's indexes from the watch streams (no API request).

main.py declares three `kopf.index`es whose functions are below; kopf keeps them current on
every event. `Indexes` answers logic/inputs.py's `Lookup` and the wake-up questions (which
jobs wait on this Checkpoint, which Checkpoints does this job use) from them. Values are
small frozen summaries, so 10,000 Checkpoints cost a few MB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from checkpoint_operator.api.checkpoint import IMPORT_KINDS
from checkpoint_operator.api.common import PodPhase
from checkpoint_operator.logic.agent_pods import PodProblem, pod_problem
from checkpoint_operator.logic.claim_guard import MAX_TEMPLATE_CLAIMS, claim_references
from checkpoint_operator.logic.inputs import CheckpointInfo, TrainingJobInfo
from checkpoint_operator.logic.protection import used_uids
from checkpoint_operator.logic.workload import (LABEL_COMPONENT, LABEL_TRAINING_JOB_UID, import_claim_name_for,
                                                output_claim_name_for)

CLAIM_OWNING_SOURCES = (*IMPORT_KINDS, "upload")  # Checkpoints whose data lands on a claim of their own


@dataclass(frozen=True, slots=True)
class PodState:
    name: str
    phase: PodPhase
    problem: Optional[PodProblem]


def _ns_name(body: Mapping) -> tuple[str, str]:
    meta = body.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


def checkpoint_keys(body: Mapping) -> dict:
    namespace, _ = _ns_name(body)
    info = CheckpointInfo.from_body(body)
    keys: dict[tuple, Any] = {("name", namespace, info.name): info, ("uid", namespace, info.uid): info}
    if info.producer_uid:
        keys[("producer", namespace, info.producer_uid)] = info
    source = (body.get("spec") or {}).get("source") or {}
    volume = source.get("volume") or {}
    if volume.get("claimName"):
        keys[("claim", namespace, volume["claimName"])] = info.name
    if any(source.get(kind) is not None for kind in CLAIM_OWNING_SOURCES):
        keys[("managed-claim", namespace, import_claim_name_for(info.name))] = ("Checkpoint", info.name)
    return keys


def training_job_keys(body: Mapping) -> dict:
    namespace, name = _ns_name(body)
    info = TrainingJobInfo.from_body(body)
    keys: dict[tuple, Any] = {("name", namespace, name): info, ("uid", namespace, info.uid): info,
                              ("managed-claim", namespace, output_claim_name_for(name, info.uid)): ("TrainingJob", name)}
    if info.phase.is_finished:
        return keys
    template = ((body.get("spec") or {}).get("template") or {}).get("spec") or {}
    for reference in claim_references(template)[:MAX_TEMPLATE_CLAIMS]:
        keys[("template-claim", namespace, reference.claim)] = name
    for ref in (body.get("spec") or {}).get("checkpoints") or []:
        for field, kind in (("name", "name"), ("uid", "uid"), ("fromTrainingJob", "producer")):
            if ref.get(field):
                keys[("wants", namespace, kind, ref[field])] = name
    for uid in used_uids(body.get("metadata", {}).get("labels")):
        keys[("uses", namespace, uid)] = (name, info.uid)
    return keys


def worker_pod_keys(body: Mapping) -> dict:
    labels = body.get("metadata", {}).get("labels") or {}
    if labels.get(LABEL_COMPONENT) != "worker" or not labels.get(LABEL_TRAINING_JOB_UID):
        return {}
    namespace, name = _ns_name(body)
    state = PodState(name, PodPhase.of(body), pod_problem(dict(body)))
    return {("pods", namespace, labels[LABEL_TRAINING_JOB_UID]): state}


class Indexes:
    """Read access to the three indexes (kopf.Index, or plain dicts of lists in tests).

    Reads happen in worker threads while kopf updates the indexes in its loop: each read
    copies one store with a single `list()` (a C-level copy of a dict's values, atomic under
    the GIL), so it never iterates a dict that changes."""

    def __init__(self, checkpoints: Mapping, training_jobs: Mapping, pods: Mapping):
        self._checkpoints, self._training_jobs, self._pods = checkpoints, training_jobs, pods

    @staticmethod
    def _all(index: Mapping, key: tuple) -> list:
        store = index.get(key)
        return list(store) if store is not None else []

    def _one(self, index: Mapping, key: tuple) -> Any:
        values = self._all(index, key)
        return values[0] if values else None

    # --- logic.inputs.Lookup ---------------------------------------------------------------
    def checkpoint(self, namespace: str, name: str) -> Optional[CheckpointInfo]:
        return self._one(self._checkpoints, ("name", namespace, name))

    def checkpoint_by_uid(self, namespace: str, uid: str) -> Optional[CheckpointInfo]:
        return self._one(self._checkpoints, ("uid", namespace, uid))

    def checkpoints_of(self, namespace: str, producer_uid: str) -> list[CheckpointInfo]:
        return self._all(self._checkpoints, ("producer", namespace, producer_uid))

    def training_job(self, namespace: str, name: str) -> Optional[TrainingJobInfo]:
        return self._one(self._training_jobs, ("name", namespace, name))

    # --- wake-ups ------------------------------------------------------------------------
    def training_job_by_uid(self, namespace: str, uid: str) -> Optional[TrainingJobInfo]:
        return self._one(self._training_jobs, ("uid", namespace, uid))

    def jobs_waiting_on(self, namespace: str, kind: str, value: str) -> list[str]:
        """Unfinished TrainingJobs whose spec refers to a Checkpoint `name`/`uid` or to a
        `producer` TrainingJob by name."""
        return self._all(self._training_jobs, ("wants", namespace, kind, value))

    def users_of(self, namespace: str, checkpoint_uid: str) -> list[tuple[str, str]]:
        """(name, uid) of the unfinished TrainingJobs labelled as using the Checkpoint."""
        return self._all(self._training_jobs, ("uses", namespace, checkpoint_uid))

    def checkpoints_on_claim(self, namespace: str, claim: str) -> list[str]:
        return self._all(self._checkpoints, ("claim", namespace, claim))

    def managed_claim(self, namespace: str, claim: str) -> Optional[tuple[str, str]]:
        """(kind, name) of the TrainingJob or Checkpoint the operator makes (or made) this claim for."""
        return self._one(self._checkpoints, ("managed-claim", namespace, claim)) or \
            self._one(self._training_jobs, ("managed-claim", namespace, claim))

    def jobs_naming_claim(self, namespace: str, claim: str) -> list[str]:
        """Unfinished TrainingJobs whose pod template names the claim."""
        return self._all(self._training_jobs, ("template-claim", namespace, claim))

    def worker_pods(self, namespace: str, training_job_uid: str) -> list[PodState]:
        return self._all(self._pods, ("pods", namespace, training_job_uid))

    def resync_keys(self) -> Iterable[tuple[str, str, str]]:
        """Every object whose work may not be over: the safety net's pass."""
        for key in list(self._training_jobs):
            if key[0] == "name":
                info = self._one(self._training_jobs, key)
                if info is not None and not info.phase.is_finished:
                    yield ("TrainingJob", key[1], key[2])
        for key in list(self._checkpoints):
            if key[0] == "name":
                info = self._one(self._checkpoints, key)
                if info is not None and (not info.phase.is_settled or info.deleting):
                    yield ("Checkpoint", key[1], key[2])
