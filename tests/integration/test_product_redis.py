"""Product features against a real Redis: notification claims, search demand, insights."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import orjson
import pytest
import redis.asyncio

from models.base import UserProfile
from models.hybrid import Hybrid
from streamrec.settings import Secret, Settings
from streams.batch import learn_and_rank
from streams.notifications import Notifier, audience_key
from streams.product import ProductLayer, insight_key
from streams.state import StateStore, StoredProfile

pytestmark = pytest.mark.integration
DAY = 86_400.0
T0 = 1_709_316_000.0


def episode(run: str, n: int, ts: float) -> dict:
    return {"type": "episode_released", "title_id": f"e{n}-{run}", "series_id": f"s-{run}",
            "ts": ts, "name": f"Episode {n}"}


async def _notifications(redis_url: str, run: str) -> dict:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        users = [f"n{i}-{run}" for i in range(4)]
        watchers = {(f"s-{run}", u): T0 for u in users[:3]}
        watchers[(f"s-{run}", users[3])] = T0 - 90 * DAY  # watched long ago
        for (series, user), ts in watchers.items():
            await client.zadd(audience_key(series), {user: ts})
        # users[2] already played episode 2 (it is in their recent titles).
        played = {"event_id": f"p-{run}", "type": "play", "user_id": users[2], "ts": T0,
                  "title_id": f"e2-{run}", "position_s": 0.0}
        await StateStore(client, ttl_s=3600, history_cap=200, dedup_window=100).apply_batch(
            [played], [0.3])
        notifier = Notifier(client, window_s=30 * 24 * 3600, max_per_day=2)
        out = {}
        out["first"] = await notifier.on_episode(episode(run, 2, T0 + 3600))
        out["replayed"] = await notifier.on_episode(episode(run, 2, T0 + 3600))
        restarted = Notifier(client, window_s=30 * 24 * 3600, max_per_day=2)
        out["restarted"] = await restarted.on_episode(episode(run, 2, T0 + 3600))
        out["third_same_day"] = await notifier.on_episode(episode(run, 3, T0 + 7200))
        out["fourth_same_day"] = await notifier.on_episode(episode(run, 4, T0 + 7300))
        out["next_day"] = await notifier.on_episode(episode(run, 5, T0 + DAY))
        out["users"] = users
        return out
    finally:
        await client.aclose()


def test_notifications_are_deduplicated_rate_limited_and_skip_seen(redis_url):
    run = uuid.uuid4().hex[:6]
    out = asyncio.run(_notifications(redis_url, run))
    users = out["users"]
    sent = [orjson.loads(v) for _, v in out["first"].messages]
    # users[3] watched too long ago, users[2] has seen the episode.
    assert sorted(m["user_id"] for m in sent) == users[:2]
    assert out["first"].suppressed == {"seen": 1}
    assert all(m["type"] == "new_episode" and m["series_id"] == f"s-{run}" for m in sent)
    # One per user and episode, whoever asks again.
    assert out["replayed"].messages == [] and out["restarted"].messages == []
    assert out["replayed"].suppressed == {"duplicate": 2, "seen": 1}
    # At most two a day: the third episode that day is held back for users[0..1]
    # (users[2] got nothing yet today, so theirs goes out).
    assert len(out["third_same_day"].messages) == 3
    assert sorted(orjson.loads(v)["user_id"] for _, v in out["fourth_same_day"].messages) == [
        users[2]]
    assert out["fourth_same_day"].suppressed == {"rate_limited": 2}
    assert len(out["next_day"].messages) == 3


async def _flush(product: ProductLayer, redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    product.start(client)
    try:
        await product.flush()
    finally:
        await client.aclose()


async def _seed_legacy(redis_url: str, app_id: str, hour: float) -> None:
    """What a worker from before country codes were upper-cased wrote for events that
    said ``se``: the events' spelling in the key."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.zincrby(insight_key(app_id, "unmatched", "se"), 2, "nightbus to lisbon")
        await client.zincrby(insight_key(app_id, "plays", "se", str(int(hour))), 5, "t2")
    finally:
        await client.aclose()


