"""Which nodes a pod or a PersistentVolume may be on: nodeSelector and node affinity, as the
scheduler and the volume binder read them (local/scheduler.py, local/storage.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _expression_matches(expression: Mapping[str, Any], value: str | None) -> bool:
    operator, values = expression.get("operator"), expression.get("values") or []
    if operator == "In":
        return value is not None and value in values
    if operator == "NotIn":
        return value is None or value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt") and value is not None and values:
        try:
            number, bound = int(value), int(values[0])
        except ValueError:
            return False
        return number > bound if operator == "Gt" else number < bound
    return False


def node_selector_terms_match(terms: Iterable[Mapping[str, Any]], labels: Mapping[str, str], name: str) -> bool:
    """A NodeSelector's terms (ORed; the requirements of a term ANDed) against one node."""
    for term in terms:
        expressions = term.get("matchExpressions") or []
        fields = term.get("matchFields") or []
        if not expressions and not fields:
            continue  # an empty term matches no node
        if all(_expression_matches(e, labels.get(e.get("key", ""))) for e in expressions) and \
                all(_expression_matches(f, name if f.get("key") == "metadata.name" else None) for f in fields):
            return True
    return False


def pod_fits_node(pod: Mapping[str, Any], labels: Mapping[str, str], name: str) -> bool:
    spec = pod.get("spec") or {}
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    if required and not node_selector_terms_match(required.get("nodeSelectorTerms") or [], labels, name):
        return False
    return True


def volume_fits_node(node_affinity: Mapping[str, Any] | None, labels: Mapping[str, str], name: str) -> bool:
    terms = ((node_affinity or {}).get("required") or {}).get("nodeSelectorTerms")
    return not terms or node_selector_terms_match(terms, labels, name)


