"""With the broker gone, the worker says so once (streams.pipeline._set_broker_down), not
once per failed reconnect of each of its Kafka clients: librdkafka's own log, which
writes a line to stderr every ~50 ms per client and broker connection, is off unless -v.
"""

from __future__ import annotations

import socket
import time
from unittest import mock

import pytest

from models.hybrid import Hybrid
from streamrec.settings import Settings
from streams.catalog_reader import CatalogReader
from streams.pipeline import EventsPipeline


def _nothing_listens() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_the_worker_kafka_clients_do_not_log_every_failed_reconnect(
        capfd: pytest.CaptureFixture[str]) -> None:
    settings = Settings(kafka_bootstrap_servers=_nothing_listens())
    pipeline = EventsPipeline(settings, Hybrid(), store=mock.Mock(), model_version=lambda: "v")
    pipeline.catalog = CatalogReader(settings, apply=lambda title: None)
    pipeline.start()
    try:
        # Serve the clients for a while: each has tried to connect several times by then
        # (librdkafka reconnects after 100 ms at first).
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            pipeline._take(10)
            assert pipeline._producer is not None
            pipeline._producer.poll(0.05)
    finally:
        assert pipeline._consumer is not None and pipeline._producer is not None
        pipeline._consumer.close()
        pipeline.catalog.close()
    assert pipeline._broker_down, "the pipeline should have noticed the broker is gone"
    err = capfd.readouterr().err
    assert "rdkafka#" not in err, err[:500]
