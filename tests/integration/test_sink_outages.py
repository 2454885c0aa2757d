"""``streamrec sink`` when Redis or Kafka is unreachable: at start-up one line and exit
status 1; mid-run it pauses, retries and resumes, storing every record it consumed and
committing no offset before its record is stored.

The sink runs as a child process, as a user runs it, against the session's embedded
broker (or a ``streamrec broker`` child that is killed and restarted) and a private
``redis-server`` that is killed and restarted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from streamrec.cli import main
from streamrec.kafka import make_producer
from streamrec.redis_conn import EmbeddedRedis
from streamrec.runtime import child_environment
from streamrec.settings import Secret, Settings
from streams.state import user_key

pytestmark = pytest.mark.integration
# Bound on every wait for the sink (start-up, a store after Redis is back: its retry
# delay is at most 5 s, a consumer group join), seconds. Never a timing assertion.
WAIT_S = 60.0
# Bound on a sink's exit after SIGTERM, seconds.
EXIT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(ready: Callable[[], bool], what: str, sink: subprocess.Popen[bytes],
              log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if sink.poll() is not None:
            pytest.fail(f"the sink exited ({sink.returncode}) while waiting for {what}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {WAIT_S:g} s:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def _recommendations(settings: Settings, users: list[str]) -> None:
    producer = make_producer(settings)
    for user in users:
        producer.produce(settings.topics.recommendations,
                         orjson.dumps({"user_id": user, "ts": time.time(), "items": []}),
                         key=user.encode())
    assert producer.flush(10) == 0


def _stored(client: redis.Redis, users: list[str]) -> bool:
    try:
        return all(client.exists(user_key(u, "recs")) for u in users)
    except redis.ConnectionError:
        return False


class _Offsets:
    """The group's committed offsets, summed over the topic's partitions (OffsetFetch:
    asking does not join the group)."""

    def __init__(self, settings: Settings, group: str) -> None:
        self._consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                                   "group.id": group, "enable.auto.commit": False,
                                   "log_level": 0})
        self._partitions = [TopicPartition(settings.topics.recommendations, p)
                            for p in range(settings.partitions)]

    def committed(self) -> int:
        return sum(max(tp.offset, 0)
                   for tp in self._consumer.committed(self._partitions, timeout=10))

    def close(self) -> None:
        self._consumer.close()


def _start_sink(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = child_environment(settings, dict(os.environ))
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "streamrec.cli", "sink"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _stop(sink: subprocess.Popen[bytes]) -> int:
    if sink.poll() is None:
        sink.send_signal(signal.SIGTERM)
    return sink.wait(timeout=EXIT_S)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, on a fixed port so a restart keeps its URL."""
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    server = EmbeddedRedis(port=_free_port(), data_dir=str(data_dir)).start()
    yield server
    server.stop()


def test_redis_unreachable_at_start_is_one_line_and_exit_1(make_settings):
    settings = make_settings().replace(redis_url=Secret(f"redis://127.0.0.1:{_free_port()}/0"))
    _recommendations(settings, ["u1"])  # a record to store: the audit's traceback
    env = child_environment(settings, dict(os.environ))
    done = subprocess.run([sys.executable, "-m", "streamrec.cli", "sink"], env=env,
                          capture_output=True, timeout=WAIT_S, check=False)
    err = done.stderr.decode()
    assert done.returncode == 1 and done.stdout == b"", err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("streamrec sink: error: Redis at redis://127.0.0.1:"), err
    assert "did not answer" in err


@pytest.mark.timeout(60)
def test_kafka_unreachable_at_start_is_one_line_and_exit_1(redis_url, capfd, monkeypatch):
    monkeypatch.setattr("consumers.common.METADATA_TIMEOUT_S", 1.0)
    port = _free_port()  # nothing listens on it
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    monkeypatch.setenv("REDIS_URL", redis_url)
    code = main(["sink", "--group", "sink-no-broker"])
    out, err = capfd.readouterr()  # file descriptors: librdkafka writes its log to fd 2
    assert code == 1 and out == "", err
    assert len(err.strip().splitlines()) == 1, err  # no librdkafka FAIL lines
    assert f"Kafka at 127.0.0.1:{port} did not answer within 1 s" in err
    assert "is the broker running?" in err


