"""Data the operator removes stays while another Checkpoint's location points into it (hostile1 D13).

The operator removes bytes in two places: a live-sealing job's retired directories (the sidecar
removes them once retention deleted their Checkpoint) and an owned s3 prefix when its Checkpoint
is deleted. Any other Checkpoint may point into the same bytes: an adopter (`source.volume`) of a
path of a job's output, or one whose location another wrote. Before a removal, every Checkpoint
pointing into the claim (or the store) is asked whether its place overlaps the data to remove:
one that does keeps it, and the removal waits for it to go (claim_ownership.py does the same for
whole claims).

Places on a claim are paths relative to the claim's root ("." for the root); a location that lists
`items` (the root files of an output) points at those files alone, not at the directories beside
them. Places in the s3 store are prefixes (`s3://bucket/key/`).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional


@dataclass(frozen=True, slots=True)
class Pointer:
    """Where one Checkpoint's data is, on a claim (relative paths) or in the s3 store (prefixes)."""

    checkpoint: str
    places: tuple[str, ...]


def claim_path(path: str) -> str:
    """A path on a claim as the operator compares them: relative, normalised, "." for the root."""
    return posixpath.normpath(path.strip("/") or ".")


def claim_places(path: str, items: Optional[Iterable[str]] = None) -> tuple[str, ...]:
    base = claim_path(path)
    if not items:
        return (base,)
    return tuple(claim_path(posixpath.join(base, item)) for item in items)


def volume_pointer(name: str, spec_source: Mapping[str, Any], status: Mapping[str, Any]) -> Optional[tuple[str, Pointer]]:
    """(claim, pointer) of a Checkpoint on a claim: its adopted path (spec.source.volume, known
    before it is Ready) and its status.location.volume (the same claim for an adopter), or None."""
    volume = spec_source.get("volume") or {}
    location = (status.get("location") or {}).get("volume") or {}
    claim = volume.get("claimName") or location.get("claimName")
    if not isinstance(claim, str) or not claim:
        return None
    places: list[str] = []
    if volume.get("claimName") == claim and isinstance(volume.get("path"), str):
        places += claim_places(volume["path"])
    if location.get("claimName") == claim and isinstance(location.get("path"), str):
        places += claim_places(location["path"], location.get("items"))
    return (claim, Pointer(name, tuple(dict.fromkeys(places)))) if places else None


def paths_overlap(a: str, b: str) -> bool:
    """One path is the other or inside it (so removing either removes bytes of the other)."""
    a, b = claim_path(a), claim_path(b)
    return a == b or a == "." or b == "." or a.startswith(b + "/") or b.startswith(a + "/")


def prefixes_overlap(a: str, b: str) -> bool:
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def holders(place: str, pointers: Iterable[Pointer], *, s3: bool = False, exclude: str = "") -> list[str]:
    """The Checkpoints (other than `exclude`) whose data overlaps `place`, sorted."""
    overlap = prefixes_overlap if s3 else paths_overlap
    return sorted({p.checkpoint for p in pointers if p.checkpoint != exclude
                   and any(overlap(place, mine) for mine in p.places)})


def kept_message(place: str, keeping: list[str], why: str) -> str:
    shown = ", ".join(keeping[:3]) + (f" and {len(keeping) - 3} more" if len(keeping) > 3 else "")
    return f"{why} {place}, but Checkpoint {shown} points into it: it stays while they do"


def retired_refusal(path: str, job: str, retired: Iterable[str]) -> Optional[str]:
    """An adoption of `path` on a running live-sealing job's output that overlaps a directory its
    retention released (the sidecar is removing it): why it is refused, or None."""
    hit = next((r for r in retired if paths_overlap(path, r)), None)
    if hit is None:
        return None
    return (f"spec.source.volume.path: {claim_path(path)} overlaps {hit}, which retention of the running TrainingJob "
            f"{job} released (its Checkpoint was deleted) and which is being removed: adopt a directory that is kept")
