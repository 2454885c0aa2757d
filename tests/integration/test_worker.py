"""The worker end to end over TCP: embedded broker, real Redis, a real worker process."""

from __future__ import annotations

import random
import time
import uuid

import orjson
import pytest
from confluent_kafka import Consumer, Producer

from streams.state import read_features

pytestmark = pytest.mark.integration
GENRES = ["Drama", "Comedy", "Action", "Horror", "Documentary"]


def make_catalog(n: int, ts: float) -> list[dict]:
    return [
        {"event_id": f"c{i}", "type": "title_added", "ts": ts, "title_id": f"t{i}",
         "name": f"Title {i}", "kind": "movie", "genres": [GENRES[i % len(GENRES)]],
         "duration_s": 3000.0, "artwork_ids": [f"t{i}-a", f"t{i}-b"]}
        for i in range(n)
    ]


def make_events(users: list[str], per_user: int, n_titles: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    now = time.time()
    events = []
    for user in users:
        for j in range(per_user):
            kind = rng.choice(["play", "pause", "stop", "complete", "resume", "search"])
            event = {"event_id": f"{user}-{j}", "type": kind, "user_id": user,
                     "ts": now - 60 + j * 0.01, "device": "tv", "country": "SE"}
            if kind == "search":
                event["query"] = "drama"
            else:
                event["title_id"] = f"t{rng.randrange(n_titles)}"
                event["position_s"] = float(rng.randrange(0, 3000))
                event["duration_s"] = 3000.0
            events.append(event)
    return events


def consume_until_idle(settings, topics: list[str], idle_s: float, limit_s: float) -> list:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "group.id": f"check-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe(topics)
    records, last, start = [], time.monotonic(), time.monotonic()
    try:
        while time.monotonic() - start < limit_s:
            batch = [m for m in consumer.consume(500, 0.2) if m.error() is None]
            if batch:
                records += batch
                last = time.monotonic()
            elif records and time.monotonic() - last > idle_s:
                break
    finally:
        consumer.close()
    return records


def test_worker_learns_emits_and_dead_letters(make_settings, start_worker, redis_client):
    settings = make_settings(top_n=10)
    run_id = uuid.uuid4().hex[:6]
    users = [f"w{run_id}-{i}" for i in range(40)]
    catalog = make_catalog(30, time.time() - 3600)
    events = make_events(users, per_user=25, n_titles=30, seed=1)
    invalid = [b"{not json", orjson.dumps({"event_id": "x", "type": "teleport",
                                           "user_id": users[0], "ts": time.time()})]
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for title in catalog:
        producer.produce(settings.topics.catalog, orjson.dumps(title), title["title_id"])
    producer.flush()
    # Another app used this Redis database a minute ago, a third one long before the
    # state TTL: the worker warns about the first only (per-user state is not per app).
    redis_client.delete("sr:apps")  # (the apps of earlier tests; only warnings read it)
    long_ago = time.time() - 2 * settings.state_ttl_s
    redis_client.hset("sr:apps", mapping={f"other-{run_id}": time.time() - 60,
                                           f"gone-{run_id}": long_ago})
    worker = start_worker(settings)
    time.sleep(1.0)
    for event in events:
        producer.produce(settings.topics.events, orjson.dumps(event), event["user_id"])
    for event in events[:50]:  # redelivered duplicates: must not be applied twice
        producer.produce(settings.topics.events, orjson.dumps(event), event["user_id"])
    for value in invalid:
        producer.produce(settings.topics.events, value, b"bad")
    producer.flush()

    records = consume_until_idle(
        settings, [settings.topics.recommendations, settings.topics.dlq], idle_s=3, limit_s=60)
    assert worker.stop() == 0
    log = open(worker.log_path, encoding="utf-8", errors="replace").read()
    warning = next(line for line in log.splitlines() if "per-user state of app(s)" in line)
    assert f"app(s) other-{run_id} (seen within" in warning

    recs = [orjson.loads(r.value()) for r in records
            if r.topic() == settings.topics.recommendations]
    dead = [orjson.loads(r.value()) for r in records if r.topic() == settings.topics.dlq]
    assert sorted(d["reason"] for d in dead) == ["invalid_json", "unknown_type"]
    assert all(d["topic"] == settings.topics.events and d["offset"] >= 0 for d in dead)
    assert {d["value"] for d in dead} >= {"{not json"}

    assert {m["user_id"] for m in recs} == set(users)
    completed_by: dict[str, dict[str, float]] = {}
    for event in events:
        if event["type"] == "complete":
            completed_by.setdefault(event["user_id"], {})[event["title_id"]] = event["ts"]
    for message in recs:
        assert set(message) >= {"user_id", "ts", "event_id", "event_ts", "model_version",
                                "items"}
        assert 0 < len(message["items"]) <= 10
        assert message["ts"] >= message["event_ts"]
        done = {t for t, ts in completed_by.get(message["user_id"], {}).items()
                if ts <= message["event_ts"]}
        shown = [item["title_id"] for item in message["items"]]
        assert not done & set(shown), "a completed title was recommended"
        assert len(shown) == len(set(shown))
        assert all(item["reason"] for item in message["items"])

    for user in users:
        distinct = {e["event_id"] for e in events if e["user_id"] == user}
        assert read_features(redis_client, user)["events_applied"] == len(distinct)
