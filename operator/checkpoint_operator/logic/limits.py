"""How big an import may be: the operator's limit (CKPT_MAX_CHECKPOINT_SIZE), lowered by the
Namespace's annotation `ckpt.dev/max-checkpoint-size` (set by whoever administers namespaces,
which tenants usually cannot edit) and by the Checkpoint's own spec.maxSize. Each may only
lower it, never raise it."""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

from checkpoint_operator.api.common import QUANTITY_PATTERN, parse_quantity

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
            shown = repr(raw[:60] if isinstance(raw, str) else raw)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise InvalidLimit(f"Namespace {meta.get('name', '?')}: annotation {NAMESPACE_LIMIT_ANNOTATION}="
                               f"{shown} is not a quantity (e.g. 50Gi; below 8Ei)") from None
    if max_size:
        try:
            limit = min(limit, parse_quantity(max_size))
        except ValueError as exc:
            if not re.fullmatch(QUANTITY_PATTERN, max_size.strip()):
                raise InvalidLimit(f"spec.maxSize: {exc}") from None
            # A quantity beyond int64 (the schema's pattern allows it): above every limit, it lowers none.
    return limit
