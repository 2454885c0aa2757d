"""``streamrec sink``: keep each user's latest recommendations in Redis.

A team that serves the homepage reads ``sr:u:{uid}:recs`` (the latest message, JSON)
instead of consuming the topic. Writes are batched (one pipeline per consumed batch) and
idempotent: a message only replaces the stored one if its ``ts`` is newer, so
redelivery after a crash never regresses a user to an older list.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from typing import Any

import orjson
import redis

from consumers.common import READ_BATCH, require_cluster, require_redis
from streamrec import metrics
from streamrec.kafka import consumer_config
from streamrec.redis_conn import sync_client
from streamrec.settings import Settings
from streams.state import user_key

logger = logging.getLogger(__name__)

# Replace the stored list only when the new one is newer (by its emit ts).
_STORE_IF_NEWER = """
for i = 1, #KEYS do
  local current = redis.call('HGET', KEYS[i], 'ts')
  if (not current) or tonumber(current) <= tonumber(ARGV[2 * i - 1]) then
    redis.call('HSET', KEYS[i], 'ts', ARGV[2 * i - 1], 'value', ARGV[2 * i])
    redis.call('EXPIRE', KEYS[i], ARGV[#ARGV])
  end
end
return #KEYS
"""
# How often the lag gauge is refreshed, seconds: a scrape every 15 s sees a fresh value.
LAG_INTERVAL_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", default=None,
                        help="consumer group (default: <app id>-sink)")
    parser.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                        help="serve the sink's /metrics on PORT (on STREAMREC_METRICS_HOST); "
                             "default 0 = off, since a worker beside it usually holds "
                             "STREAMREC_METRICS_PORT")


def latest_per_user(values: list[bytes | None]) -> dict[str, tuple[float, bytes]]:
    """The newest message per user among ``values`` (a batch may hold several); tombstones
    (``None``) and invalid messages are skipped."""
    latest: dict[str, tuple[float, bytes]] = {}
    for value in values:
        if value is None:
            logger.warning("skipping a recommendation record without a value (tombstone)")
            continue
        try:
            message: Any = orjson.loads(value)
            uid, ts = message["user_id"], float(message["ts"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            logger.warning("skipping a recommendation that is not a valid message")
            continue
        if uid not in latest or latest[uid][0] <= ts:
            latest[uid] = (ts, value)
    return latest


def store_latest(client: redis.Redis, latest: dict[str, tuple[float, bytes]], ttl_s: int) -> None:
    if not latest:
        return
    keys = [user_key(uid, "recs") for uid in latest]
    args: list[Any] = []
    for ts, value in latest.values():
        args += [repr(ts), value]
    args.append(ttl_s)
    client.eval(_STORE_IF_NEWER, len(keys), *keys, *args)


def update_lag(consumer: Any) -> None:
    """The sink's lag per assigned partition, from the watermarks its fetches cached."""
    assignment = consumer.assignment()
    if not assignment:
        return
    for tp in consumer.position(assignment):
        try:
            _, high = consumer.get_watermark_offsets(tp, cached=True)
        except Exception:  # noqa: BLE001, S112 - no cached watermark yet: next round
            continue
        if high < 0:
            continue
        position = tp.offset if tp.offset >= 0 else high
        metrics.SINK_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(
            max(0, high - position))


def _forget_lag(consumer: Any, partitions: list[Any]) -> None:
    for p in partitions:
        metrics.discard(metrics.SINK_LAG, p.topic, str(p.partition))


def run(args: argparse.Namespace, settings: Settings) -> int:
    from confluent_kafka import Consumer

    from streamrec.exceptions import ConfigError

    require_cluster(settings, "sink")
    require_redis(settings, "sink")
    if not 0 <= args.metrics_port <= 65535:
        raise ConfigError(f"--metrics-port must be 0..65535, got {args.metrics_port}")
    metrics.serve(settings.metrics_host, args.metrics_port, component="sink")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    client = sync_client(settings)
    consumer = Consumer(consumer_config(settings, args.group or f"{settings.app_id}-sink"))
    consumer.subscribe([settings.topics.recommendations], on_revoke=_forget_lag)
    next_lag = time.monotonic()
    try:
        while not stop.is_set():
            batch = [m for m in consumer.consume(READ_BATCH, 0.2) if m.error() is None]
            if time.monotonic() >= next_lag:
                next_lag = time.monotonic() + LAG_INTERVAL_S
                update_lag(consumer)
            if not batch:
                continue
            store_latest(client, latest_per_user([m.value() for m in batch]),
                         settings.state_ttl_s)
            consumer.commit(asynchronous=False)  # after the state write: state before offsets
            metrics.SINK_RECORDS_STORED.inc(len(batch))
    finally:
        consumer.close()
        client.close()
    return 0
