"""What the emulated API refuses, prunes and defaults on every write, as a real kube-apiserver does.

- Object metadata, for every resource: the name (a DNS-1123 subdomain for most resources; a DNS-1123
  label for namespaces; a DNS-1035 label for services; a path segment for RBAC objects; a Job's name
  must also fit a label value, at most 63 characters, because the Job controller labels its pods
  with it), ``generateName`` (cut to 58 characters before the random suffix), label keys and
  values, annotation keys and their total size, finalizer names.
- Custom resources, from the structural schema of their CustomResourceDefinition: unknown fields
  are pruned (not refused), null values of non-nullable fields dropped, defaults applied; then
  types, ``required``, ``enum``, ``pattern``, ``minimum``/``maximum``, ``minLength``/``maxLength``,
  ``minItems``/``maxItems``, ``minProperties``/``maxProperties``, ``nullable``, list-type ``map`` and
  ``set`` uniqueness, and the CEL rules (``x-kubernetes-validations``, transition rules with
  ``oldSelf`` on update) are checked. As with CRD validation ratcheting (Kubernetes 1.30+), a value
  an update leaves unchanged is not validated again.

Errors are field errors in the API server's words (``spec.replicas: Invalid value: 0: ...``); the
emulator answers them as one 422 Invalid Status, as the API server does.
CEL programs are compiled once per rule text (the compiled programs are shared by every CRD). Of
Kubernetes' own CEL libraries, the quantity functions the CRDs use are there (api/cel_quantity.py).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import cel

from checkpoint_operator.api import cel_quantity

# --- field errors ------------------------------------------------------------------------------

_REASONS = {"Invalid value": "FieldValueInvalid", "Required value": "FieldValueRequired",
            "Unsupported value": "FieldValueNotSupported", "Too long": "FieldValueTooLong",
            "Too many": "FieldValueTooMany", "Duplicate value": "FieldValueDuplicate",
            "Forbidden": "FieldValueForbidden"}
_CEL_REASONS = {"FieldValueInvalid": "Invalid value", "FieldValueRequired": "Required value",
                "FieldValueForbidden": "Forbidden", "FieldValueDuplicate": "Duplicate value"}
_NO_VALUE = object()


def _show(value: Any) -> str:
    """A value as the API server prints it in a field error (Go's %q for strings, JSON otherwise)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


@attrs.frozen
class FieldError:
    field: str
    type: str  # "Invalid value", "Required value", "Unsupported value", "Too long", "Too many", ...
    detail: str = ""
    value: Any = _NO_VALUE

    @property
    def reason(self) -> str:
        return _REASONS.get(self.type, "FieldValueInvalid")

    @property
    def cause_message(self) -> str:
        """The message without the field (a Status cause carries the field separately)."""
        parts = [self.type]
        if self.value is not _NO_VALUE:
            parts.append(_show(self.value))
        if self.detail:
            parts.append(self.detail)
        return ": ".join(parts)

    def __str__(self) -> str:
        return f"{self.field}: {self.cause_message}" if self.field else self.cause_message


def invalid_message(kind: str, group: str, name: str, errors: list[FieldError]) -> str:
    """``TrainingJob.ckpt.dev "tj" is invalid: spec.replicas: Invalid value: ...`` (several in [...])."""
    qualified = f"{kind}.{group}" if group else kind
    listed = ", ".join(str(e) for e in errors)
    return f'{qualified} "{name}" is invalid: ' + (f"[{listed}]" if len(errors) > 1 else listed)


# --- names, labels, annotations ------------------------------------------------------------------

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
QUALIFIED_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")

SUBDOMAIN_MESSAGE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                     "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                     f"validation is '{DNS1123_SUBDOMAIN.pattern}')")
LABEL_MESSAGE = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
                 "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
                 f"validation is '{DNS1123_LABEL.pattern}')")
DNS1035_MESSAGE = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                   "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
                   f"regex used for validation is '{DNS1035_LABEL.pattern}')")
NAME_PART_MESSAGE = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                     "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
                     f"validation is '{QUALIFIED_NAME_PART.pattern}')")
LABEL_VALUE_MESSAGE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                       "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
                       f"'12345', regex used for validation is '{LABEL_VALUE.pattern}')")

MAX_GENERATED_NAME_PREFIX = 58  # 63 minus the 5 random characters
MAX_ANNOTATIONS_BYTES = 256 * 1024
RBAC_KINDS = {"roles", "clusterroles", "rolebindings", "clusterrolebindings"}
KNOWN_METADATA = {"name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
                  "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
                  "ownerReferences", "finalizers", "managedFields"}


