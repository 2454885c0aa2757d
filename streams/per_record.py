"""The events path as a plain faust agent, one record at a time: kept to be measured.

``STREAMREC_PIPELINE=per-record`` makes the worker consume ``events`` with this agent
instead of the batched confluent-kafka loop of :mod:`streams.pipeline`. It does the same
work with the same functions, for a batch of one: validate the record (dead-letter it if
invalid), one Lua call to Redis for that event (idempotent by ``event_id``), teach the
models, rank the user, then ``await topic.send`` the recommendation. faust acknowledges
and commits offsets itself, after the agent has handled the record.

This is the design the issue measured at about 4,000 events/s: faust's per-message
machinery (~60 us to deliver a record to the agent), one ``send`` (~120 us) and one Redis
round trip (~70 us) per event, against ~30 us of real work. ``streamrec bench`` runs it
beside the batched path in the same run; the README explains the choice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import faust
import orjson

from streamrec import metrics
from streamrec.exceptions import InvalidRecord, StateStoreUnavailable
from streamrec.schema import dead_letter, decode_event
from streams.batch import feedbacks_for_store, learn_and_rank

if TYPE_CHECKING:
    from streams.app import WorkerRuntime

logger = logging.getLogger(__name__)

# Backoff while Redis is unreachable, seconds (as in the batched path).
RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 5.0
# How often the agent checks whether the runtime (Redis, model) has started, seconds.
STARTUP_POLL_S = 0.05


def add_events_agent(app: faust.App, runtime: WorkerRuntime) -> None:
    """Register the per-record ``events`` agent on ``app``."""
    settings = runtime.settings
    topics = settings.topics

    def raw_topic(name: str) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw")

    events_topic = raw_topic(topics.events)
    recommendations = raw_topic(topics.recommendations)
    dead_letters = raw_topic(topics.dlq)
    # The product layer's own messages (cache hints), by Topics attribute.
    outputs = {name: raw_topic(getattr(topics, name)) for name in ("cache_hints",
                                                                  "notifications")}

    @app.agent(events_topic, name="per-record-events")
    async def per_record_events(stream: faust.StreamT) -> None:
        while runtime.store is None:  # the EventsService connects Redis and loads the model
            await asyncio.sleep(STARTUP_POLL_S)
        metrics.PIPELINE_UP.set(1)
        async for event in stream.events():
            message = event.message
            await handle_record(runtime, message.key, message.value, message.topic,
                                message.partition, message.offset, recommendations,
                                dead_letters, outputs)


async def handle_record(runtime: WorkerRuntime, key: bytes | None, value: bytes | None,
                        topic: str, partition: int, offset: int, recommendations: Any,
                        dead_letters: Any, outputs: dict[str, Any]) -> None:
    """Everything the batched path does for a batch, for one record (the product layer's
    rows, artwork and aggregates included when it is on)."""
    settings = runtime.settings
    started = time.perf_counter()
    now = time.time()
    try:
        event = decode_event(value, settings.max_message_bytes, now)
    except InvalidRecord as exc:
        letter = dead_letter(exc.reason, exc.detail, topic, partition, offset, key, value, now)
        await dead_letters.send(key=key, value=orjson.dumps(letter))
        metrics.EVENTS_DEAD_LETTERED.labels(reason=exc.reason).inc()
        logger.warning("%s[%d]@%d dead-lettered: %s", topic, partition, offset, exc)
        return
    decoded = time.perf_counter()
    assert runtime.store is not None
    flags, profiles = await _with_retry(
        lambda: runtime.store.apply_batch([event], feedbacks_for_store([event])))
    stored = time.perf_counter()
    product = getattr(runtime, "product", None)
    ranked = learn_and_rank([event], flags, profiles, runtime.model, top_n=settings.top_n,
                            history_cap=settings.history_cap,
                            model_version=runtime.model_version(), product=product)
    ranked_at = time.perf_counter()
    for rec_key, rec_value in ranked.recommendations:
        await recommendations.send(key=rec_key, value=rec_value)
    if product is not None:
        for name, out_key, out_value in product.take_messages():
            await outputs[name].send(key=out_key, value=out_value)
        await _with_retry(product.flush)
    if ranked.event_times:
        metrics.EVENT_TO_RECOMMENDATION.observe(time.time() - ranked.event_times[0])
    if ranked.last_lists:
        await _with_retry(lambda: runtime.store.save_last_lists(ranked.last_lists))
    emitted = time.perf_counter()
    metrics.STAGE_SECONDS.labels(stage="decode").observe(decoded - started)
    metrics.STAGE_SECONDS.labels(stage="state").observe(stored - decoded)
    metrics.STAGE_SECONDS.labels(stage="learn").observe(ranked.learn_seconds)
    metrics.STAGE_SECONDS.labels(stage="rank").observe(ranked.rank_seconds)
    metrics.STAGE_SECONDS.labels(stage="emit").observe(emitted - ranked_at)
    metrics.BATCH_SIZE.observe(1)
    for kind, count in ranked.applied_by_type.items():
        metrics.EVENTS_CONSUMED.labels(type=kind).inc(count)
    if ranked.duplicates:
        metrics.EVENTS_DUPLICATE.inc(ranked.duplicates)
    metrics.RECOMMENDATIONS_EMITTED.inc(len(ranked.recommendations))


async def _with_retry(call: Any) -> Any:
    delay = RETRY_INITIAL_S
    while True:
        try:
            return await call()
        except StateStoreUnavailable as exc:
            logger.error("Redis unavailable, retrying in %.1fs: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
