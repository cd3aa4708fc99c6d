"""The exec fence (hostile5 H3, H4), as the chart's ValidatingAdmissionPolicy states it
(charts/checkpoint-operator/templates/exec-fence.yaml), for the local cluster's API emulator: in the
operator's agent pods, known by their name (logic/naming.agent_pod_name), only the commands
`kubectl ckpt push` and `pull` run are accepted, with the arguments the plugin builds
(logic/transfers.py); anything else, and any attach or port-forward, is refused. A process of
someone's own in an agent pod could change the data it writes after it is hashed, or forge its
result. tests/test_exec_fence.py checks that this and the chart's policy decide alike."""

from __future__ import annotations

import re
from typing import Optional

from checkpoint_operator.logic.agent_commands import AGENT
from checkpoint_operator.logic.live_sealing import SIDECAR
from checkpoint_operator.logic.naming import AGENT_POD_COMPONENTS

POLICY_NAME = "checkpoint-operator-agent-exec"  # the chart's <release>-agent-exec, in local mode's words
_AGENT_POD = re.compile(rf"-({'|'.join(AGENT_POD_COMPONENTS)})$")

# component -> the commands it accepts: (fixed arguments, flags and their value patterns)
_ALLOWED: dict[str, list[tuple[tuple[str, ...], dict[str, str]]]] = {
    "upload": [((*AGENT, "unpack", "/checkpoint-data/data"), {"--max-size": r"^[0-9]+$", "--name": r"^[^-]"}),
               ((*AGENT, "scan", "/checkpoint-data/data", "--single", "--json"), {})],
    "pull": [((*AGENT, "pack", "/checkpoint-data"),
              {"--session-dir": r"^/checkpoint-work$", "--digest": r"^sha256:[0-9a-f]{64}$",
               "--manifest": r"^/checkpoint-manifest[.]json$"})],
}
MAX_ARGUMENTS = 12


def is_agent_pod(name: str) -> bool:
    return _AGENT_POD.search(name) is not None


def _fits(command: list[str], fixed: tuple[str, ...], flags: dict[str, str]) -> bool:
    if len(command) < len(fixed) or tuple(command[:len(fixed)]) != fixed or (len(command) - len(fixed)) % 2:
        return False
    pairs = list(zip(command[len(fixed)::2], command[len(fixed) + 1::2]))
    names = [flag for flag, _ in pairs]
    return len(set(names)) == len(names) and all(flag in flags and re.search(flags[flag], value)
                                                 for flag, value in pairs)


def refusal(pod_name: str, subresource: str, command: list[str], container: str = "") -> Optional[str]:
    """Why the fence refuses this request into pod `pod_name`'s `container` (None: it is accepted, or not
    its business)."""
    if not is_agent_pod(pod_name):
        if container != SIDECAR:
            return None
        return (f"pods/{subresource} into the live-sealing sidecar (container {SIDECAR}) of pod {pod_name} is "
                f"refused: its output is what the operator believes about the checkpoints sealed there, and it "
                f"holds the store credentials of their uploads (docs/guarantees.md)")
    if subresource != "exec":
        return (f"pods/{subresource} is refused in the checkpoint operator's agent pod {pod_name}: a process "
                f"attached there could change the data it writes or forge its result (docs/guarantees.md)")
    component = pod_name.rsplit("-", 1)[1]
    if len(command) <= MAX_ARGUMENTS and any(_fits(command, fixed, flags)
                                             for fixed, flags in _ALLOWED.get(component, [])):
        return None
    return (f"exec into the checkpoint operator's agent pod {pod_name} is refused: only kubectl ckpt push (agent "
            f"unpack and its inventory scan, in a -upload pod) and kubectl ckpt pull (agent pack, in a -pull pod) "
            f"run there, with their own arguments; anything else could change the data the pod writes or forge "
            f"its result (docs/guarantees.md)")
