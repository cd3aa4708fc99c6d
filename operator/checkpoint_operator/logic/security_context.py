"""The securityContext of every pod and container the operator creates or injects.

Each meets Pod Security "restricted" (local/pod_security.py checks it as the API server does):
runAsNonRoot, allowPrivilegeEscalation false, every capability dropped, seccomp RuntimeDefault.
Agent pods mount no service-account token: they parse untrusted archives and talk to no API.

Whose identity a container runs under decides what it can do with the files it touches:
- agent pods run as the image's user (AGENT_UID); one that writes a claim (an import, a push)
  also gets it as fsGroup, so a fresh volume (root-owned on most provisioners) is writable;
- the snapshot pod reads what the trainer wrote (a checkpoint may be 0600): it runs as the
  trainer's user and groups when the template names them (read-only mount: no fsGroup, so the
  kubelet never changes the ownership of the trainer's files);
- the sealing sidecar makes the trainer's files read-only and removes retired directories:
  chmod needs the owner, so it runs as the trainer's user (the first container's, else the
  pod's; with neither, both run as their images' users and a sealed directory that stays
  writable is reported, never hidden);
- input downloads write into an emptyDir the trainer reads (world-readable files): any
  non-root user will do, so they keep the pod's user unless that is root.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

AGENT_UID = 65532  # the Dockerfile's numeric USER (tests/test_pod_security.py checks they agree)
RUNTIME_DEFAULT = {"type": "RuntimeDefault"}


def restricted_container() -> dict[str, Any]:
    """The container-level settings "restricted" asks of every container."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
            "seccompProfile": dict(RUNTIME_DEFAULT)}


@dataclass(frozen=True)
class Identity:
    """Who a pod template's processes run as, as far as the template says."""

    uid: Optional[int] = None
    gid: Optional[int] = None
    groups: tuple[int, ...] = ()   # fsGroup and supplementalGroups of the pod

    @property
    def non_root_user(self) -> Optional[int]:
        return self.uid if self.uid else None  # 0 and unknown alike: not an identity an agent takes


def _int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def trainer_identity(template_spec: dict[str, Any]) -> Identity:
    """The first container's runAsUser/runAsGroup over the pod's, and the pod's groups."""
    pod = template_spec.get("securityContext") or {}
    first = ((template_spec.get("containers") or [{}])[0].get("securityContext")) or {}
    uid = _int(first.get("runAsUser"))
    gid = _int(first.get("runAsGroup"))
    uid = uid if uid is not None else _int(pod.get("runAsUser"))
    gid = gid if gid is not None else _int(pod.get("runAsGroup"))
    groups = [g for g in [_int(pod.get("fsGroup")), *[_int(g) for g in pod.get("supplementalGroups") or []]]
              if g is not None]
    return Identity(uid, gid, tuple(dict.fromkeys(groups)))


def agent_pod_context(*, writes_claim: bool, identity: Optional[Identity] = None) -> dict[str, Any]:
    """The pod-level securityContext of an agent pod. `identity`: run as the trainer (snapshot)."""
    context: dict[str, Any] = {"runAsNonRoot": True, "runAsUser": AGENT_UID, "runAsGroup": AGENT_UID,
                               "seccompProfile": dict(RUNTIME_DEFAULT)}
    if identity is not None and identity.non_root_user is not None:
        context["runAsUser"] = identity.non_root_user
        context["runAsGroup"] = identity.gid if identity.gid is not None else identity.non_root_user
        if identity.groups:
            context["supplementalGroups"] = list(identity.groups)
    if writes_claim:
        # Only here: on a read-only mount fsGroup would be a request to re-own the trainer's files.
        context["fsGroup"] = AGENT_UID
        context["fsGroupChangePolicy"] = "OnRootMismatch"
    return context


def _pod_user(pod_spec: dict[str, Any]) -> Optional[int]:
    return _int((pod_spec.get("securityContext") or {}).get("runAsUser"))


def fit_injected_container(container: dict[str, Any], pod_spec: dict[str, Any]) -> dict[str, Any]:
    """A container the operator adds to a user's pod (an input download), with "restricted"
    settings that still start under the user's pod-level ones: a pod that runs as root would
    contradict runAsNonRoot, so such a container runs as the agent's user instead."""
    container = copy.deepcopy(container)
    context = {**restricted_container(), **(container.get("securityContext") or {})}
    if _pod_user(pod_spec) == 0 and _int(context.get("runAsUser")) in (None, 0):
        context["runAsUser"] = AGENT_UID
    container["securityContext"] = context
    return container


def sidecar_context(template_spec: dict[str, Any]) -> dict[str, Any]:
    """The sealing sidecar: "restricted", as the trainer's user and group (see the module doc).
    A trainer that runs as root (explicitly) leaves no restricted pod to keep: the sidecar then
    runs as root too, or it could not make root's files read-only."""
    first = ((template_spec.get("containers") or [{}])[0].get("securityContext")) or {}
    context = restricted_container()
    context.update({k: v for k, v in first.items() if k in ("runAsUser", "runAsGroup")})
    effective = _int(context.get("runAsUser"))
    if effective is None:
        effective = _pod_user(template_spec)
    if effective == 0:
        del context["runAsNonRoot"]
        context["runAsUser"] = 0
    return context
