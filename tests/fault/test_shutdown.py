"""SIGTERM or SIGINT mid-stream: the worker stops consuming, finishes its batch, writes
state, checkpoints, commits and exits 0; a restarted worker takes over exactly there."""

from __future__ import annotations

import signal
import time

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition
from faultkit import StreamRun, assert_exactly_once, events_consumed, make_stream, wait_for

from streamrec.exceptions import InvalidRecord
from streamrec.schema import decode_event
from streams.checkpoint import model_key
from streams.state import remembered_event_ids

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]


def committed_offsets(settings) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "group.id": f"{settings.app_id}-events"})
    try:
        parts = [TopicPartition(settings.topics.events, p) for p in range(4)]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()


def valid_ids_below(settings, committed: dict[int, int]) -> tuple[set[str], int]:
    """Valid event ids of the records below each partition's committed offset."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "group.id": f"reader-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    wanted = sum(max(0, o) for o in committed.values())
    consumer.assign([TopicPartition(settings.topics.events, p, 0) for p in committed])
    ids: set[str] = set()
    seen = 0
    deadline = time.monotonic() + 60
    try:
        while seen < wanted and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                if message.error() is not None:
                    continue
                if message.offset() >= committed[message.partition()]:
                    continue
                seen += 1
                try:
                    ids.add(decode_event(message.value())["event_id"])
                except InvalidRecord:
                    pass
    finally:
        consumer.close()
    return ids, seen


def applied_ids(client: redis.Redis, expected: dict[str, set[str]]) -> set[str]:
    """The valid event ids that Redis remembers as applied (its dedup windows)."""
    users = sorted(expected)
    return remembered_event_ids(client, users, set().union(*expected.values()))


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_stream_stops_cleanly_and_loses_nothing(fault_cluster, start_worker, how):
    settings = fault_cluster.settings(checkpoint_interval_s=600.0)  # only the final one
    stream = make_stream(20_000, n_users=1000, n_titles=200, seed=13, duplicate_fraction=0.0)
    with StreamRun(fault_cluster, settings, stream) as run:
        client = run.client
        worker = start_worker(settings)
        sender = run.start_sending(rate=3000)
        wait_for(lambda: events_consumed(worker) >= 5000, 60, "the worker to be mid-stream")
        signalled = time.time()
        worker.process.send_signal(how)
        code = worker.stop(timeout_s=60)
        seconds = time.time() - signalled
        assert code == 0
        # Its output is a log file: no terminal escape codes (faust's spinner) in it.
        assert b"\x1b[" not in open(worker.log_path, "rb").read()

        # Everything below the committed offsets is applied, and nothing else is.
        committed = committed_offsets(settings)
        below, records_below = valid_ids_below(settings, committed)
        applied = applied_ids(client, stream.expected)
        checkpoint = client.hgetall(model_key(settings.app_id))
        assert float(checkpoint[b"saved_at"]) >= signalled
        assert checkpoint[b"log_id"]

        restarted = start_worker(settings)
        sender.finish(60)
        run.wait_caught_up(90, "the restarted worker to catch up")
        redelivered = events_consumed(restarted, "streamrec_events_duplicate_total")
        restored_at = events_consumed(restarted, "streamrec_last_checkpoint_timestamp_seconds")
        assert restarted.stop() == 0
        result = run.outcome()
    print(f"\n{how.name} mid-stream: exit code {code} after {seconds:.1f} s; committed "
          f"{records_below} records, {len(below)} valid events below the committed offsets, "
          f"{len(applied)} applied at exit; checkpoint saved at exit; after the restart "
          f"{redelivered:.0f} events were redelivered\n{result.show('  final')}")
    assert applied == below  # the last batch was finished, written and committed
    assert restored_at == pytest.approx(float(checkpoint[b"saved_at"]), abs=1.0)
    assert redelivered == 0  # the restart began exactly at the committed offsets
    assert_exactly_once(result, stream)
