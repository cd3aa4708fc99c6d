"""Sizes: human-readable for `kubectl get` columns, and Kubernetes quantities parsed to bytes."""

from __future__ import annotations

from checkpoint_operator.api.common import parse_quantity

__all__ = ["format_size", "parse_quantity"]

_UNITS = ["B", "Ki", "Mi", "Gi", "Ti", "Pi"]


def format_size(size_bytes: int) -> str:
    value = float(size_bytes)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")

