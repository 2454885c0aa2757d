"""The benchmark's arithmetic: percentiles, per-event latency, busy windows, the report."""

from __future__ import annotations

import math
import zlib

import orjson
import pytest

from streamrec.bench import Dataset, renamed
from streamrec.bench_report import (
    REPORT_KEYS,
    MemoryResult,
    PhaseResult,
    Sample,
    assemble_report,
    busy_window,
    format_table,
    histogram_quantile_ms,
    latency_summary_ms,
    metric_sum,
    parse_metrics,
    per_event_latencies,
    percentile,
    rss_per_new_user,
)
from streamrec.exceptions import ConfigError
from streamrec.settings import Settings


def phase(pipeline: str, workers: int, rate: float) -> PhaseResult:
    return PhaseResult(
        name=f"{pipeline}-{workers}", pipeline=pipeline, workers=workers, events=10_000,
        events_per_s=rate, cpu_us_per_event=1e6 / rate,
        stage_us_per_event={"decode": 3.0, "state": 4.0, "learn": 5.0, "rank": 10.0,
                            "emit": 2.0},
        rss_mb=150.0, rss_growth_mb=2.0, active_users=1000, redis_bytes_per_user=1900.0,
        redis_cpu_us_per_event=12.0, rss_bytes_per_active_user=250.0)


def test_percentiles_interpolate_between_ranks():
    values = sorted(float(v) for v in range(1, 101))  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 100.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)
    summary = latency_summary_ms([0.001, 0.002, 0.003, 0.004])
    assert summary == {"p50": 2.5, "p95": 3.85, "p99": 3.97}


def test_an_event_is_timed_to_the_first_list_that_reflects_it():
    events = [("u", 10.0), ("u", 10.5), ("u", 11.0), ("v", 10.2), ("w", 10.0)]
    # u's first list covers events up to 10.5, emitted at 10.6; the next covers 11.0.
    # v's lists arrive out of order: the earliest emit among those covering it counts.
    lists = [("u", 10.5, 10.6), ("u", 11.0, 11.02), ("v", 10.4, 10.9), ("v", 10.2, 10.25)]
    latencies, missing = per_event_latencies(events, lists)
    assert missing == 1  # w never got a list
    assert dict(latencies) == pytest.approx({10.0: 0.6, 10.5: 0.1, 11.0: 0.02, 10.2: 0.05})


def test_busy_window_skips_start_up_and_ends_when_everything_is_handled():
    samples = [Sample(0.0, [0, 0]), Sample(0.5, [500, 0]), Sample(1.0, [1500, 200]),
               Sample(1.5, [2500, 1500]), Sample(2.0, [3000, 3000])]
    assert busy_window(samples, 6000) == (2, 4, 6000 - 1700)
    # One worker did it all before the other joined: measured from the first progress.
    alone = [Sample(0.0, [0, 0]), Sample(0.5, [100, 0]), Sample(1.0, [1000, 0])]
    assert busy_window(alone, 1000) == (1, 2, 900)
    # Everything between the launch and the first scrape: the launch is the start.
    assert busy_window([Sample(0.0, [0]), Sample(0.25, [500])], 500) == (0, 1, 500)
    with pytest.raises(ValueError):
        busy_window(alone, 5000)


def test_histogram_quantiles_match_prometheus_interpolation():
    buckets = {0.005: 50.0, 0.01: 90.0, 0.025: 100.0, math.inf: 100.0}
    assert histogram_quantile_ms(buckets, 0.5) == 5.0
    assert histogram_quantile_ms(buckets, 0.95) == pytest.approx(17.5)
    assert math.isnan(histogram_quantile_ms({math.inf: 0.0}, 0.5))


