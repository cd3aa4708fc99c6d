"""A TrainingJob's template may not reach a claim the operator manages (issue 23 item 4).

A Ready Checkpoint on the volume store is bytes on a claim the operator made (a job's output, an
import, a push): a template that mounted one read-write could rewrite a Checkpoint that stays
Ready with its old digest. So every claim a template reaches, as a `persistentVolumeClaim`
volume or as the `dataSource`/`dataSourceRef` of an `ephemeral` volume's claim template, is
refused when it is managed:

- it exists and is the operator's (labelled managed-by, or owned by one of its kinds), read
  live when the job starts (`managed_claim_reason`);
- or it is the name the operator gives, or will give, a claim of a TrainingJob or Checkpoint
  of the namespace (`MANAGED_NAMES`: their output and import claims, from the indexes), so a
  template cannot wait for such a claim to appear.

The other direction, a template that names a claim before the operator creates it: import and
upload claims hold their Checkpoint's uid (workload.import_claim_name), which nobody knows before
the Checkpoint exists, so nothing (a template, a Job that outlived its TrainingJob, a pod) can
have named one earlier; and where claims are created an unfinished job whose template names the
claim holds its creation back (`squatting_message`), every distinct claim of the template
indexed. Inputs are mounted with `spec.checkpoints`, read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

from checkpoint_operator import GROUP
from checkpoint_operator.logic.workload import LABEL_MANAGED_BY, MANAGER

MAX_TEMPLATE_CLAIMS = 128  # distinct claims a template may name: each is read live at start


@dataclass(frozen=True)
class ClaimReference:
    claim: str
    field: str   # where the template names it, e.g. spec.template.spec.volumes[2].persistentVolumeClaim.claimName


def claim_references(template_spec: dict[str, Any]) -> list[ClaimReference]:
    """Every claim a pod template reaches: mounted, or copied by an ephemeral volume's claim."""
    found = []
    for index, volume in enumerate(template_spec.get("volumes") or []):
        if not isinstance(volume, dict):
            continue
        where = f"spec.template.spec.volumes[{index}]"
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if isinstance(claim, str) and claim:
            found.append(ClaimReference(claim, f"{where}.persistentVolumeClaim.claimName"))
        claim_spec = (((volume.get("ephemeral") or {}).get("volumeClaimTemplate") or {}).get("spec")) or {}
        for key in ("dataSource", "dataSourceRef"):
            source = claim_spec.get(key) or {}
            if source.get("kind") == "PersistentVolumeClaim" and not source.get("apiGroup") \
                    and isinstance(source.get("name"), str):
                found.append(ClaimReference(source["name"], f"{where}.ephemeral.volumeClaimTemplate.spec.{key}"))
    return found


def managed_claim_reason(claim: Optional[dict[str, Any]]) -> Optional[str]:
    """Why a live claim is the operator's (None: it is not, or does not exist)."""
    if not claim:
        return None
    meta = claim.get("metadata") or {}
    if (meta.get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGER:
        return f"it is labelled {LABEL_MANAGED_BY}={MANAGER}"
    owners = [o for o in meta.get("ownerReferences") or [] if str(o.get("apiVersion", "")).startswith(GROUP + "/")]
    if owners:
        return f"it belongs to {owners[0].get('kind')} {owners[0].get('name')}"
    return None


def refusal(reference: ClaimReference, why: str) -> str:
    return (f"{reference.field}: PersistentVolumeClaim {reference.claim} is managed by the checkpoint operator "
            f"({why}); a template may not mount or copy it, or it could change a Checkpoint's bytes behind its "
            f"digest: use spec.checkpoints to read a Checkpoint (mounted read-only)")


def distinct_claims(references: list[ClaimReference]) -> list[str]:
    """Each claim once, in the template's order: what the squat index keeps (a template may name one
    claim in many volumes; the bound below is on distinct claims, so the index must be too)."""
    return list(dict.fromkeys(r.claim for r in references))


def too_many(references: list[ClaimReference]) -> Optional[str]:
    claims = distinct_claims(references)
    if len(claims) <= MAX_TEMPLATE_CLAIMS:
        return None
    return (f"spec.template.spec.volumes names {len(claims)} PersistentVolumeClaims: at most {MAX_TEMPLATE_CLAIMS} "
            f"are allowed")


def squatting_message(claim: str, jobs: Iterable[str]) -> str:
    """The operator is about to create `claim` and unfinished jobs' templates name it."""
    names = sorted(set(jobs))
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"PersistentVolumeClaim {claim} is named in the pod template of TrainingJob {shown}, which would "
            f"mount it read-write: it is created once that job is finished or deleted")
