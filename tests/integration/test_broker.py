"""`streamrec broker`: a Kafka-protocol broker any client can use, with every topic created."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(*args: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "streamrec.cli", "broker", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    first_line = process.stdout.readline().strip()
    return process, first_line


@pytest.mark.parametrize("fixed_port", [False, True])
def test_broker_prints_address_creates_topics_and_stops_cleanly(fixed_port):
    args = ["--partitions", "3"]
    port = free_port() if fixed_port else None
    if port:
        args += ["--port", str(port)]
    process, bootstrap = start_broker(*args)
    try:
        host, _, bound = bootstrap.rpartition(":")
        assert host == "127.0.0.1" and bound.isdigit()
        if port:
            assert int(bound) == port
        topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
        for name in ("events", "catalog", "recommendations", "events.dlq", "notifications",
                     "cache-hints", "streamrec-__assignor-__leader"):
            assert name in topics
        assert len(topics["events"].partitions) == 3

        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce("events", b"hello", b"k")
        assert producer.flush(10) == 0
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t",
                             "auto.offset.reset": "earliest"})
        consumer.subscribe(["events"])
        got = []
        for _ in range(50):
            got += [m.value() for m in consumer.consume(10, 0.2) if m.error() is None]
            if got:
                break
        consumer.close()
        assert got == [b"hello"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


def test_port_in_use_is_one_clear_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = subprocess.run(
            [sys.executable, "-m", "streamrec.cli", "broker", "--port", str(port)],
            capture_output=True, text=True, timeout=30,
        )
    assert process.returncode == 2
    assert "cannot listen on" in process.stderr
    assert "Traceback" not in process.stderr


def test_a_worker_with_another_app_id_than_the_broker_is_told_how_to_fix_it(broker):
    """The embedded broker cannot create topics: it holds what it was started with, faust's
    '<app id>-__assignor-__leader' included. An app id it was not started with was
    'could not create topic ...: Topic Admin API (KIP-4) not supported by broker'."""
    from streamrec.exceptions import ConfigError
    from streamrec.kafka import ensure_topics
    from streamrec.settings import Settings

    settings = Settings(kafka_bootstrap_servers=broker.bootstrap_servers,
                        app_id="app-the-broker-never-saw")
    broker.create_topics(settings.topics.all())
    with pytest.raises(ConfigError) as raised:
        ensure_topics(settings, timeout_s=10)
    message = str(raised.value)
    assert message.startswith("topic 'app-the-broker-never-saw-__assignor-__leader' does not "
                              f"exist and the broker at {broker.bootstrap_servers} cannot "
                              "create topics")
    assert "same STREAMREC_APP_ID" in message
    assert "\n" not in message