def _dns_subdomain(value: str) -> list[str]:
    problems = []
    if len(value) > 253:
        problems.append("must be no more than 253 characters")
    if not DNS1123_SUBDOMAIN.fullmatch(value):
        problems.append(SUBDOMAIN_MESSAGE)
    return problems


def _dns_label(value: str, pattern: re.Pattern[str] = DNS1123_LABEL, message: str = LABEL_MESSAGE) -> list[str]:
    problems = []
    if len(value) > 63:
        problems.append("must be no more than 63 characters")
    if not pattern.fullmatch(value):
        problems.append(message)
    return problems


def _path_segment(value: str) -> list[str]:
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{c}'" for c in "/%" if c in value]


def _qualified_name(value: str) -> list[str]:
    """A label, annotation or finalizer key: ``[prefix/]name``, the prefix a DNS subdomain."""
    prefix, slash, name = value.rpartition("/")
    if slash and not prefix:
        return ["prefix part must be non-empty"]
    problems = []
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    if name and not QUALIFIED_NAME_PART.fullmatch(name):
        problems.append(NAME_PART_MESSAGE)
    if slash:
        problems += [f"prefix part {p}" for p in _dns_subdomain(prefix)]
    return problems


def _label_value(value: str) -> list[str]:
    problems = []
    if len(value) > 63:
        problems.append("must be no more than 63 characters")
    if not LABEL_VALUE.fullmatch(value):
        problems.append(LABEL_VALUE_MESSAGE)
    return problems


def name_problems(plural: str, group: str, name: str) -> list[FieldError]:
    """What the API server says about ``metadata.name`` of an object of this resource."""
    if plural == "namespaces" and group == "":
        problems = _dns_label(name)
    elif plural == "services" and group == "":
        problems = _dns_label(name, DNS1035_LABEL, DNS1035_MESSAGE)
    elif plural in RBAC_KINDS and group == "rbac.authorization.k8s.io":
        problems = _path_segment(name)
    else:
        problems = _dns_subdomain(name)
    errors = [FieldError("metadata.name", "Invalid value", p, name) for p in problems]
    if plural == "jobs" and group == "batch" and not errors:
        # The Job's name becomes the value of its pods' job-name labels.
        errors += [FieldError("spec.template.labels", "Invalid value", p, name) for p in _label_value(name)]
    return errors


def generate_name(generate_name: str, suffix: str) -> str:
    return generate_name[:MAX_GENERATED_NAME_PREFIX] + suffix


def metadata_problems(meta: Mapping[str, Any]) -> list[FieldError]:
    """Labels, annotations and finalizers: what ValidateObjectMeta checks besides the name."""
    errors: list[FieldError] = []
    labels = meta.get("labels") or {}
    if not isinstance(labels, Mapping):
        return [FieldError("metadata.labels", "Invalid value", "must be a map of strings", labels)]
    for key, value in labels.items():
        errors += [FieldError("metadata.labels", "Invalid value", p, key) for p in _qualified_name(key)]
        if not isinstance(value, str):
            errors.append(FieldError(f"metadata.labels.{key}", "Invalid value", "must be a string", value))
            continue
        errors += [FieldError("metadata.labels", "Invalid value", p, value) for p in _label_value(value)]
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        return errors + [FieldError("metadata.annotations", "Invalid value", "must be a map of strings", annotations)]
    size = 0
    for key, value in annotations.items():
        errors += [FieldError("metadata.annotations", "Invalid value", p, key) for p in _qualified_name(key)]
        size += len(key) + len(str(value))
    if size > MAX_ANNOTATIONS_BYTES:
        errors.append(FieldError("metadata.annotations", "Too long", f"must have at most {MAX_ANNOTATIONS_BYTES} bytes"))
    for index, finalizer in enumerate(meta.get("finalizers") or []):
        errors += [FieldError(f"metadata.finalizers[{index}]", "Invalid value", p, finalizer)
                   for p in _qualified_name(str(finalizer))]
    return errors


# --- structural schemas of custom resources ------------------------------------------------------

@functools.lru_cache(maxsize=1024)
def compile_rule(rule: str) -> cel.Program:
    """A CEL program, compiled once per rule text."""
    return cel.compile(rule)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _type_ok(schema: Mapping[str, Any], value: Any) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    expected = schema.get("type")
    if expected is None:
        return True
    actual = _json_type(value)
    return actual == expected or (expected == "number" and actual == "integer")


