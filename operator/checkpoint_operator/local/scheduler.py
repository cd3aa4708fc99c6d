"""The local cluster's scheduler, the ephemeral volume controller and the attach rule.

``Scheduler`` assigns each pending pod without ``spec.nodeName`` to a node, as kube-scheduler does
for the fields used here:

- a node must match the pod's ``nodeSelector`` and required node affinity (``nodeSelectorTerms``:
  any term; in a term every ``matchExpressions`` on the node's labels, ``In``, ``NotIn``, ``Exists``,
  ``DoesNotExist``, ``Gt``, ``Lt``, and ``matchFields`` on ``metadata.name``), and the node affinity
  of the PersistentVolumes its claims are bound to (static local volumes);
- its claims must exist (a missing claim, one being deleted, or an unbound claim of an Immediate
  class make it ``Unschedulable`` with the scheduler's message); a claim of a
  WaitForFirstConsumer class is given the chosen node (``volume.kubernetes.io/selected-node``)
  and the pod is bound once the provisioner has bound the claim; an ephemeral volume's claim is
  waited for (the ephemeral volume controller creates it);
- a ``ReadWriteOncePod`` volume that another pod uses makes every node unavailable;
- of the nodes left, the one running the fewest pods (ties in turn), then ``spec.nodeName`` is set
  with the ``PodScheduled`` condition and a ``Scheduled`` event. Without a node: ``PodScheduled``
  False, ``Unschedulable``, ``0/N nodes are available: ...``, and a ``FailedScheduling`` event.

``EphemeralVolumes`` creates the claim of each ``ephemeral`` volume of a pod, named
``<pod>-<volume>``, owned by the pod (the garbage collector deletes it with the pod), with the
template's labels, annotations and spec; a claim of that name not owned by the pod is never used.

``AttachRules.blocking`` is the attach/detach controller's multi-attach rule, which the kubelets ask
before they start a pod: a volume that must be attached (its CSI driver's ``attachRequired``) and
whose PersistentVolume allows neither ``ReadOnlyMany`` nor ``ReadWriteMany`` is attached to one
node at a time. While a pod on another node uses it (started, not finished), the pod waits in
``ContainerCreating`` with the ``FailedAttachVolume`` event ``Multi-Attach error for volume "pvc-..."
Volume is already used by pod(s) ...``; it starts once those pods have finished (the volume is
detached at once here; a real cluster first unmounts and detaches, up to minutes).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from checkpoint_operator.local.events import NORMAL, WARNING, EventRecorder
from checkpoint_operator.local.kubelet import TERMINAL_PHASES, meta, now_rfc3339, pod_claims, pod_phase
from checkpoint_operator.local.server import ApiClient
from checkpoint_operator.local.node_selection import pod_fits_node, volume_fits_node
from checkpoint_operator.local.storage import (NO_PROVISIONER, RWOP, SELECTED_NODE, WAIT_FOR_FIRST_CONSUMER,
                                               VolumeProvisioner)

PODS, CLAIMS = "v1/pods", "v1/persistentvolumeclaims"
HOSTNAME_LABEL = "kubernetes.io/hostname"
SCHEDULER = "default-scheduler"
UNBOUND_GRACE_SECONDS = 1.0  # an Immediate claim just created is bound within this: no Unschedulable flicker
RETRY_SECONDS = 0.5


def owned_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    return any(ref.get("uid") == meta(owner).get("uid") and ref.get("controller")
               for ref in meta(obj).get("ownerReferences") or [])


@dataclass(frozen=True)
class LocalNode:
    name: str
    labels: Mapping[str, str]


def node_labels(name: str) -> dict[str, str]:
    return {HOSTNAME_LABEL: name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "topology.kubernetes.io/zone": "local-a"}


class Scheduler:
    """See the module's docstring. ``reconcile`` returns seconds after which to look again."""

    def __init__(self, api: ApiClient, nodes: list[LocalNode], pods: Any, claims: Any,
                 provisioner: VolumeProvisioner, events: EventRecorder) -> None:
        self.api = api
        self.nodes = nodes
        self.pods = pods
        self.claims = claims
        self.provisioner = provisioner
        self.events = events
        self._turn = itertools.count()
        self._unbound_since: dict[str, float] = {}  # pod uid -> when an unbound Immediate claim was first seen
        # pod uid -> the node chosen for it, until the pod cache shows it bound (kube-scheduler's "assumed"
        # pods): pods scheduled at once must each count on their node before the binding's answer is back
        self._assumed: dict[str, str] = {}

    async def reconcile(self, pod: dict[str, Any], now: float) -> float | None:
        spec = pod.get("spec") or {}
        if spec.get("nodeName") or meta(pod).get("deletionTimestamp") or pod_phase(pod) in TERMINAL_PHASES:
            self._unbound_since.pop(meta(pod)["uid"], None)
            self._assumed.pop(meta(pod)["uid"], None)
            return None
        namespace = meta(pod)["namespace"]
        claims = []
        for item in pod_claims(pod):
            claim = self.claims.get((namespace, item.claim))
            if claim is None:
                if item.ephemeral:
                    return RETRY_SECONDS  # the ephemeral volume controller creates it
                return await self._unschedulable(pod, f'persistentvolumeclaim "{item.claim}" not found')
            if item.ephemeral and not owned_by(claim, pod):
                return await self._unschedulable(pod, f"PVC {namespace}/{item.claim} was not created for pod "
                                                      f"{namespace}/{meta(pod)['name']} (pod is not owner)")
            if meta(claim).get("deletionTimestamp"):
                return await self._unschedulable(pod, f'persistentvolumeclaim "{item.claim}" is being deleted')
            claims.append(claim)
        unbound = [c for c in claims if self.provisioner.volume_of(namespace, meta(c)["name"]) is None]
        late = [c for c in unbound if not self._waits_for_consumer(c)]
        if late:
            first = self._unbound_since.setdefault(meta(pod)["uid"], now)
            if now - first < UNBOUND_GRACE_SECONDS:
                return RETRY_SECONDS
            return await self._unschedulable(pod, "pod has unbound immediate PersistentVolumeClaims")
        self._unbound_since.pop(meta(pod)["uid"], None)

        candidates, reasons = self._feasible(pod, claims)
        if not candidates:
            return await self._unschedulable(pod, "; ".join(f"{n} {r}" for r, n in reasons.items()) or
                                             "no nodes registered")
        node = self._choose(pod, candidates)
        self._assumed[meta(pod)["uid"]] = node.name
        waiting = False
        for claim in unbound:  # WaitForFirstConsumer: provisioned for the chosen node, then the pod is bound
            waiting = True
            if (meta(claim).get("annotations") or {}).get(SELECTED_NODE) != node.name:
                self.claims.observe(await self.api.patch(CLAIMS, namespace, meta(claim)["name"], {
                    "metadata": {"annotations": {SELECTED_NODE: node.name}}}))
        if waiting:
            return None  # the claims' binding wakes the pod
        answer = await self.api.patch(PODS, namespace, meta(pod)["name"], {"spec": {"nodeName": node.name}})
        self.pods.observe(await self.api.patch(PODS, namespace, meta(pod)["name"], {"status": {
            "conditions": [{"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                            "lastTransitionTime": now_rfc3339()}]}}, subresource="status") or answer)
        await self.events.post(pod, NORMAL, "Scheduled",
                               f"Successfully assigned {namespace}/{meta(pod)['name']} to {node.name}")
        return None

    def _waits_for_consumer(self, claim: Mapping[str, Any]) -> bool:
        model = self.provisioner.classes.get(self.provisioner.class_of(claim) or "")
        return model is not None and model.binding_mode == WAIT_FOR_FIRST_CONSUMER

    def _feasible(self, pod: Mapping[str, Any], claims: list[dict[str, Any]]) -> tuple[list[LocalNode], dict[str, int]]:
        namespace = meta(pod)["namespace"]
        reasons: dict[str, int] = {}
        volumes = [self.provisioner.volume_of(namespace, meta(c)["name"]) for c in claims]
        for claim, volume in zip(claims, volumes):
            if volume is not None and RWOP in volume.access_modes and self._used_by_another(pod, meta(claim)["name"]):
                return [], {"node(s) unavailable due to PersistentVolumeClaim with ReadWriteOncePod access mode "
                            "already in-use by another pod": len(self.nodes)}
        selected = {(meta(c).get("annotations") or {}).get(SELECTED_NODE) for c, v in zip(claims, volumes) if v is None}
        selected.discard(None)
        candidates = []
        for node in self.nodes:
            if not pod_fits_node(pod, node.labels, node.name):
                reason = "node(s) didn't match Pod's node affinity/selector"
            elif not all(volume_fits_node(v.node_affinity, node.labels, node.name) for v in volumes if v is not None):
                reason = "node(s) had volume node affinity conflict"
            elif selected and node.name not in selected:
                reason = "node(s) did not have enough free storage"  # provisioning was started for another node
            elif not all(self._static_volume_on(c, node) for c, v in zip(claims, volumes) if v is None):
                reason = "node(s) didn't find available persistent volumes to bind"
            else:
                candidates.append(node)
                continue
            reasons[reason] = reasons.get(reason, 0) + 1
        return candidates, reasons

    def _static_volume_on(self, claim: Mapping[str, Any], node: LocalNode) -> bool:
        """An unbound claim of a class of static volumes (no provisioner) binds on a node only to a
        free volume that may be there (VolumeBinding's FindPodVolumes); other claims: any node."""
        model = self.provisioner.classes.get(self.provisioner.class_of(claim) or "")
        if model is None or model.provisioner != NO_PROVISIONER:
            return True
        return self.provisioner.free_volume_for(claim, model, (node.name, node.labels)) is not None

    def _used_by_another(self, pod: Mapping[str, Any], claim: str) -> bool:
        namespace = meta(pod)["namespace"]
        for other in self.pods:
            if meta(other)["namespace"] != namespace or meta(other)["uid"] == meta(pod)["uid"]:
                continue
            if pod_phase(other) not in TERMINAL_PHASES and (other.get("spec") or {}).get("nodeName") and \
                    any(c.claim == claim for c in pod_claims(other)):
                return True
        return False

    def _choose(self, pod: Mapping[str, Any], candidates: list[LocalNode]) -> LocalNode:
        load = {n.name: 0 for n in candidates}
        uid = meta(pod)["uid"]
        present = set()
        for other in self.pods:
            present.add(meta(other)["uid"])
            if meta(other)["uid"] == uid:
                continue
            node = (other.get("spec") or {}).get("nodeName") or self._assumed.get(meta(other)["uid"])
            if node in load and pod_phase(other) not in TERMINAL_PHASES:
                load[node] += 1
        for gone in set(self._assumed) - present:  # deleted before their binding was seen
            del self._assumed[gone]
        fewest = min(load.values())
        least = [n for n in candidates if load[n.name] == fewest]
        return least[next(self._turn) % len(least)]

    async def _unschedulable(self, pod: dict[str, Any], why: str) -> float:
        total = len(self.nodes)
        message = (f"0/{total} nodes are available: {why}. preemption: 0/{total} nodes are available: "
                   f"{total} Preemption is not helpful for scheduling.")
        current = next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "PodScheduled"),
                       None)
        if current is None or current.get("message") != message:
            self.pods.observe(await self.api.patch(PODS, meta(pod)["namespace"], meta(pod)["name"], {"status": {
                "phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                    "lastProbeTime": None, "lastTransitionTime": now_rfc3339()}]}}, subresource="status"))
            await self.events.post(pod, WARNING, "FailedScheduling", message)
        return 5.0  # kube-scheduler retries unschedulable pods too (and on every change that may help)


# --- ephemeral volumes ---------------------------------------------------------------------------

class EphemeralVolumes:
    def __init__(self, api: ApiClient, claims: Any, events: EventRecorder) -> None:
        self.api = api
        self.claims = claims
        self.events = events

    async def reconcile(self, pod: dict[str, Any]) -> None:
        if meta(pod).get("deletionTimestamp"):
            return
        namespace = meta(pod)["namespace"]
        volumes = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or [] if v.get("ephemeral")}
        for item in pod_claims(pod):
            if not item.ephemeral or self.claims.get((namespace, item.claim)) is not None:
                continue
            template = volumes[item.volume]["ephemeral"].get("volumeClaimTemplate") or {}
            template_meta = template.get("metadata") or {}
            body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": item.claim, "labels": template_meta.get("labels") or {},
                                 "annotations": template_meta.get("annotations") or {},
                                 "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": meta(pod)["name"],
                                                      "uid": meta(pod)["uid"], "controller": True,
                                                      "blockOwnerDeletion": True}]},
                    "spec": template.get("spec") or {}}
            try:
                self.claims.observe(await self.api.create(CLAIMS, namespace, body))
            except Exception as exc:  # noqa: BLE001 - the pod's event says why; retried by the work queue
                await self.events.post(pod, WARNING, "FailedBinding", f"ephemeral volume {item.volume}: create PVC "
                                                                      f"{item.claim}: {exc}")
                raise


# --- the attach/detach controller's rule ---------------------------------------------------------

class AttachRules:
    """Which pods use a volume on which node (see the module's docstring)."""

    def __init__(self, provisioner: VolumeProvisioner, running: Callable[[], Iterable[tuple[str, dict[str, Any]]]],
                 pods: Any) -> None:
        self.provisioner = provisioner
        self.running = running  # (node, pod) of every pod a kubelet has started and not finished
        self.pods = pods

    def blocking(self, pod: Mapping[str, Any], node: str) -> str | None:
        """The FailedAttachVolume message while a volume of `pod` is attached to another node, else None."""
        namespace = meta(pod)["namespace"]
        for item in pod_claims(pod):
            volume = self.provisioner.volume_of(namespace, item.claim)
            if volume is None or volume.multi_node:
                continue
            local, others = [], 0
            for other_node, other in self.running():
                if other_node == node or meta(other)["uid"] == meta(pod)["uid"]:
                    continue
                current = self.pods.get((meta(other)["namespace"], meta(other)["name"])) or other
                if pod_phase(current) in TERMINAL_PHASES:
                    continue  # finished: its volumes are detached
                if not any(self.provisioner.volume_of(meta(other)["namespace"], c.claim) == volume
                           for c in pod_claims(other)):
                    continue
                if meta(other)["namespace"] == namespace:
                    local.append(meta(other)["name"])
                else:
                    others += 1
            if not local and not others:
                continue
            if local:
                used = f"Volume is already used by pod(s) {', '.join(sorted(local))}"
                if others:
                    used += f" and {others} pod(s) in different namespaces"
            else:
                used = f"Volume is already used by {others} pod(s) in different namespaces"
            return f'Multi-Attach error for volume "{volume.pv}" {used}'
        return None
