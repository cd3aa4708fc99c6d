"""CEL validation rules declared once, enforced twice.

Each `Rule` carries the CEL expression that the API server evaluates (it lands in the CRD as
`x-kubernetes-validations`) and a Python predicate with the same meaning that the pydantic
model runs, so `kubectl apply` and the operator refuse the same specs with the same message.
tests/test_cel_rules.py evaluates both on the same cases and fails when they disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

from pydantic import BaseModel, ConfigDict, model_validator

DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1123_MESSAGE = "a lowercase DNS-1123 name (a-z, 0-9, '-' and '.', starting and ending alphanumeric, at most 253 characters)"


def is_dns1123(value: str) -> bool:
    # fullmatch, not match: Python's `$` also matches before a trailing newline, RE2's (CEL's) does not.
    return len(value) <= 253 and re.fullmatch(DNS1123_SUBDOMAIN, value) is not None


@dataclass(frozen=True)
class Rule:
    cel: str
    message: str
    check: Optional[Callable[[dict], bool]]  # None: a transition rule (needs oldSelf), API server only
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
    def _run_cel_rules(self):
        if self.cel_rules:
            wire = self.model_dump(mode="json", exclude_none=True, by_alias=True)
            for rule in self.cel_rules:
                if rule.check is not None and not rule.check(wire):
                    raise ValueError(rule.message)
        return self

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


def has_exactly_one(obj: dict, keys: tuple[str, ...]) -> bool:
    return sum(1 for k in keys if k in obj) == 1


def path_has_dotdot(path: str) -> bool:
    return ".." in path.split("/")