@attrs.define
class CustomResourceSchema:
    """The ``openAPIV3Schema`` of one served version of a CRD, applied to objects of that version."""

    schema: Mapping[str, Any]

    def admit(self, obj: dict[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
        """Prune and default ``obj`` in place, then validate it (against ``old`` on update)."""
        _prune(self.schema, obj, root=True)
        _default(self.schema, obj)
        errors: list[FieldError] = []
        for name, sub in self.schema.get("properties", {}).items():
            if name == "metadata" or name not in obj:
                if name in self.schema.get("required", ()) and name not in obj:
                    errors.append(FieldError(name, "Required value"))
                continue
            old_value = old.get(name, _NO_VALUE) if old is not None else _NO_VALUE
            errors += _validate(sub, obj[name], old_value, name)
        return errors + _evaluate_rules(self.schema, obj, old if old is not None else _NO_VALUE, "",
                                        quiet=bool(errors))


def _prune(schema: Mapping[str, Any], value: Any, *, root: bool = False) -> None:
    """Drop what the schema does not declare (unless it preserves unknown fields), and nulls it does not allow."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        for key in list(value):
            sub = properties.get(key, additional if isinstance(additional, Mapping) else None)
            if root and key in ("apiVersion", "kind"):
                continue
            if root and key == "metadata":
                if isinstance(value[key], dict):
                    for meta_key in [k for k in value[key] if k not in KNOWN_METADATA]:
                        del value[key][meta_key]
                continue
            if sub is None:
                if not preserve:
                    del value[key]
                continue
            if value[key] is None and not sub.get("nullable"):
                del value[key]
                continue
            _prune(sub, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            _prune(schema["items"], item)


def _default(schema: Mapping[str, Any], value: Any) -> None:
    """Structural defaulting: missing properties get their default, then defaulting goes on inside."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name, sub in properties.items():
            if name not in value and "default" in sub:
                value[name] = json.loads(json.dumps(sub["default"]))
        for name, item in value.items():
            sub = properties.get(name)
            if sub is None and isinstance(schema.get("additionalProperties"), Mapping):
                sub = schema["additionalProperties"]
            if sub is not None and name != "metadata":
                _default(sub, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            _default(schema["items"], item)


def _validate(schema: Mapping[str, Any], value: Any, old: Any, path: str) -> list[FieldError]:
    """OpenAPI checks of ``value`` and its children, then the CEL rules of this node (if they passed)."""
    if old is not _NO_VALUE and value == old:
        return []  # ratcheting: an unchanged value is not validated again
    if value is None:
        return [] if schema.get("nullable") else [FieldError(path, "Invalid value", "must not be null", value)]
    if not _type_ok(schema, value):
        expected = "integer or string" if schema.get("x-kubernetes-int-or-string") else schema.get("type")
        return [FieldError(path, "Invalid value", f"{path} in body must be of type {expected}: "
                           f"{_show(_json_type(value))}", _json_type(value))]
    errors = _scalar_problems(schema, value, path)
    if isinstance(value, dict):
        errors += _object_problems(schema, value, old, path)
    elif isinstance(value, list):
        errors += _array_problems(schema, value, path)
    # The rules run even when a child is invalid (the API server reports both), but a rule that cannot
    # be evaluated on an invalid child is not reported on top of the child's error.
    return errors + _evaluate_rules(schema, value, old, path, quiet=bool(errors))


def _scalar_problems(schema: Mapping[str, Any], value: Any, path: str) -> list[FieldError]:
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_show(v) for v in schema["enum"])
        errors.append(FieldError(path, "Unsupported value", f"supported values: {supported}", value))
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(FieldError(path, "Too long", f"may not be more than {schema['maxLength']} bytes"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(FieldError(path, "Invalid value",
                                     f"{path} in body should be at least {schema['minLength']} chars long", value))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(FieldError(path, "Invalid value", f"{path} in body should match '{schema['pattern']}'",
                                     value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and (value < schema["minimum"] or
                                    (schema.get("exclusiveMinimum") and value == schema["minimum"])):
            relation = "greater than" if schema.get("exclusiveMinimum") else "greater than or equal to"
            errors.append(FieldError(path, "Invalid value", f"{path} in body should be {relation} {schema['minimum']}",
                                     value))
        if "maximum" in schema and (value > schema["maximum"] or
                                    (schema.get("exclusiveMaximum") and value == schema["maximum"])):
            relation = "less than" if schema.get("exclusiveMaximum") else "less than or equal to"
            errors.append(FieldError(path, "Invalid value", f"{path} in body should be {relation} {schema['maximum']}",
                                     value))
    return errors


def _object_problems(schema: Mapping[str, Any], value: Mapping[str, Any], old: Any, path: str) -> list[FieldError]:
    errors = []
    for name in schema.get("required", ()):
        if name not in value:
            errors.append(FieldError(f"{path}.{name}", "Required value"))
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(FieldError(path, "Too many", f"must have at most {schema['maxProperties']} items", len(value)))
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        errors.append(FieldError(path, "Invalid value",
                                 f"{path} in body should have at least {schema['minProperties']} properties",
                                 len(value)))
    properties = schema.get("properties", {})
    additional = schema.get("additionalProperties")
    old_map = old if isinstance(old, Mapping) else {}
    for name, item in value.items():
        sub = properties.get(name, additional if isinstance(additional, Mapping) else None)
        if sub is not None:
            errors += _validate(sub, item, old_map.get(name, _NO_VALUE), f"{path}.{name}")
    return errors


def _array_problems(schema: Mapping[str, Any], value: list[Any], path: str) -> list[FieldError]:
    errors = []
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(FieldError(path, "Too many", f"must have at most {schema['maxItems']} items", len(value)))
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(FieldError(path, "Invalid value", f"{path} in body should have at least {schema['minItems']} "
                                 "items", len(value)))
    list_type = schema.get("x-kubernetes-list-type")
    seen: set[str] = set()
    for index, item in enumerate(value):
        if list_type == "map" and isinstance(item, Mapping):
            key = json.dumps({k: item.get(k) for k in schema.get("x-kubernetes-list-map-keys", ())}, sort_keys=True)
        elif list_type == "set" or schema.get("uniqueItems"):
            key = json.dumps(item, sort_keys=True)
        else:
            key = None
        if key is not None:
            if key in seen:
                errors.append(FieldError(f"{path}[{index}]", "Duplicate value", value=json.loads(key)))
            seen.add(key)
    if isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            # Items of an atomic list have no old value: transition rules are skipped there.
            errors += _validate(schema["items"], item, _NO_VALUE, f"{path}[{index}]")
    return errors


# Property names CEL cannot spell as they are, and how the API server spells them in rules
# (apiserver/pkg/cel/escaping.go): a keyword becomes __keyword__ (`self.__namespace__`), and
# `__`, `.`, `-`, `/` inside a name become __underscores__, __dot__, __dash__, __slash__.
CEL_RESERVED = frozenset({"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function",
                          "if", "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"})
_CEL_ESCAPES = (("__", "__underscores__"), (".", "__dot__"), ("-", "__dash__"), ("/", "__slash__"))


def cel_property_name(name: str) -> str:
    """A property's name as CEL rules see it."""
    if name in CEL_RESERVED:
        return f"__{name}__"
    for plain, escaped in _CEL_ESCAPES:
        name = name.replace(plain, escaped)
    return name


def _needs_escaping(name: str) -> bool:
    return name in CEL_RESERVED or any(plain in name for plain, _ in _CEL_ESCAPES)


def cel_view(schema: Mapping[str, Any], value: Any) -> Any:
    """`value` with the names of its schema's declared properties as CEL rules spell them (map keys,
    `additionalProperties`, stay as they are: rules index them, `self['a.b']`). The same object
    when nothing needs escaping."""
    if isinstance(value, Mapping):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), Mapping) else {}
        items = {k: cel_view(properties.get(k) or extra or {}, v) for k, v in value.items()}
        renamed = any(k in properties and _needs_escaping(k) for k in items)
        if not renamed and all(items[k] is value[k] for k in items):
            return value
        return {(cel_property_name(k) if k in properties else k): v for k, v in items.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        viewed = [cel_view(schema["items"], v) for v in value]
        return viewed if any(a is not b for a, b in zip(viewed, value)) else value
    return value


def _evaluate_rules(schema: Mapping[str, Any], value: Any, old: Any, path: str, *, quiet: bool = False
                    ) -> list[FieldError]:
    rules = schema.get("x-kubernetes-validations")
    if not rules:
        return []
    value = cel_view(schema, value)
    variables = {"self": value} if old is _NO_VALUE else {"self": value, "oldSelf": cel_view(schema, old)}
    # Converted once for all the rules of this node; with the Kubernetes CEL functions the rules use.
    context = cel.Context(variables, cel_quantity.FUNCTIONS)
    errors: list[FieldError] = []
    for rule in rules:
        text = rule["rule"]
        if old is _NO_VALUE and is_transition_rule(text):
            continue  # on create (or where there is no old value) the API server skips transition rules
        where = (path + rule.get("fieldPath", "")).lstrip(".")
        value_type = schema.get("type", "object")
        try:
            result = compile_rule(text).execute(context)
        except Exception as exc:  # noqa: BLE001 - a rule that cannot be evaluated refuses, as in the API server
            if not quiet:
                errors.append(FieldError(where, "Invalid value", f"rule evaluation error: {text!r}: {exc}",
                                         value_type))
            continue
        if result is True:
            continue
        error_type = _CEL_REASONS.get(rule.get("reason", "FieldValueInvalid"), "Invalid value")
        message = rule.get("message") or f"failed rule: {text}"
        errors.append(FieldError(where, error_type, message, value_type if error_type == "Invalid value" else _NO_VALUE))
    return errors


def is_transition_rule(text: str) -> bool:
    return re.search(r"\boldSelf\b", text) is not None


def iter_rules(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(path, rule) of every CEL rule of a schema (used to compile them when a CRD is registered)."""
    for rule in schema.get("x-kubernetes-validations", ()):
        yield path, rule
    for name, sub in schema.get("properties", {}).items():
        yield from iter_rules(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            yield from iter_rules(schema[key], f"{path}[]")


# --- built-in resources: the pod spec fields users' templates carry ------------------------------
# The schemas of built-in resources are not emulated (a Pod's spec is stored as sent), except for what
# a TrainingJob's pod template carries into the Job, JobSet child Jobs and Pods the operator creates
# and the claims it sizes: local mode refuses them as a cluster would, in the API server's words
# (hostile5 F3: a Job with restartPolicy Always, or a container named "Bad Name", ran here and would
# be refused by a cluster).

POD_RESTART_POLICIES = ("Always", "OnFailure", "Never")
JOB_RESTART_POLICIES = ("OnFailure", "Never")
_ZERO_QUANTITY = re.compile(r"\+?(0+(\.0*)?|\.0+)([eE][-+]?[0-9]+|[A-Za-z]+)?")


def _supported(values: tuple[str, ...]) -> str:
    return "supported values: " + ", ".join(_show(v) for v in values)


def pod_spec_problems(spec: Any, path: str, restart_policies: tuple[str, ...]) -> list[FieldError]:
    """ValidatePodSpec for the fields checked here: the restart policy (defaulted to Always, as the API
    server defaults it before validating) and the containers' names (required, DNS-1123 labels,
    unique across regular and init containers)."""
    if not isinstance(spec, Mapping) or "containers" not in spec:
        return []  # a stub without containers (the emulator's own tests): stored as sent, as the rest of a spec
    errors: list[FieldError] = []
    policy = spec.get("restartPolicy") or "Always"
    if policy not in restart_policies:
        errors.append(FieldError(f"{path}.restartPolicy", "Unsupported value", _supported(restart_policies), policy))
    seen: set[str] = set()
    for kind in ("containers", "initContainers"):  # as ValidatePodSpec: an init container's name is the duplicate
        containers = spec.get(kind) or []
        if kind == "containers" and not containers:
            errors.append(FieldError(f"{path}.containers", "Required value"))
        for index, container in enumerate(containers if isinstance(containers, list) else []):
            where = f"{path}.{kind}[{index}].name"
            name = container.get("name") if isinstance(container, Mapping) else None
            if not name:
                errors.append(FieldError(where, "Required value"))
                continue
            if not isinstance(name, str):
                errors.append(FieldError(where, "Invalid value", "must be a string", name))
                continue
            errors += [FieldError(where, "Invalid value", p, name) for p in _dns_label(name)]
            if name in seen:
                errors.append(FieldError(where, "Duplicate value", value=name))
            seen.add(name)
    return errors


def _storage_problems(claim: Mapping[str, Any]) -> list[FieldError]:
    requests = ((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}
    storage = requests.get("storage") if isinstance(requests, Mapping) else None
    if storage is None:
        return []
    text = str(storage).strip()
    if text.startswith("-") or _ZERO_QUANTITY.fullmatch(text):
        return [FieldError("spec.resources[storage]", "Invalid value", "must be greater than zero", text)]
    return []


def builtin_problems(plural: str, group: str, obj: Mapping[str, Any]) -> list[FieldError]:
    """What the API server refuses on create of a Pod, a Job or a PersistentVolumeClaim, for the fields above."""
    spec = obj.get("spec") or {}
    if not isinstance(spec, Mapping):
        return []
    if group == "" and plural == "pods":
        return pod_spec_problems(spec, "spec", POD_RESTART_POLICIES)
    if group == "batch" and plural == "jobs":
        template = spec.get("template") or {}
        return pod_spec_problems(template.get("spec") if isinstance(template, Mapping) else None,
                                 "spec.template.spec", JOB_RESTART_POLICIES)
    if group == "" and plural == "persistentvolumeclaims":
        return _storage_problems(obj)
    return []
