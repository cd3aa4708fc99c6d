"""Pod Security admission as the API server runs it: the Pod Security Standards' "baseline" and
"restricted" checks, and the namespace labels that choose the level.

Each check follows one of k8s.io/pod-security-admission/policy's (its ID, what it looks at, its
reason and detail, in the latest version of the policy); a refusal reads as the API server's:
`pods "p" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false
(container "c" must set securityContext.allowPrivilegeEscalation=false), ...`. A level's checks
are the baseline ones plus, for restricted, its own (which replace the baseline checks they
cover, as there); results are reported in the order of the check IDs.

Local mode's admission (local/emulator.py) refuses a pod created in a namespace labelled
`pod-security.kubernetes.io/enforce=baseline|restricted`; tests check every pod shape the
operator builds with `violations`. Not modelled: exemptions, the `-version` labels (always the
latest policy), warn and audit modes, Windows pods' own relaxations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Optional

ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
LEVELS = ("privileged", "baseline", "restricted")

Pod = Mapping[str, Any]


@dataclass(frozen=True)
class Violation:
    check: str     # the policy's check ID
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason} ({self.detail})" if self.detail else self.reason


# --- helpers, as the policy package words things ------------------------------------------------

def _quote(values: list[str]) -> str:
    import json
    return ", ".join(json.dumps(v) for v in values)


def _plural(singular: str, plural: str, count: int) -> str:
    return singular if count == 1 else plural


def _containers(spec: Pod) -> Iterator[Mapping[str, Any]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(kind) or []


def _context(container: Mapping[str, Any]) -> Mapping[str, Any]:
    return container.get("securityContext") or {}


def _pod_context(spec: Pod) -> Mapping[str, Any]:
    return spec.get("securityContext") or {}


def _named(kind: str, names: list[str]) -> str:
    return f"{_plural(kind, kind + 's', len(names))} {_quote(names)}"


def _setters(pod_bad: bool, containers: list[str]) -> list[str]:
    return (["pod"] if pod_bad else []) + ([_named("container", containers)] if containers else [])


def _user_namespace(spec: Pod) -> bool:
    """hostUsers: false relaxes the user checks (KEP-127)."""
    return spec.get("hostUsers") is False


# --- baseline ------------------------------------------------------------------------------------

def host_namespaces(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    found = sorted(k for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k))
    return ("host namespaces", ", ".join(found)) if found else None


def privileged(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    bad = [c["name"] for c in _containers(spec) if _context(c).get("privileged") is True]
    return ("privileged", f"{_named('container', bad)} must not set securityContext.privileged=true") if bad else None


BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}


def capabilities_baseline(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    bad, caps = [], set()
    for container in _containers(spec):
        added = set((_context(container).get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
        if added:
            bad.append(container["name"])
            caps |= added
    if not bad:
        return None
    return ("non-default capabilities", f"{_named('container', bad)} must not include {_quote(sorted(caps))} in "
                                        "securityContext.capabilities.add")


def host_path_volumes(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    bad = [v["name"] for v in spec.get("volumes") or [] if "hostPath" in v]
    return ("hostPath volumes", _named("volume", bad)) if bad else None


def host_ports(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    bad, ports = [], set()
    for container in _containers(spec):
        found = {str(p["hostPort"]) for p in container.get("ports") or [] if p.get("hostPort")}
        if found:
            bad.append(container["name"])
            ports |= found
    if not bad:
        return None
    return ("hostPort", f"{_named('container', bad)} {_plural('uses', 'use', len(bad))} "
                        f"{_plural('hostPort', 'hostPorts', len(ports))} {', '.join(sorted(ports))}")


def app_armor_profile(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    forbidden = []
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and value and \
                value != "runtime/default" and not value.startswith("localhost/"):
            forbidden.append(f"{key}={_quote([value])}")
    setters = []
    if (_pod_context(spec).get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
        setters.append("pod")
    bad = [c["name"] for c in _containers(spec)
           if (_context(c).get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost")]
    if setters or bad:
        forbidden.append(f"{' and '.join(_setters(bool(setters), bad))} must not set "
                         f"securityContext.appArmorProfile.type to \"Unconfined\"")
    if not forbidden:
        return None
    return (_plural("forbidden AppArmor profile", "forbidden AppArmor profiles", len(forbidden)),
            ", ".join(sorted(forbidden)))


SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t"}


def selinux_options(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    types, user, role = set(), False, False

    def bad(options: Optional[Mapping[str, Any]]) -> bool:
        nonlocal user, role
        if not options:
            return False
        wrong = False
        if options.get("type", "") not in SELINUX_TYPES:
            types.add(options["type"])
            wrong = True
        if options.get("user"):
            user = wrong = True
        if options.get("role"):
            role = wrong = True
        return wrong
    pod_bad = bad(_pod_context(spec).get("seLinuxOptions"))
    containers = [c["name"] for c in _containers(spec) if bad(_context(c).get("seLinuxOptions"))]
    if not pod_bad and not containers:
        return None
    data = []
    if types:
        data.append(f"{_plural('type', 'types', len(types))} {_quote(sorted(types))}")
    if user:
        data.append("user may not be set")
    if role:
        data.append("role may not be set")
    return ("seLinuxOptions", f"{' and '.join(_setters(pod_bad, containers))} set forbidden "
                              f"securityContext.seLinuxOptions: {'; '.join(data)}")


def proc_mount(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    bad, values = [], set()
    for container in _containers(spec):
        value = _context(container).get("procMount")
        if value not in (None, "", "Default"):
            bad.append(container["name"])
            values.add(value)
    if not bad:
        return None
    return ("procMount", f"{_named('container', bad)} must not set securityContext.procMount to "
                         f"{_quote(sorted(values))}")


SECCOMP_ALLOWED = ("RuntimeDefault", "Localhost")


def seccomp_profile_baseline(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    values: set[str] = set()
    pod_type = (_pod_context(spec).get("seccompProfile") or {}).get("type")
    pod_bad = pod_type is not None and pod_type not in SECCOMP_ALLOWED
    if pod_bad:
        values.add(str(pod_type))
    bad = []
    for container in _containers(spec):
        kind = (_context(container).get("seccompProfile") or {}).get("type")
        if kind is not None and kind not in SECCOMP_ALLOWED:
            bad.append(container["name"])
            values.add(kind)
    if not pod_bad and not bad:
        return None
    return ("seccompProfile", f"{' and '.join(_setters(pod_bad, bad))} must not set securityContext.seccompProfile."
                              f"type to {_quote(sorted(values))}")


SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}


def sysctls(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    bad = [s.get("name", "") for s in _pod_context(spec).get("sysctls") or [] if s.get("name") not in SAFE_SYSCTLS]
    return ("forbidden sysctls", ", ".join(bad)) if bad else None


def windows_host_process(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    pod_bad = (_pod_context(spec).get("windowsOptions") or {}).get("hostProcess") is True
    bad = [c["name"] for c in _containers(spec) if (_context(c).get("windowsOptions") or {}).get("hostProcess") is True]
    if not pod_bad and not bad:
        return None
    return ("hostProcess", f"{' and '.join(_setters(pod_bad, bad))} must not set "
                           "securityContext.windowsOptions.hostProcess=true")


def _handler_hosts(handler: Optional[Mapping[str, Any]]) -> list[str]:
    if not handler:
        return []
    return [h for h in ((handler.get("httpGet") or {}).get("host"), (handler.get("tcpSocket") or {}).get("host")) if h]


def host_probes_and_lifecycle(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    bad, hosts = [], set()
    for container in _containers(spec):
        lifecycle = container.get("lifecycle") or {}
        found = [h for probe in ("livenessProbe", "readinessProbe", "startupProbe")
                 for h in _handler_hosts(container.get(probe))]
        found += [h for hook in ("postStart", "preStop") for h in _handler_hosts(lifecycle.get(hook))]
        if found:
            bad.append(container["name"])
            hosts |= set(found)
    if not bad:
        return None
    return ("probe or lifecycle host", f"{_named('container', sorted(set(bad)))} {_plural('uses', 'use', len(bad))} "
                                       f"{_plural('probe or lifecycle host', 'probe or lifecycle hosts', len(hosts))} "
                                       f"{_quote(sorted(hosts))}")


# --- restricted ------------------------------------------------------------------------------------

ALLOWED_VOLUME_TYPES = ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                        "projected", "secret", "image")
_VOLUME_KEYS_NOT_TYPES = ("name",)


def restricted_volumes(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    bad, types = [], set()
    for volume in spec.get("volumes") or []:
        kinds = [k for k in volume if k not in _VOLUME_KEYS_NOT_TYPES]
        if any(k in ALLOWED_VOLUME_TYPES for k in kinds):
            continue
        bad.append(volume["name"])
        types.add(kinds[0] if kinds else "unknown")
    if not bad:
        return None
    return ("restricted volume types", f"{_named('volume', bad)} {_plural('uses', 'use', len(bad))} "
                                       f"{_plural('restricted volume type', 'restricted volume types', len(types))} "
                                       f"{_quote(sorted(types))}")


def allow_privilege_escalation(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    bad = [c["name"] for c in _containers(spec) if _context(c).get("allowPrivilegeEscalation") is not False]
    if not bad:
        return None
    return ("allowPrivilegeEscalation != false",
            f"{_named('container', bad)} must set securityContext.allowPrivilegeEscalation=false")


def run_as_non_root(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    if _user_namespace(spec):
        return None
    pod_value = _pod_context(spec).get("runAsNonRoot")
    pod_bad, pod_true = pod_value is False, pod_value is True
    explicit, implicit = [], []
    for container in _containers(spec):
        value = _context(container).get("runAsNonRoot")
        if value is None:
            if not pod_true:
                implicit.append(container["name"])
        elif value is False:
            explicit.append(container["name"])
    setters = _setters(pod_bad, explicit)
    if setters:
        return ("runAsNonRoot != true", f"{' and '.join(setters)} must not set securityContext.runAsNonRoot=false")
    if implicit:
        return ("runAsNonRoot != true", f"pod or {_named('container', implicit)} must set "
                                        "securityContext.runAsNonRoot=true")
    return None


def run_as_user(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    if _user_namespace(spec):
        return None
    pod_bad = _pod_context(spec).get("runAsUser") == 0
    bad = [c["name"] for c in _containers(spec) if _context(c).get("runAsUser") == 0]
    setters = _setters(pod_bad, bad)
    return ("runAsUser=0", f"{' and '.join(setters)} must not set runAsUser=0") if setters else None


def seccomp_profile_restricted(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    baseline = seccomp_profile_baseline(meta, spec)
    if baseline is not None:
        return baseline
    pod_set = (_pod_context(spec).get("seccompProfile") or {}).get("type") in SECCOMP_ALLOWED
    implicit = [c["name"] for c in _containers(spec) if not pod_set and not _context(c).get("seccompProfile")]
    if not implicit:
        return None
    return ("seccompProfile", f"pod or {_named('container', implicit)} must set securityContext.seccompProfile.type "
                              "to \"RuntimeDefault\" or \"Localhost\"")


def capabilities_restricted(meta: Pod, spec: Pod) -> Optional[tuple[str, str]]:
    missing, adding, caps = [], [], set()
    for container in _containers(spec):
        capabilities = _context(container).get("capabilities")
        if capabilities is None:
            missing.append(container["name"])
            continue
        if "ALL" not in (capabilities.get("drop") or []):
            missing.append(container["name"])
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            adding.append(container["name"])
            caps |= added
    details = []
    if missing:
        details.append(f'{_named("container", missing)} must set securityContext.capabilities.drop=["ALL"]')
    if adding:
        details.append(f"{_named('container', adding)} must not include {_quote(sorted(caps))} in "
                       "securityContext.capabilities.add")
    return ("unrestricted capabilities", "; ".join(details)) if details else None


Check = Callable[[Pod, Pod], Optional[tuple[str, str]]]
BASELINE: dict[str, Check] = {
    "appArmorProfile": app_armor_profile, "capabilities_baseline": capabilities_baseline,
    "hostNamespaces": host_namespaces, "hostPathVolumes": host_path_volumes, "hostPorts": host_ports,
    "hostProbesAndHostLifecycle": host_probes_and_lifecycle, "privileged": privileged, "procMount": proc_mount,
    "seLinuxOptions": selinux_options, "seccompProfile_baseline": seccomp_profile_baseline, "sysctls": sysctls,
    "windowsHostProcess": windows_host_process,
}
RESTRICTED: dict[str, Check] = {
    "allowPrivilegeEscalation": allow_privilege_escalation, "capabilities_restricted": capabilities_restricted,
    "restrictedVolumes": restricted_volumes, "runAsNonRoot": run_as_non_root, "runAsUser": run_as_user,
    "seccompProfile_restricted": seccomp_profile_restricted,
}
# Restricted checks that take over a baseline check (the policy's OverrideCheckIDs).
OVERRIDES = {"restrictedVolumes": "hostPathVolumes", "seccompProfile_restricted": "seccompProfile_baseline",
             "capabilities_restricted": "capabilities_baseline"}


def checks(level: str) -> dict[str, Check]:
    if level == "privileged":
        return {}
    if level == "baseline":
        return dict(BASELINE)
    if level == "restricted":
        found = {**BASELINE, **RESTRICTED}
        for check in OVERRIDES.values():
            found.pop(check)
        return found
    raise ValueError(f"unknown Pod Security level {level!r}: expected one of {', '.join(LEVELS)}")


def violations(level: str, pod: Pod) -> list[Violation]:
    """What the level refuses in `pod` (a Pod, or a pod template: metadata and spec)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    found = []
    for check_id, check in sorted(checks(level).items()):
        result = check(meta, spec)
        if result is not None:
            found.append(Violation(check_id, *result))
    return found


def enforced_level(namespace_labels: Optional[Mapping[str, str]]) -> Optional[str]:
    """The level a namespace enforces (None: privileged, nothing to check). A label value that
    is not a level is enforced as restricted, as the API server does with an invalid label."""
    value = (namespace_labels or {}).get(ENFORCE_LABEL)
    if value is None or value == "privileged":
        return None
    return value if value in LEVELS else "restricted"


def forbidden_message(level: str, found: list[Violation]) -> str:
    """`violates PodSecurity "restricted:latest": reason (detail), reason (detail)`."""
    return f'violates PodSecurity "{level}:latest": ' + ", ".join(str(v) for v in found)
