"""What the consumer commands share: requiring a running cluster, a batched topic reader."""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator

from confluent_kafka import Consumer, KafkaException, Message

from streamrec.exceptions import BrokerUnavailable, ConfigError
from streamrec.kafka import consumer_config
from streamrec.settings import Settings

# Records fetched per consume() call: large enough to amortise the call.
READ_BATCH = 1000


def require_cluster(settings: Settings, command: str) -> None:
    if settings.uses_embedded_broker:
        raise ConfigError(
            f"KAFKA_BOOTSTRAP_SERVERS is not set: `streamrec {command}` reads a running cluster. "
            "Start `streamrec broker` (or `streamrec worker`) and export the address it prints"
        )


def require_redis(settings: Settings, command: str) -> None:
    if settings.uses_embedded_redis:
        raise ConfigError(
            f"REDIS_URL is not set: `streamrec {command}` reads the worker's Redis. "
            "Export the REDIS_URL the worker printed (e.g. redis://127.0.0.1:6379/0)"
        )


def read_topic(
    settings: Settings, topic: str, *, from_beginning: bool, group_id: str | None = None,
    until_idle_s: float | None = None, poll_timeout_s: float = 0.5,
) -> Generator[Message, None, None]:
    """Yield records of ``topic`` until idle for ``until_idle_s`` (None: forever); a caller
    that wants fewer stops iterating (the consumer is closed then too)."""
    conf = consumer_config(
        settings, group_id or f"streamrec-reader-{uuid.uuid4().hex[:8]}",
        **{"auto.offset.reset": "earliest" if from_beginning else "latest"},
    )
    consumer = Consumer(conf)
    try:
        consumer.subscribe([topic])
        last_record = time.monotonic()
        while True:
            try:
                batch = consumer.consume(READ_BATCH, poll_timeout_s)
            except KafkaException as exc:
                raise BrokerUnavailable(f"reading {topic} failed: {exc}") from exc
            records = [m for m in batch if m.error() is None]
            if records:
                last_record = time.monotonic()
            elif until_idle_s is not None and time.monotonic() - last_record >= until_idle_s:
                return
            yield from records
    finally:
        consumer.close()
