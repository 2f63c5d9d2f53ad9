"""The typed reports between a worker, its supervisor and the status readers: their JSON round trips."""

from __future__ import annotations

import pytest

from shardctl.report import (
    Counters,
    ReadyReport,
    ShardState,
    ShardStatus,
    WorkerReport,
    decode_report,
    encode_report,
)


def test_worker_report_round_trips_through_its_line() -> None:
    report = WorkerReport(counters=Counters(ticks_received=5, rows_written=3, batch_seconds_sum=0.25),
                          connected=True, failed_symbols=("NOPE",), journal_backlog=2, disk_full=True,
                          disk_free_bytes=10, last_tick_at=12.5, last_error="disk full: /j (10 bytes free)")
    line = encode_report(report)
    assert line.endswith(b"\n") and b'"type":"stats"' in line
    assert decode_report(line) == report
    assert decode_report(encode_report(ReadyReport())) == ReadyReport()


def test_unknown_and_mistyped_keys_take_defaults() -> None:
    line = (b'{"type":"stats","counters":{"rows_written":"7","batches":2,"later_counter":1},'
            b'"connected":true,"pending_rows":null,"newer_gauge":3}')
    report = decode_report(line)
    assert isinstance(report, WorkerReport)
    assert report.counters == Counters(batches=2)  # "7" is not a count: it keeps its default
    assert report.connected is True and report.pending_rows == 0


@pytest.mark.parametrize("line", [b"[]", b'{"type":"gossip"}', b"not json", b'"stats"'])
def test_a_line_that_is_not_a_report_is_refused(line: bytes) -> None:
    with pytest.raises(ValueError):
        decode_report(line)


def test_counters_add_up_field_by_field() -> None:
    total = Counters(ticks_received=1, batch_seconds_sum=0.5) + Counters(ticks_received=2, dead_letters=4)
    assert total == Counters(ticks_received=3, batch_seconds_sum=0.5, dead_letters=4)


def test_shard_status_is_flat_json_and_reads_back() -> None:
    status = ShardStatus(name="crypto", state=ShardState.RUNNING, wanted=True, pid=42, restarts=1,
                         counters=Counters(rows_written=9), worker=WorkerReport(journal_full=True, pending_rows=3))
    data = status.to_json()
    assert data["rows_written"] == 9 and data["journal_full"] is True and data["pending_rows"] == 3
    assert "counters" not in data and "worker" not in data
    assert ShardStatus.from_json(data) == status


def test_shard_status_needs_a_name_and_a_state() -> None:
    with pytest.raises(ValueError):
        ShardStatus.from_json({"state": "RUNNING"})