def test_search_demand_and_rising_titles_reach_insights(redis_url, tmp_path):
    app_id = f"ins-{uuid.uuid4().hex[:6]}"
    settings = Settings(redis_url=Secret(redis_url), app_id=app_id, metrics_port=0)
    model = Hybrid(seed=1)
    product = ProductLayer(settings, lambda n, ts: model.trending.top(n, ts))
    for i in range(3):
        title = {"title_id": f"t{i}", "name": f"Title {i}", "genres": ["Drama"], "ts": T0}
        model.add_title(title)
        product.add_title(title)
    events = []
    # t0 is played steadily; t2 takes off in the last day. The events spell Sweden "SE"
    # mostly, "Se" and "se" at times: one country.
    for h in range(48):
        ts = T0 + h * 3600
        events.append({"event_id": f"p{h}", "type": "play", "user_id": f"v{h % 5}",
                       "ts": ts, "title_id": "t0", "country": "SE"})
        if h >= 24:
            for k in range(3):
                events.append({"event_id": f"q{h}-{k}", "type": "play", "user_id": f"w{k}",
                               "ts": ts + k, "title_id": "t2", "country": ("SE", "Se", "se")[k]})
    # An event of the next hour ends hour 47: plays are written once their hour is over.
    events.append({"event_id": "end", "type": "play", "user_id": "v0", "ts": T0 + 48 * 3600,
                   "title_id": "t1", "country": "SE"})
    for k, query in enumerate(["Robot Chef 3", "robot chef 3", "Nightbus to Lisbon", "title"]):
        events.append({"event_id": f"s{k}", "type": "search", "user_id": f"x{k}",
                       "ts": T0 + 47 * 3600, "query": query, "country": "Se" if k else "SE"})
    stored = {e["user_id"]: StoredProfile(UserProfile(e["user_id"]), {}, 0, {})
              for e in events}
    learn_and_rank(events, [True] * len(events), stored, model, top_n=5, history_cap=50,
                   model_version="v", product=product)
    hints = product.take_messages()
    assert hints and all(topic == "cache_hints" for topic, _, _ in hints)
    asyncio.run(_flush(product, redis_url))
    asyncio.run(_seed_legacy(redis_url, app_id, T0 + 40 * 3600))

    env = dict(os.environ, REDIS_URL=redis_url, STREAMREC_APP_ID=app_id)

    def insights(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "streamrec.cli", "insights", *argv],
                              env=env, capture_output=True, text=True, timeout=60)

    # The country in any case; what the older worker wrote under "se" counts too.
    done = insights("--country", "se", "--json")
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["unmatched_searches"][:2] == [
        {"query": "nightbus to lisbon", "searches": 3}, {"query": "robot chef 3", "searches": 2}]
    assert report["rising"][0]["title_id"] == "t2"
    # Hours 25..48 against 1..24 (hour 48 is still open: nothing written for it yet), and
    # 5 of hour 41 from the older worker.
    assert report["rising"][0]["plays"] == 74 and report["rising"][0]["plays_before"] == 3
    assert report["country"] == "SE"
    assert orjson.loads(insights("--country", "SE", "--json").stdout) == report

    text = insights()
    assert text.returncode == 0 and "robot chef 3" in text.stdout

    # A country with nothing recorded says so, in one line, rather than two empty lists.
    nowhere = insights("--country", "XX")
    assert nowhere.returncode == 1 and nowhere.stdout == ""
    assert len(nowhere.stderr.strip().splitlines()) == 1 and "'XX'" in nowhere.stderr

    bad = insights("--top", "0")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


async def _refresh(settings: Settings, redis_url: str) -> tuple[int, int, set[str]]:
    from streams.checkpoint import catalog_key

    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        key = catalog_key(settings.app_id)
        await client.hset(key, mapping={
            f"t{i}": orjson.dumps({"title_id": f"t{i}", "name": f"Title {i}", "ts": T0 + i})
            for i in range(3)})
        product = ProductLayer(settings)
        product.start(client)
        first = await product.refresh_catalog()
        # Another worker's catalogue partition adds t3 and removes t0.
        await client.hset(key, "t3", orjson.dumps({"title_id": "t3", "name": "Late", "ts": T0}))
        await client.hdel(key, "t0")
        same_count = await product.refresh_catalog()  # one HLEN: the count is unchanged
        second = await product.refresh_catalog(full=True)
        assert same_count == 0
        return first, second, set(product.titles.by_id)
    finally:
        await client.aclose()


def test_titles_from_other_workers_partitions_are_picked_up(redis_url):
    settings = Settings(redis_url=Secret(redis_url), app_id=f"cat-{uuid.uuid4().hex[:6]}",
                        metrics_port=0)
    first, second, titles = asyncio.run(_refresh(settings, redis_url))
    assert (first, second) == (3, 2)
    assert titles == {"t1", "t2", "t3"}


async def _watch(product: ProductLayer, model: Hybrid, redis_url: str, batches) -> dict:
    client = redis.asyncio.Redis.from_url(redis_url)
    product.start(client)
    try:
        for events in batches:
            stored = {e["user_id"]: StoredProfile(UserProfile(e["user_id"]), {}, 0, {})
                      for e in events}
            learn_and_rank(events, [True] * len(events), stored, model, top_n=5,
                           history_cap=50, model_version="v", product=product)
            await product.flush()
        key = audience_key(f"s-{product.settings.app_id}")
        return {k.decode(): v for k, v in await client.zrange(key, 0, -1, withscores=True)}
    finally:
        await client.aclose()


