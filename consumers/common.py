"""What the consumer commands share: requiring a running cluster, a batched topic reader."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Generator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from streamrec.exceptions import BrokerUnavailable, ConfigError
from streamrec.kafka import consumer_config, kafka_error_text, not_answering
from streamrec.settings import Settings

logger = logging.getLogger(__name__)

# Records fetched per consume() call: large enough to amortise the call.
READ_BATCH = 1000
# How long the broker may stay unreachable before a bounded read (record, tail
# --until-idle) fails, seconds: rides out a brief outage (a single-broker restart), and a
# dead broker ends the run soon after, as at the start.
BROKER_GONE_S = 10.0
# Timeout of the metadata request asking whether the broker still answers, seconds.
PROBE_S = 0.5
# How long a reader waits for the broker's first answer, seconds (replay's wait too).
METADATA_TIMEOUT_S = 10.0
# Longest single librdkafka request while connecting, seconds: a blocked librdkafka call
# holds back Python's Ctrl-C until it returns, so one long wait is cut into slices.
SLICE_S = 0.25


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


class BrokerWatch:
    """What librdkafka's error callback (served by ``consume``) said about the broker.

    ``_ALL_BROKERS_DOWN`` comes once per outage and nothing says the broker is back, so
    ``down_since`` is cleared by whoever sees it answer again.
    """

    def __init__(self) -> None:
        self.down_since: float | None = None  # monotonic time every broker went down
        self.reason = ""
        self.fatal: str | None = None

    def on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err.str()
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.mark_down(err.str())
        # Other errors (one broker's connection, retried by librdkafka) are not an outage.

    def mark_down(self, reason: str) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
        self.reason = reason

    def after_empty_poll(self, consumer: Consumer, topic: str, idle_s: float,
                         until_idle_s: float | None) -> str:
        """What a poll without records means: ``"idle"`` (stop: ``until_idle_s`` passed
        and the broker still answers), ``"gone"`` (unreachable for ``BROKER_GONE_S``),
        ``"back"`` (it answers again) or ``"wait"``. Asked only once the records fetched
        before an outage have all been written."""
        if self.down_since is not None:
            if answers(consumer, topic):
                self.down_since = None
                return "back"
            return "gone" if time.monotonic() - self.down_since >= BROKER_GONE_S else "wait"
        if until_idle_s is not None and idle_s >= until_idle_s:
            if answers(consumer, topic):
                return "idle"
            self.mark_down("it stopped answering metadata requests")
        return "wait"


def answers(consumer: Consumer, topic: str) -> bool:
    """Does the broker answer a metadata request for ``topic`` within ``PROBE_S``?"""
    try:
        consumer.list_topics(topic, timeout=PROBE_S)
    except KafkaException:
        return False
    return True


def within(deadline: float, request: Any) -> Any:
    """``request(timeout_s)``, retried in ``SLICE_S`` slices until it answers or
    ``deadline`` passes (then its last error is raised). Between slices Python runs its
    signal handlers, so Ctrl-C is not held back by a long librdkafka wait."""
    transient = {KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}
    while True:
        timeout_s = min(SLICE_S, max(deadline - time.monotonic(), 0.001))
        try:
            return request(timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            code = error.code() if isinstance(error, KafkaError) else None
            if code not in transient or time.monotonic() >= deadline:
                raise


def check_topic(consumer: Consumer, settings: Settings, topic: str) -> list[int]:
    """The partitions of ``topic``. Fails now, in one line, if the broker does not answer
    within ``METADATA_TIMEOUT_S`` (:class:`BrokerUnavailable`) or has no ``topic``
    (:class:`ConfigError`): an open-ended reader would otherwise wait forever, and a
    mistyped topic look like an empty one."""
    deadline = time.monotonic() + METADATA_TIMEOUT_S
    try:
        metadata = within(deadline, lambda t: consumer.list_topics(topic, timeout=t))
    except KafkaException as exc:
        raise not_answering(settings.kafka_bootstrap_servers, METADATA_TIMEOUT_S, exc) from exc
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ConfigError(f"topic {topic!r} does not exist at "
                          f"{settings.kafka_bootstrap_servers}; check --topic (the worker "
                          "creates streamrec's topics when it starts)")
    return sorted(found.partitions)


def consume_records(consumer: Consumer, watch: BrokerWatch, topic: str,
                    bootstrap: str | None, limit: int, timeout_s: float) -> list[Message]:
    """The records (not error events) of one ``consume`` call, which also serves
    ``watch``'s callback; :class:`BrokerUnavailable` if the call fails or librdkafka
    reported a fatal error."""
    try:
        batch = consumer.consume(limit, timeout_s)
    except KafkaException as exc:
        raise BrokerUnavailable(f"reading {topic} from Kafka at {bootstrap} failed "
                                f"({kafka_error_text(exc)})") from exc
    if watch.fatal is not None:
        raise BrokerUnavailable(f"reading {topic} from Kafka at {bootstrap} failed "
                                f"({watch.fatal})")
    return [m for m in batch if m.error() is None]


def read_topic(
    settings: Settings, topic: str, *, from_beginning: bool, group_id: str | None = None,
    until_idle_s: float | None = None, poll_timeout_s: float = 0.5,
) -> Generator[Message, None, None]:
    """Yield records of ``topic`` until idle for ``until_idle_s`` (None: forever); a caller
    that wants fewer stops iterating (the consumer is closed then too). A bounded read
    (``until_idle_s``) raises :class:`BrokerUnavailable` when the broker has been
    unreachable for ``BROKER_GONE_S``: an unreachable broker is not an idle topic. An
    open-ended one waits for the broker to come back, as librdkafka reconnects."""
    bootstrap = settings.kafka_bootstrap_servers
    watch = BrokerWatch()
    # log_level 0: librdkafka logs every reconnect attempt; an outage is said once here.
    conf = consumer_config(settings, group_id or f"streamrec-reader-{uuid.uuid4().hex[:8]}",
                           **{"auto.offset.reset": "earliest" if from_beginning else "latest",
                              "error_cb": watch.on_error, "log_level": 0})
    warned = False
    consumer = Consumer(conf)
    try:
        check_topic(consumer, settings, topic)
        consumer.subscribe([topic])
        last_record = time.monotonic()
        while True:
            records = consume_records(consumer, watch, topic, bootstrap, READ_BATCH,
                                      poll_timeout_s)
            if records:
                last_record = time.monotonic()
                watch.down_since, warned = None, False
            elif until_idle_s is None:
                if watch.down_since is not None and not warned:
                    warned = True
                    logger.warning("Kafka at %s is unreachable (%s); waiting for it to come "
                                   "back", bootstrap, watch.reason)
            else:
                state = watch.after_empty_poll(consumer, topic,
                                               time.monotonic() - last_record, until_idle_s)
                if state == "idle":
                    return
                if state == "back":
                    last_record = time.monotonic()
                elif state == "gone":
                    raise BrokerUnavailable(
                        f"Kafka at {bootstrap} is unreachable ({watch.reason}) and was still "
                        f"unreachable {BROKER_GONE_S:g} s later; is the broker running?")
            yield from records
    finally:
        consumer.close()
