"""``streamrec bench``: throughput, latency and memory of the worker, in one run.

Everything runs on a private embedded broker and Redis started for the run (configured
``KAFKA_BOOTSTRAP_SERVERS``/``REDIS_URL`` are ignored: the bench flushes Redis between
phases). The same simulated records are pre-loaded into one topic per phase, then:

1. **ceiling**: a bare confluent-kafka consumer reads them (no work at all);
2. **batched**: ``streamrec worker`` with 1 process, then ``--workers`` processes in one
   consumer group, each on fresh Redis state and a fresh consumer group; events/s over
   the window in which every worker is busy, CPU per event from ``/proc``, per-stage time
   from the workers' ``streamrec_stage_seconds``, RSS, Redis memory and CPU per event;
3. **latency**: the last batched workers then get events from a paced producer at half
   the measured maximum, stamped ``ts`` = wall clock; each event's latency is the emit
   time of the first recommendation that reflects it (see
   :func:`~streamrec.bench_report.per_event_latencies`): the list's own ``ts`` (stamped as
   it is built) and, as ``latency_ms_delivered``, when the bench's consumer received it;
4. **per-record**: one worker with ``STREAMREC_PIPELINE=per-record`` (a plain faust
   agent doing the same work one record at a time) on the first ``--per-record-events``.

Prints a table, and with ``--report`` writes the JSON and a PNG beside it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from streamrec.bench_procs import Worker, proc_cpu_s, proc_rss_mb, running_workers
from streamrec.bench_report import (
    STAGES,
    MemoryResult,
    PhaseResult,
    Sample,
    assemble_report,
    busy_window,
    format_table,
    histogram_quantile_ms,
    latency_summary_ms,
    metric_sum,
    per_event_latencies,
    rate_series,
    rss_per_new_user,
)
from streamrec.exceptions import ConfigError, StateStoreUnavailable, StreamrecError
from streamrec.paths import check_output_file
from streamrec.settings import Settings, Topics

logger = logging.getLogger(__name__)

# Seconds between scrapes of the workers' /metrics while a phase runs: often enough to
# place the busy window within ~2% of a 30 s phase; each scrape costs a worker ~10 ms of
# CPU (a few hundred series), so faster sampling would show up in the figures measured.
SAMPLE_INTERVAL_S = 0.5
# Slowest rate a phase may run at before the bench gives up on it, events/s (a wedged
# worker must not hang the bench); the per-record path runs at a few thousand.
MIN_RATE = 100.0
# Workers by default: one per core (each is one busy process), at most 2 so that the
# default run also measures one worker, and both of the throughput targets.
DEFAULT_WORKERS = max(1, min(2, os.cpu_count() or 1))
# How long several workers may take to split the partitions between them, seconds.
SETTLE_TIMEOUT_S = 90.0
# After the paced producer stops, how long to wait for the last lists, seconds.
DRAIN_TIMEOUT_S = 30.0
# The memory run: passes of new users after the warm-up, and how long the worker idles
# before its RSS is read (lists left unsaved are written after 50 ms idle).
MEMORY_WARM_PASSES = 2
MEMORY_PASSES = 2
MEMORY_SETTLE_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=300_000, metavar="N",
                        help="events pre-loaded and processed per batched run (default 300,000)")
    parser.add_argument("--users", type=int, default=10_000, metavar="N",
                        help="simulated viewers (default 10,000)")
    parser.add_argument("--titles", type=int, default=1_000, metavar="N",
                        help="catalogue size: the candidates ranked per user (default 1,000)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N",
                        help="worker processes in one consumer group; with N > 1 a 1-worker "
                             "run is measured first for comparison (default: one per core, "
                             f"at most 2; here {DEFAULT_WORKERS})")
    parser.add_argument("--mode", choices=("batched", "per-record", "both", "core", "state"),
                        default="both",
                        help="which events path to measure (default both); core: the "
                             "worker's pure core in this process, by stage (no broker); "
                             "state: Redis's time per user per batch for long-lived "
                             "viewers' profiles (no broker, no simulation)")
    parser.add_argument("--core-batch", type=int, default=Settings.batch_size, metavar="N",
                        help=f"--mode core: records per batch (default {Settings.batch_size:,}"
                             ", as STREAMREC_BATCH_SIZE)")
    parser.add_argument("--core-order", choices=("partition", "time"), default="partition",
                        help="--mode core: batches from one partition at a time (a worker "
                             "with a backlog; default) or in event time across partitions "
                             "(a paced worker that keeps up)")
    parser.add_argument("--per-record-events", type=int, default=30_000, metavar="N",
                        help="events for the per-record run (default 30,000; it is slow)")
    parser.add_argument("--latency-seconds", type=float, default=10.0, metavar="S",
                        help="length of the paced latency run, seconds (default 10)")
    parser.add_argument("--memory-events", type=int, default=60_000, metavar="N",
                        help="events per pass of the memory run (RSS per active user: "
                             f"{MEMORY_WARM_PASSES + MEMORY_PASSES} passes of the same events, "
                             "each with new users, the first "
                             f"{MEMORY_WARM_PASSES} the warm-up; default 60,000, capped at "
                             "--events; 0 = skip)")
    parser.add_argument("--paced-rates", default=None, metavar="R1,R2,...",
                        help="latency only: --workers workers handle the --events records "
                             "(the warm-up), then one paced run per rate, events/s, of "
                             "--latency-seconds each; no other phase (e.g. 600,2000,4000)")
    parser.add_argument("--seed", type=int, default=7, help="simulation seed (default 7)")
    parser.add_argument("--report", default=None, metavar="PATH",
                        help="write the JSON report to PATH and, except with --mode core or "
                             "state (no run over time to draw), a PNG chart beside it")


def _validate(args: argparse.Namespace, partitions: int) -> None:
    if args.report:
        check_output_file(args.report, "--report")
    if args.events < 1000:
        raise ConfigError("--events must be at least 1000 (e.g. --events 300000)")
    if args.memory_events < 0:
        raise ConfigError("--memory-events must be 0 (skip) or a positive whole number")
    for name in ("users", "titles", "per_record_events"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive whole number")
    if not 1 <= args.workers <= partitions:
        raise ConfigError(f"--workers must be within 1..{partitions} (STREAMREC_PARTITIONS: "
                          "a worker without a partition has nothing to do)")
    if args.latency_seconds <= 0:
        raise ConfigError("--latency-seconds must be positive")
    from producers.world import check_world_fits

    check_world_fits(args.users, args.titles)  # the simulated world, before any process starts
    if args.core_batch <= 0:
        raise ConfigError("--core-batch must be a positive whole number (e.g. --core-batch 5)")
    if args.paced_rates is not None:
        paced_rates(args.paced_rates)


def paced_rates(text: str) -> list[float]:
    """``--paced-rates``: positive events/s, comma-separated."""
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        rates = []
    if not rates or min(rates) <= 0:
        raise ConfigError("--paced-rates must be positive events/s, comma-separated "
                          "(e.g. --paced-rates 600,2000,4000)")
    return rates


@dataclass
class Dataset:
    """The simulated records, encoded once and reused by every phase."""

    titles: list[dict[str, Any]]
    events: list[dict[str, Any]]
    values: list[bytes]
    keys: list[bytes]
    _users_seen: Any = None

    def users(self, n: int) -> int:
        return int(self.users_seen[n - 1]) if n > 0 else 0

    @property
    def users_seen(self) -> Any:
        """Distinct users among the first i + 1 events, for every i."""
        if self._users_seen is None:
            import numpy as np

            seen: set[str] = set()
            counts = np.empty(len(self.events), dtype=np.int64)
            for i, event in enumerate(self.events):
                seen.add(event["user_id"])
                counts[i] = len(seen)
            self._users_seen = counts
        return self._users_seen


def renamed(data: Dataset, k: int, n: int) -> Dataset:
    """The first ``n`` events of ``data`` as pass ``k`` of the memory run: users and event
    ids suffixed ``~m{k}`` (new users, not duplicates) and times moved on by ``k`` spans,
    so event time keeps going forward; pass 0 is the events as they are."""
    events = data.events[:n]
    if k == 0:
        return Dataset(titles=data.titles, events=events, values=data.values[:n],
                       keys=data.keys[:n])
    shift = k * (events[-1]["ts"] - events[0]["ts"] + 1.0)
    moved = [{**e, "user_id": f"{e['user_id']}~m{k}", "event_id": f"{e['event_id']}~m{k}",
              "ts": e["ts"] + shift} for e in events]
    return Dataset(titles=data.titles, events=moved, values=[orjson.dumps(e) for e in moved],
                   keys=[e["user_id"].encode() for e in moved])


def _dataset(args: argparse.Namespace) -> Dataset:
    from producers.simulator import generate_events
    from producers.world import build_world

    world = build_world(args.users, args.titles, seed=args.seed)
    events = [e for e in generate_events(world, args.events, seed=args.seed)
              if isinstance(e, dict)]
    return Dataset(titles=list(world.titles), events=events,
                   values=[orjson.dumps(e) for e in events],
                   keys=[e["user_id"].encode() for e in events])


# -- the bench ------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, settings: Settings, services: Any,
                 data: Dataset, logs: str) -> None:
        import redis

        self.args = args
        self.settings = settings
        self.broker = services.broker
        self.data = data
        self.logs = logs
        if settings.redis_url is None:  # Services names the embedded Redis it started
            raise StateStoreUnavailable("the bench has no Redis to measure")
        self.redis = redis.Redis.from_url(settings.redis_url.reveal())

    def topics(self, name: str) -> Topics:
        return Topics(events=f"bench-events-{name}", catalog=f"bench-catalog-{name}",
                      recommendations=f"bench-recs-{name}", dlq=f"bench-dlq-{name}",
                      notifications=f"bench-notifications-{name}",
                      cache_hints=f"bench-hints-{name}")

    def phase_settings(self, name: str) -> Settings:
        from streamrec.kafka import required_topics

        settings = self.settings.replace(topics=self.topics(name), app_id=f"bench-{name}")
        self.broker.create_topics(settings.topics.all())
        self.broker.create_topics(
            [t for t in required_topics(settings) if t not in settings.topics.all()], 1)
        return settings

    def preload(self, settings: Settings, n: int, data: Dataset | None = None,
                held_before: int = 0) -> None:
        """Write the first ``n`` records (of ``data``, default the bench's) to the phase's
        events topic, which already holds ``held_before``; fail if the embedded broker
        dropped any (it keeps ~5 MiB per partition)."""
        from confluent_kafka import Consumer, TopicPartition

        from streamrec.kafka import consumer_config, make_producer

        data = data if data is not None else self.data
        topic = settings.topics.events
        # Long lingers make large, well-compressed batches: more fits in the retention.
        producer = make_producer(settings, **{"linger.ms": 100, "batch.size": 1_000_000})
        for value, key in zip(data.values[:n], data.keys[:n], strict=True):
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.05)
        if producer.flush(60):
            raise StreamrecError("the embedded broker did not take the records within 60s")
        probe = Consumer(consumer_config(settings, f"bench-probe-{topic}"))
        try:
            held = 0
            for p in range(settings.partitions):
                low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if low > 0:
                    raise StreamrecError(
                        f"the embedded broker dropped {low} records of {topic}[{p}] (about "
                        "5 MiB per partition): run with fewer --events or more "
                        "STREAMREC_PARTITIONS")
                held += high
        finally:
            probe.close()
        if held != held_before + n:
            raise StreamrecError(f"{topic} holds {held} records, expected {held_before + n}")

    def ceiling(self, settings: Settings, n: int) -> float:
        """Records/s of a bare confluent-kafka consumer over the pre-loaded records."""
        from confluent_kafka import Consumer

        from streamrec.kafka import consumer_config

        consumer = Consumer(consumer_config(settings, f"bench-ceiling-{time.time_ns()}",
                                            **{"queued.max.messages.kbytes": 65536}))
        consumer.subscribe([settings.topics.events])
        seen, first, last = 0, None, None
        deadline = time.monotonic() + 120
        try:
            while seen < n and time.monotonic() < deadline:
                batch = consumer.consume(10_000, 0.5)
                if batch:
                    if first is None:
                        first = time.perf_counter()
                    seen += sum(1 for m in batch if m.error() is None)
                    last = time.perf_counter()
        finally:
            consumer.close()
        if first is None or last is None or seen < n or last <= first:
            raise StreamrecError("the ceiling consumer did not read every record")
        # The first batch's records arrived before `first`: count them out of the time.
        return (seen - min(seen, 10_000)) / (last - first) if seen > 10_000 else seen / (
            last - first)

    def worker_env(self, settings: Settings, pipeline: str) -> dict[str, str]:
        from streamrec.runtime import child_environment

        env = child_environment(settings, dict(os.environ))
        env.update({"STREAMREC_PIPELINE": pipeline, "STREAMREC_LOG_LEVEL": "WARNING",
                    # One BLAS thread: spinning OpenBLAS threads doubled CPU per event.
                    "OPENBLAS_NUM_THREADS": "1"})
        return env

    def fresh_state(self, settings: Settings) -> None:
        """Empty Redis (private to the bench), then the catalogue copy workers load."""
        from streams.checkpoint import catalog_key

        self.redis.flushall()
        self.redis.hset(catalog_key(settings.app_id),
                        mapping={t["title_id"]: orjson.dumps(t) for t in self.data.titles})

    def redis_cpu_s(self) -> float:
        cpu = self.redis.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def redis_user_bytes(self) -> int:
        """Memory of per-user state: used_memory less the keys that are not a user's."""
        used = int(self.redis.info("memory")["used_memory"])
        other = 0
        for key in self.redis.scan_iter(count=1000):
            if not key.startswith(b"sr:u:"):
                other += int(self.redis.memory_usage(key) or 0)
        return used - other

    def run_phase(self, name: str, pipeline: str, count: int, n: int,
                  then: Any = None) -> tuple[PhaseResult, Any]:
        """Pre-load ``n`` records, run ``count`` workers on them until all are handled;
        ``then(workers, settings, result)`` runs on the same workers before they stop."""
        settings = self.phase_settings(name)
        # Several batched workers start on an empty topic and get the records once the
        # group has settled: a rebalance stalls every worker for seconds (the first one
        # would otherwise run alone, then stop while the group re-forms).
        settle = pipeline == "batched" and count > 1
        if not settle:
            self.preload(settings, n)
        self.fresh_state(settings)
        baseline_bytes = self.redis_user_bytes()
        print(f"  {name}: {count} {pipeline} worker(s) on {n:,} events", file=sys.stderr,
              flush=True)
        launched = time.monotonic()
        redis_at_launch = self.redis_cpu_s()
        with running_workers(self.worker_env(settings, pipeline), count, self.logs,
                             name) as workers:
            if settle:
                self.wait_until_settled(workers, settings)
                launched = time.monotonic()
                redis_at_launch = self.redis_cpu_s()
                self.preload(settings, n)
            rss_ready = [proc_rss_mb(w.pid) for w in workers]
            samples, cpu, redis_cpu, rss = self.sample_until(workers, n, launched)
            # The launch itself is the first sample: nothing handled, no CPU used yet.
            samples.insert(0, Sample(0.0, [0.0] * count))
            cpu.insert(0, 0.0)
            redis_cpu.insert(0, redis_at_launch)
            rss.insert(0, sum(rss_ready))
            i0, i1, events = busy_window(samples, n)
            start_t, end_t = samples[i0].t, samples[i1].t
            final = [w.metrics() for w in workers]
            rss_end = [proc_rss_mb(w.pid) for w in workers]
            user_bytes = self.redis_user_bytes() - baseline_bytes
            stage_s = {stage: sum(metric_sum(m, "streamrec_stage_seconds_sum", stage=stage)
                                  for m in final) for stage in STAGES}
            handled = sum(w.handled(m) for w, m in zip(workers, final, strict=True))
            users = self.data.users(n)
            # Per-user RSS: the slope after a fifth of the events (buffers warmed up).
            warm = next((i for i, smp in enumerate(samples) if smp.total >= n / 5), 0)
            seen = [self.data.users(min(n, int(smp.total))) for smp in samples]
            result = PhaseResult(
                name=name, pipeline=pipeline, workers=count, events=n,
                events_per_s=events / (end_t - start_t),
                cpu_us_per_event=(cpu[i1] - cpu[i0]) / max(events, 1) * 1e6,
                stage_us_per_event={k: v / max(handled, 1) * 1e6 for k, v in stage_s.items()},
                rss_mb=max(rss_end), rss_growth_mb=max(0.0, sum(rss_end) - sum(rss_ready)),
                active_users=users, redis_bytes_per_user=user_bytes / max(users, 1),
                redis_cpu_us_per_event=(redis_cpu[i1] - redis_cpu[i0]) / max(events, 1) * 1e6,
                rss_bytes_per_active_user=rss_per_new_user(rss, seen, warm),
                series=rate_series(samples),
            )
            extra = then(workers, settings, result) if then is not None else None
        return result, extra

    def memory_phase(self, n: int) -> MemoryResult:
        """Worker RSS per active user, with what is not per user held constant.

        One batched worker handles the first ``n`` records, then the same records again
        with every user renamed (and event ids and times moved on), pass after pass, so
        each pass is the same titles, queries and batch shapes with only new users. The
        first :data:`MEMORY_WARM_PASSES` passes are the warm-up: the models'
        catalogue-bounded tables fill and the allocator grows to its working size (in
        one pass it has not: RSS still grew ~3 KB per user in the second pass with the
        artwork bandit's user table capped, i.e. with nothing per user to hold). RSS is
        read with the worker idle after each pass; its growth over the last
        :data:`MEMORY_PASSES` passes is what users cost.
        """
        settings = self.phase_settings("memory")
        passes = [renamed(self.data, k, n) for k in range(MEMORY_WARM_PASSES + MEMORY_PASSES)]
        self.fresh_state(settings)
        print(f"  memory: 1 batched worker on {n:,} events, then {len(passes) - 1} x the same "
              "events with new users", file=sys.stderr, flush=True)
        rss: list[float] = []
        with running_workers(self.worker_env(settings, "batched"), 1, self.logs,
                             "memory") as (worker,):
            for k, data in enumerate(passes):
                self.preload(settings, n, data, held_before=k * n)
                deadline = time.monotonic() + max(120.0, n / MIN_RATE)
                while worker.handled(worker.metrics()) < (k + 1) * n:
                    if time.monotonic() > deadline or worker.process.poll() is not None:
                        raise StreamrecError(f"the memory run's worker stopped handling "
                                             f"events; see the logs in {self.logs}")
                    time.sleep(SAMPLE_INTERVAL_S)
                time.sleep(MEMORY_SETTLE_S)  # the last lists saved, the worker idle
                rss.append(proc_rss_mb(worker.pid))
        return MemoryResult(events_per_pass=n, users=[p.users(n) for p in passes],
                            rss_mb=rss, warm_passes=MEMORY_WARM_PASSES)

    def wait_until_settled(self, workers: Sequence[Worker], settings: Settings) -> None:
        """Until every worker owns events partitions and together they own all of them
        (their ``streamrec_consumer_lag`` series, refreshed every few seconds)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        topic = settings.topics.events
        while time.monotonic() < deadline:
            owned = [sum(1 for labels, _ in w.metrics().get("streamrec_consumer_lag", [])
                         if labels.get("topic") == topic) for w in workers]
            if sum(owned) == settings.partitions and min(owned) > 0:
                return
            time.sleep(0.5)
        raise StreamrecError(f"the workers did not share the {settings.partitions} partitions "
                             f"within {SETTLE_TIMEOUT_S:.0f}s; see the logs in {self.logs}")

    def sample_until(self, workers: Sequence[Worker], n: int, launched: float
                     ) -> tuple[list[Sample], list[float], list[float], list[float]]:
        """Scrape until ``n`` events are handled: samples, workers' CPU seconds, Redis CPU
        seconds and the workers' total RSS in MB, at each sample."""
        samples: list[Sample] = []
        cpu: list[float] = []
        redis_cpu: list[float] = []
        rss: list[float] = []
        limit = max(120.0, n / MIN_RATE)
        while True:
            now = time.monotonic() - launched
            counts = [w.handled(w.metrics()) for w in workers]
            cpu.append(sum(proc_cpu_s(w.pid) for w in workers))
            redis_cpu.append(self.redis_cpu_s())
            rss.append(sum(proc_rss_mb(w.pid) for w in workers))
            samples.append(Sample(now, counts))
            if sum(counts) >= n:
                return samples, cpu, redis_cpu, rss
            if now > limit:
                raise StreamrecError(f"the workers handled {sum(counts):,.0f} of {n:,} events "
                                     f"in {limit:.0f}s; see the logs in {self.logs}")
            if any(w.process.poll() is not None for w in workers):
                raise StreamrecError(f"a worker exited; see the logs in {self.logs}")
            time.sleep(SAMPLE_INTERVAL_S)

    def paced_latency(self, workers: Sequence[Worker], settings: Settings, rate: float
                      ) -> dict[str, Any]:
        """Events at ``rate``/s stamped with the wall clock; latency per event."""
        from confluent_kafka import Consumer, TopicPartition

        from streamrec.kafka import consumer_config, make_producer

        total = max(1, int(rate * self.args.latency_seconds))
        # (user, event_ts, made): made = the list's own ts, stamped when it was built.
        received: list[tuple[str, float, float]] = []
        # (user, event_ts, time this consumer received it): adds produce, broker, fetch.
        delivered: list[tuple[str, float, float]] = []
        stop = threading.Event()
        # A short fetch wait: the embedded broker holds an empty fetch for all of it even
        # when a list arrives (the default 500 ms would be measured as latency).
        consumer = Consumer(consumer_config(settings, f"bench-latency-{time.time_ns()}",
                                            **{"fetch.wait.max.ms": 2}))
        topic = settings.topics.recommendations
        partitions = []
        for p in range(settings.partitions):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            partitions.append(TopicPartition(topic, p, high))
        consumer.assign(partitions)

        def collect() -> None:
            while not stop.is_set():
                # consume(n, timeout) waits for all n or the timeout: wait for one list
                # only when none is buffered, so the receipt time is not held back.
                batch = consumer.consume(1000, 0) or consumer.consume(1, 0.1)
                now = time.time()
                for record in batch:
                    value = record.value()
                    # None only for a tombstone, which nothing sends to the bench's topic.
                    if record.error() is None and value is not None:
                        m = orjson.loads(value)
                        if m["event_id"].endswith("~paced"):
                            received.append((m["user_id"], m["event_ts"], m["ts"]))
                            delivered.append((m["user_id"], m["event_ts"], now))

        thread = threading.Thread(target=collect, name="bench-latency", daemon=True)
        thread.start()
        before = [w.metrics() for w in workers]
        cpu_before = sum(proc_cpu_s(w.pid) for w in workers)
        # The paced producer is the test harness, not the product: 1 ms lingers keep its
        # own batching out of the measured latency.
        producer = make_producer(settings, **{"linger.ms": 1})
        events = self.data.events
        # One unmeasured event first: a new producer holds records until it has connected
        # and got its idempotent producer id (~0.5 s here), which the first second's
        # events were measured as (p99 500-600 ms in that second, tens of ms after).
        warm = {**events[0], "event_id": f"{events[0]['event_id']}~warm", "ts": time.time()}
        producer.produce(settings.topics.events, orjson.dumps(warm), warm["user_id"].encode())
        producer.flush(30)
        time.sleep(0.5)
        sent: list[tuple[str, float]] = []
        started = time.perf_counter()
        while len(sent) < total:
            due = min(total, int((time.perf_counter() - started) * rate) + 1)
            while len(sent) < due:
                event = dict(events[len(sent) % len(events)])
                event["event_id"] = f"{event['event_id']}-{len(sent)}~paced"
                event["ts"] = time.time()
                producer.produce(settings.topics.events, orjson.dumps(event),
                                 event["user_id"].encode())
                sent.append((event["user_id"], event["ts"]))
            producer.poll(0)
            time.sleep(0.0005)
        paced_s = time.perf_counter() - started
        achieved = total / paced_s
        # The workers' CPU while paced (to here, not the drain): near 1 per worker means
        # they were saturated, so latency is queueing, not processing.
        cpu_share = (sum(proc_cpu_s(w.pid) for w in workers) - cpu_before) / paced_s / len(
            workers)
        producer.flush(30)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            covered = {u for u, _, _ in received}
            if len(covered) >= len({u for u, _ in sent}):
                latest: dict[str, float] = {}
                for user, event_ts, _ in received:
                    latest[user] = max(latest.get(user, 0.0), event_ts)
                if all(latest.get(u, -1.0) >= ts for u, ts in sent):
                    break
            time.sleep(0.2)
        stop.set()
        thread.join(5)
        consumer.close()
        after = [w.metrics() for w in workers]
        latencies, missing = per_event_latencies(sent, received)
        latencies_delivered, _ = per_event_latencies(sent, delivered)
        buckets: dict[float, float] = {}
        for b, a in zip(before, after, strict=True):
            for labels, value in a.get("streamrec_event_to_recommendation_seconds_bucket", []):
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + value
            for labels, value in b.get("streamrec_event_to_recommendation_seconds_bucket", []):
                buckets[float(labels["le"])] -= value
        batches = sum(metric_sum(a, "streamrec_batch_events_count")
                      - metric_sum(b, "streamrec_batch_events_count")
                      for b, a in zip(before, after, strict=True))
        return {
            "latency_ms": latency_summary_ms(lat for _, lat in latencies),
            # The same, to when the bench's consumer received the list (includes the
            # worker's produce and linger, the broker and this consumer's fetch wait).
            "latency_ms_delivered": latency_summary_ms(lat for _, lat in latencies_delivered),
            # Events per hot-path batch while paced (small when the workers keep up), and
            # the workers' CPU share: why latency is what it is.
            "paced_batch_events_mean": round(total / batches, 1) if batches else None,
            "paced_worker_cpu_share": round(cpu_share, 3),
            "latency_ms_worker_histogram": {
                name: histogram_quantile_ms(buckets, q)
                for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
            "paced_rate": achieved, "paced_events": total, "paced_events_unmatched": missing,
            "latency_series": _latency_series(latencies, started),
        }


def paced_summary(run: Mapping[str, Any]) -> dict[str, Any]:
    """One paced run's figures for ``latency_by_workers`` (no per-second series)."""
    keys = ("latency_ms", "latency_ms_delivered", "paced_batch_events_mean",
            "paced_worker_cpu_share")
    return {"paced_rate": round(run["paced_rate"], 1), **{k: run[k] for k in keys}}


def run_paced(bench: Bench, args: argparse.Namespace, n: int) -> int:
    """``--paced-rates``: warm up on the ``n`` records, then one paced run per rate."""
    rates = paced_rates(args.paced_rates)

    def paced(workers: list[Worker], settings: Settings, result: PhaseResult
              ) -> list[dict[str, Any]]:
        runs = []
        for rate in rates:
            print(f"  latency: paced at {rate:,.0f} events/s for {args.latency_seconds:.0f}s",
                  file=sys.stderr, flush=True)
            run = bench.paced_latency(workers, settings, rate)
            run.pop("latency_series")
            runs.append(run)
        return runs

    result, runs = bench.run_phase("paced", "batched", args.workers, n, then=paced)
    print(f"warm-up: {result.events_per_s:,.0f} events/s, {result.cpu_us_per_event:.0f} us "
          f"CPU/event ({args.workers} worker(s))")
    print("rate events/s | made p50 p95 p99 ms | delivered p50 p95 p99 ms | "
          "events/batch | worker CPU")
    for run in runs:
        made, got = run["latency_ms"], run["latency_ms_delivered"]
        print(f"{run['paced_rate']:>13,.0f} | {made['p50']:6.1f} {made['p95']:6.1f} "
              f"{made['p99']:6.1f} | {got['p50']:6.1f} {got['p95']:6.1f} {got['p99']:6.1f} | "
              f"{run['paced_batch_events_mean'] or 0:12.1f} | "
              f"{run['paced_worker_cpu_share']:.0%}")
    if args.report:
        report = {"warm_up": {"events": n, "events_per_s": result.events_per_s,
                              "cpu_us_per_event": result.cpu_us_per_event},
                  "workers": args.workers, "paced": runs}
        Path(args.report).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0


def _latency_series(latencies: list[tuple[float, float]], started: float
                    ) -> dict[str, list[tuple[float, float]]]:
    """p50/p95/p99 in ms per second of the paced run (x = seconds since it started)."""
    from streamrec.bench_report import percentile

    wall_start = time.time() - (time.perf_counter() - started)
    by_second: dict[int, list[float]] = {}
    for ts, lat in latencies:
        by_second.setdefault(int(ts - wall_start), []).append(lat * 1000.0)
    out: dict[str, list[tuple[float, float]]] = {"p50": [], "p95": [], "p99": []}
    for second in sorted(by_second):
        values = sorted(by_second[second])
        for name, q in (("p50", 50.0), ("p95", 95.0), ("p99", 99.0)):
            out[name].append((second + 0.5, percentile(values, q)))
    return out


def _write_png(report_path: str, phases: Sequence[PhaseResult],
               latency_series: dict[str, list[tuple[float, float]]]) -> Path:
    from streamrec.charts import Panel, plot_panels, png_path_for

    throughput = Panel("Throughput (events handled per second)", "events/s",
                       {f"{p.pipeline} x{p.workers}": p.series for p in phases})
    latency = Panel("Event-to-recommendation latency at the paced rate", "ms",
                    latency_series)
    return plot_panels(png_path_for(report_path), "streamrec bench", [throughput, latency],
                       xlabel="seconds since the run started")


def run_core_mode(args: argparse.Namespace, settings: Settings, data: Dataset) -> int:
    """``--mode core``: streamrec.bench_core, then its table (and JSON with --report)."""
    from streamrec.bench_core import format_core, run_core

    report = run_core(args, settings, data.values, data.keys, data.titles)
    print(format_core(report))
    if args.report:
        _write_json_report(args.report, report)
    return 0


def run_state_mode(args: argparse.Namespace, settings: Settings) -> int:
    """``--mode state``: streamrec.bench_state, then its table (and JSON with --report)."""
    from streamrec.bench_state import format_state, run_state

    print("streamrec bench: Redis time per user per batch, by profile size",
          file=sys.stderr, flush=True)
    results = run_state(settings)
    print(format_state(results))
    if args.report:
        _write_json_report(args.report, {"state": results})
    return 0


def _write_json_report(path: str, document: dict[str, Any]) -> None:
    Path(path).write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(f"report: {path}", file=sys.stderr)


def run(args: argparse.Namespace, settings: Settings) -> int:
    # Private services: the bench flushes Redis between runs, never a configured one.
    settings = settings.replace(kafka_bootstrap_servers=None, redis_url=None)
    _validate(args, settings.partitions)
    from streamrec.runtime import Services
    from streams.experiments import load as load_experiments

    # The workers it starts would refuse a bad file; say why here, before anything runs.
    load_experiments(settings.experiments_path)

    if args.mode == "state":
        return run_state_mode(args, settings)
    print(f"streamrec bench: simulating {args.events:,} events for {args.users:,} users and "
          f"{args.titles:,} titles", file=sys.stderr, flush=True)
    data = _dataset(args)
    if args.mode == "core":
        return run_core_mode(args, settings, data)
    logs = tempfile.mkdtemp(prefix="streamrec-bench-")
    n = len(data.events)
    with Services(settings) as services:
        bench = Bench(args, services.settings, services, data, logs)
        if args.paced_rates is not None:
            return run_paced(bench, args, n)
        ceiling_settings = bench.phase_settings("ceiling")
        bench.preload(ceiling_settings, n)
        ceiling = bench.ceiling(ceiling_settings, n)
        print(f"  ceiling: {ceiling:,.0f} records/s", file=sys.stderr, flush=True)
        phases: list[PhaseResult] = []
        latency: dict[str, Any] = {}

        def measure_latency(workers: list[Worker], phase_settings: Settings,
                            result: PhaseResult) -> dict[str, Any]:
            rate = result.events_per_s / 2.0
            print(f"  latency: paced at {rate:,.0f} events/s for {args.latency_seconds:.0f}s",
                  file=sys.stderr, flush=True)
            return bench.paced_latency(workers, phase_settings, rate)

        # Latency at half of each worker count's own rate: with one worker the rest of
        # the machine (Redis, the broker, the paced producer, the bench's consumer) has a
        # core of its own; with one worker per core they all share the cores.
        latency_by_workers: dict[str, dict[str, Any]] = {}
        if args.mode in ("batched", "both"):
            counts = [1] if args.workers == 1 else [1, args.workers]
            for count in counts:
                result, extra = bench.run_phase(
                    f"batched-{count}", "batched", count, n, then=measure_latency)
                phases.append(result)
                latency = extra or latency
                latency_by_workers[str(count)] = paced_summary(extra)
        if args.mode in ("per-record", "both"):
            result, extra = bench.run_phase(
                "per-record-1", "per-record", 1, min(n, args.per_record_events),
                then=measure_latency if args.mode == "per-record" else None)
            phases.append(result)
            latency = extra or latency
        memory = None
        if args.mode in ("batched", "both") and args.memory_events:
            memory = bench.memory_phase(min(n, args.memory_events))
    primary = phases[-1] if args.mode == "per-record" else [
        p for p in phases if p.pipeline == "batched"][-1]
    others = [p for p in phases if p is not primary]
    series = latency.pop("latency_series", {})
    report = assemble_report(ceiling, primary, latency.pop("latency_ms"),
                             latency.pop("paced_rate"), others, extra=latency,
                             memory=memory)
    if latency_by_workers:
        report["latency_by_workers"] = latency_by_workers
    print(format_table(report))
    if args.report:
        Path(args.report).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        png = _write_png(args.report, phases, series)
        print(f"report: {args.report}, chart: {png}", file=sys.stderr)
    return 0

