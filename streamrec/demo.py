"""``streamrec demo``: the whole product on one machine, then an honest summary.

Starts the embedded broker and Redis (unless ``KAFKA_BOOTSTRAP_SERVERS``/``REDIS_URL``
name real ones), the worker and the recommendation sink as child processes, produces a
simulated catalogue and paced viewing events (a share deliberately invalid), tails the
output topics, waits until the worker has committed every event, stops everything
cleanly and prints the summary. Counts come from what was produced, what the tail saw,
and the worker's own /metrics, so they can be checked against each other.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from streamrec.exceptions import ConfigError, StreamrecError
from streamrec.paths import check_output_file
from streamrec.settings import Settings

logger = logging.getLogger(__name__)

# How long the worker may take to start and join its consumer group, seconds.
WORKER_START_TIMEOUT_S = 60.0
# How long to wait, after the last event is produced, for the worker to catch up.
DRAIN_TIMEOUT_S = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=200, help="simulated users (default 200)")
    parser.add_argument("--titles", type=int, default=300, help="catalogue size (default 300)")
    parser.add_argument("--events", type=int, default=20_000, help="events (default 20,000)")
    parser.add_argument("--rate", type=float, default=5_000.0,
                        help="events per second produced (default 5,000)")
    parser.add_argument("--invalid-fraction", type=float, default=0.01,
                        help="share of deliberately invalid records (default 0.01)")
    parser.add_argument("--seed", type=int, default=7, help="simulation seed")
    parser.add_argument("--report", default=None, metavar="PATH",
                        help="write the summary as JSON to PATH, and a chart of the run's "
                             "throughput, latency and online recall beside it (PATH with "
                             ".png for its extension)")


def _validate(args: argparse.Namespace) -> None:
    if args.report:
        check_output_file(args.report, "--report")
    for name in ("users", "titles", "events"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name} must be a positive whole number")
    if not 0.0 <= args.invalid_fraction < 1.0:
        raise ConfigError("--invalid-fraction must be within 0..1 (e.g. 0.01)")
    if args.rate <= 0:
        raise ConfigError("--rate must be positive")
    from producers.world import check_world_fits

    check_world_fits(args.users, args.titles)  # the simulated world, before any process starts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TailState:
    """What the demo's tail saw on the output topics."""

    recommendations: int = 0
    dead_letters: int = 0
    users: set[str] = field(default_factory=set)
    latencies_s: list[float] = field(default_factory=list)
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, value: bytes | None, dead_letter: bool) -> None:
        """Count one output record: a dead letter, or a recommendation list (a tombstone,
        which a topic shared with a real cluster may hold, is no list and is not counted)."""
        with self.lock:
            if dead_letter:
                self.dead_letters += 1
                return
            if value is None:
                return
            message = orjson.loads(value)
            self.recommendations += 1
            self.users.add(message["user_id"])
            self.latencies_s.append(message["ts"] - message["event_ts"])
            self.samples[message["user_id"]] = message


def _tail(settings: Settings, state: TailState, stop: threading.Event) -> None:
    from confluent_kafka import Consumer

    from streamrec.kafka import consumer_config

    consumer = Consumer(consumer_config(settings, f"{settings.app_id}-demo-tail"))
    consumer.subscribe([settings.topics.recommendations, settings.topics.dlq])
    try:
        while not stop.is_set():
            for record in consumer.consume(1000, 0.1):
                if record.error() is None:
                    state.add(record.value(), record.topic() == settings.topics.dlq)
    finally:
        consumer.close()


def metrics_page(port: int) -> str:
    """The worker's /metrics page, read once for all the figures taken from it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
        return str(response.read().decode())


def metric_totals(page: str) -> dict[str, float]:
    """Sum of each metric family's samples on a /metrics page (labels folded)."""
    totals: dict[str, float] = {}
    for line in page.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def labelled(page: str, metric: str) -> dict[str, float]:
    """``label value -> sample`` for a one-label metric (e.g. online recall per model)."""
    out: dict[str, float] = {}
    for line in page.splitlines():
        if line.startswith(metric + "{"):
            labels, _, value = line.rpartition(" ")
            label_value = labels.split('"')[1]
            out[label_value] = float(value)
    return out


def scrape(port: int) -> dict[str, float]:
    """:func:`metric_totals` of the worker's /metrics page."""
    return metric_totals(metrics_page(port))


