"""API discovery as kube-apiserver serves it: the entries of a legacy ``APIResourceList`` (``/api/v1``,
``/apis/GROUP/VERSION``).

kmock 0.8 lists each subresource (``trainingjobs/status``) with its resource's ``singularName``,
``shortNames`` and ``categories`` and every verb. kube-apiserver gives a subresource none of these
(``singularName: ""``, no ``shortNames``, no ``categories``) and only the verbs it serves, and omits empty
``shortNames`` and ``categories`` (``omitempty``). The difference shows in kubectl: its short name expander
saw ``tj`` twice and warned ``short name "tj" could also match lower priority resource
trainingjobs/status.ckpt.dev`` on every ``kubectl get tj``; ``kubectl get ml`` (a category) would have
listed subresources too.

Only the legacy lists: the emulator serves no aggregated discovery (``apidiscovery.k8s.io/v2``), so
client-go (kubectl) falls back to these, as it does with an API server older than 1.26.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# What kube-apiserver 1.3x serves for the subresources kmock's bundle lists (kubectl get --raw /api/v1):
# the subresource's kind (None: the resource's own), its group and version when not the resource's, its verbs.
_UPDATE = ("get", "patch", "update")
_PROXY: tuple[str, ...] = ("create", "delete", "get", "patch", "update")
SUBRESOURCES: dict[str, tuple[str | None, str | None, str | None, tuple[str, ...]]] = {
    "status": (None, None, None, _UPDATE),
    "scale": ("Scale", "autoscaling", "v1", _UPDATE),
    "log": (None, None, None, ("get",)),
    "exec": ("PodExecOptions", None, None, ("create", "get")),
    "attach": ("PodAttachOptions", None, None, ("create", "get")),
    "portforward": ("PodPortForwardOptions", None, None, ("create", "get")),
    "binding": ("Binding", None, None, ("create",)),
    "eviction": ("Eviction", "policy", "v1", ("create",)),
    "ephemeralcontainers": (None, None, None, _UPDATE),
    "resize": (None, None, None, _UPDATE),
    "finalize": (None, None, None, ("update",)),
    "token": ("TokenRequest", "authentication.k8s.io", "v1", ("create",)),
}
_PROXY_KINDS = {"pods": "PodProxyOptions", "nodes": "NodeProxyOptions", "services": "ServiceProxyOptions"}


def api_resource(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One ``APIResource`` of kmock's list as kube-apiserver states it."""
    result = dict(entry)
    for field in ("shortNames", "categories"):
        if not result.get(field):
            result.pop(field, None)
    resource, _, subresource = str(entry.get("name", "")).partition("/")
    if not subresource:
        return result
    for field in ("shortNames", "categories"):  # a subresource has neither: only its resource is named so
        result.pop(field, None)
    result["singularName"] = ""
    if subresource == "proxy":
        kind, group, version, verbs = _PROXY_KINDS.get(resource), None, None, _PROXY
    else:
        kind, group, version, verbs = SUBRESOURCES.get(subresource, (None, None, None, _UPDATE))
    if kind is not None:
        result["kind"] = kind
    if group is not None:
        result["group"], result["version"] = group, version
    result["verbs"] = list(verbs)
    return result


def api_resource_list(payload: Mapping[str, Any]) -> dict[str, Any]:
    """kmock's ``APIResourceList`` with each entry as kube-apiserver states it, in name order (a resource
    before its subresources, as kube-apiserver lists them)."""
    resources = [api_resource(entry) for entry in payload.get("resources", [])]
    return {**payload, "resources": sorted(resources, key=lambda entry: str(entry.get("name", "")))}