def test_metrics_text_is_parsed_and_summed_by_label():
    text = ('# HELP x\nstreamrec_stage_seconds_sum{stage="rank"} 2.5\n'
            'streamrec_stage_seconds_sum{stage="learn"} 1.0\n'
            'streamrec_events_consumed_total{type="play"} 7.0\n'
            'streamrec_events_consumed_total{type="stop"} 3.0\n'
            'streamrec_pipeline_up 1.0\n')
    metrics = parse_metrics(text)
    assert metric_sum(metrics, "streamrec_events_consumed_total") == 10.0
    assert metric_sum(metrics, "streamrec_stage_seconds_sum", stage="rank") == 2.5
    assert metric_sum(metrics, "streamrec_pipeline_up") == 1.0


def test_rss_per_user_is_the_slope_after_warm_up():
    assert rss_per_new_user([100.0, 150.0, 151.0], [0, 1000, 2024], 1) == 1024.0
    assert math.isnan(rss_per_new_user([100.0, 101.0], [1000, 1050], 0))


def test_rss_per_active_user_comes_from_the_memory_run_not_the_raw_slope():
    # Two warm-up passes (the second still growing), then two passes of new users.
    memory = MemoryResult(events_per_pass=60_000, users=[5_000] * 4,
                          rss_mb=[200.0, 215.0, 217.0, 219.5], warm_passes=2)
    assert memory.bytes_per_user() == pytest.approx(4.5 * 1024 * 1024 / 10_000)
    assert memory.bytes_per_user_by_pass() == pytest.approx(
        [15.0 * 1024 * 1024 / 5_000, 2.0 * 1024 * 1024 / 5_000, 2.5 * 1024 * 1024 / 5_000])
    assert math.isnan(MemoryResult(100, [50, 50], [1.0, 2.0]).bytes_per_user())
    primary = phase("batched", 1, 30_000.0)  # its raw slope: 250 B per new user
    report = assemble_report(900_000.0, primary, {"p50": 4.0, "p95": 9.0, "p99": 15.0},
                             15_000.0, memory=memory)
    assert report["rss_bytes_per_active_user"] == pytest.approx(471.9, abs=0.1)
    assert report["rss_bytes_per_new_user_raw"] == 250.0
    assert report["rss_memory_run"]["users_per_pass"] == [5_000] * 4
    assert "renamed" in report["rss_method"]
    orjson.dumps(report)
    table = format_table(report)
    assert "472 B more per active user (10,000 new users after a 10,000-user warm-up" in table
    # Without a memory run the figure is absent, not the raw slope under its name.
    bare = assemble_report(900_000.0, primary, {"p50": 4.0, "p95": 9.0, "p99": 15.0},
                           15_000.0)
    assert bare["rss_bytes_per_active_user"] is None
    assert "not measured" in format_table(bare)


def test_memory_passes_are_the_same_events_with_new_users():
    events = [{"event_id": f"e{i}", "user_id": f"u{i % 3}", "type": "play", "ts": 100.0 + i}
              for i in range(6)]
    data = Dataset(titles=[], events=events, values=[orjson.dumps(e) for e in events],
                   keys=[e["user_id"].encode() for e in events])
    warm, second = renamed(data, 0, 6), renamed(data, 1, 6)
    assert warm.events == events and warm.users(6) == 3
    assert second.users(6) == 3
    assert not {e["user_id"] for e in second.events} & {e["user_id"] for e in events}
    assert not {e["event_id"] for e in second.events} & {e["event_id"] for e in events}
    assert min(e["ts"] for e in second.events) > max(e["ts"] for e in events)
    assert [orjson.loads(v)["user_id"] for v in second.values] == [
        k.decode() for k in second.keys]
    assert [e["type"] for e in second.events] == [e["type"] for e in events]


