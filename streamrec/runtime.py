"""Resolve where Kafka and Redis are: the configured ones, or embedded ones started here."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager

from streamrec.broker import EmbeddedBroker
from streamrec.kafka import ensure_topics, required_topics
from streamrec.redis_conn import EmbeddedRedis, ping
from streamrec.settings import ENV_VARS, Secret, Settings

logger = logging.getLogger(__name__)


class Services(AbstractContextManager["Services"]):
    """Starts the embedded broker and/or Redis when the settings name none.

    ``services.settings`` is the input settings with the real addresses filled in; pass
    it to everything started afterwards (child processes get it through the environment).
    """

    def __init__(self, settings: Settings, redis_persist: bool = False) -> None:
        self._requested = settings
        self._redis_persist = redis_persist
        self.settings = settings
        self.broker: EmbeddedBroker | None = None
        self.redis: EmbeddedRedis | None = None

    def start(self) -> Services:
        settings = self._requested
        try:
            if settings.uses_embedded_broker:
                self.broker = EmbeddedBroker(partitions=settings.partitions).start()
                self.broker.create_topics(settings.topics.all())
                self.broker.create_topics(
                    [t for t in required_topics(settings) if t not in settings.topics.all()],
                    partitions=1,
                )
                settings = settings.replace(kafka_bootstrap_servers=self.broker.bootstrap_servers)
            else:
                ensure_topics(settings)
            if settings.uses_embedded_redis:
                self.redis = EmbeddedRedis(persist=self._redis_persist).start()
                settings = settings.replace(redis_url=Secret(self.redis.url))
                logger.info("embedded Redis at %s", self.redis.url)
            else:
                ping(settings)
        except BaseException:
            self.stop()
            raise
        self.settings = settings
        return self

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def __enter__(self) -> Services:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def child_environment(settings: Settings, base: dict[str, str]) -> dict[str, str]:
    """Environment for a child process so it runs with exactly these ``settings``."""
    env = dict(base)
    for var, (attr, _parse, _doc) in ENV_VARS.items():
        if attr.startswith("topics."):
            value = getattr(settings.topics, attr.removeprefix("topics."))
        else:
            value = getattr(settings, attr)
        if value is None:
            env.pop(var, None)
        else:
            env[var] = value.reveal() if isinstance(value, Secret) else str(value)
    return env
