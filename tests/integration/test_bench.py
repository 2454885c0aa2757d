"""`streamrec bench` end to end on a tiny run: the report a user gets is complete.

No timing thresholds: the figures depend on the machine; this checks that every figure is
there, is a positive number, and that the counts agree with what was asked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from streamrec.bench_report import REPORT_KEYS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


def test_a_tiny_bench_reports_every_figure(tmp_path):
    report_path = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    done = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "bench", "--events", "3000", "--users", "300",
         "--titles", "200", "--workers", "2", "--per-record-events", "600",
         "--latency-seconds", "2", "--memory-events", "1500", "--report", str(report_path)],
        capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())

    assert set(REPORT_KEYS) <= set(report)
    for key in ("ceiling_events_per_s", "events_per_s", "cpu_us_per_event", "paced_rate",
                "rss_mb"):
        assert isinstance(report[key], (int, float)) and report[key] > 0, key
    assert report["workers"] == 2 and report["events"] == 3000
    assert set(report["stage_us_per_event"]) >= {"decode", "state", "learn", "rank", "emit"}
    assert all(v >= 0 for v in report["stage_us_per_event"].values())
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    # Nearly every paced event is reflected in a recommendation.
    assert report["paced_events_unmatched"] <= 0.01 * report["paced_events"]
    assert report["paced_batch_events_mean"] >= 1 and report["paced_worker_cpu_share"] >= 0
    assert set(report["events_per_s_by_workers"]) == {"1", "2"}
    # Latency is measured for one worker too, at half its own rate.
    by_workers = report["latency_by_workers"]
    assert set(by_workers) == {"1", "2"} and by_workers["2"]["latency_ms"] == latency
    one = by_workers["1"]
    assert 0 < one["latency_ms"]["p50"] <= one["latency_ms"]["p99"]
    assert one["paced_rate"] > 0 and one["paced_batch_events_mean"] >= 1
    assert report["per_record_events_per_s"] > 0 and report["speedup_vs_per_record"] > 0
    phases = {p["name"]: p for p in report["phases"]}
    assert set(phases) == {"batched-1", "batched-2", "per-record-1"}
    assert phases["per-record-1"]["events"] == 600
    assert 0 < report["active_users"] <= 300 and report["redis_bytes_per_user"] > 0
    # The memory run: the same events pass after pass, every pass with new users only.
    memory = report["rss_memory_run"]
    assert memory["events_per_pass"] == 1500 and len(memory["users_per_pass"]) == 4
    assert len(set(memory["users_per_pass"])) == 1 and memory["users_per_pass"][0] > 0
    assert isinstance(report["rss_bytes_per_active_user"], (int, float))
    assert "rss_bytes_per_new_user_raw" in report and report["rss_method"]

    # The table on stdout, and the chart beside the report.
    assert "ceiling: bare confluent-kafka consume" in done.stdout
    assert "batched vs per-record" in done.stdout
    assert "latency, 1 worker(s) at" in done.stdout
    png = report_path.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_one_line_and_exit_2():
    done = subprocess.run([sys.executable, "-m", "streamrec.cli", "bench", "--workers", "99"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--workers must be within" in done.stderr


def test_paced_rates_reports_latency_at_every_rate_asked_for(tmp_path):
    report_path = tmp_path / "lat.json"
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    done = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "bench", "--paced-rates", "100,300",
         "--events", "2000", "--users", "200", "--titles", "100", "--workers", "1",
         "--latency-seconds", "2", "--report", str(report_path)],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["warm_up"]["events"] == 2000 and report["workers"] == 1
    runs = report["paced"]
    assert [round(r["paced_rate"], -2) for r in runs] == [100, 300]
    for run in runs:
        for key in ("latency_ms", "latency_ms_delivered"):
            lat = run[key]
            assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"], key
        # Receipt comes after the list is made.
        assert run["latency_ms_delivered"]["p50"] >= run["latency_ms"]["p50"]
        assert run["paced_events_unmatched"] <= 0.01 * run["paced_events"]
    assert "delivered p50 p95 p99 ms" in done.stdout


def test_bad_paced_rates_are_one_clear_error():
    done = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "bench", "--paced-rates", "fast"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--paced-rates must be positive events/s" in done.stderr


def test_core_mode_measures_every_stage_of_the_last_quarter(tmp_path):
    report_path = tmp_path / "core.json"
    done = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "bench", "--mode", "core", "--events", "4000",
         "--users", "300", "--titles", "200", "--core-batch", "100",
         "--report", str(report_path)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    # The first three quarters warm up (to a batch's end), the rest is measured, in batches
    # of at most 100 records.
    assert report["events_warm_up"] + report["events"] == 4000
    assert 900 <= report["events"] <= 1000 and report["batches"] >= 9
    assert 0 < report["users_per_batch"] <= 100
    assert set(report["stage_us_per_event"]) == {"decode", "state", "learn", "rank",
                                                 "product", "flush"}
    assert all(v > 0 for v in report["stage_us_per_event"].values())
    assert report["cpu_us_per_event"] > 0 and report["redis_cpu_us_per_event"] >= 0
    assert "CPU per event" in done.stdout and "rank" in done.stdout


def test_bad_core_batch_is_one_clear_error():
    done = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "bench", "--mode", "core", "--core-batch", "0"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--core-batch must be" in done.stderr
