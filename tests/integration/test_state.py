"""Per-user state in a real Redis: one Lua call per batch, idempotent by event_id."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio

from streams.batch import feedbacks_for_store
from streams.state import StateStore, read_features, user_key

pytestmark = pytest.mark.integration
TS = 1_700_000_000.0


def events_for(user: str) -> list[dict]:
    return [
        {"event_id": f"{user}-1", "type": "play", "user_id": user, "ts": TS, "title_id": "a",
         "position_s": 0.0, "device": "tv", "country": "SE"},
        {"event_id": f"{user}-2", "type": "pause", "user_id": user, "ts": TS + 60,
         "title_id": "a", "position_s": 600.0, "duration_s": 3000.0},
        {"event_id": f"{user}-3", "type": "complete", "user_id": user, "ts": TS + 90,
         "title_id": "b", "position_s": 1200.0, "duration_s": 1200.0},
        {"event_id": f"{user}-4", "type": "search", "user_id": user, "ts": TS + 99,
         "query": "space opera"},
    ]


def run(coro):
    return asyncio.run(coro)


async def apply(url: str, events: list[dict], **caps):
    client = redis.asyncio.Redis.from_url(url)
    store = StateStore(client, ttl_s=3600, history_cap=caps.get("history_cap", 200),
                       dedup_window=caps.get("dedup_window", 1000))
    try:
        return await store.apply_batch(events, feedbacks_for_store(events))
    finally:
        await store.close()


def test_batch_applies_state_and_returns_previous_profiles(redis_url, redis_client):
    user = f"u-{uuid.uuid4().hex}"
    flags, profiles = run(apply(redis_url, events_for(user)))
    assert flags == [True, True, True, True]
    assert profiles[user].events_applied == 0  # as it was before this batch
    features = read_features(redis_client, user)
    assert features["events_applied"] == 4
    assert features["completed"] == ["b"]
    assert features["in_progress"]["a"]["position_s"] == 600.0
    assert features["searches"] == ["space opera"]
    assert features["device"] == "tv" and features["country"] == "SE"
    assert 0 < redis_client.ttl(user_key(user, "meta")) <= 3600


def test_redelivered_batch_is_not_applied_twice(redis_url, redis_client):
    user = f"u-{uuid.uuid4().hex}"
    run(apply(redis_url, events_for(user)))
    flags, profiles = run(apply(redis_url, events_for(user)))
    assert flags == [False, False, False, False]
    assert read_features(redis_client, user)["events_applied"] == 4
    # The second call sees the first call's state.
    assert profiles[user].events_applied == 4
    assert "b" in profiles[user].profile.completed
    assert [t for t, _ in profiles[user].profile.history] == ["b", "a"]


def test_duplicate_inside_one_batch_counts_once(redis_url, redis_client):
    user = f"u-{uuid.uuid4().hex}"
    first = events_for(user)[0]
    flags, _ = run(apply(redis_url, [first, dict(first)]))
    assert flags == [True, False]
    assert read_features(redis_client, user)["events_applied"] == 1


def test_history_is_capped(redis_url, redis_client):
    user = f"u-{uuid.uuid4().hex}"
    events = [
        {"event_id": f"{user}-{i}", "type": "play", "user_id": user, "ts": TS + i,
         "title_id": f"t{i}", "position_s": 0.0}
        for i in range(30)
    ]
    run(apply(redis_url, events, history_cap=10))
    recent = read_features(redis_client, user)["recent_titles"]
    assert [r["title_id"] for r in recent] == [f"t{i}" for i in range(29, 19, -1)]
    assert redis_client.hlen(user_key(user, "aff")) == 10


def test_rewatch_of_a_completed_title_is_a_strong_positive(redis_url, redis_client):
    user = f"u-{uuid.uuid4().hex}"
    done = {"event_id": f"{user}-c", "type": "complete", "user_id": user, "ts": TS,
            "title_id": "m", "position_s": 10.0, "duration_s": 10.0}
    again = {"event_id": f"{user}-p", "type": "play", "user_id": user, "ts": TS + 5,
             "title_id": "m", "position_s": 0.0}
    run(apply(redis_url, [done, again]))
    affinity = read_features(redis_client, user)["recent_titles"][0]["affinity"]
    assert affinity == pytest.approx(2.0 + 0.3 + 1.5)