def test_records_consumed_while_redis_is_down_are_stored_after_and_committed_only_then(
        make_settings, private_redis, tmp_path):
    settings = make_settings().replace(redis_url=Secret(private_redis.url))
    offsets = _Offsets(settings, f"{settings.app_id}-sink")
    client = redis.Redis.from_url(private_redis.url)
    log = tmp_path / "sink.log"
    sink = _start_sink(settings, log)
    try:
        before = [f"before-{i}" for i in range(10)]
        _recommendations(settings, before)
        _wait_for(lambda: _stored(client, before), "lists stored", sink, log)
        _wait_for(lambda: offsets.committed() == len(before), "offsets committed", sink, log)

        private_redis.kill()
        during = [f"during-{i}" for i in range(10)]
        _recommendations(settings, during)
        _wait_for(lambda: "Redis unavailable" in log.read_text(), "outage logged", sink, log)
        time.sleep(1.0)  # several retries (0.1 + 0.2 + 0.4 s) with Redis still down
        assert offsets.committed() == len(before), "offsets committed before their records"

        private_redis.start()  # the same port: the sink's REDIS_URL answers again
        _wait_for(lambda: _stored(client, during), "lists stored after the outage", sink,
                  log)
        _wait_for(lambda: offsets.committed() == len(before) + len(during),
                  "offsets committed after the outage", sink, log)
    finally:
        code = _stop(sink)
        offsets.close()
        client.close()
    text = log.read_text()
    assert code == 0, text
    assert text.count("Redis unavailable") == 1, text  # once, not once per retry
    assert "Redis is back" in text and "Traceback" not in text, text


def test_a_broker_outage_mid_run_is_one_line_and_the_sink_resumes(redis_url, tmp_path):
    port = _free_port()

    def start_broker() -> subprocess.Popen[bytes]:
        broker = subprocess.Popen(
            [sys.executable, "-m", "streamrec.cli", "broker", "--port", str(port),
             "--partitions", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert broker.stdout is not None
        assert broker.stdout.readline().decode().strip() == f"127.0.0.1:{port}"
        return broker

    broker = start_broker()
    settings = Settings(kafka_bootstrap_servers=f"127.0.0.1:{port}",
                        redis_url=Secret(redis_url), partitions=2,
                        app_id=f"sink-outage-{port}")
    client = redis.Redis.from_url(redis_url)
    log = tmp_path / "sink.log"
    sink = _start_sink(settings, log)
    try:
        first = [f"sink-outage-{port}-a{i}" for i in range(5)]
        _recommendations(settings, first)
        _wait_for(lambda: _stored(client, first), "lists stored", sink, log)

        broker.kill()
        broker.wait()
        _wait_for(lambda: "Kafka unreachable" in log.read_text(), "outage logged", sink, log)
        broker = start_broker()
        _wait_for(lambda: "Kafka reachable again" in log.read_text(), "recovery logged",
                  sink, log)
        after = [f"sink-outage-{port}-b{i}" for i in range(5)]
        _recommendations(settings, after)
        _wait_for(lambda: _stored(client, after), "lists stored after the outage", sink,
                  log)
    finally:
        code = _stop(sink)
        broker.kill()
        broker.wait()
        client.close()
    text = log.read_text()
    assert code == 0, text
    assert text.count("Kafka unreachable") == 1, text
    assert "|FAIL|" not in text and "Traceback" not in text, text  # no librdkafka flood


def test_a_sink_stopped_while_redis_is_down_leaves_its_records_for_the_next_start(
        make_settings, private_redis, tmp_path):
    # The second sink joins the group the first left: on the embedded broker a join takes
    # about the session timeout less 1 s, so the shortest one allowed.
    settings = make_settings().replace(redis_url=Secret(private_redis.url),
                                       session_timeout_s=3.0)
    offsets = _Offsets(settings, f"{settings.app_id}-sink")
    client = redis.Redis.from_url(private_redis.url)
    log = tmp_path / "sink.log"
    sink = _start_sink(settings, log)
    try:
        _recommendations(settings, ["before"])
        _wait_for(lambda: offsets.committed() == 1, "the first list committed", sink, log)
        private_redis.kill()
        during = [f"during-{i}" for i in range(10)]
        _recommendations(settings, during)
        _wait_for(lambda: "Redis unavailable" in log.read_text(), "outage logged", sink, log)
        assert _stop(sink) == 0, log.read_text()
        assert offsets.committed() == 1, "offsets of records never stored were committed"

        private_redis.start()
        sink = _start_sink(settings, tmp_path / "sink-again.log")
        _wait_for(lambda: _stored(client, during), "lists stored by the next start", sink,
                  tmp_path / "sink-again.log")
        _wait_for(lambda: offsets.committed() == 1 + len(during), "offsets committed", sink,
                  tmp_path / "sink-again.log")
    finally:
        _stop(sink)
        offsets.close()
        client.close()
    assert "not stored in Redis" in log.read_text()
