"""Every Prometheus metric streamrec exports, defined once.

Labels stay low-cardinality: event types, reasons, stages, model names, topics and
partition numbers; never a user or title id. The hot path updates them once per batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

# Latency buckets in seconds: from sub-millisecond batches to multi-second stalls.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0)
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 1.0)

EVENTS_CONSUMED = Counter(
    "streamrec_events_consumed", "Valid events consumed and processed, by event type", ["type"]
)
EVENTS_DEAD_LETTERED = Counter(
    "streamrec_events_dead_lettered", "Records sent to the dead-letter topic, by reason",
    ["reason"],
)
EVENTS_DUPLICATE = Counter(
    "streamrec_events_duplicate", "Redelivered events recognised by event_id and not re-applied"
)
RECOMMENDATIONS_EMITTED = Counter(
    "streamrec_recommendations_emitted", "Recommendation messages produced"
)
EVENT_TO_RECOMMENDATION = Histogram(
    "streamrec_event_to_recommendation_seconds",
    "Event time to the emission of the recommendation it triggered", buckets=_LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "streamrec_stage_seconds", "Seconds per batch spent in each stage of the hot path",
    ["stage"], buckets=_STAGE_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "streamrec_consumer_lag", "Records behind the end of each partition", ["topic", "partition"]
)
RECORDS_LOST = Counter(
    "streamrec_records_lost",
    "Records removed by the broker before this worker consumed them (embedded broker "
    "retention overrun, or retention on a real cluster)", ["topic"],
)
REDIS_ERRORS = Counter("streamrec_redis_errors", "Failed Redis operations", ["op"])
REDIS_SECONDS = Histogram(
    "streamrec_redis_seconds", "Redis round-trip time per operation", ["op"],
    buckets=_STAGE_BUCKETS,
)
ONLINE_RECALL = Gauge(
    "streamrec_online_recall_at_k",
    "Rolling share of users' next engaged title that was in the list last emitted to them",
    ["model"],
)
ONLINE_RECALL_TESTS = Counter(
    "streamrec_online_recall_tests",
    "Engagements checked against the list last emitted to the user (the denominator of "
    "online recall@k, cumulative: sum over workers for the whole fleet)", ["model"],
)
ONLINE_RECALL_HITS = Counter(
    "streamrec_online_recall_hits",
    "Engagements whose title was in the list last emitted to the user", ["model"],
)
# The same measurement on engagements with titles new to the user (not in their history
# or completed titles before the event): most tests are a user resuming or finishing what
# they watch, which rewards lists that repeat it; this is the figure to judge changes by.
ONLINE_RECALL_NEW_TITLES = Gauge(
    "streamrec_online_recall_new_titles_at_k",
    "Rolling share of users' next engaged title, when new to them, that was in the list "
    "last emitted to them", ["model"],
)
ONLINE_RECALL_NEW_TITLES_TESTS = Counter(
    "streamrec_online_recall_new_titles_tests",
    "Online recall tests whose title was not in the user's history or completed titles",
    ["model"],
)
ONLINE_RECALL_NEW_TITLES_HITS = Counter(
    "streamrec_online_recall_new_titles_hits",
    "Online recall tests on titles new to the user that were in the list last emitted",
    ["model"],
)
CATALOG_WAIT_SECONDS = Counter(
    "streamrec_catalog_wait_seconds",
    "Seconds event batches waited for the catalogue reader to catch up (streams.catalog_reader)",
)
MODEL_SYNCS = Counter(
    "streamrec_model_syncs",
    "Item-model exchanges with the other workers through the Redis log (streams.model_sync)",
)
MODEL_SYNC_BYTES = Counter(
    "streamrec_model_sync_bytes", "Bytes of item-model deltas this worker appended to the log"
)
MODEL_SIZE = Gauge("streamrec_model_size", "Entries held by each model", ["model", "kind"])
BATCH_SIZE = Histogram(
    "streamrec_batch_events", "Events per hot-path batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
PIPELINE_UP = Gauge(
    "streamrec_pipeline_up", "1 while the events pipeline is consuming, 0 while paused by an "
    "outage (Redis or Kafka unreachable)"
)
DELIVERY_FAILURES = Counter(
    "streamrec_delivery_failures",
    "Output records (recommendations, dead letters, notifications, cache hints) the producer "
    "reported undeliverable: "
    "permanent errors such as too large or not authorised; outages are retried, not counted",
    ["topic"],
)
LAST_CHECKPOINT = Gauge(
    "streamrec_last_checkpoint_timestamp_seconds",
    "Unix time of the last model checkpoint saved to Redis (or restored at start-up); "
    "0 until there is one",
)
# The recommendation sink (consumers.sink), a separate process with its own /metrics.
SINK_RECORDS_STORED = Counter(
    "streamrec_sink_records_stored",
    "Recommendation messages the sink consumed and wrote to Redis (the newest per user wins)",
)
SINK_LAG = Gauge(
    "streamrec_sink_lag", "Records the sink is behind the end of each partition",
    ["topic", "partition"],
)

# A/B experiments (streams.experiment_batch): counters by experiment and variant, so rates
# and ratios (recall = hits / tests, click-through = clicks / impressions) are PromQL
# divisions. Label values come from the experiments file (at most 20 x 10).
_ARM = ["experiment", "variant"]
EXPERIMENT_USERS = Counter(
    "streamrec_experiment_users", "Users enrolled in an experiment arm (first measured event)",
    _ARM,
)
EXPERIMENT_LISTS = Counter(
    "streamrec_experiment_recommendations", "Recommendation lists emitted, by arm", _ARM
)
EXPERIMENT_RECALL_TESTS = Counter(
    "streamrec_experiment_recall_tests",
    "Users' first engagement per batch, checked against the list last served", _ARM,
)
EXPERIMENT_RECALL_HITS = Counter(
    "streamrec_experiment_recall_hits",
    "Recall tests whose title was in the top k of the list last served", _ARM,
)
EXPERIMENT_IMPRESSIONS = Counter(
    "streamrec_experiment_impressions", "Impressions of titles in the list last served", _ARM
)
EXPERIMENT_CLICKS = Counter(
    "streamrec_experiment_clicks", "Clicks on titles in the list last served", _ARM
)
EXPERIMENT_PLAYS = Counter(
    "streamrec_experiment_plays", "Plays started of titles in the list last served", _ARM
)
EXPERIMENT_WATCH_SECONDS = Counter(
    "streamrec_experiment_watch_seconds", "Seconds watched of titles in the list last served",
    _ARM,
)
EXPERIMENT_COMPLETIONS = Counter(
    "streamrec_experiment_completions", "Completions of titles in the list last served", _ARM
)
# Measure name (streams.experiment_batch.MEASURES) -> its counter.
EXPERIMENT_MEASURES = {
    "recall_tests": EXPERIMENT_RECALL_TESTS,
    "recall_hits": EXPERIMENT_RECALL_HITS,
    "impressions": EXPERIMENT_IMPRESSIONS,
    "clicks": EXPERIMENT_CLICKS,
    "plays": EXPERIMENT_PLAYS,
    "watch_s": EXPERIMENT_WATCH_SECONDS,
    "completions": EXPERIMENT_COMPLETIONS,
}

# Product features (streams.product): homepage rows, search, notifications, cache hints.
ROW_IMPRESSIONS = Counter(
    "streamrec_row_impressions", "Title impressions in homepage rows, by row type", ["row_type"]
)
ROW_CLICKS = Counter(
    "streamrec_row_clicks", "Clicks on titles in homepage rows, by row type", ["row_type"]
)
SEARCHES = Counter("streamrec_searches", "Search events matched against the catalogue")
SEARCH_UNMATCHED = Counter(
    "streamrec_search_unmatched",
    "Searches that matched no title: demand for what the catalogue lacks (queries are in "
    "Redis, see `streamrec insights`)",
)
NOTIFICATIONS_SENT = Counter(
    "streamrec_notifications_sent", "New-episode notifications produced"
)
NOTIFICATIONS_SUPPRESSED = Counter(
    "streamrec_notifications_suppressed",
    "New-episode notifications not sent, by reason (seen, duplicate, rate_limited)", ["reason"],
)
CACHE_HINTS_PUBLISHED = Counter(
    "streamrec_cache_hints_published", "Cache-hint messages produced (one per country and hour)"
)

# The names the README, the dashboards and the alert rules may rely on, with their types.
EXPORTED = {
    "streamrec_events_consumed_total": "counter",
    "streamrec_events_dead_lettered_total": "counter",
    "streamrec_events_duplicate_total": "counter",
    "streamrec_recommendations_emitted_total": "counter",
    "streamrec_event_to_recommendation_seconds": "histogram",
    "streamrec_stage_seconds": "histogram",
    "streamrec_consumer_lag": "gauge",
    "streamrec_records_lost_total": "counter",
    "streamrec_redis_errors_total": "counter",
    "streamrec_redis_seconds": "histogram",
    "streamrec_online_recall_at_k": "gauge",
    "streamrec_online_recall_tests_total": "counter",
    "streamrec_online_recall_hits_total": "counter",
    "streamrec_online_recall_new_titles_at_k": "gauge",
    "streamrec_online_recall_new_titles_tests_total": "counter",
    "streamrec_online_recall_new_titles_hits_total": "counter",
    "streamrec_model_syncs_total": "counter",
    "streamrec_catalog_wait_seconds_total": "counter",
    "streamrec_model_sync_bytes_total": "counter",
    "streamrec_model_size": "gauge",
    "streamrec_batch_events": "histogram",
    "streamrec_pipeline_up": "gauge",
    "streamrec_delivery_failures_total": "counter",
    "streamrec_last_checkpoint_timestamp_seconds": "gauge",
    "streamrec_sink_records_stored_total": "counter",
    "streamrec_sink_lag": "gauge",
    "streamrec_experiment_users_total": "counter",
    "streamrec_experiment_recommendations_total": "counter",
    "streamrec_experiment_recall_tests_total": "counter",
    "streamrec_experiment_recall_hits_total": "counter",
    "streamrec_experiment_impressions_total": "counter",
    "streamrec_experiment_clicks_total": "counter",
    "streamrec_experiment_plays_total": "counter",
    "streamrec_experiment_watch_seconds_total": "counter",
    "streamrec_experiment_completions_total": "counter",
    "streamrec_row_impressions_total": "counter",
    "streamrec_row_clicks_total": "counter",
    "streamrec_searches_total": "counter",
    "streamrec_search_unmatched_total": "counter",
    "streamrec_notifications_sent_total": "counter",
    "streamrec_notifications_suppressed_total": "counter",
    "streamrec_cache_hints_published_total": "counter",
}


# prometheus-client's default process collector (memory, CPU, open files) reads /proc, so
# these exist on Linux (every container and CI machine) and nowhere else; dashboards may
# use them for the workers' footprint.
if os.path.exists("/proc/self/stat"):
    EXPORTED.update({
        "process_resident_memory_bytes": "gauge",
        "process_cpu_seconds_total": "counter",
        "process_open_fds": "gauge",
        "process_start_time_seconds": "gauge",
    })

# Redis operations named in REDIS_ERRORS/REDIS_SECONDS labels; tests/unit/test_metrics.py
# finds every op used in the code and fails if one is missing here.
REDIS_OPS = ("apply_batch", "save_last_lists", "checkpoint_load", "checkpoint_save",
             "experiments_publish", "experiments_record", "product_flush", "product_save",
             "notify", "model_sync", "catalog", "product_catalog")
# Families with this prefix belong to the sink: only the sink serves them, and it serves
# nothing else but process metrics.
_SINK_PREFIX = "streamrec_sink_"


class _RegistryView:
    """The default registry, restricted to the families one kind of process owns.

    The worker and the sink import the same metric definitions; each serves only its own
    so that, say, a scraped sink never reports ``streamrec_pipeline_up 0``.
    """

    def __init__(self, keep: Callable[[str], bool], source: Any = REGISTRY) -> None:
        self._keep = keep
        self._source = source

    def collect(self) -> Iterator[Any]:
        return (family for family in self._source.collect() if self._keep(family.name))

    def restricted_registry(self, names: Iterable[str]) -> _RegistryView:
        return _RegistryView(self._keep, self._source.restricted_registry(names))


def _worker_family(name: str) -> bool:
    return not name.startswith(_SINK_PREFIX)


def _sink_family(name: str) -> bool:
    return name.startswith((_SINK_PREFIX, "process_", "python_"))


def registry_for(component: str) -> _RegistryView:
    """What a process serves: ``"worker"`` (everything but the sink's metrics) or
    ``"sink"`` (the sink's metrics and process metrics)."""
    if component == "worker":
        return _RegistryView(_worker_family)
    if component == "sink":
        return _RegistryView(_sink_family)
    raise ValueError(f"component must be 'worker' or 'sink', got {component!r}")


def serve(host: str, port: int, component: str = "worker") -> None:
    """Start the /metrics endpoint (a daemon thread) for ``component``. Port 0 disables it."""
    registry = registry_for(component)
    if port == 0:
        return
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:  # the port is taken, or the host is not this machine's
        from streamrec.exceptions import ConfigError

        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; choose a free "
            "port (--metrics-port or STREAMREC_METRICS_PORT; 0 turns metrics off)") from exc
    logger.info("metrics on http://%s:%d/metrics", host, port)


def discard(metric: Any, *labelvalues: str) -> None:
    """Remove one labelled series (e.g. a revoked partition's lag); absent is fine."""
    try:
        metric.remove(*labelvalues)
    except KeyError:
        pass


# Longest wait for a partition's end offset from the broker when it is asked (a paused
# consumer), seconds: a millisecond or two on loopback or in a cluster.
LAG_QUERY_TIMEOUT_S = 0.5


def record_lag(consumer: Any, gauge: Any, cached: bool = True) -> None:
    """``gauge`` (topic, partition) := end offset minus position, for every partition
    assigned to ``consumer``. The end offsets are those its fetches cached or, with
    ``cached`` false, asked of the broker: paused partitions are not fetched, so during
    a Redis outage the cached ones stop moving and the lag with them. A partition with
    no position yet counts as caught up; one with no end offset yet is skipped."""
    assignment = consumer.assignment()
    if not assignment:
        return
    for tp in consumer.position(assignment):
        try:
            _, high = consumer.get_watermark_offsets(tp, timeout=LAG_QUERY_TIMEOUT_S,
                                                     cached=cached)
        except Exception:  # noqa: BLE001, S112 - no watermark yet, or no answer: next round
            continue
        if high < 0:
            continue
        position = tp.offset if tp.offset >= 0 else high
        gauge.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, high - position))


