"""Item-model sharing through a real Redis: the log, checkpoints with their position,
and a restarted worker that resumes with everything every worker learned."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
import redis.asyncio

from models.batched import learn_many
from models.hybrid import Hybrid
from streams.checkpoint import Checkpointer, catalog_key
from streams.model_sync import ModelSync, log_key, seed_rows

pytestmark = pytest.mark.integration
TITLES = [{"title_id": f"t{i}", "genres": [["Drama", "Comedy"][i % 2]]} for i in range(20)]


def worker_model() -> Hybrid:
    model = Hybrid(seed=4, exploration=0.0)
    for title in TITLES:
        model.add_title(title)
    seed_rows(model, [t["title_id"] for t in TITLES])
    return model


def events(user_offset: int, n: int) -> list[dict]:
    return [{"event_id": f"e{user_offset}-{i}", "type": "play", "user_id": f"u{user_offset}",
             "title_id": f"t{(i * 7 + user_offset) % 20}", "ts": 1.7e9 + i} for i in range(n)]


def learn(sync: ModelSync, model: Hybrid, batch: list[dict]) -> None:
    sync.prepare(model, batch)
    history: list[tuple[str, float]] = []
    hist = []
    for event in batch:
        hist.append(list(history))
        history.insert(0, (event["title_id"], 1.0))
    learn_many(model, [e["title_id"] for e in batch], [1.0] * len(batch),
               [e["ts"] for e in batch], hist)


def mf_of(model: Hybrid, title: str) -> np.ndarray:
    return model.mf._x[model._items.index[title]]


def test_workers_share_through_the_log_and_a_restart_resumes_from_checkpoint(redis_url):
    app_id = f"sync-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        checkpointer = Checkpointer(client, app_id)
        saved: list[str] = []

        async def save(model, log_id, offsets):
            await checkpointer.save(model, offsets, log_id)
            saved.append(log_id)

        a_model, b_model = worker_model(), worker_model()
        a = ModelSync(client, app_id, 1.0, save, 60.0)
        b = ModelSync(client, app_id, 1.0, save, 60.0)
        await a.catch_up(a_model, "0-0")
        await b.catch_up(b_model, "0-0")
        learn(a, a_model, events(1, 60))
        learn(b, b_model, events(2, 60))
        a.add_title(a_model, {"title_id": "only-on-a", "genres": ["War"]})
        a.note_offsets({"events[0]": 60})
        await a.sync(a_model)
        await b.sync(b_model, checkpoint=True)  # b now has a's delta too
        await a.sync(a_model)                   # and a has b's
        assert "only-on-a" in b_model._items
        for title in ("t0", "t7", "t13"):
            np.testing.assert_allclose(mf_of(a_model, title), mf_of(b_model, title),
                                       rtol=1e-5, atol=1e-6)

        # More learning after the checkpoint, then a new worker (a restart) appears.
        learn(a, a_model, events(3, 40))
        await a.sync(a_model)
        restored = await Checkpointer(client, app_id).load()
        assert restored is not None
        c = ModelSync(client, app_id, 1.0, save, 60.0)
        ckpt = Checkpointer(client, app_id)
        await ckpt.load()
        assert ckpt.log_id == saved[-1] and ckpt.offsets == {"events[0]": 60}
        applied = await c.catch_up(restored, ckpt.log_id)
        assert applied == 1  # a's last delta; everything before is in the checkpoint
        await b.sync(b_model)
        for title in ("t0", "t3", "t7", "t13"):
            np.testing.assert_allclose(mf_of(restored, title), mf_of(a_model, title),
                                       rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(mf_of(restored, title), mf_of(b_model, title),
                                       rtol=1e-5, atol=1e-6)
        assert "only-on-a" in restored._items
        await client.delete(log_key(app_id), f"sr:model:{app_id}")
        await client.aclose()

    asyncio.run(scenario())


def test_a_redis_outage_delays_sharing_but_loses_nothing(redis_url):
    app_id = f"sync-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        good = redis.asyncio.Redis.from_url(redis_url)
        # A client for a port nobody listens on: every command fails to connect.
        down = redis.asyncio.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)

        async def save(model, log_id, offsets):
            pass

        a_model, b_model = worker_model(), worker_model()
        a = ModelSync(good, app_id, 1.0, save, 60.0)
        b = ModelSync(good, app_id, 1.0, save, 60.0)
        await a.catch_up(a_model, "0-0")
        await b.catch_up(b_model, "0-0")
        learn(a, a_model, events(1, 50))
        a._client = down
        await a.sync(a_model)           # fails quietly: counted, logged, kept for later
        assert a.syncs == 0
        learn(a, a_model, events(4, 30))
        a._client = good
        await a.sync(a_model)           # both rounds of learning go out now
        await b.sync(b_model)
        for title in ("t1", "t8", "t15"):
            np.testing.assert_allclose(mf_of(a_model, title), mf_of(b_model, title),
                                       rtol=1e-5, atol=1e-6)
        await good.delete(log_key(app_id))
        await good.aclose()
        await down.aclose()

    asyncio.run(scenario())


def test_the_catalogue_copy_names_its_titles(redis_url):
    app_id = f"sync-{uuid.uuid4().hex[:8]}"

    async def scenario() -> set[str]:
        client = redis.asyncio.Redis.from_url(redis_url)
        checkpointer = Checkpointer(client, app_id)
        for title_id in ("a", "b", "c"):
            await checkpointer.save_title({"title_id": title_id, "genres": ["War"]})
        await checkpointer.remove_title("b")
        ids = await checkpointer.catalogued_ids()
        await client.delete(catalog_key(app_id))
        await client.aclose()
        return ids

    assert asyncio.run(scenario()) == {"a", "c"}
