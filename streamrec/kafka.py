"""Kafka connection helpers shared by every process: client configs, topics, producers.

Library errors become :class:`BrokerUnavailable` here, at the boundary.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamrec.broker import internal_topics
from streamrec.exceptions import BrokerUnavailable, ConfigError
from streamrec.settings import Settings

logger = logging.getLogger(__name__)

# lz4 is cheap on CPU and roughly quadruples what fits in the embedded broker's
# 5 MiB-per-partition retention, and cuts network use on a real cluster.
COMPRESSION = "lz4"


def kafka_error_text(exc: Exception) -> str:
    """A librdkafka error as its message, not ``KafkaError{code=...,val=...}``."""
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


def not_answering(bootstrap: str | None, timeout_s: float, exc: Exception
                  ) -> BrokerUnavailable:
    """The one line for a broker that did not answer a metadata request in time."""
    return BrokerUnavailable(f"Kafka at {bootstrap} did not answer within {timeout_s:g} s "
                             f"({kafka_error_text(exc)}); is the broker running?")


def librdkafka_log(polled: bool = True) -> dict[str, Any]:
    """Client config for librdkafka's own log: it logs every failed reconnect (a line per
    50 ms with the broker gone), and our commands say an outage once themselves, so it is
    only wanted with ``-v``, else off. With ``-v`` it goes through the ``librdkafka``
    logger, but for a client that is never ``polled`` (an admin client, a consumer only
    asked for offsets): its log callback would never run, so its lines go to stderr, as
    librdkafka writes them by default."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return {"logger": logging.getLogger("librdkafka")} if polled else {}
    return {"log_level": 0}


def client_config(settings: Settings) -> dict[str, Any]:
    """Connection and security options common to every confluent-kafka client."""
    if not settings.kafka_bootstrap_servers:
        raise ConfigError("no Kafka bootstrap servers: start the embedded broker first")
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_sasl_mechanism:
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username:
        conf["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password is not None:
        conf["sasl.password"] = settings.kafka_sasl_password.reveal()
    if settings.kafka_ssl_ca_location:
        conf["ssl.ca.location"] = settings.kafka_ssl_ca_location
    return conf


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    conf = client_config(settings)
    conf.update({
        # Idempotent: a retried send is never written twice, and per-key order holds.
        "enable.idempotence": True,
        "compression.type": COMPRESSION,
        # Up to 5 ms of batching: amortises requests at high rates, negligible latency.
        "linger.ms": 5,
        # Room for a burst from a max-speed replay without BufferError.
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    })
    conf.update(overrides)
    return conf


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    conf = client_config(settings)
    conf.update({
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        # Offsets are committed by the processor after state is durable, never automatically.
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        # A killed worker's partitions move after session_timeout_s (see Settings).
        "session.timeout.ms": int(settings.session_timeout_s * 1000),
        "heartbeat.interval.ms": int(settings.session_timeout_s * 100),
    })
    conf.update(overrides)
    return conf


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    try:
        return Producer(producer_config(settings, **overrides))
    except KafkaException as exc:
        raise BrokerUnavailable(f"could not create a Kafka producer: {exc}") from exc


def required_topics(settings: Settings) -> list[str]:
    return settings.topics.all() + internal_topics(settings.app_id)


def _cannot_create_topics(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and error.code() == KafkaError._UNSUPPORTED_FEATURE


def ensure_topics(settings: Settings, timeout_s: float = 15.0) -> list[str]:
    """Create any missing product topic on a real cluster; returns the ones created.

    An unreachable cluster is one :class:`BrokerUnavailable` line after ``timeout_s``:
    librdkafka's own log (a line per failed reconnect, ~290 for a worker's 15 s wait)
    is only wanted with ``-v``."""
    conf = {**client_config(settings), **librdkafka_log(polled=False)}
    admin = AdminClient(conf)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise not_answering(settings.kafka_bootstrap_servers, timeout_s, exc) from exc
    missing = [t for t in required_topics(settings) if t not in existing]
    if not missing:
        return []
    # Single partition for faust's leader topic, as faust itself would create it.
    futures = admin.create_topics([
        NewTopic(t, num_partitions=1 if t.endswith("__leader") else settings.partitions,
                 replication_factor=-1)
        for t in missing
    ])
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if _cannot_create_topics(exc):
                # The embedded broker (a librdkafka mock): it holds only the topics it was
                # started with, named by the settings of the shell that started it.
                raise ConfigError(
                    f"topic {topic!r} does not exist and the broker at "
                    f"{settings.kafka_bootstrap_servers} cannot create topics (the embedded "
                    "`streamrec broker` creates its own at start-up): start the broker with "
                    "the same STREAMREC_APP_ID and STREAMREC_TOPIC_* as this command, or "
                    "create the topic on the cluster") from None
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerUnavailable(f"could not create topic {topic!r}: {exc}") from exc
    logger.info("created topics %s", missing)
    return missing
