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
from typing import Any

import orjson
import redis

from consumers.common import READ_BATCH, require_cluster, require_redis
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", default=None,
                        help="consumer group (default: <app id>-sink)")


def latest_per_user(values: list[bytes]) -> dict[str, tuple[float, bytes]]:
    """The newest message per user among ``values`` (a batch may hold several)."""
    latest: dict[str, tuple[float, bytes]] = {}
    for value in values:
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


def run(args: argparse.Namespace, settings: Settings) -> int:
    from confluent_kafka import Consumer

    require_cluster(settings, "sink")
    require_redis(settings, "sink")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    client = sync_client(settings)
    consumer = Consumer(consumer_config(settings, args.group or f"{settings.app_id}-sink"))
    consumer.subscribe([settings.topics.recommendations])
    try:
        while not stop.is_set():
            batch = [m for m in consumer.consume(READ_BATCH, 0.2) if m.error() is None]
            if not batch:
                continue
            store_latest(client, latest_per_user([m.value() for m in batch]),
                         settings.state_ttl_s)
            consumer.commit(asynchronous=False)  # after the state write: state before offsets
    finally:
        consumer.close()
        client.close()
    return 0
