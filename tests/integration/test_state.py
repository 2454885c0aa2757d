"""Per-user state in a real Redis: one Lua call per batch, idempotent by event_id."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import orjson
import pytest
import redis.asyncio

from streams.batch import feedbacks_for_store
from streams.state import StateStore, read_features

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


def assert_expiring(client, user: str, ttl_s: int) -> None:
    """Every key holding the user's state expires within ``ttl_s``."""
    keys = list(client.scan_iter(match=f"sr:u:{{{user}}}:*", count=1000))
    assert keys, "no state stored for the user"
    for key in keys:
        assert 0 < client.ttl(key) <= ttl_s, key


def run(coro):
    return asyncio.run(coro)


async def apply(url: str, events: list[dict], lists=None, fields=None, **caps):
    client = redis.asyncio.Redis.from_url(url)
    store = StateStore(client, ttl_s=caps.get("ttl_s", 3600),
                       history_cap=caps.get("history_cap", 200),
                       dedup_window=caps.get("dedup_window", 1000))
    try:
        return await store.apply_batch(events, feedbacks_for_store(events), lists, fields)
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
    assert_expiring(redis_client, user, 3600)


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
    # A title that fell off the history comes back without its old affinity.
    again = dict(events[5], event_id=f"{user}-again", ts=TS + 100)
    run(apply(redis_url, [again], history_cap=10))
    recent = read_features(redis_client, user)["recent_titles"]
    assert recent[0] == {"title_id": "t5", "last_ts": TS + 100, "affinity": 0.3}
    assert len(recent) == 10 and recent[-1]["title_id"] == "t21"


def test_rewatch_of_a_completed_title_is_a_strong_positive(redis_url, redis_client):
    user = f"u-{uuid.uuid4().hex}"
    done = {"event_id": f"{user}-c", "type": "complete", "user_id": user, "ts": TS,
            "title_id": "m", "position_s": 10.0, "duration_s": 10.0}
    again = {"event_id": f"{user}-p", "type": "play", "user_id": user, "ts": TS + 5,
             "title_id": "m", "position_s": 0.0}
    run(apply(redis_url, [done, again]))
    affinity = read_features(redis_client, user)["recent_titles"][0]["affinity"]
    assert affinity == pytest.approx(2.0 + 0.3 + 1.5)


def test_rewatch_bonus_uses_completions_from_earlier_batches(redis_url, redis_client):
    user = f"u-{uuid.uuid4().hex}"
    done = {"event_id": f"{user}-c", "type": "complete", "user_id": user, "ts": TS,
            "title_id": "m", "position_s": 10.0, "duration_s": 10.0}
    nearly = {"event_id": f"{user}-s", "type": "stop", "user_id": user, "ts": TS + 1,
              "title_id": "n", "position_s": 96.0, "duration_s": 100.0}
    run(apply(redis_url, [done, nearly]))
    again = [{"event_id": f"{user}-p{t}", "type": "play", "user_id": user, "ts": TS + 5,
              "title_id": t, "position_s": 0.0} for t in ("m", "n", "o")]
    _, profiles = run(apply(redis_url, again))
    assert profiles[user].profile.completed == {"m", "n"}
    affinity = {r["title_id"]: r["affinity"]
                for r in read_features(redis_client, user)["recent_titles"]}
    stop = feedbacks_for_store([nearly])[0]
    assert affinity == pytest.approx({"m": 2.0 + 0.3 + 1.5, "n": stop + 0.3 + 1.5, "o": 0.3})
    assert read_features(redis_client, user)["in_progress"] == {}


def test_dedup_holds_across_batches_and_mixed_redeliveries(redis_url, redis_client):
    user = f"u-{uuid.uuid4().hex}"
    events = events_for(user)
    run(apply(redis_url, events[:2]))
    run(apply(redis_url, events[2:3]))
    # A redelivery of everything so far, with one new event in the middle.
    flags, profiles = run(apply(redis_url, [*events[:2], events[3], events[2]]))
    assert flags == [False, False, True, False]
    assert profiles[user].events_applied == 3
    features = read_features(redis_client, user)
    assert features["events_applied"] == 4
    assert features["searches"] == ["space opera"]
    assert features["remembered_events"] == 4
    # The window forgets the oldest ids beyond ``dedup_window``.
    more = [dict(events[3], event_id=f"{user}-x{i}", ts=TS + 200 + i) for i in range(3)]
    run(apply(redis_url, more, dedup_window=5))
    assert read_features(redis_client, user)["remembered_events"] == 5
    flags, _ = run(apply(redis_url, [events[0], events[2]], dedup_window=5))
    assert flags == [True, False]  # events[0] was forgotten, events[2] is still known


def test_each_write_renews_the_ttl(redis_url, redis_client):
    user = f"u-{uuid.uuid4().hex}"
    events = events_for(user)
    run(apply(redis_url, events[:1], ttl_s=100))
    assert_expiring(redis_client, user, 100)
    run(apply(redis_url, events[1:], ttl_s=3600))
    assert_expiring(redis_client, user, 3600)
    assert min(redis_client.ttl(k) for k in
               redis_client.scan_iter(match=f"sr:u:{{{user}}}:*")) > 100


