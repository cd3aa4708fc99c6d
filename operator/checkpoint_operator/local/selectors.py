"""``labelSelector`` and ``fieldSelector`` of lists and watches, as the API server parses and applies them.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x,y)``, comma-separated
(all must hold). Field selectors: equality and inequality on dotted paths (``metadata.name=x``,
``status.phase!=Running``). An invalid selector is a 400 BadRequest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs
import kmock

from checkpoint_operator.local.store import INDEXED_FIELDS, ObjectKey, Selection, Stored, field_value


def bad_request(message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=400, reason="BadRequest", message=message, details={})


_SELECTOR_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|!=|=|\s+in\s+|\s+notin\s+)\s*(?P<value>\([^)]*\)|[A-Za-z0-9_.-]*))?\s*$")


@attrs.frozen
class SelectorTerm:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.operator:
            case "exists":
                return present
            case "!exists":
                return not present
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
        raise AssertionError(self.operator)


def _split_selector(text: str) -> list[str]:
    """Split on commas outside parentheses: ``a in (x,y),b`` -> ``["a in (x,y)", "b"]``."""
    terms, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term for term in terms if term.strip()]


def parse_label_selector(text: str) -> list[SelectorTerm]:
    """Parse a ``labelSelector`` query value; an invalid one raises 400 as the real API does."""
    terms = []
    for raw in _split_selector(text):
        match = _SELECTOR_TERM.match(raw)
        if not match or (match["neg"] and match["op"]):
            raise bad_request(f"unable to parse requirement: {raw!r}")
        op = (match["op"] or "").strip()
        if not op:
            terms.append(SelectorTerm(match["key"], "!exists" if match["neg"] else "exists"))
            continue
        value = match["value"] or ""
        values = frozenset(v.strip() for v in value.strip("()").split(",")) if value.startswith("(") else {value}
        terms.append(SelectorTerm(match["key"], {"==": "="}.get(op, op), frozenset(values)))
    return terms


@attrs.frozen
class FieldTerm:
    """One term of a field selector: the value at a dotted path is (or is not) `value`."""
    key: str
    value: str
    equal: bool

    def __call__(self, obj: Mapping[str, Any]) -> bool:
        return (field_value(obj, self.key) == self.value) == self.equal


def parse_field_selector(text: str) -> list[FieldTerm]:
    """``metadata.name=x,status.phase!=Running``: equality and inequality on dotted paths only."""
    checks = []
    for raw in _split_selector(text):
        match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*?)\s*$", raw)
        if match is None:
            raise bad_request(f"invalid field selector: {raw!r}")
        key, op, value = match.groups()
        checks.append(FieldTerm(key, value, equal=op != "!="))
    return checks


@attrs.frozen
class ObjectFilter:
    """What a list or watch request asks for: namespace, name, label and field selectors."""
    namespace: str | None = None
    name: str | None = None
    labels: tuple[SelectorTerm, ...] = ()
    fields: tuple[FieldTerm, ...] = ()

    @classmethod
    def from_request(cls, request: kmock.Request) -> "ObjectFilter":
        return cls(
            namespace=request.namespace, name=request.name,
            labels=tuple(parse_label_selector(request.params.get("labelSelector", ""))),
            fields=tuple(parse_field_selector(request.params.get("fieldSelector", ""))))

    def matches_labels(self, labels: Mapping[str, str]) -> bool:
        return all(term.matches(labels) for term in self.labels)

    def matches_fields(self, obj: Mapping[str, Any]) -> bool:
        return all(check(obj) for check in self.fields)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        return self.matches_labels(meta.get("labels") or {}) and self.matches_fields(obj)

    def selection(self) -> Selection:
        """The same question for ``ObjectStore.select`` (within a resource and namespace)."""
        indexed = tuple((t.key, t.values if t.operator != "exists" else None)
                        for t in self.labels if t.operator in ("=", "in", "exists"))
        fields = tuple((t.key, t.value) for t in self.fields if t.equal and t.key in INDEXED_FIELDS)
        return Selection(name=self.name, indexed_terms=indexed, indexed_fields=fields,
                         matches_labels=self.matches_labels,
                         matches_object=self.matches_fields if self.fields else None)

    def matches_stored(self, key: ObjectKey, stored: Stored) -> bool:
        _, namespace, name = key
        if self.namespace is not None and namespace != self.namespace:
            return False
        return self.selection().matches(name, stored)