# The worker's cumulative online-recall counters (labelled by model), by summary key.
RECALL_COUNTERS = {
    "tests": "streamrec_online_recall_tests_total",
    "hits": "streamrec_online_recall_hits_total",
    "new_title_tests": "streamrec_online_recall_new_titles_tests_total",
    "new_title_hits": "streamrec_online_recall_new_titles_hits_total",
}


def recall_over_run(counters: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Online recall@k over the whole run per model, from the worker's cumulative counters
    (``RECALL_COUNTERS`` key -> model -> value), with each rate's 95% interval half-width.

    The gauges are smoothed over the last ~2,000 tests; these are exact over every test,
    and the counts say how far two rates may differ by chance alone.

    >>> run = recall_over_run({"tests": {"m": 400.0}, "hits": {"m": 100.0},
    ...                        "new_title_tests": {"m": 0.0}, "new_title_hits": {}})
    >>> run["m"]["recall"], run["m"]["recall_pm"], run["m"]["new_title_recall"]
    (0.25, 0.0424, None)
    """
    out: dict[str, dict[str, Any]] = {}
    for model in counters.get("tests", {}):
        row: dict[str, Any] = {}
        for prefix in ("", "new_title_"):
            tests = int(counters.get(f"{prefix}tests", {}).get(model, 0))
            hits = int(counters.get(f"{prefix}hits", {}).get(model, 0))
            rate = hits / tests if tests else None
            row[f"{prefix}tests"], row[f"{prefix}hits"] = tests, hits
            row[f"{prefix}recall"] = None if rate is None else round(rate, 4)
            row[f"{prefix}recall_pm"] = (None if rate is None else
                                         round(1.96 * (rate * (1 - rate) / tests) ** 0.5, 4))
        out[model] = row
    return out


def format_recall_over_run(model: str, row: dict[str, Any]) -> str:
    """One model's whole-run online recall as the demo summary prints it.

    >>> format_recall_over_run("m", recall_over_run({
    ...     "tests": {"m": 400}, "hits": {"m": 100},
    ...     "new_title_tests": {"m": 100}, "new_title_hits": {"m": 10}})["m"])
    'm 0.250 +-0.042 of 400 tests (new titles 0.100 +-0.059 of 100)'
    """
    def rate(prefix: str) -> str:
        if row[f"{prefix}recall"] is None:
            return f"- of {row[f'{prefix}tests']:,} tests"
        return (f"{row[f'{prefix}recall']:.3f} +-{row[f'{prefix}recall_pm']:.3f} "
                f"of {row[f'{prefix}tests']:,}" + ("" if prefix else " tests"))
    return f"{model} {rate('')} (new titles {rate('new_title_')})"


def _committed_all(settings: Settings, group: str) -> bool:
    """Whether the worker's consumer group has committed the end of every partition."""
    from confluent_kafka import Consumer, TopicPartition

    from streamrec.kafka import consumer_config

    probe = Consumer(consumer_config(settings, group))
    try:
        metadata = probe.list_topics(settings.topics.events, timeout=5)
        partitions = [TopicPartition(settings.topics.events, p)
                      for p in metadata.topics[settings.topics.events].partitions]
        committed = probe.committed(partitions, timeout=5)
        for tp in committed:
            low, high = probe.get_watermark_offsets(tp, timeout=5)
            if high > 0 and tp.offset < high:
                return False
        return True
    finally:
        probe.close()


@contextlib.contextmanager
def _child(
    args: list[str], env: dict[str, str], log_path: str
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run(args: argparse.Namespace, settings: Settings) -> int:
    _validate(args)
    from streams.experiments import load as load_experiments

    # The worker it starts would refuse a bad file; say why here, before any service starts.
    load_experiments(settings.experiments_path)
    import tempfile

    from producers.simulator import generate_events
    from producers.world import build_world
    from streamrec.charts import RunTimeline, png_path_for
    from streamrec.kafka import make_producer
    from streamrec.redis_conn import redacted
    from streamrec.runtime import Services, child_environment

    metrics_port = _free_port()
    logs = tempfile.mkdtemp(prefix="streamrec-demo-")
    print("streamrec demo: starting embedded services" if settings.uses_embedded_broker
          else "streamrec demo: using the configured Kafka/Redis", flush=True)
    with Services(settings) as services:
        settings = services.settings
        env = child_environment(settings, dict(os.environ))
        env["STREAMREC_METRICS_PORT"] = str(metrics_port)
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        python = sys.executable
        worker_cmd = [python, "-m", "streamrec.cli", "worker"]
        sink_cmd = [python, "-m", "streamrec.cli", "sink"]
        print(f"  broker {settings.kafka_bootstrap_servers}, redis "
              f"{redacted(settings.redis_url)}, logs in {logs}", flush=True)
        with _child(worker_cmd, env, f"{logs}/worker.log") as worker, \
                _child(sink_cmd, env, f"{logs}/sink.log") as sink:
            _wait_for_worker(worker, metrics_port, f"{logs}/worker.log")
            tail_state = TailState()
            stop_tail = threading.Event()
            tail = threading.Thread(target=_tail, args=(settings, tail_state, stop_tail),
                                    daemon=True)
            tail.start()
            world = build_world(args.users, args.titles, seed=args.seed)
            producer = make_producer(settings)
            for title in world.titles:
                producer.produce(settings.topics.catalog, orjson.dumps(title),
                                 title["title_id"].encode())
            producer.flush(30)  # no pause: the worker applies the catalogue before events
            produced = invalid = 0
            active_users: set[str] = set()
            started = time.monotonic()
            last_report = started
            timeline = RunTimeline()
            latency_seen = _sample(timeline, 0.0, 0, tail_state, metrics_port, 0)
            for record in generate_events(world, args.events, seed=args.seed, realtime=True,
                                          invalid_fraction=args.invalid_fraction):
                if isinstance(record, bytes):
                    producer.produce(settings.topics.events, record, b"invalid")
                    invalid += 1
                else:
                    producer.produce(settings.topics.events, orjson.dumps(record),
                                     record["user_id"].encode())
                    active_users.add(record["user_id"])
                produced += 1
                # Pace: never ahead of the target rate.
                due = started + produced / args.rate
                delay = due - time.monotonic()
                if delay > 0.002:
                    producer.poll(0)
                    time.sleep(delay)
                now = time.monotonic()
                if now - last_report >= 1.0:
                    last_report = now
                    latency_seen = _sample(timeline, now - started, produced, tail_state,
                                           metrics_port, latency_seen)
                    with tail_state.lock:
                        print(f"  produced {produced:>7,}  recommendations "
                              f"{tail_state.recommendations:>7,}  dead letters "
                              f"{tail_state.dead_letters:>5,}", flush=True)
            undelivered = producer.flush(60)
            # Close it now: a producer outliving the embedded broker logs reconnect failures.
            del producer
            if undelivered:
                raise StreamrecError(f"{undelivered} events could not be delivered to Kafka")
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while not _committed_all(settings, f"{settings.app_id}-events"):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise StreamrecError(
                        f"the worker did not finish the events (see {logs}/worker.log)")
                time.sleep(0.5)
                if time.monotonic() - last_report >= 1.0:
                    last_report = time.monotonic()
                    latency_seen = _sample(timeline, last_report - started, produced,
                                           tail_state, metrics_port, latency_seen)
            time.sleep(1.0)  # the tail reads the last emitted lists
            _sample(timeline, time.monotonic() - started, produced, tail_state, metrics_port,
                    latency_seen)
            page = metrics_page(metrics_port)
            worker_metrics = metric_totals(page)
            recall = labelled(page, "streamrec_online_recall_at_k")
            recall_new = labelled(page, "streamrec_online_recall_new_titles_at_k")
            recall_run = recall_over_run({key: labelled(page, metric)
                                          for key, metric in RECALL_COUNTERS.items()})
            stop_tail.set()
            tail.join(timeout=10)
            worker.send_signal(signal.SIGTERM)
            worker_exit = worker.wait(timeout=60)
            sink.send_signal(signal.SIGTERM)
            sink.wait(timeout=30)
        summary = _summary(args, produced, invalid, active_users, tail_state, worker_metrics,
                           recall, recall_new, recall_run, settings, worker_exit)
        _print_summary(summary, tail_state)
        if args.report:
            with open(args.report, "wb") as handle:
                handle.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
            print(f"report written to {args.report}")
            chart = timeline.write_png(
                png_path_for(args.report),
                f"streamrec demo: {produced:,} events, {args.users:,} users, "
                f"{args.titles:,} titles")
            print(f"chart written to {chart}")
    return 0 if worker_exit == 0 else 1


def _sample(timeline: Any, elapsed: float, produced: int, tail: TailState, port: int,
            latency_seen: int) -> int:
    """Add one per-second sample to the run's chart; returns the latencies now seen."""
    with tail.lock:
        recommendations = tail.recommendations
        latencies = tail.latencies_s[latency_seen:]
        latency_seen = len(tail.latencies_s)
    counts = {"events produced": float(produced), "recommendations seen": recommendations}
    try:
        page = metrics_page(port)
        recall = labelled(page, "streamrec_online_recall_at_k")
        worker = metric_totals(page)
        counts["records processed by the worker"] = (
            worker.get("streamrec_events_consumed_total", 0.0)
            + worker.get("streamrec_events_duplicate_total", 0.0)
            + worker.get("streamrec_events_dead_lettered_total", 0.0))
    except OSError:  # the worker is busy or stopping: this sample has the tail's figures
        recall = {}
    timeline.sample(elapsed, counts, latencies, recall)
    return latency_seen


def _wait_for_worker(worker: subprocess.Popen[bytes], port: int, log_path: str) -> None:
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise StreamrecError(f"the worker exited at start-up (see {log_path})")
        try:
            if scrape(port).get("streamrec_pipeline_up", 0) >= 1:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise StreamrecError(f"the worker did not start within {WORKER_START_TIMEOUT_S:.0f}s")


def _summary(args: argparse.Namespace, produced: int, invalid: int, active_users: set[str],
             tail: TailState, worker: dict[str, float], recall: dict[str, float],
             recall_new: dict[str, float], recall_run: dict[str, dict[str, Any]],
             settings: Settings, worker_exit: int) -> dict[str, Any]:
    from streamrec.redis_conn import redacted

    latencies = np.asarray(tail.latencies_s) * 1000.0
    percentiles = (np.percentile(latencies, [50, 95, 99]) if len(latencies)
                   else [float("nan")] * 3)
    processed = worker.get("streamrec_events_consumed_total", 0.0) + worker.get(
        "streamrec_events_duplicate_total", 0.0)
    return {
        "events_produced": produced,
        "events_invalid": invalid,
        "events_processed": int(processed),
        "events_dead_lettered": int(worker.get("streamrec_events_dead_lettered_total", 0.0)),
        "dead_letters_seen": tail.dead_letters,
        "recommendations_emitted": int(worker.get("streamrec_recommendations_emitted_total", 0)),
        "recommendations_seen": tail.recommendations,
        "active_users": len(active_users),
        "users_with_recommendations": len(tail.users & active_users),
        "latency_ms": {"p50": round(float(percentiles[0]), 2),
                       "p95": round(float(percentiles[1]), 2),
                       "p99": round(float(percentiles[2]), 2)},
        "online_recall_at_10": {k: round(v, 4) for k, v in recall.items()},
        "online_recall_new_titles_at_10": {k: round(v, 4) for k, v in recall_new.items()},
        "online_recall_over_run": recall_run,
        "worker_exit_code": worker_exit,
        "broker": settings.kafka_bootstrap_servers,
        "redis": redacted(settings.redis_url),
    }


def _print_summary(summary: dict[str, Any], tail: TailState) -> None:
    print("\nsample of recommendations:")
    for message in list(tail.samples.values())[:3]:
        items = ", ".join(f"{i['title_id']} ({i['reason']})" for i in message["items"][:5])
        print(f"  {message['user_id']}: {items}")
    lat = summary["latency_ms"]
    print("\nsummary:")
    print(f"  events produced          {summary['events_produced']:>9,}  "
          f"(of which invalid {summary['events_invalid']:,})")
    print(f"  events processed         {summary['events_processed']:>9,}")
    print(f"  events dead-lettered     {summary['events_dead_lettered']:>9,}")
    print(f"  recommendations emitted  {summary['recommendations_emitted']:>9,}")
    print(f"  users with recommendations {summary['users_with_recommendations']:,} "
          f"of {summary['active_users']:,} active")
    print(f"  event-to-recommendation latency ms: p50 {lat['p50']}  p95 {lat['p95']}  "
          f"p99 {lat['p99']}")
    recall = summary["online_recall_at_10"]
    recall_new = summary["online_recall_new_titles_at_10"]
    if recall:
        print("  online recall@10: " + ", ".join(
            f"{k} {v:.3f}" + (f" (new titles {recall_new[k]:.3f})" if k in recall_new else "")
            for k, v in recall.items()))
    if summary["online_recall_over_run"]:
        print("  over the whole run (95% interval): " + "; ".join(
            format_recall_over_run(model, row)
            for model, row in summary["online_recall_over_run"].items()))
    balanced = (summary["events_processed"] + summary["events_dead_lettered"]
                == summary["events_produced"])
    print(f"  processed + dead-lettered == produced: {'yes' if balanced else 'NO'}")
