"""Benchmark of the replay tool, end to end, as a user would run it; prints, asserts nothing.

    .venv/bin/python -m producers.bench_replay [--events 1000000] [--dir DIR]

1. ``streamrec simulate --out`` writes the events (reused if already in ``--dir``);
2. ``streamrec broker --partitions 32`` runs in a child process;
3. ``streamrec replay --speed max`` sends them (events/s from its ``--report``);
4. ``streamrec record --from-beginning --expect`` captures the topic and checks it holds
   exactly the replayed records (same per-key order);
5. on a fresh broker, paced replays of 100,000 events at an average of 10,000 events/s
   (``--speed`` chosen from the file's event-time span, and ``--rate 10000``) report their
   lateness against the schedule.

Figures depend on the machine and on whatever else runs on it; the load average is
printed with them for that reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

# 32 partitions x 5 MiB holds ~3M simulated events with lz4: room for 1M with margin.
BENCH_PARTITIONS = 32
PACED_EVENTS = 100_000
PACED_RATE = 10_000


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamrec.cli", *args], env=env,
                          capture_output=True, text=True, check=False)


@contextlib.contextmanager
def _broker(partitions: int) -> Iterator[dict[str, str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "streamrec.cli", "broker", "--partitions", str(partitions)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        if not address:
            raise SystemExit("bench: the broker did not start")
        yield {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": address}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def _replay(path: str, env: dict[str, str], report: str, *extra: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = _cli("replay", path, "--report", report, *extra, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        print(result.stdout, result.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"bench: replay exited {result.returncode}")
    with open(report) as handle:
        summary = json.load(handle)
    # CPU seconds of the replay process (all its threads): on a shared machine the wall
    # clock says how busy the others were; this says what replay itself costs.
    summary["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m producers.bench_replay")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--dir", default=None, help="working directory (default: a temp dir)")
    args = parser.parse_args(argv)
    work = args.dir or tempfile.mkdtemp(prefix="streamrec-bench-")
    os.makedirs(work, exist_ok=True)
    source = os.path.join(work, f"sim-{args.events}.jsonl")
    print(f"bench: load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; in {work}")
    if not os.path.exists(source):
        began = time.monotonic()
        result = _cli("simulate", "--users", "10000", "--titles", "5000", "--events",
                      str(args.events), "--out", source)
        if result.returncode != 0:
            raise SystemExit(f"bench: simulate failed: {result.stderr[-500:]}")
        print(f"simulate --out: {args.events:,} events in {time.monotonic() - began:.1f} s")
    size_mb = os.path.getsize(source) / 1e6
    with _broker(BENCH_PARTITIONS) as env:
        bulk = _replay(source, env, os.path.join(work, "bulk.json"))
        print(f"replay --speed max: {bulk['produced']:,} of {bulk['read']:,} records "
              f"({size_mb:.0f} MB) in {bulk['seconds']:.2f} s = "
              f"{bulk['events_per_s']:,.0f} events/s, failed {bulk['failed']}; the process "
              f"used {bulk['cpu_s']:.2f} CPU-s ({bulk['produced'] / bulk['cpu_s']:,.0f} "
              f"events per CPU-second, all threads)")
        recorded = os.path.join(work, "recorded.jsonl")
        began = time.monotonic()
        check = _cli("record", "--out", recorded, "--from-beginning", "--until-idle", "3",
                     "--expect", source, env=env)
        print(f"record + compare ({time.monotonic() - began:.1f} s, exit {check.returncode}):")
        print("  " + (check.stdout + check.stderr).strip().replace("\n", "\n  "))
    paced_source = os.path.join(work, f"paced-{PACED_EVENTS}.jsonl")
    with open(source, "rb") as src, open(paced_source, "wb") as dst:
        lines = [next(src) for _ in range(min(PACED_EVENTS, args.events))]
        dst.writelines(lines)
    span = json.loads(lines[-1])["ts"] - json.loads(lines[0])["ts"]
    speed = span * PACED_RATE / len(lines)
    with _broker(BENCH_PARTITIONS) as env:
        for label, extra in ((f"--speed {speed:.1f} (avg {PACED_RATE:,}/s)",
                              ("--speed", f"{speed}")),
                             (f"--rate {PACED_RATE}", ("--rate", str(PACED_RATE)))):
            paced = _replay(paced_source, env, os.path.join(work, "paced.json"), *extra)
            late = paced["lateness_ms"]
            print(f"replay {label}: {paced['produced']:,} records in {paced['seconds']:.2f} s "
                  f"({paced['events_per_s']:,.0f}/s); lateness p50 {late['p50']:.3f} ms, "
                  f"p95 {late['p95']:.3f} ms, p99 {late['p99']:.3f} ms, max {late['max']:.1f} ms")
    print(f"bench: load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