def test_report_has_every_contract_key_and_the_comparison():
    batched_1, batched_2 = phase("batched", 1, 30_000.0), phase("batched", 2, 50_000.0)
    per_record = phase("per-record", 1, 3_000.0)
    report = assemble_report(900_000.0, batched_2, {"p50": 4.0, "p95": 9.0, "p99": 15.0},
                             25_000.0, [batched_1, per_record],
                             extra={"paced_events": 10, "paced_batch_events_mean": 3.5,
                                    "paced_worker_cpu_share": 0.42,
                                    "latency_ms_delivered": {"p50": 6.0, "p95": 11.0,
                                                             "p99": 18.5}})
    assert set(REPORT_KEYS) <= set(report)
    assert report["events_per_s"] == 50_000.0 and report["workers"] == 2
    assert report["events_per_s_by_workers"] == {"1": 30_000.0, "2": 50_000.0}
    # The comparison is one worker against one worker.
    assert report["speedup_vs_per_record"] == 10.0
    assert report["per_record_events_per_s"] == 3_000.0
    assert [p["name"] for p in report["phases"]] == ["batched-1", "per-record-1", "batched-2"]
    assert report["paced_events"] == 10
    orjson.dumps(report)  # JSON-serialisable (no NaN, no numpy types)
    table = format_table(report)
    assert "10.0x" in table and "p99 15.0 ms" in table and "50,000 events/s" in table
    # Why latency is what it is: batch size and worker CPU while paced.
    assert "3.5 events per batch, worker CPU 42% of a core" in table
    # Latency to when a consumer received the list, beside the list's own time.
    assert "receipt by a consumer" in table and "p99 18.5 ms" in table


def test_the_table_shows_one_workers_latency_beside_the_primary_runs():
    report = assemble_report(900_000.0, phase("batched", 2, 50_000.0),
                             {"p50": 40.0, "p95": 90.0, "p99": 150.0}, 25_000.0,
                             [phase("batched", 1, 30_000.0)],
                             extra={"paced_batch_events_mean": 300.0,
                                    "paced_worker_cpu_share": 0.9})
    report["latency_by_workers"] = {
        "1": {"paced_rate": 15_000.0, "latency_ms": {"p50": 7.0, "p95": 12.0, "p99": 21.5},
              "paced_batch_events_mean": 40.0, "paced_worker_cpu_share": 0.65},
        "2": {"paced_rate": 25_000.0, "latency_ms": {"p50": 40.0, "p95": 90.0, "p99": 150.0},
              "paced_batch_events_mean": 300.0, "paced_worker_cpu_share": 0.9}}
    table = format_table(report)
    row = next(line for line in table.splitlines() if line.startswith("latency, 1 worker"))
    assert "at 15,000 events/s" in row
    assert row.endswith("p50 7.0 ms, p95 12.0 ms, p99 21.5 ms (40.0 events per batch, "
                        "worker CPU 65%)")
    # The primary run (2 workers) is not repeated.
    assert table.count("p99 150.0 ms") == 1


def test_a_bad_pipeline_setting_is_one_clear_error():
    with pytest.raises(ConfigError, match="STREAMREC_PIPELINE must be one of batched"):
        Settings.from_env({"STREAMREC_PIPELINE": "fast"})
    assert Settings.from_env({"STREAMREC_PIPELINE": "per-record"}).pipeline == "per-record"


def test_core_batches_by_partition_keep_each_users_records_in_order():
    from streamrec.bench_core import core_batches

    keys = [f"u{i % 7}".encode() for i in range(60)]
    values = [str(i).encode() for i in range(60)]
    batches = core_batches(values, keys, 4, "partition", 3)
    assert sum(len(b) for b in batches) == 60 and max(len(b) for b in batches) == 4
    # A batch comes from one partition, so a user's records never straddle partitions,
    # and each user's records arrive in the order they were written.
    seen: dict[bytes, list[int]] = {}
    for batch in batches:
        assert len({zlib.crc32(r.key()) % 3 for r in batch}) == 1
        for record in batch:
            seen.setdefault(record.key(), []).append(int(record.value()))
    assert all(v == sorted(v) for v in seen.values()) and len(seen) == 7
    assert [r.value() for r in core_batches(values, keys, 4, "time", 3)[1]] == [
        b"4", b"5", b"6", b"7"]
