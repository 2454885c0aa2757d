"""``streamrec sink``: keep each user's latest recommendations in Redis.

A team that serves the homepage reads ``sr:u:{uid}:recs`` (the latest message, JSON)
instead of consuming the topic. Writes are batched (one pipeline per consumed batch) and
idempotent: a message only replaces the stored one if its ``ts`` is newer, so
redelivery after a crash never regresses a user to an older list.

Offsets are committed only once their records are stored. At start-up a Redis or Kafka
that does not answer is one line and exit status 1. Mid-run outages pause the sink
instead: while Redis is unreachable it retries the batch with capped backoff, its
partitions paused and its offsets uncommitted; while Kafka is unreachable librdkafka
reconnects by itself. Each outage is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson
import redis

from consumers.common import (
    READ_BATCH,
    BrokerWatch,
    answers,
    check_topic,
    consume_records,
    require_cluster,
    require_redis,
)
from streamrec import metrics
from streamrec.exceptions import ConfigError
from streamrec.kafka import consumer_config, librdkafka_log
from streamrec.redis_conn import ping, sync_client
from streamrec.settings import Settings
from streams.state import user_key

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

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
# Also how often, during a broker outage, a metadata request asks whether it is back, and
# a failed offset commit is sent again.
LAG_INTERVAL_S = 5.0
# How long one consume() call waits for records, seconds: also how soon a SIGTERM is seen.
POLL_S = 0.2
# Redis retries: 0.1 s doubling to 5 s, as the worker's (streams/pipeline.py). A restarted
# Redis is written to within 5 s; a dead one is asked every 5 s, not in a busy loop.
RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 5.0
# How long shutdown waits for the last offset commits to be acknowledged, seconds: with
# the broker gone they never are, and a commit lost here only makes the next start store
# those (already stored) records again.
FINAL_COMMIT_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", default=None,
                        help="consumer group (default: <app id>-sink)")
    parser.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                        help="serve the sink's /metrics on PORT (on STREAMREC_METRICS_HOST); "
                             "default 0 = off, since a worker beside it usually holds "
                             "STREAMREC_METRICS_PORT")


def latest_per_user(values: list[bytes | None],
                    into: dict[str, tuple[float, bytes]] | None = None,
                    ) -> dict[str, tuple[float, bytes]]:
    """The newest message per user among ``values`` (a batch may hold several) and those
    already in ``into`` (updated in place when given); tombstones (``None``) and invalid
    messages are skipped."""
    latest: dict[str, tuple[float, bytes]] = {} if into is None else into
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


def _forget_lag(consumer: Any, partitions: list[Any]) -> None:
    for p in partitions:
        metrics.discard(metrics.SINK_LAG, p.topic, str(p.partition))


class Sink:
    """The sink's consumer and Redis client: each consumed batch is stored, then the
    offsets of its records are committed (explicit offsets, asynchronously: a commit
    never waits on a broker that is gone, and never covers a record not yet stored).

    Parameters
    ----------
    settings
        Where Kafka and Redis are; the topic read is ``settings.topics.recommendations``.
    group_id
        The consumer group.
    stop
        Set (by a signal handler) to end :meth:`run`.
    """

    def __init__(self, settings: Settings, group_id: str, stop: threading.Event) -> None:
        self.settings = settings
        self.group_id = group_id
        self.topic = settings.topics.recommendations
        self._stop = stop
        self._watch = BrokerWatch()
        self._broker_down_logged = False
        self._consumer: Consumer | None = None
        self._client: redis.Redis | None = None
        # Per partition, the offset after the last stored record: what a commit sends.
        self._stored: dict[tuple[str, int], int] = {}
        self._commits_sent = 0
        self._commits_done = 0
        self._commit_failing = False
        self._next_tick = 0.0
        # Partitions paused by a Redis outage (see _wait).
        self._paused = False

    def start(self) -> None:
        """Check that Redis and Kafka answer (:class:`StateStoreUnavailable`,
        :class:`BrokerUnavailable`: one line, exit status 1) and subscribe."""
        from confluent_kafka import Consumer

        ping(self.settings)
        self._client = sync_client(self.settings)
        extra: dict[str, Any] = {"error_cb": self._watch.on_error,
                                 "on_commit": self._on_commit}
        # The sink logs each outage once: librdkafka's own log with -v only.
        extra.update(librdkafka_log())
        self._consumer = Consumer(consumer_config(self.settings, self.group_id, **extra))
        try:
            check_topic(self._consumer, self.settings, self.topic)
        except ConfigError:
            # The worker creates it when it starts, perhaps after the sink (compose).
            logger.warning("topic %r does not exist at %s yet; waiting for it (the worker "
                           "creates it when it starts)", self.topic,
                           self.settings.kafka_bootstrap_servers)
        self._consumer.subscribe([self.topic], on_revoke=self._on_revoke)

    def run(self) -> None:
        """Store and commit until ``stop`` is set, then wait (briefly) for the commits."""
        while not self._stop.is_set():
            records = self._consume(READ_BATCH, POLL_S)
            if records:
                self._store(records)
        self._finish_commits()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- consuming ----------------------------------------------------------------------
    def _consume(self, limit: int, timeout_s: float) -> list[Message]:
        """Records (not errors) from one consume() call, which also serves librdkafka's
        callbacks; says when the broker stops or starts answering."""
        assert self._consumer is not None
        records = consume_records(self._consumer, self._watch, self.topic,
                                  self.settings.kafka_bootstrap_servers, limit, timeout_s)
        if self._watch.down_since is not None and not self._broker_down_logged:
            self._broker_down_logged = True
            logger.error("Kafka unreachable (%s); retrying until it answers",
                         self._watch.reason)
        if time.monotonic() >= self._next_tick:
            self._next_tick = time.monotonic() + LAG_INTERVAL_S
            self._tick()
        return records

    def _tick(self) -> None:
        """Every ``LAG_INTERVAL_S``: during a broker outage, ask whether it is back
        (records fetched before it do not say so, and nothing else does); send a failed
        commit again; refresh the lag gauge."""
        assert self._consumer is not None
        if self._watch.down_since is not None:
            if not answers(self._consumer, self.topic):
                return
            self._watch.down_since = None
            if self._broker_down_logged:
                self._broker_down_logged = False
                logger.warning("Kafka reachable again; consuming")
        if self._commit_failing:
            self._commit()
        metrics.record_lag(self._consumer, metrics.SINK_LAG, cached=not self._paused)

    # -- storing ------------------------------------------------------------------------
    def _store(self, records: list[Message]) -> None:
        """Store ``records``, retrying through a Redis outage, then commit their offsets.
        Records the consumer returns while waiting join the batch (never dropped). If
        ``stop`` is set first, nothing of it is committed: it is read again next start."""
        assert self._client is not None
        records = list(records)  # grows with the records held while waiting
        latest = latest_per_user([m.value() for m in records])
        delay = RETRY_INITIAL_S
        failing = False
        while True:
            try:
                store_latest(self._client, latest, self.settings.state_ttl_s)
                break
            except redis.RedisError as exc:
                if not failing:
                    failing = True
                    logger.error("Redis unavailable (%s), pausing consumption and "
                                 "retrying; offsets are committed once the records are "
                                 "stored", exc)
                held = self._wait(delay)
                records += held
                latest_per_user([m.value() for m in held], into=latest)
                if self._stop.is_set():
                    logger.warning("stopping with %d records not stored in Redis; their "
                                   "offsets are not committed, so the next start reads "
                                   "them again", len(records))
                    return
                delay = min(delay * 2, RETRY_MAX_S)
        if failing:
            logger.warning("Redis is back; resuming consumption")
            self._pause(False)
        for m in records:  # in offset order per partition: the last one's offset wins
            # Never None for a record (only an error can lack them): for mypy.
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            if topic is not None and partition is not None and offset is not None:
                self._stored[(topic, partition)] = offset + 1
        metrics.SINK_RECORDS_STORED.inc(len(records))
        self._commit()

    def _wait(self, delay_s: float) -> list[Message]:
        """Wait ``delay_s`` with the assignment paused, still serving the consumer (group
        membership, callbacks); returns the records it returned anyway (a partition
        assigned meanwhile, not paused yet)."""
        self._pause(True)
        held: list[Message] = []
        end = time.monotonic() + delay_s
        while not self._stop.is_set() and (left := end - time.monotonic()) > 0:
            held += self._consume(READ_BATCH, min(left, POLL_S))
        return held

    def _pause(self, pause: bool) -> None:
        assert self._consumer is not None
        self._paused = pause
        assignment = self._consumer.assignment()
        if assignment:
            (self._consumer.pause if pause else self._consumer.resume)(assignment)

    # -- offsets ------------------------------------------------------------------------
    def _commit(self) -> None:
        """Commit the stored offsets of the partitions still assigned (a revoked one's
        belong to its new owner now)."""
        from confluent_kafka import KafkaException, TopicPartition

        assert self._consumer is not None
        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        offsets = [TopicPartition(topic, partition, offset)
                   for (topic, partition), offset in self._stored.items()
                   if (topic, partition) in assigned]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:  # refused at once (e.g. rejoining the group)
            self._commit_failed(str(exc))
            return
        self._commits_sent += 1

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        from confluent_kafka import KafkaError

        self._commits_done += 1
        errors = [p.error for p in partitions if p.error is not None]
        if err is not None:
            errors.insert(0, err)
        if not errors:
            self._commit_failing = False
            return
        # A group rebalancing (a sink joined or left) refuses commits for a moment: routine.
        routine = all(e.code() in (KafkaError.REBALANCE_IN_PROGRESS,
                                   KafkaError.ILLEGAL_GENERATION,
                                   KafkaError.UNKNOWN_MEMBER_ID) for e in errors)
        self._commit_failed("; ".join(dict.fromkeys(e.str() for e in errors)), routine)

    def _commit_failed(self, reason: str, routine: bool = False) -> None:
        # The records are stored: a restart before a commit succeeds only stores them
        # again (idempotent). Said once per run of failures, and not during an outage
        # that is already logged.
        if not self._commit_failing and self._watch.down_since is None:
            logger.log(logging.DEBUG if routine else logging.WARNING,
                       "committing offsets failed (%s); retrying every %g s", reason,
                       LAG_INTERVAL_S)
        self._commit_failing = True

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        _forget_lag(consumer, partitions)
        for p in partitions:
            self._stored.pop((p.topic, p.partition), None)

    def _finish_commits(self) -> None:
        """At shutdown, send a failed commit again and wait up to ``FINAL_COMMIT_S`` for
        the commits in flight (the broker may be gone: not forever)."""
        assert self._consumer is not None
        if self._commit_failing and self._watch.down_since is None:
            self._commit()
        if self._commits_done >= self._commits_sent:
            return
        self._pause(True)  # poll() below serves callbacks; it must not fetch more
        deadline = time.monotonic() + FINAL_COMMIT_S
        while self._commits_done < self._commits_sent and time.monotonic() < deadline:
            # A record returned here is neither stored nor committed: read again later.
            self._consumer.poll(0.1)


def run(args: argparse.Namespace, settings: Settings) -> int:
    require_cluster(settings, "sink")
    require_redis(settings, "sink")
    if not 0 <= args.metrics_port <= 65535:
        raise ConfigError(f"--metrics-port must be 0..65535, got {args.metrics_port}")
    metrics.serve(settings.metrics_host, args.metrics_port, component="sink")
    stop = threading.Event()
    sink = Sink(settings, args.group or f"{settings.app_id}-sink", stop)
    try:
        sink.start()
        # Only now: Ctrl-C while connecting interrupts at once (exit status 130).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        sink.run()
    finally:
        sink.close()
    return 0
