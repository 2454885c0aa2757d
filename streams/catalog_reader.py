"""Every worker reads the whole catalogue topic itself, and ahead of the events.

Why: the catalogue reached the model through faust's catalogue agent only, which gets its
partitions after a group rebalance, fetches on its own schedule and yields to the events
loop between records. A catalogue sent together with its events arrived after them: with
a 300-title catalogue sent right before 20,000 events, all 495 searches of the stream
were counted unmatched, and the titles were learned without their genres (still all of
them with 0.5 s between the two; with 1.5 s, 50 where the whole catalogue matches all but
37).

Here each worker's events pipeline owns a :class:`CatalogReader`: a consumer outside any
group, assigned every catalogue partition from the beginning (a global table, in Kafka
Streams' terms). Before every batch the pipeline drains it, and while the reader is
behind the catalogue's end the batch waits for it (up to ``wait_s``). For a batch that
names a title the worker has not catalogued, that end is asked of the broker, so the
catalogue records sent before such an event are applied before it is learned, whichever
worker owns the catalogue partition.

The end is asked for, not taken from the reader's last fetch: a fetch reports the end
only every ``FETCH_WAIT_MS`` or so, and a catalogue sent within that before its events
was missed (a CI run: a reader started, 50 titles sent and flushed, ``catch_up``
returned with none of them applied). It is asked on a second, idle client: on the
reader's own connection the request queued behind the long-polling fetch (8.6 ms per
call against 0.14 ms, four partitions, embedded broker; Kafka also answers one
connection's requests in order). An answer held the worker 0.67 ms on average in a
paced bench run (the broker's process busy with the paced producer), and a paced
worker's batches are small: asked for every batch, p50 latency at 2,000 events/s rose
from 13.2 to 15.8 ms (medians of 11 alternating runs). So the pipeline asks only for a
batch naming a title the worker has not catalogued (``ask=False`` otherwise: the end the
last fetch reported, as before). A change to a title the worker already has, or a title
a search would match, reaches it within a fetch (~10 ms) unless such a batch asked.

The faust agent still handles each catalogue record once for the group: dead letters, the
catalogue copy in Redis, the model log and new-episode notifications. The reader only
puts titles into this worker's model and title index (adding a title twice changes
nothing) and leaves records that fail validation to the agent, which dead-letters them.
On the embedded broker a partition keeps its latest 5 MiB only: older catalogue entries
come from the copy in Redis, which the worker loads first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaException,
    TopicPartition,
)

from streamrec import metrics
from streamrec.exceptions import InvalidRecord
from streamrec.kafka import consumer_config, librdkafka_log
from streamrec.schema import decode_catalog
from streamrec.settings import Settings

logger = logging.getLogger(__name__)

# The longest one batch waits for the reader to catch up, seconds.
WAIT_S = 2.0
# How long the reader's fetches wait for new records, milliseconds: a catalogue entry
# reaches the reader within about this (the embedded broker always waits this long; Kafka
# answers as soon as records arrive). An idle reader cost 1.7% of a core at 10 ms
# (0.3% at 100), counting the embedded broker in the same process.
FETCH_WAIT_MS = 10
# The longest start-up waits for the catalogue topic's metadata, seconds.
ASSIGN_TIMEOUT_S = 10.0
# The longest a batch waits for the broker to say where the catalogue ends, seconds. One
# request per asking batch: 0.14 ms on an idle embedded broker, a round trip on Kafka.
END_QUERY_TIMEOUT_S = 1.0
# Records taken per consume call.
DRAIN_MAX = 1000
# How often a waiting batch checks whether the reader has caught up, seconds.
POLL_S = 0.005
# After a wait that timed out, batches stop waiting for this long, seconds: a catalogue
# partition the broker does not serve must not slow every batch by ``wait_s``. Also how
# long after an unreadable catalogue topic the reader tries it again.
BACKOFF_S = 30.0


class CatalogReader:
    """Reads every catalogue partition and hands each valid title to ``apply``.

    Parameters
    ----------
    settings
        Broker address, the catalogue topic, the message size limit.
    apply
        Called with each decoded catalogue record (a title, an update or a removal).
    wait_s
        The longest a batch waits for the reader to catch up.
    """

    def __init__(self, settings: Settings, apply: Callable[[dict[str, Any]], None],
                 wait_s: float = WAIT_S) -> None:
        self.settings = settings
        self.apply = apply
        self.wait_s = wait_s
        self._consumer: Consumer | None = None
        self._ends_client: Consumer | None = None
        self._partitions: list[TopicPartition] = []
        self._no_wait_until = 0.0
        self._next_assign = 0.0

    def start(self) -> None:
        """Assign every partition of the catalogue topic, from its beginning."""
        self._consumer = Consumer(consumer_config(
            self.settings, f"{self.settings.app_id}-catalog-reader",
            # Never joins the group (assign, not subscribe) and never commits: every start
            # reads the whole topic, which the compacted catalogue keeps small.
            **{"enable.auto.offset.store": False, "fetch.wait.max.ms": FETCH_WAIT_MS},
            # With the broker gone librdkafka logs every failed reconnect; the pipeline
            # says the outage once.
            **librdkafka_log()))
        # Never assigned anything: it only asks where the catalogue ends (see above).
        self._ends_client = Consumer(consumer_config(
            self.settings, f"{self.settings.app_id}-catalog-reader",
            **librdkafka_log(polled=False)))
        self._assign()

    def _assign(self) -> None:
        assert self._consumer is not None
        topic = self.settings.topics.catalog
        self._next_assign = time.monotonic() + BACKOFF_S
        try:
            found = self._consumer.list_topics(topic, timeout=ASSIGN_TIMEOUT_S).topics[topic]
            if found.error is not None:
                raise KafkaException(found.error)
        except KafkaException as exc:
            logger.warning("catalogue topic %s unreadable (%s): titles reach this worker "
                           "through the catalogue agent only; trying again in %.0f s",
                           topic, exc, BACKOFF_S)
            return
        self._partitions = [TopicPartition(topic, p, OFFSET_BEGINNING)
                            for p in sorted(found.partitions)]
        self._consumer.assign(self._partitions)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._ends_client is not None:
            self._ends_client.close()
            self._ends_client = None

    def drain(self) -> int:
        """Apply every catalogue record already fetched; returns how many were titles."""
        if self._consumer is None:
            return 0
        if not self._partitions:
            if time.monotonic() >= self._next_assign:
                self._assign()
            return 0
        applied = 0
        while True:
            records = self._consumer.consume(DRAIN_MAX, 0)
            for record in records:
                if record.error() is not None:
                    continue  # broker errors are the agent's to report; the reader retries
                try:
                    title = decode_catalog(record.value(), self.settings.max_message_bytes)
                except InvalidRecord:
                    continue  # the catalogue agent dead-letters it
                self.apply(title)
                applied += 1
            if len(records) < DRAIN_MAX:
                return applied

    def ends(self) -> dict[int, int] | None:
        """Each catalogue partition's end offset now, as the broker answers (None if it
        did not answer in time)."""
        if self._ends_client is None or not self._partitions:
            return None
        asked = [TopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in self._partitions]
        try:
            found = self._ends_client.offsets_for_times(asked, timeout=END_QUERY_TIMEOUT_S)
        except KafkaException as exc:
            logger.warning("could not ask where the catalogue ends (%s)", exc)
            return None
        if any(tp.error is not None or tp.offset < 0 for tp in found):
            return None
        return {tp.partition: tp.offset for tp in found}

    def lag(self, ends: dict[int, int] | None = None) -> int | None:
        """Catalogue records not applied yet, up to ``ends`` (by default the end offsets
        the reader's last fetch reported); None while an end or a start is unknown."""
        if self._consumer is None or not self._partitions:
            return 0
        total = 0
        for tp in self._consumer.position(self._partitions):
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if ends is not None:
                high = ends.get(tp.partition, high)
            if high < 0:  # OFFSET_INVALID (-1001): no fetch has reported it yet
                return None
            position = tp.offset if tp.offset >= 0 else max(low, 0)
            total += max(0, high - position)
        return total

    async def catch_up(self, ask: bool = True) -> None:
        """Apply what has arrived; while the reader is behind where the catalogue ends
        (asked now, or with ``ask=False`` as its last fetch saw it), wait for the rest
        (bounded)."""
        self.drain()
        now = time.monotonic()
        if now < self._no_wait_until or not self._partitions:
            return
        ends = None
        if ask:
            # Asked after this batch's events were fetched, so every catalogue record
            # sent before them lies below these ends; later ones are not waited for.
            ends = self.ends()
            if ends is None:
                self._no_wait_until = now + BACKOFF_S
                logger.warning("the broker did not say where the catalogue ends; events go "
                               "on without waiting for the catalogue reader for %.0f s",
                               BACKOFF_S)
                return
        if self.lag(ends) == 0:
            return
        started = now
        deadline = now + self.wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            self.drain()
            if self.lag(ends) == 0:
                metrics.CATALOG_WAIT_SECONDS.inc(time.monotonic() - started)
                return
        metrics.CATALOG_WAIT_SECONDS.inc(time.monotonic() - started)
        self._no_wait_until = time.monotonic() + BACKOFF_S
        logger.warning("the catalogue reader is still %s records behind after %.1f s; "
                       "events go on without waiting for it for %.0f s",
                       self.lag(ends), self.wait_s, BACKOFF_S)