def init_worker_series(events_topic: str, output_topics: Iterable[str]) -> None:
    """Create the worker's labelled counters at zero for every known label value.

    A labelled series otherwise appears at its first increment, which ``rate()`` and
    ``increase()`` cannot see, and a scrape before any loss or error shows no
    ``streamrec_records_lost_total`` or ``streamrec_redis_errors_total`` at all.
    """
    from streamrec.schema import DEAD_LETTER_REASONS, EVENT_TYPES

    for event_type in sorted(EVENT_TYPES):
        EVENTS_CONSUMED.labels(type=event_type)
    for reason in sorted(DEAD_LETTER_REASONS):
        EVENTS_DEAD_LETTERED.labels(reason=reason)
    # The worker detects lost records on the events topic (offset gaps); the catalogue is
    # consumed by faust, which does not report them.
    RECORDS_LOST.labels(topic=events_topic)
    for op in REDIS_OPS:
        REDIS_ERRORS.labels(op=op)
    for topic in output_topics:
        DELIVERY_FAILURES.labels(topic=topic)


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """Add many observations to an unlabelled histogram in one step.

    The hot path measures a latency per event but updates metrics once per batch:
    bucket counts are computed with numpy and added in one increment per bucket.
    """
    if not values:
        return
    import numpy as np

    upper_bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if upper_bounds is None or buckets is None or total is None:
        for value in values:  # a prometheus-client without these internals
            histogram.observe(value)
        return
    array = np.asarray(values, dtype=np.float64)
    # Bucket i counts values <= upper_bounds[i] (non-cumulative storage, as observe() does).
    counts = np.bincount(np.searchsorted(upper_bounds, array, side="left"),
                         minlength=len(upper_bounds))
    for i, count in enumerate(counts[: len(buckets)]):
        if count:
            buckets[i].inc(float(count))
    total.inc(float(array.sum()))
