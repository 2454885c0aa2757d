"""The per-record faust path (STREAMREC_PIPELINE=per-record) keeps the product's contract."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
from confluent_kafka import Consumer, Producer

from streams.state import read_features

pytestmark = pytest.mark.integration


def consume_until(settings, topics: list[str], count: int, limit_s: float) -> list:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "group.id": f"check-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe(topics)
    records: list = []
    deadline = time.monotonic() + limit_s
    try:
        while len(records) < count and time.monotonic() < deadline:
            records += [m for m in consumer.consume(500, 0.2) if m.error() is None]
    finally:
        consumer.close()
    return records


def test_per_record_worker_emits_one_list_per_event_and_dead_letters(
        make_settings, start_worker, redis_client):
    settings = make_settings(top_n=5)
    run = uuid.uuid4().hex[:6]
    users = [f"pr{run}-{i}" for i in range(5)]
    now = time.time()
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for i in range(12):
        title = {"event_id": f"c{i}", "type": "title_added", "ts": now - 60, "title_id": f"t{i}",
                 "name": f"T{i}", "kind": "movie", "genres": ["Drama" if i % 2 else "Comedy"]}
        producer.produce(settings.topics.catalog, orjson.dumps(title), title["title_id"])
    producer.flush()
    worker = start_worker(settings, {"STREAMREC_PIPELINE": "per-record"})
    events = [{"event_id": f"{u}-{j}", "type": "play" if j % 2 else "complete", "user_id": u,
               "ts": now + j, "title_id": f"t{(k + j) % 12}", "position_s": 10.0,
               "duration_s": 100.0}
              for k, u in enumerate(users) for j in range(4)]
    # The last four are redelivered duplicates: of the first user's four events, the
    # latest last (its partition's records are handled in order, so once its list is
    # there, any the other three made would be too).
    for event in events + events[:4]:
        producer.produce(settings.topics.events, orjson.dumps(event), event["user_id"])
    producer.produce(settings.topics.events, b"{not json", b"bad")
    producer.flush()

    records = consume_until(settings, [settings.topics.recommendations, settings.topics.dlq],
                            count=len(events) + 1 + 1, limit_s=60)
    assert worker.stop() == 0
    recs = [orjson.loads(r.value()) for r in records
            if r.topic() == settings.topics.recommendations]
    dead = [orjson.loads(r.value()) for r in records if r.topic() == settings.topics.dlq]
    assert [d["reason"] for d in dead] == ["invalid_json"]
    # One list per record; a duplicate is re-ranked (not re-applied) only if it is the
    # user's latest event: a list for an older one would take the user's event_ts back.
    assert len(recs) == len(events) + 1
    assert {m["event_id"] for m in recs} == {e["event_id"] for e in events}
    assert [m["event_id"] for m in recs].count(events[3]["event_id"]) == 2
    for message in recs:
        assert 0 < len(message["items"]) <= 5
        assert message["ts"] >= message["event_ts"]
    for user in users:
        assert read_features(redis_client, user)["events_applied"] == 4
