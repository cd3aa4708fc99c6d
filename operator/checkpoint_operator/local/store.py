"""The emulated API's object storage: live objects indexed so that a request touches only what it asks for.

A real API server keeps objects serialized (etcd) and serves lists and watches from a cache indexed by
resource and namespace. This store does the same in memory:

- each live object is kept once, as its JSON bytes (what GET, LIST and watch events send as they are)
  plus the few fields selectors read (labels), and nothing else: no past versions, no deleted objects;
- objects are grouped by resource, then namespace, so a GET is one dict look-up and a LIST reads
  only the objects of its resource and namespace (all namespaces of that resource when cluster-wide);
- a label index answers equality and existence selectors (``job-name=x``, ``app in (a,b)``,
  ``uses.ckpt.dev/UID``) without reading the objects that do not carry the label;
- an owner index (ownerReferences uid -> dependents) lets a deletion find the owner's dependents.

``visited`` counts the objects that selections have read: tests use it to check that a request's
cost does not depend on objects it does not ask for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
from kmock._internal import references

Resource = references.resource
ObjectKey = tuple[Resource, "str | None", str]


def dumps(obj: Any) -> bytes:
    """Compact JSON, as the API server writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# Field paths indexed as labels are: the field selector an Event LIST names its object by (an operator
# lists the Events of one Job, claim or pod; parsing every Event of the namespace made those LISTs grow
# with all the Events ever posted there).
INDEXED_FIELDS = ("involvedObject.name", "involvedObject.uid")
FIELD = "field:"  # their keys in the label index (no label key has a colon)


def field_value(obj: Mapping[str, Any], dotted: str) -> str | None:
    """The value at a dotted path as a field selector compares it (None: absent)."""
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return None if value is None else str(value)


@attrs.frozen(slots=True)
class Stored:
    """One live object: its JSON and what selectors and indexes read without parsing it."""

    raw: bytes
    labels: Mapping[str, str]
    owners: tuple[str, ...]  # uids of its ownerReferences
    fields: tuple[tuple[str, str], ...] = ()  # (path, value) of its INDEXED_FIELDS present

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> "Stored":
        meta = obj.get("metadata") or {}
        owners = tuple(ref["uid"] for ref in meta.get("ownerReferences") or () if ref.get("uid"))
        fields = tuple((path, value) for path in INDEXED_FIELDS if (value := field_value(obj, path)) is not None)
        return cls(dumps(obj), dict(meta.get("labels") or {}), owners, fields)

    def load(self) -> dict[str, Any]:
        """A fresh, private copy of the object (parsing is cheaper than a deep copy)."""
        return json.loads(self.raw)


@attrs.frozen
class Selection:
    """What a list or watch asks for beyond resource and namespace (see emulator.ObjectFilter)."""

    name: str | None = None
    # (key, values): a term whose match requires the label `key` (to be one of `values`, unless None).
    indexed_terms: tuple[tuple[str, frozenset[str] | None], ...] = ()
    # (path, value): a field selector's equality on one of INDEXED_FIELDS (matches_object checks it too).
    indexed_fields: tuple[tuple[str, str], ...] = ()
    matches_labels: Callable[[Mapping[str, str]], bool] = lambda labels: True
    matches_object: Callable[[Mapping[str, Any]], bool] | None = None  # needs the parsed object

    def matches(self, name: str, stored: Stored) -> bool:
        if self.name is not None and name != self.name:
            return False
        if not self.matches_labels(stored.labels):
            return False
        return self.matches_object is None or self.matches_object(stored.load())