def test_lists_and_other_fields_round_trip_with_the_next_batch(redis_url, redis_client):
    user, other = f"u-{uuid.uuid4().hex}", f"u-{uuid.uuid4().hex}"
    events = events_for(user)
    lists = {user: b'{"streamrec":["a","b"]}', other: b'{"streamrec":["c"]}'}
    artwork = {user: {"art": b'{"t1":[1,2]}'}, other: {"art": b"[3]"}}
    _, profiles = run(apply(redis_url, events[:2], lists=lists, fields=artwork))
    # Saved first: this batch's profiles see them.
    assert profiles[user].last_lists == {"streamrec": ["a", "b"]}
    assert profiles[user].fields == {"art": {"t1": [1, 2]}}
    _, profiles = run(apply(redis_url, [dict(events[2], user_id=other),
                                        *events[2:]]))
    assert profiles[other].last_lists == {"streamrec": ["c"]}
    assert profiles[other].fields == {"art": [3]}
    assert profiles[user].fields == {"art": {"t1": [1, 2]}}
    assert profiles[user].events_applied == 2
    assert_expiring(redis_client, other, 3600)


def test_a_bad_field_name_is_refused_before_anything_is_written(redis_url, redis_client):
    user = f"u-{uuid.uuid4().hex}"
    with pytest.raises(ValueError, match="field name"):
        run(apply(redis_url, events_for(user), fields={user: {"p": b"{}"}}))
    assert read_features(redis_client, user) is None


def test_features_json_prints_a_users_state_hours_included(redis_url, redis_client):
    user = f"u-{uuid.uuid4().hex}"
    run(apply(redis_url, events_for(user)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "KAFKA_"))}
    result = subprocess.run([sys.executable, "-m", "streamrec.cli", "features", user, "--json"],
                            env={**env, "REDIS_URL": redis_url}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    features = orjson.loads(result.stdout)
    assert features["user_id"] == user and features["events_applied"] == 4
    # The hour-of-day counts (int keys in the state) come out as JSON object keys.
    hour = str(int(TS // 3600) % 24)
    assert features["hours"] and hour in features["hours"]


def test_a_profile_stored_with_json_numbers_reads_and_updates_as_before(redis_url,
                                                                         redis_client):
    # Before the history's and resume points' numbers were kept as strings, they were JSON
    # numbers: such a profile must read the same and carry on from where it was.
    from streams.state import state_key

    user = f"u-{uuid.uuid4().hex}"
    old = {"n": 3, "t": TS, "h": ["a", 2, int(TS), "b", 0.5, int(TS) - 60],
           "d": [], "g": ["a", 600.5, 3000, int(TS)], "q": [], "hod": {}, "dev": {}}
    redis_client.hset(state_key(user), "p", orjson.dumps(old))
    pause_b = {"event_id": f"{user}-9", "type": "pause", "user_id": user, "ts": TS + 30,
               "title_id": "b", "position_s": 100.0, "duration_s": 1000.0}
    _, profiles = run(apply(redis_url, [pause_b]))
    before = profiles[user]
    assert before.profile.history == [("a", 2.0), ("b", 0.5)]
    assert before.in_progress == {"a": (600.5, 3000.0, TS)}
    assert before.events_applied == 3
    features = read_features(redis_client, user)
    weight_b = 0.5 + feedbacks_for_store([pause_b])[0]
    assert [(t["title_id"], t["affinity"], t["last_ts"]) for t in features["recent_titles"]] \
        == [("b", weight_b, TS + 30), ("a", 2.0, TS)]
    assert features["in_progress"] == {
        "b": {"position_s": 100.0, "duration_s": 1000.0, "ts": TS + 30},
        "a": {"position_s": 600.5, "duration_s": 3000.0, "ts": TS}}
    # What is stored now: the numbers of both lists as text.
    stored = orjson.loads(redis_client.hget(state_key(user), "p"))
    assert all(isinstance(v, str) for v in stored["h"] + stored["g"])


def test_a_redelivery_says_which_event_was_applied_last(redis_url, redis_client):
    # What a redelivered batch's lists are labelled with (streams.batch.label_lists): for
    # a user whose events were all duplicates, the digest of the latest event applied.
    from streams.state import event_digest

    user, other = f"u-{uuid.uuid4().hex}", f"u-{uuid.uuid4().hex}"
    events = events_for(user)
    _, profiles = run(apply(redis_url, events[:3]))
    assert profiles[user].last_event_digest is None  # new events (a new user)
    _, profiles = run(apply(redis_url, [*events[:2], *events_for(other)[:1]]))
    assert profiles[user].last_event_digest == event_digest(events[2]["event_id"])
    assert profiles[user].fields == {}  # the digest is not a caller's field
    assert profiles[other].last_event_digest is None
    _, profiles = run(apply(redis_url, events[:4]))  # three redelivered, one new
    assert profiles[user].last_event_digest is None
