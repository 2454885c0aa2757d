"""Producing many records fast and knowing exactly which were delivered.

Shared by ``simulate`` and ``replay``. librdkafka reports only failed deliveries
(``delivery.report.only.error``), which saves a Python callback per record at 200,000+
records/s; delivered = handed over - failed - still queued when the bounded final flush
gave up. Every record therefore ends up counted as delivered or failed, and a broker that
disappears makes records fail after ``delivery_timeout_s`` instead of hanging.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from streamrec.exceptions import BrokerUnavailable, ConfigError
from streamrec.kafka import (
    ensure_topics,
    librdkafka_log,
    make_producer,
    not_answering,
)
from streamrec.settings import Settings

logger = logging.getLogger(__name__)

# How long librdkafka keeps retrying a record before reporting it failed, seconds. Long
# enough to ride out a broker restart or leader election, short enough that a broker that
# has gone for good ends the run in half a minute rather than librdkafka's 5 minutes.
DEFAULT_DELIVERY_TIMEOUT_S = 30.0
# Extra time the final flush waits beyond the delivery timeout, seconds: every record
# has reported by then, so the wait is bounded even if the broker never answers.
FLUSH_GRACE_S = 5.0
# Metadata request timeout when checking the broker and topic up front, seconds.
METADATA_TIMEOUT_S = 10.0
# While the local queue is full, how long each poll waits for room, seconds.
_BACKPRESSURE_POLL_S = 0.05


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to the records handed to a :class:`Sender`."""

    delivered: int
    failed: int
    first_error: str | None


class Sender:
    """A producer for one topic that counts failed deliveries.

    Parameters
    ----------
    settings
        Where Kafka is (``kafka_bootstrap_servers`` must be set).
    topic
        Topic every record goes to; must exist (checked by :meth:`check_topic`).
    delivery_timeout_s
        librdkafka's ``message.timeout.ms``: a record not acknowledged by then fails.
    overrides
        Extra librdkafka producer settings (e.g. ``linger.ms``).
    """

    def __init__(
        self, settings: Settings, topic: str,
        delivery_timeout_s: float = DEFAULT_DELIVERY_TIMEOUT_S, **overrides: Any,
    ) -> None:
        if delivery_timeout_s <= 0:
            raise ConfigError(f"the delivery timeout must be > 0 s, got {delivery_timeout_s}")
        self.topic = topic
        self.delivery_timeout_s = delivery_timeout_s
        self.sent = 0  # records librdkafka accepted into its queue
        self._refused = 0  # records we gave up on before librdkafka accepted them
        self._failed = 0
        self._first_error: str | None = None
        self._fatal: str | None = None
        self._broker_error_logged = False
        config: dict[str, Any] = {
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
            "message.timeout.ms": max(1, int(delivery_timeout_s * 1000)),
        }
        # The error callback says a broker outage once: librdkafka's own log with -v only.
        config.update(librdkafka_log())
        config.update(overrides)
        self._settings = settings
        self._producer = make_producer(settings, **config)
        self._produce = self._producer.produce
        self.bootstrap = settings.kafka_bootstrap_servers

    def check_topic(self) -> int:
        """Fail fast, in one line, if the broker is unreachable or the topic is missing
        (missing product topics are created first, on clusters that allow it); returns
        the topic's partition count."""
        # A short delivery timeout means "do not wait long for the broker" here too.
        timeout_s = min(METADATA_TIMEOUT_S, self.delivery_timeout_s)
        topic = self._topic_metadata(timeout_s)
        if topic is None:
            try:
                ensure_topics(self._settings, timeout_s)
            except BrokerUnavailable as exc:
                # The embedded broker has no admin API, and an ACL may forbid it.
                logger.debug("could not create missing topics: %s", exc)
            topic = self._topic_metadata(timeout_s)
        if topic is None:
            raise ConfigError(
                f"topic {self.topic!r} does not exist at {self.bootstrap}; create it "
                "or pick another with --topic"
            )
        return len(topic.partitions)

    def _topic_metadata(self, timeout_s: float) -> Any | None:
        try:
            metadata = self._producer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise not_answering(self.bootstrap, timeout_s, exc) from exc
        topic = metadata.topics.get(self.topic)
        return None if topic is None or topic.error is not None else topic

    def send(self, value: bytes, key: str | bytes | None) -> bool:
        """Queue one record; ``False`` if it could not be queued because deliveries are
        failing (it is then counted as failed)."""
        try:
            self._produce(self.topic, value, key)
        except BufferError:
            return self._send_when_room(value, key)
        self.sent += 1
        return True

    def _send_when_room(self, value: bytes, key: str | bytes | None) -> bool:
        # The local queue is full: serve delivery reports until there is room. With the
        # broker gone, room appears when queued records time out and fail; then stop.
        while True:
            self._producer.poll(_BACKPRESSURE_POLL_S)
            if self.failing:
                self._refused += 1
                return False
            try:
                self._produce(self.topic, value, key)
            except BufferError:
                continue
            self.sent += 1
            return True

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery reports and errors; call now and then (not per record)."""
        self._producer.poll(timeout_s)

    def in_flight(self) -> int:
        """Records queued or sent that the broker has not acknowledged yet."""
        return len(self._producer)

    @property
    def failing(self) -> bool:
        """True once any record has failed or the producer hit a fatal error."""
        return self._failed > 0 or self._fatal is not None

    @property
    def first_error(self) -> str | None:
        return self._fatal or self._first_error

    def close(self) -> DeliveryResult:
        """Wait, at most the delivery timeout plus a grace period, for every report."""
        remaining = self._producer.flush(self.delivery_timeout_s + FLUSH_GRACE_S)
        if remaining and self._first_error is None:
            self._first_error = f"{remaining} records still unacknowledged after the final wait"
        failed = self._failed + remaining + self._refused
        return DeliveryResult(
            delivered=self.sent - self._failed - remaining,
            failed=failed,
            first_error=self.first_error if failed else None,
        )

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._failed += 1
            if self._first_error is None:
                self._first_error = err.str()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = f"fatal producer error: {err.str()}"
            logger.error("%s", self._fatal)
        elif not self._broker_error_logged:
            # Transport errors repeat on every reconnect attempt; once is informative.
            self._broker_error_logged = True
            logger.warning("Kafka at %s: %s (retrying until the delivery timeout)",
                           self.bootstrap, err.str())


@contextmanager
def kafka_target(settings: Settings, command: str) -> Iterator[Settings]:
    """Settings pointing at a reachable Kafka: the configured cluster (missing product
    topics created), or an embedded broker started for the duration of the block."""
    if not settings.uses_embedded_broker:
        yield settings  # Sender.check_topic creates missing product topics there
        return
    from streamrec.runtime import Services

    sys.stderr.write(
        f"streamrec {command}: warning: KAFKA_BOOTSTRAP_SERVERS is not set, so an embedded "
        "broker was started in this process; what is produced lives only as long as the "
        "process. Run `streamrec broker` and set KAFKA_BOOTSTRAP_SERVERS to keep it.\n"
    )
    with Services(settings) as services:
        yield services.settings
