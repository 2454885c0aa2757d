"""Every Prometheus metric streamrec exports, defined once.

Labels stay low-cardinality: event types, reasons, stages, model names, topics and
partition numbers; never a user or title id. The hot path updates them once per batch.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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
MODEL_SIZE = Gauge("streamrec_model_size", "Entries held by each model", ["model", "kind"])
BATCH_SIZE = Histogram(
    "streamrec_batch_events", "Events per hot-path batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
PIPELINE_UP = Gauge(
    "streamrec_pipeline_up", "1 while the events pipeline is consuming, 0 while paused by an "
    "outage (Redis or Kafka unreachable)"
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
    "streamrec_model_size": "gauge",
    "streamrec_batch_events": "histogram",
    "streamrec_pipeline_up": "gauge",
    "streamrec_experiment_users_total": "counter",
    "streamrec_experiment_recommendations_total": "counter",
    "streamrec_experiment_recall_tests_total": "counter",
    "streamrec_experiment_recall_hits_total": "counter",
    "streamrec_experiment_impressions_total": "counter",
    "streamrec_experiment_clicks_total": "counter",
    "streamrec_experiment_plays_total": "counter",
    "streamrec_experiment_watch_seconds_total": "counter",
    "streamrec_experiment_completions_total": "counter",
}


def serve(host: str, port: int) -> None:
    """Start the /metrics endpoint (a daemon thread). Port 0 disables it."""
    if port == 0:
        return
    start_http_server(port, addr=host)
    logger.info("metrics on http://%s:%d/metrics", host, port)


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