def test_the_events_path_records_each_series_latest_watchers(redis_url):
    app_id = f"aud-{uuid.uuid4().hex[:6]}"
    settings = Settings(redis_url=Secret(redis_url), app_id=app_id, metrics_port=0)
    model = Hybrid(seed=1)
    product = ProductLayer(settings)
    episode = {"title_id": f"ep-{app_id}", "kind": "episode", "series_id": f"s-{app_id}",
               "ts": T0}
    movie = {"title_id": f"mv-{app_id}", "ts": T0}
    for title in (episode, movie):
        model.add_title(title)
        product.add_title(title)

    def play(n: int, user: str, title: dict, ts: float) -> dict:
        return {"event_id": f"{app_id}-{n}", "type": "play", "user_id": user, "ts": ts,
                "title_id": title["title_id"], "country": "SE"}

    audience = asyncio.run(_watch(product, model, redis_url, [
        [play(1, "a", episode, T0 + 100), play(2, "b", movie, T0 + 100)],
        [play(3, "a", episode, T0 + 50)],  # late: an older watch never moves a user back
    ]))
    assert audience == {"a": T0 + 100}


async def _refresh_during_catalogue_load(settings: Settings, redis_url: str
                                         ) -> tuple[set[str], set[str]]:
    from streams.checkpoint import catalog_key

    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        key = catalog_key(settings.app_id)
        await client.hset(key, "t0", orjson.dumps({"title_id": "t0", "name": "Old", "ts": T0}))
        product = ProductLayer(settings)
        product.start(client)
        await product.refresh_catalog(full=True)
        # The worker applies a catalogue that its catalogue agent has not yet copied to
        # Redis (t1, t2 new; t0 removed): the copy in Redis still shows the old catalogue.
        for i in (1, 2):
            product.add_title({"title_id": f"t{i}", "name": f"New {i}", "ts": T0 + i})
        product.remove_title("t0")
        await product.refresh_catalog(full=True)
        during = set(product.titles.by_id)
        # The agent catches up; then another worker's partition removes t2.
        await client.hset(key, mapping={f"t{i}": orjson.dumps(
            {"title_id": f"t{i}", "name": f"New {i}", "ts": T0 + i}) for i in (1, 2)})
        await client.hdel(key, "t0", "t2")
        await product.refresh_catalog(full=True)
        return during, set(product.titles.by_id)
    finally:
        await client.aclose()


def test_a_refresh_never_undoes_titles_the_worker_applied_itself(redis_url):
    """A refresh while the catalogue agent lags behind the worker's own catalogue reader
    once emptied the title index: lists lost their artwork, names and series grouping."""
    settings = Settings(redis_url=Secret(redis_url), app_id=f"cat-{uuid.uuid4().hex[:6]}",
                        metrics_port=0)
    during, after = asyncio.run(_refresh_during_catalogue_load(settings, redis_url))
    assert during == {"t1", "t2"}
    assert after == {"t1"}


async def _start_twice(settings: Settings) -> list[tuple[str, set[str], set[str], set[str]]]:
    """(model's titles, product's titles, catalogued ids) of a worker started on a
    catalogue copy in Redis: first without a model checkpoint, then with one."""
    from streams.app import WorkerRuntime
    from streams.checkpoint import catalog_key

    client = redis.asyncio.Redis.from_url(settings.redis_url.reveal())
    await client.hset(catalog_key(settings.app_id), mapping={
        f"t{i}": orjson.dumps({"title_id": f"t{i}", "name": f"Title {i}", "ts": T0 + i,
                               "genres": ["Drama"], "artwork_ids": [f"a{i}"]})
        for i in range(4)})
    await client.aclose()
    seen = []
    for _ in range(2):
        runtime = WorkerRuntime(settings)
        await runtime.start()
        assert runtime.product is not None
        seen.append((runtime.model_version(), set(runtime.model._items.index),
                     set(runtime.product.titles.by_id),
                     set(runtime.catalogued)))
        await runtime.checkpoint(final=True)  # the second start restores this checkpoint
        await runtime.stop()
    return seen


def test_a_starting_worker_knows_the_catalogue_copy_with_or_without_a_checkpoint(redis_url):
    # The model, the product layer's title index (rows, artwork) and the ids that let a
    # batch through all come from one read of the catalogue copy.
    settings = Settings(redis_url=Secret(redis_url), app_id=f"boot-{uuid.uuid4().hex[:6]}",
                        metrics_port=0, pipeline="per-record")
    titles = {f"t{i}" for i in range(4)}
    assert asyncio.run(_start_twice(settings)) == [("hybrid-v0", titles, titles, titles),
                                                   ("hybrid-v1", titles, titles, titles)]
