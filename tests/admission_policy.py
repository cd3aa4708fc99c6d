"""A ValidatingAdmissionPolicy evaluated as the API server evaluates it, with the `cel` package:
matchConstraints (resourceRules), matchConditions, variables (in order, each seeing the ones
before it), then every validation; a validation that is false refuses with its message (or
messageExpression), and one that cannot be evaluated refuses too (failurePolicy: Fail).

What the API server adds and this does not: the static type check of the expressions against
the resources' OpenAPI schemas, cost limits, `authorizer` and `params` (the chart's policy uses
neither). tests/test_admission_policy.py runs the chart's policy through it."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional

import cel

OPERATOR_NAMESPACE = "ckpt-system"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:ckpt-checkpoint-operator"
RESOURCES = {"Pod": ("", "v1", "pods"), "PersistentVolumeClaim": ("", "v1", "persistentvolumeclaims"),
             "PersistentVolume": ("", "v1", "persistentvolumes"),
             "Job": ("batch", "v1", "jobs"), "Event": ("", "v1", "events"), "Secret": ("", "v1", "secrets"),
             "VolumeSnapshot": ("snapshot.storage.k8s.io", "v1", "volumesnapshots"),
             "JobSet": ("jobset.x-k8s.io", "v1alpha2", "jobsets"), "Service": ("", "v1", "services")}


@functools.lru_cache(maxsize=None)
def _program(expression: str) -> cel.Program:
    return cel.compile(expression)


@dataclass
class Request:
    operation: str                     # CREATE, UPDATE, DELETE
    kind: str                          # a key of RESOURCES
    namespace: str
    object: Optional[dict] = None      # null on DELETE
    old_object: Optional[dict] = None  # null on CREATE
    username: str = OPERATOR_USER

    def as_cel(self) -> dict[str, Any]:
        group, version, resource = RESOURCES[self.kind]
        named = self.object or self.old_object or {}
        return {"operation": self.operation, "namespace": self.namespace,
                "name": (named.get("metadata") or {}).get("name", ""),
                "userInfo": {"username": self.username, "groups": ["system:serviceaccounts"]},
                "resource": {"group": group, "version": version, "resource": resource},
                "kind": {"group": group, "version": version, "kind": self.kind}, "dryRun": False}


@dataclass
class Decision:
    matched: bool
    refusals: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return not self.refusals


def _rule_matches(rule: dict, request: Request) -> bool:
    group, version, resource = RESOURCES[request.kind]

    def has(values: list[str], value: str) -> bool:
        return "*" in values or value in values
    return has(rule.get("operations", []), request.operation) and has(rule.get("apiGroups", []), group) \
        and has(rule.get("apiVersions", []), version) and has(rule.get("resources", []), resource)


def evaluate(policy: dict, request: Request) -> Decision:
    spec = policy["spec"]
    if not any(_rule_matches(r, request) for r in spec["matchConstraints"]["resourceRules"]):
        return Decision(False)
    context: dict[str, Any] = {"object": request.object, "oldObject": request.old_object,
                               "request": request.as_cel(), "params": None, "namespaceObject": None}
    for condition in spec.get("matchConditions") or []:
        if _program(condition["expression"]).execute(context) is not True:
            return Decision(False)
    variables: dict[str, Any] = {}
    for variable in spec.get("variables") or []:
        context["variables"] = variables
        try:
            variables[variable["name"]] = _program(variable["expression"]).execute(context)
        except Exception:  # noqa: BLE001 - evaluated lazily by the API server: an error counts where it is used
            continue          # (left out: a validation that uses it fails to evaluate, and refuses)
    context["variables"] = variables
    decision = Decision(True)
    for validation in spec["validations"]:
        try:
            ok = _program(validation["expression"]).execute(context)
        except Exception as exc:  # noqa: BLE001 - failurePolicy Fail: an evaluation error refuses
            decision.refusals.append(f"expression {validation['expression']!r} could not be evaluated: {exc}")
            continue
        assert isinstance(ok, bool), f"{validation['expression']!r} gave {ok!r}, not a bool"
        if not ok:
            decision.refusals.append(_message(validation, context))
    return decision


def _message(validation: dict, context: dict[str, Any]) -> str:
    if "messageExpression" in validation:
        message = _program(validation["messageExpression"]).execute(context)
        assert isinstance(message, str) and message and "\n" not in message, message
        return message
    return validation["message"]
