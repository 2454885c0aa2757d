"""Per-user state stays bounded whatever one user's events say (real Redis, the Lua script)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio

from streams.batch import feedbacks_for_store
from streams.state import DEVICE_CAP, IN_PROGRESS_CAP, StateStore, read_features

pytestmark = pytest.mark.integration
TS = 1_700_000_000.0
HISTORY_CAP, DEDUP_WINDOW, TTL_S = 30, 400, 3600


def hostile_user_events(user: str, n: int) -> list[dict]:
    """A new device, a new title (a stub nobody catalogued) and a new search per event."""
    events = []
    for i in range(n):
        kind = ("pause", "play", "search")[i % 3]
        event = {"event_id": f"{user}-{i}", "type": kind, "user_id": user, "ts": TS + i,
                 "device": f"device-{i}", "country": "SE"}
        if kind == "search":
            event["query"] = f"query {i}"
        else:
            event["title_id"] = f"stub-{i}"
            event["position_s"] = 10.0 + i
            event["duration_s"] = 5000.0
        events.append(event)
    return events


async def apply_all(url: str, events: list[dict], batch: int) -> None:
    client = redis.asyncio.Redis.from_url(url)
    store = StateStore(client, ttl_s=TTL_S, history_cap=HISTORY_CAP, dedup_window=DEDUP_WINDOW)
    try:
        for start in range(0, len(events), batch):
            chunk = events[start:start + batch]
            await store.apply_batch(chunk, feedbacks_for_store(chunk))
    finally:
        await store.close()


def test_one_users_state_is_bounded_by_the_caps(redis_url, redis_client):
    user = f"hostile-{uuid.uuid4().hex}"
    events = hostile_user_events(user, 1500)
    asyncio.run(apply_all(redis_url, events, batch=250))
    features = read_features(redis_client, user)
    assert features["events_applied"] == len(events)
    assert len(features["recent_titles"]) == HISTORY_CAP
    assert len(features["devices"]) == DEVICE_CAP
    assert features["device"] == "device-1499"  # the last device is still known
    assert len(features["in_progress"]) == IN_PROGRESS_CAP
    # The most recent resume points are the ones kept.
    playing = [e["title_id"] for e in events if e["type"] in ("play", "pause")]
    assert set(features["in_progress"]) == set(playing[-IN_PROGRESS_CAP:])
    assert len(features["searches"]) == 20
    assert features["remembered_events"] == DEDUP_WINDOW
    keys = list(redis_client.scan_iter(match=f"sr:u:{{{user}}}:*"))
    assert keys
    for key in keys:
        assert 0 < redis_client.ttl(key) <= TTL_S, key
    # Bounded in bytes too: the caps, not the 1,500 events, size the state.
    assert sum(redis_client.memory_usage(key) for key in keys) < 32 * 1024


def test_an_existing_device_keeps_counting_past_the_cap(redis_url, redis_client):
    user = f"devices-{uuid.uuid4().hex}"
    events = hostile_user_events(user, 3 * DEVICE_CAP + 30)
    for i, event in enumerate(events[-30:]):
        event["device"] = "device-0"  # known from the first event
        event["event_id"] = f"{user}-again-{i}"
    asyncio.run(apply_all(redis_url, events, batch=7))
    devices = read_features(redis_client, user)["devices"]
    assert len(devices) == DEVICE_CAP
    assert devices["device-0"] == 31
