"""What `local run` prints at the end: the TrainingJobs and the Checkpoints, as a table or JSON.

Each Checkpoint shows its completeness as `agent scan` does (issue 18 item 8f): `COMPLETE` yes,
NO or - (not checked), and below the table the reason of each incomplete one (the `Complete`
condition's message); `-o json` carries `complete` and `completeReason`. A Checkpoint whose
deletion is pending is shown `Terminating`, as kubectl shows a pod being deleted (issue 18 item
14), never Ready; in JSON its `phase` stays what the status says and `terminating` is true.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from checkpoint_operator.logic.conditions import get_condition
from checkpoint_operator.logic.quantity import format_size

REASON_SHOWN = 300  # characters of an incomplete Checkpoint's reason in the table


def _checkpoint(c: dict) -> dict[str, Any]:
    meta, s = c["metadata"], c.get("status", {})
    condition = get_condition(s.get("conditions"), "Complete") or {}
    complete = s.get("complete")
    return {"name": meta["name"], "phase": s.get("phase"), "terminating": bool(meta.get("deletionTimestamp")),
            "format": s.get("format"), "step": s.get("step"), "resumable": s.get("resumable"),
            "complete": complete, "completeReason": condition.get("message") if complete is not None else None,
            "sizeBytes": s.get("sizeBytes"), "fileCount": s.get("fileCount"), "digest": s.get("digest"),
            "parents": s.get("parents") or [], "producedBy": s.get("producedBy"),
            "store": next(iter(s.get("location") or {}), None)}


def _job(j: dict) -> dict[str, Any]:
    s = j.get("status", {})
    return {"name": j["metadata"]["name"], "phase": s.get("phase"),
            "inputs": [{"name": i["name"], "digest": i.get("digest")} for i in s.get("inputs") or []],
            "outputCheckpoints": s.get("outputCheckpoints") or [], "message": s.get("message")}


def _entry(e: dict) -> dict[str, Any]:
    """A ClusterCheckpoint (catalog entry): a Checkpoint's fields, its license and its source."""
    s = e.get("status", {})
    source = s.get("source") or {}
    return {**_checkpoint(e), "license": s.get("license"), "source": source.get("uri"),
            "commit": source.get("resolvedRevision")}


def build_report(checkpoints: list[dict], jobs: list[dict], entries: Iterable[dict] = ()) -> dict[str, Any]:
    def by_name(o: dict) -> str:
        return str(o["metadata"]["name"])
    report: dict[str, Any] = {"checkpoints": [_checkpoint(c) for c in sorted(checkpoints, key=by_name)],
                              "trainingJobs": [_job(j) for j in sorted(jobs, key=by_name)]}
    entries = list(entries)
    if entries:
        report["clusterCheckpoints"] = [_entry(e) for e in sorted(entries, key=by_name)]
    return report


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells)


def shown_phase(c: dict[str, Any]) -> Optional[str]:
    return "Terminating" if c["terminating"] else c["phase"]


def shown_complete(c: dict[str, Any]) -> str:
    return "-" if c["complete"] is None else "yes" if c["complete"] else "NO"


def render_table(report: dict[str, Any]) -> str:
    ckpts = _table(["CHECKPOINT", "PHASE", "FORMAT", "STEP", "RESUMABLE", "COMPLETE", "SIZE", "FILES", "PARENTS",
                    "DIGEST"],
                   [[c["name"], shown_phase(c), c["format"], c["step"], c["resumable"], shown_complete(c),
                     format_size(c["sizeBytes"]) if c["sizeBytes"] is not None else None, c["fileCount"],
                     ",".join(p["name"] for p in c["parents"]) or "-",
                     (c["digest"] or "")[:19]] for c in report["checkpoints"]])
    jobs = _table(["TRAININGJOB", "PHASE", "INPUTS", "OUTPUTS"],
                  [[j["name"], j["phase"], ",".join(i["name"] for i in j["inputs"]) or "-",
                    ",".join(j["outputCheckpoints"]) or "-"] for j in report["trainingJobs"]])
    lines = [jobs] + (["", ckpts] if report["checkpoints"] else [])  # a table without rows says nothing
    if report.get("clusterCheckpoints"):
        lines += ["", _table(["CLUSTERCHECKPOINT", "PHASE", "FORMAT", "COMPLETE", "SIZE", "FILES", "LICENSE", "DIGEST"],
                             [[e["name"], shown_phase(e), e["format"], shown_complete(e),
                               format_size(e["sizeBytes"]) if e["sizeBytes"] is not None else None, e["fileCount"],
                               e["license"] or "-", (e["digest"] or "")[:19]] for e in report["clusterCheckpoints"]])]
    incomplete = [c for c in [*report["checkpoints"], *report.get("clusterCheckpoints", [])] if c["complete"] is False]
    if incomplete:
        lines += ["", f"incomplete ({len(incomplete)}):"]
        lines += [f"  {c['name']}  {(c['completeReason'] or 'incomplete')[:REASON_SHOWN]}" for c in incomplete]
    return "\n".join(lines)
