"""protocol/channel.py: a result as the agent's last line, read back bounded with the same class."""

from __future__ import annotations


import pytest

from checkpoint_operator.protocol import channel, results
from checkpoint_operator.protocol.results import (CheckpointSummary, ImportReport, Provenance, ScanReport,
                                                  SealedCheckpoint, SealedEvent, TransferReport)

DIGEST = "sha256:" + "ab" * 32


def summary(path: str = "step-1", **fields) -> CheckpointSummary:
    return CheckpointSummary(path=path, digest=DIGEST, sizeBytes=10, fileCount=2, **fields)


def test_a_result_line_starts_with_its_kind_and_version_and_reads_back_with_the_same_class():
    report = ScanReport(checkpoints=[summary(step=3, metrics={"loss": 0.5}, complete=None)], skippedCount=0)
    line = channel.encode(report)
    assert line.startswith('{"kind":"scan","version":1,')
    assert "\n" not in line and '"complete"' not in line  # None fields are left out
    assert channel.decode(line, (ScanReport,)) == report
    for other in (TransferReport(verified=True, checkpoint=summary()),
                  ImportReport(sizeBytes=1, fileCount=1, provenance=Provenance(uri="hf://o/m", resolvedRevision="a" * 40)),
                  SealedEvent(checkpoint=SealedCheckpoint(**summary().model_dump(), sealReason="complete"))):
        assert channel.decode(channel.encode(other), (type(other),)) == other


def test_a_newer_version_an_unknown_kind_or_another_kind_is_refused_with_one_line():
    line = channel.encode(ScanReport(checkpoints=[]))
    newer = line.replace('"version":1', '"version":7')
    with pytest.raises(channel.ResultError, match=r"version 7, newer than this operator understands \(1\)"):
        channel.decode(newer, (ScanReport,))
    with pytest.raises(channel.ResultError, match="unknown kind 'scan2'"):
        channel.decode(line.replace('"scan"', '"scan2"'), (ScanReport,))
    with pytest.raises(channel.ResultError, match="a scan result where a transfer result was expected"):
        channel.decode(line, (TransferReport,))
    with pytest.raises(channel.ResultError, match="no valid version"):
        channel.decode('{"kind":"scan","version":"1","checkpoints":[]}', (ScanReport,))
    bad = line.replace('"checkpoints":[]', '"checkpoints":[{"path":"x","digest":"sha256:00","sizeBytes":1,'
                                            '"fileCount":1}]')
    with pytest.raises(channel.ResultError, match=r"invalid: checkpoints\.0\.digest"):
        channel.decode(bad, (ScanReport,))


def test_a_result_past_the_byte_bound_fails_in_the_agent_naming_the_limit():
    long = "a" * 255 + "/" + "b" * 255
    report = ScanReport(checkpoints=[summary(f"{long}-{i}"[-512:], completeReason="r" * 1000,
                                             metrics={f"metric_{j:02d}" + "x" * 50: 1.0 for j in range(16)})
                                     for i in range(results.MAX_CHECKPOINTS)])
    with pytest.raises(channel.ResultTooLarge, match=f"more than the {results.MAX_RESULT_BYTES} a result may have"):
        channel.encode(report)


def test_the_operator_finds_the_last_result_of_its_kind_and_refuses_a_line_the_limit_cut_unread():
    scan = channel.encode(ScanReport(checkpoints=[summary()]))
    log = f"scan: starting\n{channel.encode(ImportReport(sizeBytes=1, fileCount=1, provenance=Provenance(uri='x')))}\n" \
          f"{scan}\nsome warning at exit\n"
    assert channel.find_result(log, (ScanReport,), limit_bytes=1 << 20).checkpoints[0].path == "step-1"
    assert channel.find_result(log, (ImportReport,), limit_bytes=1 << 20).provenance.uri == "x"
    with pytest.raises(channel.ResultError, match="no transfer result in the log"):
        channel.find_result(log, (TransferReport,), limit_bytes=1 << 20)
    # A forged line far past the bound: what the kubelet sends is cut at limitBytes, and the cut
    # line is refused as it is, never parsed or read further.
    limit = 4096
    forged = '{"kind":"scan","version":1,"checkpoints":[' + ",".join(['{"path":"x"}'] * 100_000)
    with pytest.raises(channel.ResultError, match=f"longer than the {limit} bytes the operator reads: refused unread"):
        channel.find_result(forged[:limit], (ScanReport,), limit_bytes=limit)


def test_the_live_events_a_sidecar_writes_are_lines_of_the_same_protocol():
    text = "\n".join(channel.encode(e) for e in (
        SealedEvent(checkpoint=SealedCheckpoint(**summary().model_dump())),
        results.RemovedEvent(path="step-0", digest=DIGEST), results.WarningEvent(message="slow disk")))
    found = list(channel.iter_results(text + "\n" + text.replace('"version":1', '"version":2', 1),
                                      results.LIVE_EVENTS))
    assert [type(e).__name__ for e in found] == ["SealedEvent", "RemovedEvent", "WarningEvent", "ResultError",
                                                 "RemovedEvent", "WarningEvent"]
