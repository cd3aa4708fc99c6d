"""CEL validation rules declared once, enforced twice.

Each `Rule` carries the CEL expression that the API server evaluates (it lands in the CRD as
`x-kubernetes-validations`) and a Python predicate with the same meaning that the pydantic
model runs, so `kubectl apply` and the operator refuse the same specs with the same message.
tests/unit/api/test_rules.py evaluates both on the same cases and fails when they disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar, Optional, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1123_MESSAGE = "a lowercase DNS-1123 name (a-z, 0-9, '-' and '.', starting and ending alphanumeric, at most 253 characters)"


def is_dns1123(value: str) -> bool:
    # fullmatch, not match: Python's `$` also matches before a trailing newline, RE2's (CEL's) does not.
    return len(value) <= 253 and re.fullmatch(DNS1123_SUBDOMAIN, value) is not None


DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # a container's name, a port's name: no '.', at most 63


def is_dns1123_label(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 63 and re.fullmatch(DNS1123_LABEL, value) is not None


@dataclass(frozen=True)
class Rule:
    cel: str
    message: str
    check: Optional[Callable[[dict[str, Any]], bool]]  # None: a transition rule (needs oldSelf), API server only
    field_path: Optional[str] = None          # JSONPath-like, relative to the object carrying the rule

    def to_crd(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


class ApiModel(BaseModel):
    """Base of every API object: camelCase field names as in the CRD, unknown fields refused.

    Subclasses list their CEL rules in `cel_rules`; the checks run on the wire form of the
    object (what CEL sees as `self`), after pydantic has parsed the fields.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=False)
    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _run_cel_rules(self) -> Self:
        if self.cel_rules:
            wire = self.model_dump(mode="json", exclude_none=True, by_alias=True)
            for rule in self.cel_rules:
                if rule.check is not None and not rule.check(wire):
                    raise ValueError(rule.message)
        return self

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


# --- bounds ----------------------------------------------------------------------------------
# Every string of the API, and every list and map of a spec, has a bound: the API server estimates the
# cost of each CEL rule from the bounds of what it reaches and refuses the CRD when the estimate exceeds
# its budget, and bounds keep user input small. crdgen refuses to generate a CRD with an unbounded one
# (api/crdgen.py `unbounded_fields`). Declare a string field with one of these types, or with
# Field(max_length=N); a list or a map with Field(max_length=N) (maxItems, maxProperties).

MAX_NAME = 253          # object names: a DNS-1123 subdomain
MAX_UID = 128           # object uids (36 in practice)
MAX_FILE_NAME = 255     # one path component (NAME_MAX of Linux)
MAX_PATH = 4096         # paths (PATH_MAX of Linux)
MAX_URI = 4096          # URIs and URLs (s3://bucket/key: an S3 key alone may be 1024 bytes)
MAX_DESCRIPTION = 4096  # free text written by users
MAX_MESSAGE = 32768     # messages written by the operator (as metav1.Condition.message)
MAX_REASON = 1024       # CamelCase reasons (as metav1.Condition.reason)
MAX_CONDITION_TYPE = 316  # as metav1.Condition.type: a qualified name
MAX_QUANTITY = 64       # Kubernetes quantities and other short values (sizes, regions, timestamps)
MAX_DIGEST = 128        # "sha256:" and 64 hex digits (71), with room for longer algorithms

# Every integer the operator writes into a status fits the schema's int64 (an API server refuses
# anything else), and every number is finite and within float64: crdgen refuses a status number
# without both bounds (api/crdgen.py `unbounded_fields`).
INT64_MAX = 2**63 - 1
MAX_METRIC = 1e300

Name = Annotated[str, Field(max_length=MAX_NAME)]
Uid = Annotated[str, Field(max_length=MAX_UID)]
FileName = Annotated[str, Field(max_length=MAX_FILE_NAME)]
Path = Annotated[str, Field(max_length=MAX_PATH)]
Uri = Annotated[str, Field(max_length=MAX_URI)]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION)]
Message = Annotated[str, Field(max_length=MAX_MESSAGE)]
Reason = Annotated[str, Field(max_length=MAX_REASON)]
ConditionType = Annotated[str, Field(max_length=MAX_CONDITION_TYPE)]
Short = Annotated[str, Field(max_length=MAX_QUANTITY)]
Timestamp = Annotated[str, Field(max_length=MAX_QUANTITY)]
Digest = Annotated[str, Field(max_length=MAX_DIGEST)]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]  # sizes, counts, steps, generations
Metric = Annotated[float, Field(ge=-MAX_METRIC, le=MAX_METRIC, allow_inf_nan=False)]


def bounded_count(value: object) -> Optional[int]:
    """`value` when it is a Count (a non-negative int64, not a bool), else None: what a status may hold."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX:
        return value
    return None


def has_exactly_one(obj: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return sum(1 for k in keys if k in obj) == 1


def path_has_dotdot(path: str) -> bool:
    return ".." in path.split("/")
