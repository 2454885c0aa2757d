"""``streamrec bench --mode core``: the worker's pure core in one process, by stage.

What the events path does per batch, without Kafka and without a worker process:
``decode_batch`` -> the state script on a private Redis (``StateStore.apply_batch``, the
real Lua call) -> ``learn_and_rank`` with the product layer -> the product flush. The
same simulated records as the rest of the bench, cut into batches the way a worker gets
them:

* ``--core-order partition`` (default): ``--core-batch`` records of one partition at a
  time (partitions by the key, as librdkafka's default partitioner does), what a worker
  with a backlog consumes: the shape ``streamrec bench`` measures throughput on;
* ``--core-order time``: consecutive records in event time across partitions, what a
  paced worker that keeps up gets (use a small ``--core-batch``, e.g. 5).

The first ``1 - CORE_MEASURED_SHARE`` of the records (to the end of the batch that
reaches it) warm the models and state up; the rest are measured: CPU per event, per user
and per batch, each stage's time, and the Redis server's own CPU. One process, no network
but Redis: a stage's cost is not hidden behind another's, and two checkouts can be
compared by running this alternately.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamrec.settings import Settings

# Share of the records measured; the rest before them warm up the models and the state
# (histories grow with the stream: ranking a user costs more late in it than early).
CORE_MEASURED_SHARE = 0.25
# Stages of one batch, in order (seconds of wall time each; only "state" waits on Redis).
CORE_STAGES = ("decode", "state", "learn", "rank", "product", "flush")


class CoreRecord:
    """A record as ``decode_batch`` needs it (what confluent_kafka.Message offers)."""

    __slots__ = ("_value", "_key", "_offset")

    def __init__(self, value: bytes, key: bytes, offset: int) -> None:
        self._value, self._key, self._offset = value, key, offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return self._key

    def topic(self) -> str:
        return "events"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def core_batches(values: list[bytes], keys: list[bytes], size: int, order: str,
                 partitions: int) -> list[list[CoreRecord]]:
    """The records cut into batches of at most ``size``: by partition (round robin over
    the partitions, ``size`` consecutive records of one at a time) or in time order.

    >>> b = core_batches([b"a", b"b", b"c"], [b"u1", b"u2", b"u1"], 2, "time", 4)
    >>> [[r.value() for r in batch] for batch in b]
    [[b'a', b'b'], [b'c']]
    """
    records = [CoreRecord(v, k, i) for i, (v, k) in enumerate(zip(values, keys, strict=True))]
    if order == "time":
        return [records[i:i + size] for i in range(0, len(records), size)]
    by_partition: list[list[CoreRecord]] = [[] for _ in range(partitions)]
    for record in records:
        by_partition[zlib.crc32(record.key()) % partitions].append(record)
    batches: list[list[CoreRecord]] = []
    start = 0
    while any(start < len(p) for p in by_partition):
        batches += [p[start:start + size] for p in by_partition if start < len(p)]
        start += size
    return batches


@dataclass
class CoreResult:
    warm_up: int = 0  # records handled before the measured ones (whole batches)
    events: int = 0
    batches: int = 0
    users: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    redis_cpu_s: float = 0.0
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CORE_STAGES, 0.0))

    def report(self, args: argparse.Namespace) -> dict[str, Any]:
        n, users, batches = max(self.events, 1), max(self.users, 1), max(self.batches, 1)
        return {
            "mode": "core", "order": args.core_order, "batch_size": args.core_batch,
            "events_warm_up": self.warm_up, "events": self.events, "batches": self.batches,
            "users_per_batch": round(self.users / batches, 1),
            "cpu_us_per_event": round(self.cpu_s / n * 1e6, 2),
            "cpu_us_per_user": round(self.cpu_s / users * 1e6, 1),
            "cpu_ms_per_batch": round(self.cpu_s / batches * 1e3, 3),
            "events_per_cpu_s": round(n / self.cpu_s) if self.cpu_s else None,
            "redis_cpu_us_per_event": round(self.redis_cpu_s / n * 1e6, 2),
            "stage_us_per_event": {k: round(v / n * 1e6, 2) for k, v in self.stages.items()},
            "stage_ms_per_batch": {k: round(v / batches * 1e3, 3)
                                   for k, v in self.stages.items()},
        }


def format_core(report: dict[str, Any]) -> str:
    """The core run as a table a person reads."""
    lines = [
        f"core: {report['events']:,} events measured after {report['events_warm_up']:,} "
        f"warm-up, batches of up to {report['batch_size']:,} by {report['order']} "
        f"({report['users_per_batch']:,} users per batch)",
        f"CPU per event {report['cpu_us_per_event']:.1f} us, per user "
        f"{report['cpu_us_per_user']:.0f} us, per batch {report['cpu_ms_per_batch']:.2f} ms "
        f"(one core: {report['events_per_cpu_s'] or 0:,} events/s); Redis server CPU "
        f"{report['redis_cpu_us_per_event']:.1f} us per event",
        f"{'stage':<9}{'us/event':>10}{'ms/batch':>10}   (wall time; state waits for Redis)",
    ]
    for stage in CORE_STAGES:
        lines.append(f"{stage:<9}{report['stage_us_per_event'][stage]:>10.1f}"
                     f"{report['stage_ms_per_batch'][stage]:>10.3f}")
    return "\n".join(lines)


async def _drive(batches: list[list[CoreRecord]], warm_up: int, settings: Settings,
                 titles: list[dict[str, Any]], redis_url: str) -> CoreResult:
    import redis.asyncio

    from models.hybrid import Hybrid
    from streams.batch import decode_batch, feedbacks_for_store, learn_and_rank
    from streams.checkpoint import catalog_key
    from streams.product import ProductLayer
    from streams.state import StateStore
    from streams.tuning import freeze_startup_heap

    client = redis.asyncio.Redis.from_url(redis_url)
    store = StateStore(client, settings.state_ttl_s, settings.history_cap,
                       settings.dedup_window)
    model = Hybrid(capacity=settings.model_capacity)
    product = None
    if settings.product_features:
        product = ProductLayer(settings, lambda n, ts: model.trending.top(n, ts))
        product.start(client)
    # The catalogue copy in Redis, as the worker's catalogue agent keeps it: the product
    # layer's periodic refresh (streams.product.CATALOG_REFRESH_S) drops titles not in it.
    await client.hset(catalog_key(settings.app_id),
                      mapping={t["title_id"]: orjson.dumps(t) for t in titles})
    for title in titles:
        model.add_title(title)
        if product is not None:
            product.add_title(title)
    result = CoreResult()
    seen = 0
    measuring = False
    try:
        for batch in batches:
            if not measuring and seen >= warm_up:
                measuring = True
                result.warm_up = seen
                freeze_startup_heap()  # as the worker does when its loop starts
                redis_cpu0, cpu0, wall0 = await _redis_cpu(client), time.process_time(), \
                    time.perf_counter()
            t0 = time.perf_counter()
            decoded = decode_batch(batch, settings.max_message_bytes, time.time())
            t1 = time.perf_counter()
            flags, profiles = await store.apply_batch(
                decoded.events, feedbacks_for_store(decoded.events))
            t2 = time.perf_counter()
            ranked = learn_and_rank(decoded.events, flags, profiles, model,
                                    top_n=settings.top_n, history_cap=settings.history_cap,
                                    model_version="bench-core", product=product)
            t3 = time.perf_counter()
            if product is not None:
                product.take_messages()
                await product.flush()
            t4 = time.perf_counter()
            seen += len(batch)
            if measuring:
                result.events += len(batch)
                result.batches += 1
                result.users += len(ranked.recommendations)
                stages = result.stages
                stages["decode"] += t1 - t0
                stages["state"] += t2 - t1
                stages["learn"] += ranked.learn_seconds
                stages["rank"] += ranked.rank_seconds
                stages["product"] += ranked.product_seconds
                stages["flush"] += t4 - t3
        if measuring:
            result.cpu_s = time.process_time() - cpu0
            result.wall_s = time.perf_counter() - wall0
            result.redis_cpu_s = await _redis_cpu(client) - redis_cpu0
    finally:
        await client.aclose()
    return result


async def _redis_cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run_core(args: argparse.Namespace, settings: Settings, values: list[bytes],
             keys: list[bytes], titles: list[dict[str, Any]]) -> dict[str, Any]:
    """Drive the core over the records on a private Redis; returns the report."""
    from streamrec.redis_conn import EmbeddedRedis

    batches = core_batches(values, keys, args.core_batch, args.core_order,
                           settings.partitions)
    warm_up = len(values) - int(len(values) * CORE_MEASURED_SHARE)
    print(f"  core: {len(batches):,} batches, measuring after {warm_up:,} events",
          file=sys.stderr, flush=True)
    redis_server = EmbeddedRedis().start()
    try:
        result = asyncio.run(_drive(batches, warm_up, settings, titles, redis_server.url))
    finally:
        redis_server.stop()
    return result.report(args)
