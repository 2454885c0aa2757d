"""``streamrec bench --mode state``: Redis's own time per user per batch, by profile size.

The other modes measure fresh simulated users, whose profiles stay small. A long-lived
viewer's profile holds a full history and many resume points, and the state script
decodes and re-encodes it on every batch that touches the user (``streams.state``). This
mode builds users of given sizes on a private embedded Redis (a configured ``REDIS_URL``
is ignored: it is flushed), then applies batches of one
new play per user and reads Redis's CPU time for the script (``INFO commandstats``,
``cmdstat_evalsha``), so the figure is the server's work alone, not the round trip.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import redis
import redis.asyncio

from streamrec.settings import Settings

# Users per measured batch, and batches measured per profile size.
USERS = 500
BATCHES = 20
# (history titles, resume points) per user: a long-lived viewer at the history cap, and
# a typical one.
PROFILES = ((200, 50), (100, 10))
TS = 1_700_000_000.0


def _event(user: str, n: int, kind: str, title: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"{user}-{n}", "type": kind, "user_id": user, "ts": TS + n,
            "title_id": title, **fields}


def profile_events(user: str, titles: int, resume_points: int) -> list[dict[str, Any]]:
    """A user's past: ``titles`` titles finished, then ``resume_points`` paused midway.

    Examples
    --------
    >>> [e["type"] for e in profile_events("u", 2, 1)]
    ['complete', 'complete', 'pause']
    """
    done = [_event(user, i, "complete", f"c{i}", position_s=1200.0, duration_s=1200.0)
            for i in range(titles)]
    paused = [_event(user, titles + i, "pause", f"p{i}", position_s=123.4 + i,
                     duration_s=5400.0) for i in range(resume_points)]
    return done + paused


async def _measure(url: str, history_cap: int, titles: int, resume_points: int,
                   users: int, batches: int) -> dict[str, Any]:
    from streams.batch import feedbacks_for_store
    from streams.state import StateStore, state_key

    sync = redis.Redis.from_url(url)
    sync.flushdb()
    client = redis.asyncio.Redis.from_url(url)
    store = StateStore(client, ttl_s=3600, history_cap=history_cap, dedup_window=1000)
    try:
        names = [f"s{u}" for u in range(users)]
        past = [e for name in names for e in profile_events(name, titles, resume_points)]
        for start in range(0, len(past), 1000):
            chunk = past[start:start + 1000]
            await store.apply_batch(chunk, feedbacks_for_store(chunk))
        per_user = []
        for b in range(batches):
            batch = [_event(name, 100_000 + b, "play", f"n{b}", position_s=0.0)
                     for name in names]
            before = sync.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0)
            await store.apply_batch(batch, feedbacks_for_store(batch))
            after = sync.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0)
            per_user.append((after - before) / users)
        return {"history_titles": titles, "resume_points": resume_points, "users": users,
                "batches": batches,
                "redis_us_per_user_batch": {"median": statistics.median(per_user),
                                            "min": min(per_user), "max": max(per_user)},
                "state_bytes_per_user": int(sync.memory_usage(state_key(names[0])) or 0)}
    finally:
        await store.close()
        sync.close()


def run_state(settings: Settings) -> list[dict[str, Any]]:
    """One measurement per size of ``PROFILES``, on a private embedded Redis."""
    from streamrec.redis_conn import EmbeddedRedis

    server = EmbeddedRedis().start()
    try:
        return [asyncio.run(_measure(server.url, max(settings.history_cap, titles), titles,
                                     resume, USERS, BATCHES))
                for titles, resume in PROFILES]
    finally:
        server.stop()


def format_state(results: list[dict[str, Any]]) -> str:
    """The table ``--mode state`` prints.

    Examples
    --------
    >>> print(format_state([{"history_titles": 200, "resume_points": 50, "state_bytes_per_user":
    ...     11344, "redis_us_per_user_batch": {"median": 257.0, "min": 162.0, "max": 286.0}}]))
    history  resume points  Redis us per user per batch, median (min-max)  state bytes
        200             50                                  257 (162-286)       11,344
    """
    lines = [f"{'history':>7}  {'resume points':>13}  "
             f"{'Redis us per user per batch, median (min-max)':>45}  {'state bytes':>11}"]
    for r in results:
        us = r["redis_us_per_user_batch"]
        cell = f"{us['median']:.0f} ({us['min']:.0f}-{us['max']:.0f})"
        lines.append(f"{r['history_titles']:>7}  {r['resume_points']:>13}  {cell:>45}  "
                     f"{r['state_bytes_per_user']:>11,}")
    return "\n".join(lines)
