"""How big an import may be: the operator's limit (CKPT_MAX_CHECKPOINT_SIZE), lowered by the
Namespace's annotation `ckpt.dev/max-checkpoint-size` (set by whoever administers namespaces,
which tenants usually cannot edit) and by the Checkpoint's own spec.maxSize. Each may only
lower it, never raise it."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from checkpoint_operator.api.common import parse_quantity

NAMESPACE_LIMIT_ANNOTATION = "ckpt.dev/max-checkpoint-size"


class InvalidLimit(ValueError):
    pass


def import_limit(operator_limit: int, namespace: Optional[Mapping[str, Any]], max_size: Optional[str]) -> int:
    """The limit in bytes; InvalidLimit names the Namespace annotation when it is not a quantity."""
    limit = operator_limit
    meta = (namespace or {}).get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(NAMESPACE_LIMIT_ANNOTATION)
    if raw is not None:
        try:
            limit = min(limit, parse_quantity(raw.strip()))
        except (ValueError, TypeError):
            raise InvalidLimit(f"Namespace {meta.get('name', '?')}: annotation {NAMESPACE_LIMIT_ANNOTATION}={raw!r} "
                               "is not a quantity (e.g. 50Gi)") from None
    if max_size:
        limit = min(limit, parse_quantity(max_size))
    return limit