class ObjectStore:
    """Live objects by resource, namespace and name, with label and owner indexes."""

    def __init__(self) -> None:
        self._objects: dict[Resource, dict[str | None, dict[str, Stored]]] = {}
        # (resource, label key, label value) -> namespace -> names; value None: every object with the key
        self._labels: dict[tuple[Resource, str, str | None], dict[str | None, set[str]]] = {}
        # (resource, "field:" path, value) -> namespace -> names (INDEXED_FIELDS; kept in _labels' shape)
        self._owned: dict[str, set[ObjectKey]] = {}
        self.visited = 0

    def __len__(self) -> int:
        return sum(len(names) for namespaces in self._objects.values() for names in namespaces.values())

    def get(self, key: ObjectKey) -> Stored | None:
        resource, namespace, name = key
        return self._objects.get(resource, {}).get(namespace, {}).get(name)

    def put(self, key: ObjectKey, obj: Mapping[str, Any]) -> Stored:
        stored = Stored.of(obj)
        resource, namespace, name = key
        previous = self._objects.setdefault(resource, {}).setdefault(namespace, {}).get(name)
        if previous is not None:
            self._unindex(key, previous)
        self._objects[resource][namespace][name] = stored
        self._index(key, stored)
        return stored

    def remove(self, key: ObjectKey) -> Stored | None:
        resource, namespace, name = key
        names = self._objects.get(resource, {}).get(namespace, {})
        stored = names.pop(name, None)
        if stored is None:
            return None
        self._unindex(key, stored)
        if not names:
            del self._objects[resource][namespace]
            if not self._objects[resource]:
                del self._objects[resource]
        return stored

    def select(self, resource: Resource, namespace: str | None, selection: Selection = Selection()
               ) -> list[tuple[ObjectKey, Stored]]:
        """The objects of ``resource`` in ``namespace`` (None: every namespace) that ``selection`` matches."""
        by_namespace = self._objects.get(resource, {})
        namespaces = list(by_namespace) if namespace is None else [namespace]
        result = []
        for ns in namespaces:
            names = by_namespace.get(ns)
            if not names:
                continue
            for name in self._candidates(resource, ns, names, selection):
                stored = names.get(name)
                if stored is None:
                    continue
                self.visited += 1
                if selection.matches(name, stored):
                    result.append(((resource, ns, name), stored))
        return result

    def owned_by(self, uid: str) -> list[ObjectKey]:
        return list(self._owned.get(uid, ()))

    def items(self) -> Iterator[tuple[ObjectKey, Stored]]:
        for resource, by_namespace in self._objects.items():
            for namespace, names in by_namespace.items():
                for name, stored in names.items():
                    yield (resource, namespace, name), stored

    def resources(self) -> list[Resource]:
        return list(self._objects)

    # -- indexes ---------------------------------------------------------------------------------

    def _candidates(self, resource: Resource, namespace: str | None, names: Mapping[str, Stored],
                    selection: Selection) -> Iterator[str] | list[str]:
        if selection.name is not None:
            return [selection.name]
        best: set[str] | None = None
        terms = [*selection.indexed_terms, *((FIELD + path, frozenset((value,))) for path, value in
                                             selection.indexed_fields)]
        for key, values in terms:
            found: set[str] = set()
            for value in (None,) if values is None else values:
                found |= self._labels.get((resource, key, value), {}).get(namespace, set())
            if best is None or len(found) < len(best):
                best = found
        return iter(names) if best is None else sorted(best)

    def _index(self, key: ObjectKey, stored: Stored) -> None:
        resource, namespace, name = key
        for path, value in stored.fields:
            self._labels.setdefault((resource, FIELD + path, value), {}).setdefault(namespace, set()).add(name)
        for label, value in stored.labels.items():
            for indexed in (value, None):
                self._labels.setdefault((resource, label, indexed), {}).setdefault(namespace, set()).add(name)
        for uid in stored.owners:
            self._owned.setdefault(uid, set()).add(key)

    def _unindex(self, key: ObjectKey, stored: Stored) -> None:
        resource, namespace, name = key
        entries = [(FIELD + path, value) for path, value in stored.fields] + \
            [(label, indexed) for label, value in stored.labels.items() for indexed in (value, None)]
        for label, indexed in entries:
            by_namespace = self._labels.get((resource, label, indexed))
            if by_namespace is None:
                continue
            names = by_namespace.get(namespace)
            if names is not None:
                names.discard(name)
                if not names:
                    del by_namespace[namespace]
            if not by_namespace:
                del self._labels[(resource, label, indexed)]
        for uid in stored.owners:
            dependents = self._owned.get(uid)
            if dependents is not None:
                dependents.discard(key)
                if not dependents:
                    del self._owned[uid]
