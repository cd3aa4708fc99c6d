"""ObjectMeta: the part of metadata the operator reads, typed (everything else is kept)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from checkpoint_operator import API_VERSION
from checkpoint_operator.api.rules import ApiModel


class OwnerReference(BaseModel):
    model_config = ConfigDict(extra="allow")

    apiVersion: str = ""
    kind: str = ""
    name: str = ""
    uid: str = ""
    controller: Optional[bool] = None
    blockOwnerDeletion: Optional[bool] = None


class ObjectMeta(BaseModel):
    """metav1.ObjectMeta as the API returns it; unknown fields (managedFields, ...) are kept."""

    model_config = ConfigDict(extra="allow")

    name: str = ""
    namespace: str = ""
    uid: str = ""
    resourceVersion: Optional[str] = None
    generation: Optional[int] = None
    labels: Optional[dict[str, str]] = None
    annotations: Optional[dict[str, str]] = None
    finalizers: Optional[list[str]] = None
    ownerReferences: Optional[list[OwnerReference]] = None
    deletionTimestamp: Optional[str] = None
    creationTimestamp: Optional[str] = None

    @property
    def deleting(self) -> bool:
        return bool(self.deletionTimestamp)

    def label(self, key: str) -> Optional[str]:
        return (self.labels or {}).get(key)

    def annotation(self, key: str) -> Optional[str]:
        return (self.annotations or {}).get(key)

    def has_finalizer(self, finalizer: str) -> bool:
        return finalizer in (self.finalizers or [])

    def is_owned_by(self, uid: str) -> bool:
        return any(o.uid == uid for o in self.ownerReferences or [])

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, exclude_unset=True)


def meta_field() -> Any:
    return Field(default_factory=ObjectMeta, description="Standard object metadata.")


class ApiObject(ApiModel):
    """Base of the two kinds: apiVersion and metadata; the wire form keeps metadata as the API
    gave it (unknown fields too) and leaves out an empty status."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    apiVersion: str = API_VERSION
    metadata: ObjectMeta = meta_field()

    def to_wire(self) -> dict[str, Any]:
        wire = super().to_wire()
        wire["metadata"] = self.metadata.wire()
        if not wire.get("status"):
            wire.pop("status", None)
        return wire
