"""Worker-side observability without Kafka: series created at start-up, stale series
removed, what the worker and the sink each serve, and the label lists kept in step with
the code that uses them."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import redis
import redis.asyncio
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from models.hybrid import Hybrid
from streamrec import metrics
from streamrec.exceptions import StateStoreUnavailable
from streamrec.schema import DEAD_LETTER_REASONS, EVENT_TYPES
from streamrec.settings import Settings
from streams.batch import RankedBatch
from streams.checkpoint import Checkpointer, model_key
from streams.pipeline import RECALL_WINDOW, EventsPipeline

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streamrec", "streams", "consumers", "producers", "models")


def samples(registry: Any = REGISTRY) -> list[Any]:
    text = generate_latest(registry).decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def series(name: str, **labels: str) -> list[float]:
    """Values of the samples of ``name`` whose labels include ``labels``."""
    return [s.value for s in samples() if s.name == name
            and all(s.labels.get(k) == v for k, v in labels.items())]


def source_files() -> list[Path]:
    return [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]


# ------------------------------------------------------------- label lists vs the code

def test_dead_letter_reasons_are_every_reason_the_schema_raises() -> None:
    source = (ROOT / "streamrec" / "schema.py").read_text()
    raised = set(re.findall(r'InvalidRecord\(\s*"(\w+)"', source))
    assert raised, "no InvalidRecord(...) found: the pattern is broken"
    assert raised == set(DEAD_LETTER_REASONS)


def test_redis_ops_cover_every_op_the_code_labels() -> None:
    used: dict[str, str] = {}
    for path in source_files():
        for op in re.findall(r'REDIS_(?:ERRORS|SECONDS)\.labels\(\s*op\s*=\s*"(\w+)"',
                             path.read_text()):
            used.setdefault(op, str(path.relative_to(ROOT)))
    assert "apply_batch" in used, "the pattern no longer finds the state store's op"
    missing = {op: where for op, where in used.items() if op not in metrics.REDIS_OPS}
    assert not missing, f"add these ops to streamrec.metrics.REDIS_OPS: {missing}"


# ------------------------------------------------------------------ series at start-up

def test_worker_series_exist_at_zero_before_anything_happens() -> None:
    metrics.init_worker_series("events-init", ["recs-init", "dlq-init"])
    assert series("streamrec_records_lost_total", topic="events-init") == [0.0]
    for op in metrics.REDIS_OPS:
        assert series("streamrec_redis_errors_total", op=op), op
    for reason in DEAD_LETTER_REASONS:
        assert series("streamrec_events_dead_lettered_total", reason=reason), reason
    for event_type in EVENT_TYPES:
        assert series("streamrec_events_consumed_total", type=event_type), event_type
    for topic in ("recs-init", "dlq-init"):
        assert series("streamrec_delivery_failures_total", topic=topic) == [0.0]


def test_discard_removes_one_series_and_ignores_absent_ones() -> None:
    metrics.CONSUMER_LAG.labels(topic="discard-t", partition="0").set(5)
    metrics.CONSUMER_LAG.labels(topic="discard-t", partition="1").set(7)
    metrics.discard(metrics.CONSUMER_LAG, "discard-t", "0")
    metrics.discard(metrics.CONSUMER_LAG, "discard-t", "0")  # already gone: no error
    assert series("streamrec_consumer_lag", topic="discard-t", partition="0") == []
    assert series("streamrec_consumer_lag", topic="discard-t", partition="1") == [7.0]


# -------------------------------------------------------------- the pipeline's hooks

def _pipeline() -> EventsPipeline:
    return EventsPipeline(Settings(), Hybrid(), store=mock.Mock(), model_version=lambda: "v")


def test_revoked_partitions_lose_their_lag_series() -> None:
    metrics.CONSUMER_LAG.labels(topic="revoke-t", partition="0").set(100)
    metrics.CONSUMER_LAG.labels(topic="revoke-t", partition="1").set(3)
    _pipeline()._on_revoke(mock.Mock(), [TopicPartition("revoke-t", 0)])
    assert series("streamrec_consumer_lag", topic="revoke-t", partition="0") == []
    assert series("streamrec_consumer_lag", topic="revoke-t", partition="1") == [3.0]


def test_partitions_lost_with_the_broker_are_not_flushed_or_committed() -> None:
    # The broker gone past the session timeout: librdkafka reports the assignment lost
    # (on_lost). Flushing the outputs and committing would wait on a broker that cannot
    # answer (10 s with the event loop blocked); a normal revocation still does both.
    pipeline = _pipeline()
    pipeline._producer = mock.Mock(spec=Producer)
    pipeline._producer.__len__ = lambda self: 3
    pipeline._consumer = mock.Mock(spec=Consumer)
    pipeline._pending = {("lost-t", 0): 42}
    pipeline._on_lost(pipeline._consumer, [TopicPartition("lost-t", 0)])
    pipeline._producer.flush.assert_not_called()
    pipeline._consumer.commit.assert_not_called()
    pipeline._on_revoke(pipeline._consumer, [TopicPartition("lost-t", 0)])
    pipeline._producer.flush.assert_called_once()
    pipeline._consumer.commit.assert_called_once()


class _PausedConsumer:
    """A consumer paused by a Redis outage since offset 100 while producers went on to
    offset 5,000: fetches stopped, so the end offset they cached is still 100."""

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("paused-t", 0)]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition("paused-t", 0, 100)]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float | None = None,
                              cached: bool = False) -> tuple[int, int]:
        return (0, 100) if cached else (0, 5000)


def test_lag_keeps_growing_while_a_redis_outage_pauses_consumption() -> None:
    """The lag panel and StreamrecConsumerLagGrowing must see the backlog an outage
    builds (they read 0 throughout one before: the gauge came from cached end offsets)."""
    pipeline = _pipeline()
    pipeline._consumer = _PausedConsumer()  # type: ignore[assignment]
    pipeline._redis_paused = True
    pipeline.update_lag()
    assert series("streamrec_consumer_lag", topic="paused-t", partition="0") == [4900.0]


def test_failed_deliveries_are_counted_per_topic() -> None:
    before = sum(series("streamrec_delivery_failures_total", topic="deliver-t"))
    message = SimpleNamespace(topic=lambda: "deliver-t")
    pipeline = _pipeline()
    pipeline._on_delivery(mock.Mock(), message)
    pipeline._on_delivery(None, message)  # delivered: not a failure
    assert sum(series("streamrec_delivery_failures_total", topic="deliver-t")) == before + 1


def test_new_title_recall_is_smoothed_and_counted_like_online_recall() -> None:
    pipeline = _pipeline()
    model = "rolling-m"
    # (hits, tests): the first batch sets each gauge to its ratio
    pipeline._update_metrics(RankedBatch(recall={model: [6, 10]},
                                         recall_new_titles={model: [1, 4]}), {}, 10)
    assert series("streamrec_online_recall_at_k", model=model) == [0.6]
    assert series("streamrec_online_recall_new_titles_at_k", model=model) == [0.25]
    pipeline._update_metrics(RankedBatch(recall={model: [0, 500]},
                                         recall_new_titles={model: [500, 500]}), {}, 500)
    # The next 500 tests count as much as the first 10 each (the first 10 fading by
    # 500 / window): 6 hits in 510 tests reads about 1%, not 45% as when the ratio itself
    # was smoothed from the first batch's.
    keep = 1 - 500 / RECALL_WINDOW
    assert series("streamrec_online_recall_at_k", model=model) == [
        pytest.approx(keep * 6 / (keep * 10 + 500))]
    assert series("streamrec_online_recall_at_k", model=model)[0] < 0.01
    assert series("streamrec_online_recall_new_titles_at_k", model=model) == [
        pytest.approx((keep * 1 + 500) / (keep * 4 + 500))]
    assert series("streamrec_online_recall_tests_total", model=model) == [510.0]
    assert series("streamrec_online_recall_hits_total", model=model) == [6.0]
    assert series("streamrec_online_recall_new_titles_tests_total", model=model) == [504.0]
    assert series("streamrec_online_recall_new_titles_hits_total", model=model) == [501.0]


def test_online_recall_gauge_is_not_ruled_by_the_first_batch() -> None:
    """A worker's first batch often holds one or two recall tests: a lucky hit must not
    keep the gauge high (nor a miss low) through the thousands of tests after it, or a
    restarted worker trips the recall alerts on noise."""
    pipeline = _pipeline()
    model = "first-batch-m"
    pipeline._update_metrics(RankedBatch(recall={model: [1, 1]}), {}, 1)
    for _ in range(100):  # 1,000 tests at 10% recall, 10 per batch
        pipeline._update_metrics(RankedBatch(recall={model: [1, 10]}), {}, 10)
    assert series("streamrec_online_recall_at_k", model=model) == [pytest.approx(0.1, abs=0.01)]


# ------------------------------------------------------------------- the checkpoint gauge

def _with_checkpointer(url: str, app_id: str, call: Any) -> Any:
    async def run() -> Any:
        client = redis.asyncio.Redis.from_url(url)
        try:
            return await call(Checkpointer(client, app_id))
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_checkpoint_gauge_follows_saves_and_restores(redis_url: str) -> None:
    app_id = f"gauge-{uuid.uuid4().hex[:6]}"
    before = time.time()
    _with_checkpointer(redis_url, app_id, lambda c: c.save(Hybrid()))
    assert before <= series("streamrec_last_checkpoint_timestamp_seconds")[0] <= time.time()

    plain = redis.Redis.from_url(redis_url)
    try:
        plain.hset(model_key(app_id), "saved_at", "1700000000.5")
        assert _with_checkpointer(redis_url, app_id, lambda c: c.load()) is not None
        assert series("streamrec_last_checkpoint_timestamp_seconds") == [1700000000.5]

        with pytest.raises(StateStoreUnavailable):  # nothing listens on port 1
            _with_checkpointer("redis://127.0.0.1:1/0", app_id, lambda c: c.save(Hybrid()))
        assert series("streamrec_last_checkpoint_timestamp_seconds") == [1700000000.5]
    finally:
        plain.delete(model_key(app_id))
        plain.hdel("sr:apps", app_id)
        plain.close()


# ------------------------------------------------------------- who serves what

def test_worker_and_sink_each_serve_only_their_own_metrics() -> None:
    metrics.SINK_LAG.labels(topic="view-t", partition="0").set(1)
    worker = {s.name for s in samples(metrics.registry_for("worker"))}
    sink = {s.name for s in samples(metrics.registry_for("sink"))}
    assert "streamrec_pipeline_up" in worker
    assert not {n for n in worker if n.startswith("streamrec_sink_")}
    assert {"streamrec_sink_records_stored_total", "streamrec_sink_lag"} <= sink
    assert not {n for n in sink if n.startswith("streamrec_") and "_sink_" not in n}
    with pytest.raises(ValueError, match="component"):
        metrics.registry_for("simulator")


def test_sink_lag_per_partition_from_cached_watermarks() -> None:
    class FakeConsumer:
        def assignment(self) -> list[TopicPartition]:
            return [TopicPartition("sink-t", 0), TopicPartition("sink-t", 1)]

        def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
            # Partition 1 has no position yet (nothing fetched): counted as caught up.
            return [TopicPartition("sink-t", 0, 5), TopicPartition("sink-t", 1, -1001)]

        def get_watermark_offsets(self, tp: TopicPartition, timeout: float | None = None,
                                  cached: bool = False) -> tuple[int, int]:
            assert cached, "the sink must not make a broker round trip per partition"
            return (0, 12) if tp.partition == 0 else (0, 7)

    metrics.record_lag(FakeConsumer(), metrics.SINK_LAG)
    assert series("streamrec_sink_lag", topic="sink-t", partition="0") == [7.0]
    assert series("streamrec_sink_lag", topic="sink-t", partition="1") == [0.0]


def test_sink_lag_keeps_growing_while_a_redis_outage_pauses_it() -> None:
    from consumers.sink import Sink

    class PausedConsumer(_PausedConsumer):
        def assignment(self) -> list[TopicPartition]:
            return [TopicPartition("paused-sink-t", 0)]

        def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
            return [TopicPartition("paused-sink-t", 0, 100)]

        def pause(self, partitions: list[TopicPartition]) -> None:
            pass

    sink = Sink(Settings(), "sink-group", mock.Mock())
    sink._consumer = PausedConsumer()  # type: ignore[assignment]
    sink._pause(True)  # as _wait does while Redis is down
    sink._tick()
    assert series("streamrec_sink_lag", topic="paused-sink-t", partition="0") == [4900.0]


def test_a_taken_metrics_port_is_one_clear_error() -> None:
    import socket

    from streamrec.exceptions import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}: "
                                              "Address already in use; choose a free port"):
            metrics.serve("127.0.0.1", port)
