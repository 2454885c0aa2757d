"""The arithmetic of ``streamrec bench``, kept pure so it can be unit tested.

Percentiles, per-event latency from recommendation messages, rates over the window in
which every worker was busy, Prometheus text parsing, the report's JSON shape and the
table printed on stdout.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The keys every report has (the contract); others are extra detail.
REPORT_KEYS = ("ceiling_events_per_s", "events_per_s", "workers", "cpu_us_per_event",
               "stage_us_per_event", "latency_ms", "paced_rate", "rss_mb")
STAGES = ("decode", "state", "learn", "rank", "product", "emit")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linearly interpolated.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    >>> percentile([5.0], 99)
    5.0
    """
    if not sorted_values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within 0..100, got {q}")
    position = (len(sorted_values) - 1) * q / 100.0
    low = int(math.floor(position))
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] * (1.0 - fraction) + sorted_values[high] * fraction


def latency_summary_ms(latencies_s: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99 in milliseconds (NaN when there are no samples)."""
    values = sorted(latencies_s)
    return {name: round(percentile(values, q) * 1000.0, 3) if values else math.nan
            for name, q in (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))}


def per_event_latencies(events: Iterable[tuple[str, float]],
                        recommendations: Iterable[tuple[str, float, float]]
                        ) -> tuple[list[tuple[float, float]], int]:
    """Event time to the first recommendation that reflects each event.

    The worker emits one list per user per batch, for the batch's last event of that
    user (``event_ts``); that list reflects every earlier event of the user too. So an
    event's latency is the emit time of the first list of its user whose ``event_ts`` is
    at or after the event's time, minus the event's time.

    Parameters
    ----------
    events
        ``(user_id, ts)`` of every event sent.
    recommendations
        ``(user_id, event_ts, ts)`` of every list received (``ts`` = emit time).

    Returns
    -------
    ``[(event_ts, latency_s), ...]`` for the events a list reflects, and how many events
    no list reflected.

    Examples
    --------
    >>> lat, missing = per_event_latencies([("u", 1.0), ("u", 2.0), ("v", 1.5)],
    ...                                    [("u", 2.0, 2.25)])
    >>> lat, missing
    ([(1.0, 1.25), (2.0, 0.25)], 1)
    """
    lists: dict[str, list[tuple[float, float]]] = {}
    for user, event_ts, emitted in recommendations:
        lists.setdefault(user, []).append((event_ts, emitted))
    for entries in lists.values():
        entries.sort()
    # The earliest emit among lists whose event_ts is >= t: a suffix minimum.
    earliest: dict[str, tuple[list[float], list[float]]] = {}
    for user, entries in lists.items():
        stamps = [e for e, _ in entries]
        suffix_min = [0.0] * len(entries)
        best = math.inf
        for i in range(len(entries) - 1, -1, -1):
            best = min(best, entries[i][1])
            suffix_min[i] = best
        earliest[user] = (stamps, suffix_min)
    out: list[tuple[float, float]] = []
    missing = 0
    for user, ts in events:
        found = earliest.get(user)
        if found is None:
            missing += 1
            continue
        stamps, suffix_min = found
        i = bisect.bisect_left(stamps, ts)
        if i == len(stamps):
            missing += 1
            continue
        out.append((ts, suffix_min[i] - ts))
    out.sort()
    return out, missing


def histogram_quantile_ms(buckets: Mapping[float, float], q: float) -> float:
    """Quantile ``q`` (0..1) of a Prometheus histogram's cumulative ``le -> count``
    buckets, interpolated inside the bucket as ``histogram_quantile`` does, in ms.

    >>> histogram_quantile_ms({0.001: 0, 0.01: 10, math.inf: 10}, 0.5)
    5.5
    """
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return round(previous_bound * 1000.0, 3)
            span = count - previous_count
            inside = (rank - previous_count) / span if span > 0 else 1.0
            return round((previous_bound + (bound - previous_bound) * inside) * 1000.0, 3)
        previous_bound, previous_count = bound, count
    return round(previous_bound * 1000.0, 3)


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format -> ``name -> [(labels, value), ...]``."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels: dict[str, str] = {}
        if rest:
            for part in rest.rstrip("}").split('",'):
                if "=" in part:
                    key, _, val = part.partition("=")
                    labels[key.strip()] = val.strip().strip('"')
        try:
            out.setdefault(name, []).append((labels, float(value)))
        except ValueError:
            continue
    return out


def metric_sum(metrics: Mapping[str, list[tuple[dict[str, str], float]]], name: str,
               **match: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``match``."""
    return sum(value for labels, value in metrics.get(name, [])
               if all(labels.get(k) == v for k, v in match.items()))


@dataclass
class Sample:
    """One scrape of every worker of a phase: seconds since the phase started, events
    handled by each worker (consumed + dead-lettered + duplicates)."""

    t: float
    per_worker: list[float]

    @property
    def total(self) -> float:
        return float(sum(self.per_worker))


def busy_window(samples: Sequence[Sample], total_events: int) -> tuple[int, int, float]:
    """``(first, last, events)``: the sample indices over which throughput is measured
    and the events handled between them.

    Starts at the first sample where every worker has handled events (so the time
    workers spend starting and joining the group is not counted) and ends at the first
    sample where all ``total_events`` are handled. When one worker finished everything
    before the others joined, the window starts at the first sample with any progress;
    when everything was handled before the second sample, at the first sample (which the
    caller takes when the workers are launched).

    >>> s = [Sample(0.0, [0, 0]), Sample(1.0, [10, 0]), Sample(2.0, [60, 40]),
    ...      Sample(3.0, [150, 150])]
    >>> busy_window(s, 300)
    (2, 3, 200.0)
    """
    end = next((i for i, s in enumerate(samples) if s.total >= total_events), None)
    if end is None:
        raise ValueError("the workers never handled every event")
    start = next((i for i, s in enumerate(samples[:end]) if all(c > 0 for c in s.per_worker)),
                 None)
    if start is None:
        start = next((i for i, s in enumerate(samples[:end]) if s.total > 0), None)
    if start is None:
        start = max(0, end - 1)
    if start == end:
        raise ValueError("need a sample before the last one")
    return start, end, samples[end].total - samples[start].total


def rate_series(samples: Sequence[Sample]) -> list[tuple[float, float]]:
    """Events per second between consecutive samples, at the later sample's time."""
    out = []
    for a, b in zip(samples, samples[1:], strict=False):
        if b.t > a.t:
            out.append((b.t, (b.total - a.total) / (b.t - a.t)))
    return out


@dataclass
class PhaseResult:
    """What one measured run of the worker(s) gave."""

    name: str
    pipeline: str
    workers: int
    events: int
    events_per_s: float
    cpu_us_per_event: float
    stage_us_per_event: dict[str, float]
    rss_mb: float
    rss_growth_mb: float
    active_users: int
    redis_bytes_per_user: float
    redis_cpu_us_per_event: float
    # Worker RSS added per user first seen after the warm-up (see rss_per_new_user).
    rss_bytes_per_active_user: float = math.nan
    series: list[tuple[float, float]] = field(default_factory=list)


def rss_per_new_user(rss_mb: Sequence[float], users_seen: Sequence[int],
                     warm_index: int) -> float:
    """Bytes of RSS per user first seen after sample ``warm_index``.

    The worker keeps no per-user state in memory, so what a user costs is the slope of RSS
    against users seen once buffers and the allocator have reached their working size
    (what the first part of the run grows is not per user). NaN when too few users are
    new after the warm-up to tell (under 100).

    >>> rss_per_new_user([100.0, 150.0, 150.5], [0, 5_000, 10_000], 1)
    104.8576
    """
    new_users = users_seen[-1] - users_seen[warm_index]
    if new_users < 100:
        return math.nan
    return (rss_mb[-1] - rss_mb[warm_index]) * 1024 * 1024 / new_users


MIB = 1024 * 1024
# How the report's ``rss_bytes_per_active_user`` is measured (printed in the JSON).
RSS_METHOD = ("memory run: one batched worker handles the same N events in 4 passes, every "
              "pass after the first with all users renamed (new users, same titles, queries "
              "and batch shapes); RSS read idle after each pass; the first 2 passes are the "
              "warm-up (the models' catalogue-bounded tables fill, the allocator reaches its "
              "working size); bytes per active user = RSS growth over the last 2 passes / "
              "their new users")


@dataclass
class MemoryResult:
    """The memory run (``Bench.memory_phase``): distinct users of each pass (every pass
    after the first all new users), the worker's RSS in MB read idle after each pass, and
    how many passes were the warm-up."""

    events_per_pass: int
    users: list[int]
    rss_mb: list[float]
    warm_passes: int = 1

    def bytes_per_user(self) -> float:
        """RSS growth over the passes after the warm-up per new user (NaN under 100).

        >>> MemoryResult(1000, [500, 500, 500], [200.0, 200.5, 201.0]).bytes_per_user()
        1048.576
        """
        new = sum(self.users[self.warm_passes:])
        if new < 100 or len(self.rss_mb) <= self.warm_passes:
            return math.nan
        return (self.rss_mb[-1] - self.rss_mb[self.warm_passes - 1]) * MIB / new

    def bytes_per_user_by_pass(self) -> list[float]:
        """The same for each pass after the first alone (the warm-up's passes included:
        equal figures would mean growth is linear in users)."""
        return [(after - before) * MIB / max(users, 1) for before, after, users
                in zip(self.rss_mb, self.rss_mb[1:], self.users[1:], strict=False)]


def assemble_report(ceiling_events_per_s: float, primary: PhaseResult,
                    latency_ms: Mapping[str, float], paced_rate: float,
                    others: Sequence[PhaseResult] = (),
                    extra: Mapping[str, Any] | None = None,
                    memory: MemoryResult | None = None) -> dict[str, Any]:
    """The JSON report: the issue's keys from the primary phase, then the detail.

    ``rss_bytes_per_active_user`` comes from the memory run (None without one); the
    primary run's raw slope of RSS against users first seen after its first fifth is
    ``rss_bytes_per_new_user_raw``: it also counts bounded tables still filling and the
    allocator's high-water mark rising, so it is not a per-user cost."""
    report: dict[str, Any] = {
        "ceiling_events_per_s": round(ceiling_events_per_s, 1),
        "events_per_s": round(primary.events_per_s, 1),
        "workers": primary.workers,
        "cpu_us_per_event": round(primary.cpu_us_per_event, 2),
        "stage_us_per_event": {k: round(v, 2) for k, v in primary.stage_us_per_event.items()},
        "latency_ms": dict(latency_ms),
        "paced_rate": round(paced_rate, 1),
        "rss_mb": round(primary.rss_mb, 1),
        "pipeline": primary.pipeline,
        "events": primary.events,
        "active_users": primary.active_users,
        "rss_growth_mb": round(primary.rss_growth_mb, 2),
        "rss_bytes_per_active_user": _rounded(
            memory.bytes_per_user() if memory is not None else math.nan, 1),
        "rss_bytes_per_new_user_raw": _rounded(primary.rss_bytes_per_active_user, 1),
        "redis_bytes_per_user": round(primary.redis_bytes_per_user, 1),
        "redis_cpu_us_per_event": round(primary.redis_cpu_us_per_event, 2),
    }
    by_workers = {str(p.workers): round(p.events_per_s, 1) for p in others
                  if p.pipeline == primary.pipeline}
    by_workers[str(primary.workers)] = report["events_per_s"]
    report["events_per_s_by_workers"] = dict(sorted(by_workers.items()))
    per_record = next((p for p in others if p.pipeline == "per-record"), None)
    if per_record is not None and primary.pipeline == "batched":
        single = next((p for p in (primary, *others)
                       if p.pipeline == "batched" and p.workers == 1), primary)
        report["per_record_events_per_s"] = round(per_record.events_per_s, 1)
        report["per_record_cpu_us_per_event"] = round(per_record.cpu_us_per_event, 2)
        report["speedup_vs_per_record"] = round(
            single.events_per_s / per_record.events_per_s, 2) if per_record.events_per_s else None
    report["phases"] = [
        {"name": p.name, "pipeline": p.pipeline, "workers": p.workers, "events": p.events,
         "events_per_s": round(p.events_per_s, 1),
         "cpu_us_per_event": round(p.cpu_us_per_event, 2),
         "stage_us_per_event": {k: round(v, 2) for k, v in p.stage_us_per_event.items()},
         "rss_mb": round(p.rss_mb, 1)}
        for p in (*others, primary)
    ]
    if memory is not None:
        report["rss_method"] = RSS_METHOD
        report["rss_bytes_per_active_user_by_pass"] = [
            _rounded(b, 1) for b in memory.bytes_per_user_by_pass()]
        report["rss_memory_run"] = {"events_per_pass": memory.events_per_pass,
                                    "warm_passes": memory.warm_passes,
                                    "users_per_pass": list(memory.users),
                                    "rss_mb_after_pass": [round(r, 2) for r in memory.rss_mb]}
    report.update(extra or {})
    return report


def _rounded(value: float, digits: int) -> float | None:
    """``round``, with NaN as None (JSON has no NaN)."""
    return None if math.isnan(value) else round(value, digits)


def _percentiles(ms: Mapping[str, float]) -> str:
    return f"p50 {ms['p50']:.1f} ms, p95 {ms['p95']:.1f} ms, p99 {ms['p99']:.1f} ms"


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a table a person reads."""
    lat = report["latency_ms"]
    rows = [("ceiling: bare confluent-kafka consume",
             f"{report['ceiling_events_per_s']:,.0f} events/s")]
    for phase in report.get("phases", []):
        rows.append((f"{phase['pipeline']} worker x{phase['workers']}",
                     f"{phase['events_per_s']:,.0f} events/s, "
                     f"{phase['cpu_us_per_event']:.1f} us CPU/event"))
    if report.get("speedup_vs_per_record") is not None:
        rows.append(("batched vs per-record (1 worker each)",
                     f"{report['speedup_vs_per_record']:.1f}x"))
    stages = report["stage_us_per_event"]
    rows.append(("stages, us/event (primary run)",
                 ", ".join(f"{k} {stages[k]:.1f}" for k in STAGES if k in stages)))
    rows.append((f"latency at {report['paced_rate']:,.0f} events/s (paced)",
                 _percentiles(lat)))
    got = report.get("latency_ms_delivered")
    if got is not None:
        rows.append(("  the same, to receipt by a consumer", _percentiles(got)))
    if report.get("paced_batch_events_mean") is not None:
        rows.append(("while paced", f"{report['paced_batch_events_mean']:,.1f} events per "
                     f"batch, worker CPU {report['paced_worker_cpu_share']:.0%} of a core"))
    for workers, run in report.get("latency_by_workers", {}).items():
        if int(workers) == report["workers"]:
            continue  # the rows above
        rows.append((f"latency, {workers} worker(s) at {run['paced_rate']:,.0f} events/s",
                     f"{_percentiles(run['latency_ms'])} "
                     f"({run['paced_batch_events_mean'] or 0:,.1f} events per batch, "
                     f"worker CPU {run['paced_worker_cpu_share']:.0%})"))
    per_user = report["rss_bytes_per_active_user"]
    run = report.get("rss_memory_run")
    if run is None:
        detail = "per active user not measured (no memory run)"
    elif per_user is None:
        detail = "too few new users in the memory run to measure per-user growth"
    else:
        passes = ", ".join(f"{b:,.0f}" for b in report["rss_bytes_per_active_user_by_pass"]
                           if b is not None)
        warm = run["warm_passes"]
        detail = (f"{per_user:,.0f} B more per active user "
                  f"({sum(run['users_per_pass'][warm:]):,} new users after a "
                  f"{sum(run['users_per_pass'][:warm]):,}-user warm-up; passes 2.. alone "
                  f"{passes} B/user)")
    rows.append(("worker RSS", f"{report['rss_mb']:.0f} MB per worker; {detail}"))
    raw = report.get("rss_bytes_per_new_user_raw")
    rows.append(("RSS slope over the primary run", (
        f"{raw:,.0f} B per user first seen after its first fifth (tables still filling, "
        f"allocator; {report['active_users']:,} users)") if raw is not None
        else "too few new users to tell"))
    rows.append(("Redis memory per user", f"{report['redis_bytes_per_user']:,.0f} B"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
