"""Keeping a fast producer from overrunning the embedded broker's retention, and saying
so when it could not.

librdkafka's mock cluster (``streamrec broker``, the embedded broker) keeps at most
5 MiB of record batches per partition and silently drops the oldest beyond that. A
replay that runs ahead of the worker therefore made the broker drop events the worker
had not read yet (the worker counted them in ``streamrec_records_lost_total``; the
replay said every record was produced). :class:`BacklogGuard` makes the producer wait
instead: it bounds each partition's unconsumed records (high watermark minus the
worker's committed offset) by what 5 MiB holds for certain, as if nothing compressed.

Only the events topic of the embedded broker (its cluster id starts ``mockCluster``),
and only once a worker has committed offsets on it, is guarded: a real cluster retains
by time or size and a lagging consumer is no reason to stall a backfill there, and
without a worker nobody is consuming (a bulk load to ``record`` later keeps its
documented capacity). What the broker dropped anyway before a worker committed it is
counted by :meth:`BacklogGuard.dropped`, so replay can say so instead of "produced".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamrec.kafka import consumer_config, librdkafka_log
from streamrec.settings import Settings

logger = logging.getLogger(__name__)

MOCK_CLUSTER_PREFIX = "mockCluster"
# What the mock keeps per partition, bytes (librdkafka's mock partition log limit).
PARTITION_BYTES = 5 * 1024 * 1024
# Share of that the unconsumed backlog may fill: the rest is headroom for records
# produced by others, and for a worker's commit that lags what it has read.
BUDGET_SHARE = 0.8
# Bytes a record can cost in a stored batch beyond its key and value, worst case: its
# own header (length, attributes, delta varints, header count: up to ~20 bytes) plus a
# whole 61-byte batch header when every batch holds one record (a trickle).
RECORD_OVERHEAD_BYTES = 80
# Metadata, offset and watermark requests to the broker, seconds.
REQUEST_TIMEOUT_S = 5.0
# While waiting for the worker, how often the backlog is measured again, seconds.
WAIT_POLL_S = 0.2


def backlog_budget(mean_record_bytes: float) -> int:
    """Unconsumed records one partition holds for certain, for records of this mean
    size (key + value), stored uncompressed in one-record batches: the worst case.

    Examples
    --------
    >>> backlog_budget(190.0)  # a simulated event and its key
    15534
    """
    per_record = max(mean_record_bytes, 1.0) + RECORD_OVERHEAD_BYTES
    return max(1, int(PARTITION_BYTES * BUDGET_SHARE / per_record))


def fullest_backlog(highs: Sequence[int], lows: Sequence[int],
                    committed: Sequence[int | None]) -> tuple[int, int]:
    """``(partition, unconsumed records)`` of the partition with the most records past
    the worker's committed offset (``None``: it has none there, so all it holds).

    Examples
    --------
    >>> fullest_backlog([100, 50], [0, 0], [90, None])
    (1, 50)
    """
    worst = (0, 0)
    for partition, (high, low, done) in enumerate(zip(highs, lows, committed, strict=True)):
        backlog = high - max(low, done if done is not None else low)
        if backlog > worst[1]:
            worst = (partition, backlog)
    return worst


def dropped_line(dropped: int, topic: str) -> str:
    """The error line for records the embedded broker dropped before a worker read them."""
    return (f"the embedded broker dropped {dropped:,} records of {topic!r} that no worker "
            f"had read (it keeps 5 MiB per partition and drops the oldest); run `streamrec "
            f"worker` while producing, or start the broker with more --partitions")


def waiting_notice(command: str, say: Callable[[str], None],
                   idle: Callable[[], None]) -> Callable[[str], None]:
    """The ``idle`` callback a producing command hands :meth:`BacklogGuard.sent`: says the
    first wait once (through ``say``; the command's summary counts the waits), then,
    every time, runs ``idle`` (serve delivery reports, update the progress line)."""
    shown = False

    def waiting(why: str) -> None:
        nonlocal shown
        if not shown:
            shown = True
            say(f"{command}: {why}; resuming as it catches up (if no `streamrec worker` is "
                "running, start one, or Ctrl-C)")
        idle()

    return waiting


class BacklogGuard:
    """Makes a producer wait while the worker is too far behind (see the module doc).

    Use :meth:`open`, which returns ``None`` when there is nothing to guard. Call
    :meth:`room` whenever the records sent since the last call may have used up the
    room it returned: it measures, waits while the worker is too far behind, and
    returns how many more records may be sent before the next call.
    """

    def __init__(self, probes: Sequence[Consumer], topic: str, partitions: int,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._sleep = sleep
        self._probes = list(probes)  # one per worker consumer group
        self.topic = topic
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.waits = 0  # times the producer had to wait for the worker
        self._start_lows = self._watermarks()[1]
        # Records that may still be sent before measuring again, and the records and
        # bytes sent so far (the budget depends on their mean size).
        self._room = self._count = self._bytes = 0

    @classmethod
    def open(cls, settings: Settings, topic: str) -> BacklogGuard | None:
        """A guard for ``topic`` if it is the events topic of the embedded broker."""
        if topic != settings.topics.events:
            return None  # the catalogue is compacted and copied to Redis; others: no worker
        # The batched pipeline's group, and faust's own (the per-record path).
        groups = [f"{settings.app_id}-events", settings.app_id]
        probes = [Consumer(consumer_config(settings, g, **librdkafka_log())) for g in groups]
        guard: BacklogGuard | None = None
        try:
            metadata = probes[0].list_topics(topic, timeout=REQUEST_TIMEOUT_S)
            if (metadata.cluster_id or "").startswith(MOCK_CLUSTER_PREFIX):
                guard = cls(probes, topic, len(metadata.topics[topic].partitions))
        except (KafkaException, KeyError) as exc:
            logger.debug("not guarding the backlog of %s: %s", topic, exc)
            guard = None
        if guard is None:
            for probe in probes:
                probe.close()
        return guard

    def committed(self) -> list[int | None]:
        """Per partition, the furthest offset any worker group has committed."""
        furthest: list[int | None] = [None] * len(self._partitions)
        for probe in self._probes:
            for i, tp in enumerate(probe.committed(self._partitions,
                                                   timeout=REQUEST_TIMEOUT_S)):
                if tp.offset >= 0:  # below: none committed (librdkafka's -1001)
                    furthest[i] = max(tp.offset, furthest[i] or 0)
        return furthest

    def fullest(self) -> tuple[int, int] | None:
        """``(partition, unconsumed records)`` of the partition furthest ahead of the
        worker; ``None`` while no worker has committed anything on the topic (nobody
        consumes it, or not yet: a bulk load to ``record`` later is not held back)."""
        committed = self.committed()
        if all(done is None for done in committed):
            return None
        highs, lows = self._watermarks()
        return fullest_backlog(highs, lows, committed)

    def dropped(self) -> int:
        """Records the broker dropped since the guard opened that no worker had committed:
        with no worker, or one that started late, the oldest of a bulk load."""
        committed = self.committed()
        _, lows = self._watermarks()
        return sum(max(0, low - max(start, done if done is not None else start))
                   for low, start, done in zip(lows, self._start_lows, committed, strict=True))

    def _watermarks(self) -> tuple[list[int], list[int]]:
        highs, lows = [], []
        for tp in self._partitions:
            low, high = self._probes[0].get_watermark_offsets(tp, timeout=REQUEST_TIMEOUT_S)
            highs.append(high)
            lows.append(low)
        return highs, lows

    def sent(self, nbytes: int, in_flight: Callable[[], int],
             idle: Callable[[str], None]) -> None:
        """Count one record of ``nbytes`` (key + value) just handed to the producer; when
        the room measured last is used up, measure again (see :meth:`room`)."""
        self._count += 1
        self._bytes += nbytes
        self._room -= 1
        if self._room <= 0:
            self._room = self.room(in_flight, self._bytes / self._count, idle)

    def room(self, in_flight: Callable[[], int], mean_record_bytes: float,
             idle: Callable[[str], None]) -> int:
        """Records that may be sent before the next call; waits while there is too little,
        calling ``idle`` with a one-line explanation every :data:`WAIT_POLL_S`.

        ``in_flight()`` is what the producer holds that the broker has not acknowledged
        (``len(producer)``): those may all land on the fullest partition, so they count
        against its room. ``idle`` should serve the producer's delivery reports.
        """
        budget = backlog_budget(mean_record_bytes)
        # Less room than this: wait rather than measure again after every few records.
        least = max(1, budget // 8)
        waited = False
        while True:
            try:
                fullest = self.fullest()
            except KafkaException as exc:
                # Cannot measure (the broker is restarting): sending fails on its own if
                # it is gone, so go on, a little at a time.
                logger.debug("could not measure the backlog of %s: %s", self.topic, exc)
                return least
            if fullest is None:
                return budget
            partition, backlog = fullest
            room = budget - backlog - in_flight()
            if room >= least:
                return room
            if not waited:
                waited = True
                self.waits += 1
            idle(f"waiting for the worker: {self.topic}[{partition}] holds {backlog:,} "
                 f"records it has not consumed, about all that the embedded broker's "
                 f"{PARTITION_BYTES >> 20} MiB per partition keeps for certain")
            self._sleep(WAIT_POLL_S)

    def dropped_or_none(self) -> int | None:
        """:meth:`dropped`, or ``None`` if the broker cannot say (it went away: the
        delivery counts say what matters then)."""
        try:
            return self.dropped()
        except KafkaException as exc:
            logger.debug("could not count what the broker dropped: %s", exc)
            return None

    def close(self) -> None:
        for probe in self._probes:
            probe.close()
