"""Server-side printing: the ``meta.k8s.io/v1`` Table that kube-apiserver answers a get or a list with
when the client asks for one (``Accept: application/json;as=Table;v=v1;g=meta.k8s.io, ...``, what kubectl get
sends), so ``kubectl get tj`` shows the CRDs' ``additionalPrinterColumns``, as with a cluster.

- a custom resource: ``Name`` and its version's ``additionalPrinterColumns`` (``Age`` alone when it
  declares none), each cell as apiextensions-apiserver's table convertor makes it: the first value its
  JSONPath finds; ``string`` as kubectl's JSONPath prints it, ``integer``/``number``/``boolean`` when
  the value is one, ``date`` as a human duration since then (``5m``); a path that finds nothing, or a
  value of another type, is a null cell (kubectl shows ``<none>``), never an error;
- any other resource: kube-apiserver's default table convertor, ``Name`` and ``Created At`` (RFC 3339),
  what it gives a type without a printer of its own (kubectl's columns for pods, jobs, ... are not here);
- each row's ``object``: the object's ``PartialObjectMetadata`` (``includeObject=Metadata``, the default),
  the whole object (``Object``) or none (``None``).

Not served: Tables of watch events (a watch answers objects, whatever it asks), ``PartialObjectMetadata``
answers (``as=PartialObjectMetadata``), ``noHeaders``.

JSONPath: the subset kubectl's printer columns use (``jsonpath()``): dotted fields, ``[n]`` indexes
(negative from the end), ``[*]``, and ``[?(@.path=="value")]`` / ``!=`` filters. Neither the kubernetes
client nor local mode's dependencies evaluate kubectl's JSONPath (jsonpath-ng, when installed, is
another dialect and no dependency of local mode).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Optional

TABLE_VERSIONS = ("v1", "v1beta1")  # meta.k8s.io versions kube-apiserver serves Tables in
NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although some resources may "
    "allow a client to request the generation of an appropriate name automatically. Name is primarily intended "
    "for creation idempotence and configuration definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names")
CREATED_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is not "
    "guaranteed to be set in happens-before order across separate operations. Clients may not set this value. "
    "It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. "
    "More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata")
NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "description": NAME_DESCRIPTION, "priority": 0}
DEFAULT_CRD_COLUMNS = [{"name": "Age", "type": "date", "description": CREATED_DESCRIPTION,
                        "jsonPath": ".metadata.creationTimestamp"}]


# --- the Accept header ------------------------------------------------------------------------------

def table_version(accept: Optional[str]) -> Optional[str]:
    """The meta.k8s.io version of the Table the Accept header asks for, or None: a plain object or list.

    As kube-apiserver negotiates: the first media range it can serve wins, so ``application/json`` (or
    ``*/*``) before any Table means the plain answer, and a Table of an unknown version is passed over.
    """
    for media_range in (accept or "").split(","):
        kind, *raw_params = [part.strip() for part in media_range.split(";")]
        params = dict(p.split("=", 1) for p in raw_params if "=" in p)
        params = {k.strip().lower(): v.strip() for k, v in params.items()}
        if kind.lower() not in ("application/json", "application/*", "*/*"):
            continue
        wants = params.get("as")
        if wants is None:
            return None
        if wants == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in TABLE_VERSIONS:
            return params["v"]
    return None


# --- JSONPath, kubectl's subset ---------------------------------------------------------------------

_TOKEN = re.compile(r"""
    \.(?P<field>[A-Za-z0-9_$-]+)                                              # .field
  | \[(?P<index>-?\d+)\]                                                      # [n]
  | \[(?P<star>\*)\]                                                          # [*]
  | \[\?\(@(?P<path>(?:\.[A-Za-z0-9_$-]+)+)\s*(?P<op>==|!=)\s*
        (?P<value>"[^"]*"|'[^']*'|-?\d+(?:\.\d+)?|true|false)\s*\)\]        # [?(@.a.b=="v")]
""", re.VERBOSE)


def _parse(path: str) -> list[re.Match[str]]:
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    if text.startswith("$"):
        text = text[1:]
    tokens, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise ValueError(f"unsupported JSONPath {path!r} at {text[at:]!r}")
        tokens.append(match)
        at = match.end()
    return tokens


def _literal(text: str) -> Any:
    if text[0] in "\"'":
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    return float(text) if "." in text else int(text)


def _fields(value: Any, names: Iterable[str]) -> list[Any]:
    for name in names:
        if not isinstance(value, Mapping) or name not in value:
            return []
        value = value[name]
    return [value]


def jsonpath(obj: Any, path: str) -> list[Any]:
    """Every value ``path`` finds in ``obj``, in order; ``[]`` when it finds nothing (a missing field, an index
    out of range, a filter that matches nothing). ValueError for a path outside the subset."""
    found = [obj]
    for token in _parse(path):
        step: list[Any] = []
        for value in found:
            if token["field"] is not None:
                step += _fields(value, [token["field"]])
            elif token["index"] is not None:
                index = int(token["index"])
                if isinstance(value, list) and -len(value) <= index < len(value):
                    step.append(value[index])
            elif token["star"] is not None:
                step += list(value.values()) if isinstance(value, Mapping) else value if isinstance(value, list) else []
            else:
                wanted, names = _literal(token["value"]), token["path"].split(".")[1:]
                items = value if isinstance(value, list) else []
                for item in items:
                    got = _fields(item, names)
                    equal = bool(got) and got[0] == wanted and type(got[0]) is type(wanted)
                    if equal == (token["op"] == "=="):
                        step.append(item)
        found = step
    return found


# --- cells ------------------------------------------------------------------------------------------

def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery's duration.HumanDuration, what kubectl's AGE shows."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24 % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _timestamp(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _text(value: Any) -> str:
    """A value as kubectl's JSONPath prints it: strings as they are, maps and lists as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def cell(column_type: str, values: list[Any], now: datetime.datetime) -> Any:
    """One cell of an additional printer column, from what its JSONPath found (apiextensions' cellForJSONValue)."""
    if not values or values[0] is None:
        return None
    value = values[0]
    if column_type == "string":
        return _text(value)
    if column_type == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if column_type == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if column_type == "boolean" and isinstance(value, bool):
        return value
    if column_type == "date" and isinstance(value, str):
        try:
            return human_duration((now - _timestamp(value)).total_seconds())
        except ValueError:
            return "<invalid>"
    return None


# --- the Table --------------------------------------------------------------------------------------

def printer_columns(crd: Optional[Mapping[str, Any]], version: Optional[str]) -> Optional[list[dict[str, Any]]]:
    """The additional printer columns a CRD declares for a version (Age alone when none); None: not a CRD."""
    if crd is None:
        return None
    for served in (crd.get("spec") or {}).get("versions") or []:
        if served.get("name") == version:
            return list(served.get("additionalPrinterColumns") or DEFAULT_CRD_COLUMNS)
    return None


def _row_object(obj: Mapping[str, Any], include: str, table_api_version: str) -> Any:
    if include == "Object":
        return obj
    if include == "None":
        return None
    return {"kind": "PartialObjectMetadata", "apiVersion": table_api_version, "metadata": obj.get("metadata") or {}}


def build_table(objects: Iterable[Mapping[str, Any]], *, columns: Optional[list[dict[str, Any]]],
                list_meta: Mapping[str, Any], version: str = "v1", include_object: str = "Metadata",
                now: Optional[datetime.datetime] = None) -> dict[str, Any]:
    """The Table of ``objects``: ``columns`` are a CRD's printer columns, None for the default convertor's.

    ValueError for an ``include_object`` kube-apiserver refuses (``Metadata``, ``Object`` or ``None``)."""
    if include_object not in ("Metadata", "Object", "None"):
        raise ValueError(f'unrecognized includeObject value: "{include_object}"')
    now = now or datetime.datetime.now(datetime.timezone.utc)
    api_version = f"meta.k8s.io/{version}"
    if columns is None:
        definitions = [NAME_COLUMN, {"name": "Created At", "type": "date", "format": "",
                                     "description": CREATED_DESCRIPTION, "priority": 0}]
    else:
        definitions = [NAME_COLUMN] + [
            {"name": c.get("name", ""), "type": c.get("type", "string"), "format": c.get("format", ""),
             "description": c.get("description", ""), "priority": int(c.get("priority", 0))} for c in columns]
    rows = []
    for obj in objects:
        meta = obj.get("metadata") or {}
        if columns is None:
            created = meta.get("creationTimestamp")
            cells: list[Any] = [meta.get("name", ""), created or "0001-01-01T00:00:00Z"]
        else:
            cells = [meta.get("name", "")]
            for column in columns:
                try:
                    found = jsonpath(obj, column.get("jsonPath", ""))
                except ValueError:
                    found = []
                cells.append(cell(column.get("type", "string"), found, now))
        rows.append({"cells": cells, "object": _row_object(obj, include_object, api_version)})
    return {"kind": "Table", "apiVersion": api_version, "metadata": dict(list_meta),
            "columnDefinitions": definitions, "rows": rows}
