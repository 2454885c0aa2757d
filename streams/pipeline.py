"""The batched events path: the async shell around ``streams.batch``.

Why not a plain faust agent: faust's per-record path costs about 60 us to deliver a
record and 120 us per ``send``, several times the ~33 us of real work per event, so the
high-volume ``events`` topic is consumed here with confluent-kafka in batches, inside the
faust application's event loop (a ``mode.Service`` the app starts and stops):

1. ``consume`` up to ``batch_size`` records without blocking the loop;
2. decode and validate (invalid records go to the dead-letter topic, with a reason);
3. ONE Lua call to Redis applies the batch's state idempotently (by ``event_id``) and
   returns the users' previous profiles (it also saves the lists the previous batch
   emitted, for online recall: no round trip of their own);
4. the models learn the applied events and rank each touched user once (numpy);
5. recommendations and dead letters are produced in a batch (``message.timeout.ms=0``:
   librdkafka retries through a broker outage instead of dropping them);
6. offsets are committed only once state is written and every output is delivered.

While records queue up, steps 3 and 4-6 of consecutive batches overlap: Redis runs batch
*i*'s script while this process learns, ranks and emits batch *i - 1*; while the worker
keeps up, each batch is finished before the next is taken, so a record waits at most about
one batch cycle (see :meth:`EventsPipeline.run`).

Redis outages pause consumption and retry the same batch with capped backoff; since the
state write is idempotent, a retry after a half-seen reply is harmless.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Container, Sequence
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from models.hybrid import Hybrid
from streamrec import metrics
from streamrec.exceptions import StateStoreUnavailable
from streamrec.kafka import consumer_config, librdkafka_log, make_producer
from streamrec.settings import Settings
from streams.batch import RankedBatch, decode_batch, feedbacks_for_store, learn_and_rank
from streams.catalog_reader import CatalogReader
from streams.experiment_store import LiveExperiments
from streams.state import StateStore
from streams.tuning import freeze_startup_heap

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Backoff between retries while Redis is unreachable, seconds: start small so a blip
# costs little, cap so a long outage is retried every few seconds.
RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 5.0
# Idle sleep when no records are waiting, seconds: short, because it adds to latency.
IDLE_SLEEP_S = 0.002
# A batch at least this share of STREAMREC_BATCH_SIZE means records are queueing: then the
# next batch's state write overlaps this one's ranking (throughput, at the cost of one
# batch cycle of latency). Smaller batches mean the worker keeps up: each is finished
# before the next is taken, so a record waits for at most about one batch cycle.
LAGGING_SHARE = 0.5
# Longest the broker may hold a fetch that finds no new records, ms. librdkafka's mock
# cluster (the embedded broker) answers such a fetch only when this expires, not when a
# record arrives, so a caught-up worker saw records ~5 ms late on average at 10 ms (a real
# broker answers on arrival). Short costs an idle consumer up to 500 empty fetches/s: an
# idle worker measured 5% -> 8% of a core at 2 ms against 10, the embedded broker 1% -> 4%.
FETCH_WAIT_MS = 2
# How long the output producer waits to fill a request, ms. A batch produces all its
# lists at once, so they fill requests without waiting; a linger only held every batch's
# lists back for its whole length.
OUTPUT_LINGER_MS = 0
# Emitted lists are saved with the next batch's state write; on their own only after the
# loop has been idle this long, seconds (a round trip per idle poll delayed the next
# record; online recall only needs them by the user's next event, and the next batch's
# state write stores them first).
IDLE_SAVE_AFTER_S = 0.05
# Rolling online recall: exponential smoothing over roughly this many tests.
RECALL_WINDOW = 2000
# Consumer errors that mean the broker cannot be reached (as opposed to a bad record).
_BROKER_DOWN = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})


def _roll_recall(batch: dict[str, list[int]], rolling: dict[str, list[float]], gauge: Any,
                 tests_total: Any, hits_total: Any) -> None:
    """Fold one batch's ``model -> (hits, tests)`` into ``rolling`` and the model's gauge
    and counters.

    ``rolling`` keeps exponentially decayed sums of hits and tests (older tests weigh
    ``1 - tests / RECALL_WINDOW`` less per batch) and the gauge is their ratio, so every
    test counts alike whatever its batch's size. Smoothing the ratio itself started it at
    the first batch's ratio, often one or two tests, which then outweighed the next
    thousands: a worker's gauge read 0.84 over 403 tests with 55 hits.
    """
    for name, (hits, tests) in batch.items():
        if not tests:
            continue
        keep = 1.0 - min(1.0, tests / RECALL_WINDOW)
        sums = rolling.setdefault(name, [0.0, 0.0])
        sums[0] = keep * sums[0] + hits
        sums[1] = keep * sums[1] + tests
        gauge.labels(model=name).set(sums[0] / sums[1])
        tests_total.labels(model=name).inc(tests)
        hits_total.labels(model=name).inc(hits)


class _Outputs:
    """What one batch produced: outputs the broker has not acknowledged yet, and the
    offsets the batch may commit once they (and every older batch's) are acknowledged."""

    __slots__ = ("unacked", "offsets", "_failed")

    def __init__(self, failed: Callable[[Any, Any], None]) -> None:
        self.unacked = 0
        self.offsets: dict[tuple[str, int], int] = {}
        self._failed = failed

    def on_delivery(self, err: Any, msg: Any) -> None:
        """librdkafka's delivery report, once per message (inside poll, on this thread):
        kept to one Python call and a decrement, since it runs for every output."""
        self.unacked -= 1
        if err is not None:
            self._failed(err, msg)


class _InFlight:
    """A decoded batch whose state write is running in Redis."""

    def __init__(self, records: list[Any], decoded: Any, task: asyncio.Future[Any] | None,
                 decode_s: float) -> None:
        self.records = records
        self.decoded = decoded
        self.task = task
        self.decode_s = decode_s
        # Seconds this process spent on the state write (encoding, and waiting for the
        # reply when there was nothing else to do): the "state" stage.
        self.state_s = 0.0

    async def sent(self) -> None:
        """Let the task encode and send its request before this process turns to CPU work."""
        started = time.perf_counter()
        await asyncio.sleep(0)
        self.state_s += time.perf_counter() - started

    async def applied(self) -> Any:
        if self.task is None:
            return None
        started = time.perf_counter()
        result = await self.task
        self.state_s += time.perf_counter() - started
        return result

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


class EventsPipeline:
    """Consumes ``events`` in batches and emits recommendations.

    Parameters
    ----------
    settings
        The process settings (topics, batch size, caps).
    model
        The shared :class:`~models.hybrid.Hybrid` (the catalogue agent updates it too).
    store
        Per-user state in Redis.
    model_version
        A callable giving the model version string stamped on each recommendation.
    experiments
        A/B experiments to serve and measure (``streams.experiment_store``), if any.
    """

    def __init__(self, settings: Settings, model: Hybrid, store: StateStore,
                 model_version: Callable[[], str],
                 experiments: LiveExperiments | None = None) -> None:
        self.settings = settings
        self.model = model
        self.store = store
        self.model_version = model_version
        self.experiments = experiments
        # Item-model sharing between workers, and checkpoints (streams.model_sync); set by
        # the worker runtime.
        self.sync: Any = None
        # Every catalogue partition, applied ahead of the events (streams.catalog_reader);
        # set by the worker runtime.
        self.catalog: CatalogReader | None = None
        # The title ids this worker has catalogued (a set the worker runtime keeps): a
        # batch naming another makes the catalogue reader ask where the catalogue ends.
        self.catalogued: Container[str] | None = None
        # Rows, artwork, search, notifications, cache hints (streams.product.ProductLayer);
        # set by the worker runtime when STREAMREC_PRODUCT_FEATURES is on.
        self.product: Any = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._pending: dict[tuple[str, int], int] = {}
        # Batches with outputs not all acknowledged, oldest first. Committing once the
        # producer's queue was empty, as before, hardly ever happened under steady load,
        # so a crash replayed everything since the last lull.
        self._unconfirmed: collections.deque[_Outputs] = collections.deque()
        self._collecting: _Outputs | None = None
        # Lists emitted but not yet saved for online recall: they go with the next batch's
        # state write (one round trip less per batch), or on their own when idle.
        self._unsaved_lists: dict[str, bytes] = {}
        self._expected: dict[tuple[str, int], int] = {}
        self._stopping = asyncio.Event()
        self._delivery_failures = 0
        # Records a retry wait received (see _wait): processed first by the loop.
        self._held: list[Any] = []
        # Why consumption is paused, if it is: streamrec_pipeline_up is 0 while either holds.
        self._redis_paused = False
        # Redis writes currently failing and being retried (consumption is paused while
        # any is).
        self._failing_writes = 0
        self._broker_down = False
        # Per model, decayed [hits, tests] of online recall (see _roll_recall).
        self.recall: dict[str, list[float]] = {}
        self.recall_new_titles: dict[str, list[float]] = {}
        self.events_processed = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect (no I/O in ``__init__``)."""
        conf = consumer_config(
            self.settings, f"{self.settings.app_id}-events",
            # Prefetch generously: the loop takes what is buffered without waiting.
            **{"queued.max.messages.kbytes": 65536, "fetch.wait.max.ms": FETCH_WAIT_MS,
               "on_commit": self._on_commit, "error_cb": self._on_client_error},
            # An outage is said once (_set_broker_down), not per failed reconnect.
            **librdkafka_log(),
        )
        self._consumer = Consumer(conf)
        self._consumer.subscribe(
            [self.settings.topics.events], on_assign=self._on_assign,
            on_revoke=self._on_revoke, on_lost=self._on_lost)
        if self.catalog is not None:
            self.catalog.start()
        # Outputs are retried forever rather than dropped: an accepted record is never lost,
        # and offsets wait for their delivery.
        self._producer = make_producer(self.settings, **{"message.timeout.ms": 0,
                                                         "linger.ms": OUTPUT_LINGER_MS,
                                                         "error_cb": self._on_client_error},
                                       **librdkafka_log())
        metrics.PIPELINE_UP.set(1)

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """The loop: until asked to stop, then finish the batch, flush and commit.

        While records queue up (a batch of at least ``LAGGING_SHARE`` of the batch size),
        two batches overlap: batch *i*'s state write runs in Redis (another process, often
        another core) while this process learns, ranks and emits batch *i - 1*. Batches
        still reach Redis strictly in order: batch *i*'s write starts only once batch
        *i - 1*'s has returned. When the worker keeps up, overlapping would only make
        every record wait one extra batch cycle, so each batch is finished first and the
        next one takes what arrived meanwhile.
        """
        assert self._consumer is not None and self._producer is not None, "call start() first"
        producer = self._producer
        batch_size = self.settings.batch_size
        lagging = max(1, int(batch_size * LAGGING_SHARE))
        pending: _InFlight | None = None
        idle_since: float | None = None
        # Start-up is over: keep its objects out of every later full collection.
        frozen = freeze_startup_heap()
        logger.debug("%d start-up objects frozen out of garbage collection", frozen)
        try:
            while not self._stopping.is_set():
                applied = await pending.applied() if pending is not None else None
                records = self._take(batch_size)
                if pending is not None and len(records) < lagging:
                    # Keeping up: finish the previous batch now, then top this one up with
                    # what arrived meanwhile.
                    last, pending = pending, None
                    await self._complete(last, applied)
                    if len(records) < batch_size:
                        records += self._take(batch_size - len(records))
                if records and self._broker_down:
                    self._set_broker_down(False)
                started = self._start(records) if records else None
                if started is not None:
                    await started.sent()
                if pending is not None:
                    await self._complete(pending, applied)
                pending = started
                if pending is None:
                    now = time.monotonic()
                    idle_since = now if idle_since is None else idle_since
                    if self._unsaved_lists and now - idle_since >= IDLE_SAVE_AFTER_S:
                        await self._save_lists_with_retry(self._unsaved_lists)
                        self._unsaved_lists = {}
                    producer.poll(0)
                    self._commit_if_delivered()
                    if self.catalog is not None:
                        self.catalog.drain()
                    if self.sync is not None:
                        await self.sync.maybe_sync(self.model)
                    await asyncio.sleep(IDLE_SLEEP_S)
                    continue
                idle_since = None
                if self.sync is not None:  # between batches: nothing learns meanwhile
                    await self.sync.maybe_sync(self.model)
                # Yield to the loop between batches (catalogue agent, timers).
                await asyncio.sleep(0)
            if pending is not None:
                last, pending = pending, None
                await self._complete(last, await last.applied())
            if self._unsaved_lists:
                await self._save_lists_with_retry(self._unsaved_lists)
        finally:
            if pending is not None:
                pending.cancel()  # an error: its offsets stay uncommitted, it is redelivered
            self._finish()

    def _take(self, n: int) -> list[Any]:
        """Up to ``n`` records without blocking: first any a retry wait received, in order."""
        assert self._consumer is not None
        records = self._consumer.consume(n, 0)
        if self._held:  # received while waiting out an outage: first, in order
            records, self._held = self._held + records, []
        return [r for r in records if not self._is_error(r)]

    def _finish(self) -> None:
        if self._producer is not None:
            remaining = self._producer.flush(30)
            if remaining:
                logger.error("%d outputs still undelivered at shutdown; their batches' "
                             "offsets are not committed, so they will be reprocessed",
                             remaining)
        self._release_acknowledged()
        self._commit(asynchronous=False)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self.catalog is not None:
            self.catalog.close()
        metrics.PIPELINE_UP.set(0)

    # -- one batch --------------------------------------------------------------------------------
    def _start(self, records: list[Any]) -> _InFlight:
        """Decode a batch and start its state write (an asyncio task)."""
        t0 = time.perf_counter()
        decoded = decode_batch(records, self.settings.max_message_bytes, time.time())
        decode_s = time.perf_counter() - t0
        task = None
        if decoded.events:
            lists, self._unsaved_lists = self._unsaved_lists, {}
            task = asyncio.ensure_future(self._apply_with_retry(decoded.events, lists))
        return _InFlight(records, decoded, task, decode_s)

    def _needs_current_catalogue(self, events: Sequence[dict[str, Any]]) -> bool:
        """Whether a batch names a title this worker has not catalogued, which may have
        been sent just before it: then its catalogue reader asks the broker where the
        catalogue ends (streams.catalog_reader). Without a record of what is catalogued
        (``catalogued`` unset), every batch asks."""
        known = self.catalogued
        if known is None:
            return True
        for event in events:
            title_id = event.get("title_id")  # a search may name none
            if title_id is not None and title_id not in known:
                return True
        return False

    async def _complete(self, batch: _InFlight, applied: Any) -> None:
        """Learn, rank, emit and commit a batch whose state write has returned."""
        settings = self.settings
        decoded = batch.decoded
        ranked = RankedBatch()
        self._collecting = outputs = _Outputs(self._on_delivery)
        if decoded.events:
            flags, profiles = applied
            if self.catalog is not None:  # the titles these events name, first
                await self.catalog.catch_up(ask=self._needs_current_catalogue(decoded.events))
            if self.sync is not None:  # new titles start identically in every worker
                self.sync.prepare(self.model, decoded.events)
            ranked = learn_and_rank(
                decoded.events, flags, profiles, self.model, top_n=settings.top_n,
                history_cap=settings.history_cap, model_version=self.model_version(),
                experiments=self.experiments.config if self.experiments else None,
                product=self.product,
            )
            metrics.STAGE_SECONDS.labels(stage="state").observe(batch.state_s)
            metrics.STAGE_SECONDS.labels(stage="learn").observe(ranked.learn_seconds)
            metrics.STAGE_SECONDS.labels(stage="rank").observe(ranked.rank_seconds)
        t3 = time.perf_counter()
        self._emit(ranked, decoded.dead_letters)
        self._unsaved_lists.update(ranked.last_lists)
        if ranked.experiments and self.experiments is not None:
            await self.experiments.record(ranked.experiments, self._until_written)
        if self.product is not None:
            await self._flush_product()
        self._track_offsets(batch.records, outputs.offsets)
        self._collecting = None
        self._unconfirmed.append(outputs)
        if self.sync is not None:
            self.sync.note_offsets({f"{t}[{p}]": o for (t, p), o in self._expected.items()})
        self._commit_if_delivered()
        t4 = time.perf_counter()
        metrics.STAGE_SECONDS.labels(stage="decode").observe(batch.decode_s)
        metrics.STAGE_SECONDS.labels(stage="emit").observe(t4 - t3)
        self._update_metrics(ranked, decoded.dead_reasons, len(batch.records))

    def _emit(self, ranked: RankedBatch, dead_letters: list[tuple[bytes | None, bytes]]) -> None:
        assert self._producer is not None
        topics = self.settings.topics
        self.produce(topics.dlq, dead_letters)
        self.produce(topics.recommendations, ranked.recommendations)
        self._producer.poll(0)
        emitted_at = time.time()
        if ranked.event_times:
            metrics.observe_many(metrics.EVENT_TO_RECOMMENDATION,
                                 [emitted_at - ts for ts in ranked.event_times])

    def produce(self, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Produce ``(key, value)`` messages, never dropping one; the batch being completed,
        if any, owns them (its offsets wait for their delivery)."""
        if not messages:
            return
        assert self._producer is not None
        outputs = self._collecting
        on_delivery = self._on_delivery if outputs is None else outputs.on_delivery
        if outputs is not None:
            # Counted before producing: a delivery report runs only inside poll(), so none
            # can arrive before its message is counted.
            outputs.unacked += len(messages)
        produce = self._producer.produce
        for key, value in messages:
            try:
                produce(topic, value, key, on_delivery=on_delivery)
            except BufferError:
                self._produce_when_room(topic, key, value, on_delivery)

    def _produce_when_room(self, topic: str, key: bytes | None, value: bytes,
                           on_delivery: Callable[[Any, Any], None]) -> None:
        """The local queue is full (broker slow or down): wait for room, never drop."""
        assert self._producer is not None
        while True:
            self._producer.poll(0.05)
            try:
                self._producer.produce(topic, value, key, on_delivery=on_delivery)
                return
            except BufferError:
                continue

    async def _apply_with_retry(self, events: list[dict[str, Any]],
                                lists: dict[str, bytes] | None = None
                                ) -> tuple[list[bool], Any]:
        feedbacks = feedbacks_for_store(events)
        return await self._until_written(
            lambda: self.store.apply_batch(events, feedbacks, lists), "state write")

    async def _save_lists_with_retry(self, lists: dict[str, bytes]) -> None:
        await self._until_written(lambda: self.store.save_last_lists(lists), "emitted lists")

    async def _flush_product(self) -> None:
        """Produce the product layer's messages (cache hints) and write its aggregates."""
        assert self._producer is not None
        topics = self.settings.topics
        for topic, key, value in self.product.take_messages():
            self.produce(getattr(topics, topic), [(key, value)])
        await self._until_written(self.product.flush, "product aggregates")

    async def _until_written(self, write: Callable[[], Awaitable[T]], what: str) -> T:
        """Run a Redis write, retrying through an outage with capped backoff.

        While any write is failing, consumption is paused and ``streamrec_pipeline_up``
        is 0, whichever write meets the outage first: the batch's state write, or the
        emitted lists, product aggregates or experiment tallies of the batch being
        completed (a worker that
        keeps up completes a batch before it starts the next one's state write).
        """
        delay = RETRY_INITIAL_S
        failing = False
        try:
            while True:
                try:
                    result = await write()
                except StateStoreUnavailable as exc:
                    if not failing:
                        failing = True
                        self._failing_writes += 1
                        logger.error("Redis unavailable (%s), pausing consumption and "
                                     "retrying: %s", what, exc)
                        if self._failing_writes == 1:
                            self._pause(True)
                    await self._wait(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                return result
        finally:
            if failing:
                self._failing_writes -= 1
                if self._failing_writes == 0:
                    logger.warning("Redis is back; resuming consumption")
                    self._pause(False)

    async def _wait(self, delay: float) -> None:
        """Sleep while keeping the consumer's group membership alive."""
        assert self._consumer is not None and self._producer is not None
        end = time.monotonic() + delay
        while time.monotonic() < end:
            # Services the group. Paused partitions return nothing, but one not paused (yet,
            # or assigned meanwhile) may: such records are kept for the loop, since
            # dropping one would skip it for good once a later offset is committed.
            self._held += [r for r in self._consumer.consume(1, 0) if not self._is_error(r)]
            self._producer.poll(0)
            await asyncio.sleep(min(0.05, delay))

    def _pause(self, pause: bool) -> None:
        if self._consumer is None:  # closed: a retry cancelled at shutdown ends here
            return
        self._redis_paused = pause
        metrics.PIPELINE_UP.set(0 if (pause or self._broker_down) else 1)
        assignment = self._consumer.assignment()
        if assignment:
            (self._consumer.pause if pause else self._consumer.resume)(assignment)

    # -- offsets --------------------------------------------------------------------------------
    def _track_offsets(self, records: list[Any],
                       into: dict[tuple[str, int], int] | None = None) -> None:
        lost_by_topic: dict[str, int] = {}
        pending = self._pending if into is None else into
        expected = self._expected
        for record in records:
            tp = (record.topic(), record.partition())
            offset = record.offset()
            want = expected.get(tp)
            if want is not None and offset > want:
                lost_by_topic[tp[0]] = lost_by_topic.get(tp[0], 0) + offset - want
            expected[tp] = offset + 1
            pending[tp] = offset + 1
        for topic, lost in lost_by_topic.items():
            metrics.RECORDS_LOST.labels(topic=topic).inc(lost)
            logger.error("%d records of %s were removed by the broker before this worker "
                         "consumed them (retention overrun)", lost, topic)

    def _commit_if_delivered(self) -> None:
        self._release_acknowledged()
        if self._pending:
            self._commit(asynchronous=True)

    def _release_acknowledged(self) -> None:
        """Offsets of the oldest batches whose outputs are all acknowledged become
        committable (in order: a batch waits for every older one)."""
        unconfirmed = self._unconfirmed
        while unconfirmed and unconfirmed[0].unacked == 0:
            self._pending.update(unconfirmed.popleft().offsets)

    def _commit(self, asynchronous: bool) -> None:
        if not self._pending or self._consumer is None:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._pending.items()]
        try:
            # ignore: confluent-kafka's stubs overload commit() on a literal True or False
            # only; a bool is what the library takes at run time.
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)  # type: ignore[call-overload]
            self._pending.clear()
        except Exception as exc:  # noqa: BLE001 - KafkaException; retried on the next batch
            logger.warning("offset commit failed, will retry: %s", exc)

    # -- callbacks (run inside consume/poll on this thread) ----------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])
        for p in partitions:
            self._expected.pop((p.topic, p.partition), None)
        if self.sync is not None:  # eager rebalancing: ``partitions`` is the whole assignment
            self.sync.shares_blend = any(p.partition == 0 for p in partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Revocation only happens inside consume(), between batches: flush and commit
        # what is done so the next owner starts right after it.
        if self._producer is not None:
            self._producer.flush(10)
        self._release_acknowledged()
        self._commit(asynchronous=False)
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The assignment was lost (the broker out of reach past the session timeout):
        # nothing can be delivered or committed now, and flushing and committing as on a
        # revocation would block the event loop (a 10 s stall measured, metrics and
        # timers included). The outputs stay queued for when the broker is back; their
        # offsets stay uncommitted, so the next owner repeats those events, which the
        # state's dedup window and the outputs' event_id make harmless.
        queued = len(self._producer) if self._producer is not None else 0
        logger.warning("partitions %s lost (the group went on without this worker); %d "
                       "outputs still queued; their events will be read again by the "
                       "partitions' next owner",
                       [f"{p.topic}[{p.partition}]" for p in partitions], queued)
        self._release_acknowledged()
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._expected.pop((p.topic, p.partition), None)
            # The new owner reports this partition's lag; a stale series here would
            # double it on the dashboard and in the lag alert.
            metrics.discard(metrics.CONSUMER_LAG, p.topic, str(p.partition))

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            logger.warning("offset commit failed (a later commit supersedes it): %s", err)
        elif self._broker_down:
            self._set_broker_down(False)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._delivery_failures += 1
            metrics.DELIVERY_FAILURES.labels(topic=msg.topic()).inc()  # rare: not the hot path
            logger.error("delivery to %s failed: %s", msg.topic(), err)

    def _is_error(self, record: Any) -> bool:
        err = record.error()
        if err is None:
            return False
        if err.code() in _BROKER_DOWN:
            self._set_broker_down(True, err)
        elif err.code() != KafkaError._PARTITION_EOF:
            logger.warning("consumer error: %s", err)
        return True

    def _on_client_error(self, err: KafkaError) -> None:
        """librdkafka's global errors (served inside consume/poll, on this thread)."""
        if err.code() in _BROKER_DOWN:
            self._set_broker_down(True, err)
        else:
            logger.warning("Kafka client error: %s", err)

    def _set_broker_down(self, down: bool, err: KafkaError | None = None) -> None:
        """Say so (log, streamrec_pipeline_up) when the broker stops or starts answering.

        librdkafka keeps reconnecting by itself; consumption resumes from the position,
        outputs wait in the producer (never dropped) and offsets are committed once they
        are delivered, so an outage delays work and loses none.
        """
        if down == self._broker_down:
            return
        self._broker_down = down
        if down:
            logger.error("Kafka unreachable (%s); retrying until it answers", err)
        else:
            logger.warning("Kafka reachable again; consuming")
        metrics.PIPELINE_UP.set(0 if (down or self._redis_paused) else 1)

    # -- metrics, once per batch ---------------------------------------------------------------
    def _update_metrics(self, ranked: RankedBatch, dead_reasons: dict[str, int],
                        n_records: int) -> None:
        metrics.BATCH_SIZE.observe(n_records)
        for kind, count in ranked.applied_by_type.items():
            metrics.EVENTS_CONSUMED.labels(type=kind).inc(count)
        for reason, count in dead_reasons.items():
            metrics.EVENTS_DEAD_LETTERED.labels(reason=reason).inc(count)
        if ranked.duplicates:
            metrics.EVENTS_DUPLICATE.inc(ranked.duplicates)
        if ranked.recommendations:
            metrics.RECOMMENDATIONS_EMITTED.inc(len(ranked.recommendations))
        self.events_processed += n_records
        _roll_recall(ranked.recall, self.recall, metrics.ONLINE_RECALL,
                     metrics.ONLINE_RECALL_TESTS, metrics.ONLINE_RECALL_HITS)
        _roll_recall(ranked.recall_new_titles, self.recall_new_titles,
                     metrics.ONLINE_RECALL_NEW_TITLES, metrics.ONLINE_RECALL_NEW_TITLES_TESTS,
                     metrics.ONLINE_RECALL_NEW_TITLES_HITS)

    def update_lag(self) -> None:
        """Consumer lag per partition (called from a timer, not per batch)."""
        if self._consumer is None:
            return
        if self._broker_down:
            # Nothing may flow to show it is back (an idle topic): ask, briefly. Only
            # during an outage, every GAUGE_INTERVAL_S, for at most 0.5 s.
            try:
                self._consumer.list_topics(self.settings.topics.events, timeout=0.5)
                self._set_broker_down(False)
            except Exception:  # noqa: BLE001 - KafkaException: still down
                return
        # Paused partitions are not fetched, so the end offsets fetches cache stop moving:
        # while paused by a Redis outage, ask the broker (one request per partition per
        # tick, at most metrics.LAG_QUERY_TIMEOUT_S each, on the event loop), or the lag
        # panel and StreamrecConsumerLagGrowing see no backlog at all. Not while the
        # broker is down too: each request would wait out its timeout.
        metrics.record_lag(self._consumer, metrics.CONSUMER_LAG,
                           cached=not self._redis_paused or self._broker_down)
