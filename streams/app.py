"""The faust application: lifecycle, the catalogue agent, timers, and the events service.

faust-streaming is the application framework: it runs the worker (signals, graceful
shutdown, services), consumes the low-volume ``catalog`` topic with an agent, and runs
the periodic timers. The high-volume ``events`` topic is consumed by
:class:`~streams.pipeline.EventsPipeline`, a batched confluent-kafka loop started as a
faust service inside the same event loop (see that module for why).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import mode
import orjson

from models.hybrid import Hybrid
from streamrec import metrics
from streamrec.exceptions import InvalidRecord, StateStoreUnavailable
from streamrec.redis_conn import async_client
from streamrec.schema import dead_letter, decode_catalog
from streamrec.settings import Settings
from streams.catalog_reader import CatalogReader
from streams.checkpoint import Checkpointer, apps_sharing_users
from streams.experiment_store import start_experiments
from streams.faust_compat import limit_consumer_thread_stop, patch_aiokafka
from streams.model_sync import ModelSync
from streams.pipeline import EventsPipeline
from streams.product import ProductLayer
from streams.state import StateStore

logger = logging.getLogger(__name__)

# How often lag and model-size gauges are refreshed, seconds.
GAUGE_INTERVAL_S = 5.0
# Longest a graceful shutdown may take to finish the batch, flush and commit, seconds.
SHUTDOWN_TIMEOUT_S = 30.0


class WorkerRuntime:
    """What the worker holds: the model, the state store, the pipeline. No I/O until start()."""

    def __init__(self, settings: Settings, model: Hybrid | None = None) -> None:
        self.settings = settings
        self.model = model if model is not None else Hybrid(capacity=settings.model_capacity)
        self.redis: Any = None
        self.store: StateStore | None = None
        self.checkpointer: Checkpointer | None = None
        self.pipeline: EventsPipeline | None = None
        self.sync: ModelSync | None = None
        self.catalog_dead_letters = 0
        # faust's data directory (create_app), kept for as long as the runtime lives.
        self.datadir: tempfile.TemporaryDirectory[str] | None = None
        self.product: ProductLayer | None = None
        # Title ids this worker has catalogued (the copy in Redis at start, then every
        # catalogue record applied): batches naming others wait for the catalogue reader.
        self.catalogued: set[str] = set()
        # Set when start() is done: the catalogue agent waits for it (see handle_catalog).
        self.started = asyncio.Event()

    def model_version(self) -> str:
        version = self.checkpointer.version if self.checkpointer else 0
        return f"hybrid-v{version}"

    async def start(self) -> None:
        settings = self.settings
        self.redis = async_client(settings)
        if settings.product_features:
            # Before any await: the catalogue agent may run while start() waits on Redis.
            self.product = ProductLayer(settings, lambda n, ts: self.model.trending.top(n, ts))
            self.product.start(self.redis)
        self.store = StateStore(self.redis, settings.state_ttl_s, settings.history_cap,
                                settings.dedup_window)
        self.checkpointer = Checkpointer(self.redis, settings.app_id)
        self.sync = ModelSync(self.redis, settings.app_id, settings.model_sync_interval_s,
                              self._save_checkpoint, settings.checkpoint_interval_s)
        now = time.time()
        seen = await self._retry(lambda: self.checkpointer.note_app(now))
        sharing = apps_sharing_users(seen, settings.app_id, now, settings.state_ttl_s)
        if sharing:
            logger.warning(
                "this Redis database also holds the per-user state of app(s) %s (seen within "
                "STREAMREC_STATE_TTL_S): per-user state is not scoped by STREAMREC_APP_ID, so "
                "apps on one database share profiles and each other's event ids count as "
                "duplicates; give each app its own database (REDIS_URL ending in /N) unless "
                "they are meant to share users", ", ".join(sharing[:5])
                + (f" and {len(sharing) - 5} more" if len(sharing) > 5 else ""))
        restored = await self._retry(self.checkpointer.load)
        # The catalogue copy is read once: whole for a model without a checkpoint or for
        # the product layer's title index, else only its ids.
        titles: list[dict[str, Any]] = []
        if restored is None or self.product is not None:
            titles = await self._retry(self.checkpointer.load_catalog)
        if restored is not None:
            self.model = restored
            # (The catalogue agent may apply a record while this waits: a removed title
            # read back here only means a batch naming it does not wait for the reader.)
            self.catalogued.update(
                [t["title_id"] for t in titles] if self.product is not None
                else await self._retry(self.checkpointer.catalogued_ids))
        else:
            for title in titles:
                self.sync.add_title(self.model, title)
            self.catalogued.update(title["title_id"] for title in titles)
            if titles:
                logger.info("loaded %d titles from the catalogue copy in Redis", len(titles))
        # Then what every worker learned since that checkpoint (or since the beginning);
        # a checkpoint from before the model log existed is taken as it is.
        after = self.checkpointer.log_id if restored is not None else "0-0"
        await self._retry(lambda: self.sync.catch_up(self.model, after))
        experiments = await self._retry(lambda: start_experiments(settings, self.redis))
        self.pipeline = EventsPipeline(settings, self.model, self.store, self.model_version,
                                       experiments=experiments)
        self.pipeline.sync = self.sync
        self.pipeline.catalogued = self.catalogued
        if settings.pipeline == "batched":  # titles ahead of the events that name them
            self.pipeline.catalog = CatalogReader(settings, self.apply_catalog_title)
        if self.product is not None:
            await self._retry(lambda: self.product.restore(titles))
            self.product.forget_removed(self.model.removed_titles)
            self.product.follows_catalog_topic = self.pipeline.catalog is not None
            self.pipeline.product = self.product
        if settings.pipeline == "batched":  # per-record: streams/per_record.py's agent
            self.pipeline.start()
        self.started.set()

    async def _retry(self, call: Any) -> Any:
        """Run a Redis call until it succeeds, with capped backoff (0.1 s doubling to 5 s).

        An outage is logged when it starts and when it ends: a line per retry was a line
        every 5 s for as long as Redis was down (36 lines in a 2.5-minute outage).
        """
        delay = 0.1
        failures = 0
        while True:
            try:
                result = await call()
            except StateStoreUnavailable as exc:
                if not failures:
                    logger.error("%s; retrying until Redis answers", exc)
                failures += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if failures:
                logger.warning("Redis is back; done after %d failed attempts", failures)
            return result

    async def checkpoint(self, final: bool = False) -> None:
        """Sync the item model with the other workers, then checkpoint it.

        The batched pipeline does this itself between batches, every
        ``checkpoint_interval_s`` (the model must not learn while it is pickled), so the
        timer only acts for the per-record path; ``final`` is the shutdown checkpoint,
        taken once the pipeline has stopped.
        """
        if self.sync is None:
            return
        if self.settings.pipeline == "batched" and not final:
            return
        await self.sync.sync(self.model, checkpoint=True)

    async def _save_checkpoint(self, model: Hybrid, log_id: str,
                               offsets: dict[str, int]) -> None:
        assert self.checkpointer is not None
        try:
            await self.checkpointer.save(model, offsets, log_id)
        except StateStoreUnavailable as exc:
            logger.error("checkpoint skipped: %s", exc)
        if self.product is not None:
            try:
                await self.product.save()
            except StateStoreUnavailable as exc:
                logger.error("product checkpoint skipped: %s", exc)

    async def handle_catalog(self, key: bytes | None, value: bytes | None, partition: int,
                             offset: int) -> None:
        # faust may hand the agent a record before the EventsService has run start() (a
        # worker starting with catalogue records waiting, e.g. releases sent while it was
        # down): wait for it, for the model sync, the checkpointer and the producer of the
        # dead letters and notifications. Before, such a dead letter was dropped, and such
        # a release's notifications were claimed in Redis but never sent.
        await self.started.wait()
        try:
            title = decode_catalog(value, self.settings.max_message_bytes)
        except InvalidRecord as exc:
            self.catalog_dead_letters += 1
            metrics.EVENTS_DEAD_LETTERED.labels(reason=exc.reason).inc()
            letter = dead_letter(exc.reason, exc.detail, self.settings.topics.catalog,
                                 partition, offset, key, value, time.time())
            if self.pipeline is not None and self.pipeline._producer is not None:
                self.pipeline.produce(self.settings.topics.dlq, [(key, orjson.dumps(letter))])
            logger.warning("catalog %s[%d]@%d dead-lettered: %s", self.settings.topics.catalog,
                           partition, offset, exc)
            return
        assert self.checkpointer is not None and self.sync is not None, "start() made them"
        self.apply_catalog_title(title, share=True)
        if title["type"] == "title_removed":
            await self._retry(lambda: self.checkpointer.remove_title(title["title_id"]))
        else:
            await self._retry(lambda: self.checkpointer.save_title(title))
            if self.product is not None:
                await self._notify_new_episode(title)

    def apply_catalog_title(self, title: dict[str, Any], share: bool = False) -> None:
        """A catalogue record into the model and the title index. From this worker's
        catalogue reader (``streams.catalog_reader``) it goes no further; the catalogue
        agent applies it too (``share=True``: through the model log) and does the rest,
        once for the group: the copy in Redis, notifications."""
        assert self.sync is not None, "start() creates the model sync before the pipeline"
        title_id = title["title_id"]
        if title["type"] == "title_removed":
            self.sync.remove_title(self.model, title_id, share=share)
            if self.product is not None:
                self.product.remove_title(title_id)
            self.catalogued.discard(title_id)
        else:
            self.sync.add_title(self.model, title, share=share)
            if self.product is not None:
                self.product.add_title(title)
            self.catalogued.add(title_id)

    async def _notify_new_episode(self, title: dict[str, Any]) -> None:
        """Notifications for an ``episode_released`` record (nothing for other types)."""
        assert self.product is not None
        product = self.product
        outcome = await self._retry(lambda: product.on_catalog(title))
        pipeline = self.pipeline
        if outcome.messages and pipeline is not None and pipeline._producer is not None:
            pipeline.produce(self.settings.topics.notifications, list(outcome.messages))
            pipeline._producer.poll(0)

    def update_gauges(self) -> None:
        if self.pipeline is not None:
            self.pipeline.update_lag()
        sizes = self.model.size()
        for kind, value in sizes.items():
            metrics.MODEL_SIZE.labels(model="streamrec", kind=kind).set(value)

    async def stop(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


def faust_broker_credentials(settings: Settings) -> Any:
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    import ssl

    context = None
    if "SSL" in settings.kafka_security_protocol:
        context = ssl.create_default_context(cafile=settings.kafka_ssl_ca_location)
    if settings.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=(settings.kafka_sasl_password.reveal()
                      if settings.kafka_sasl_password else None),
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


def pipeline_ended(task: asyncio.Future[None],
                   crash: Callable[[BaseException], Awaitable[None]]) -> None:
    """When the events pipeline's task ends on an error, say so and crash the worker (a
    non-zero exit, so it is restarted). Nothing awaits that task until shutdown: an
    error there left a worker running, serving metrics and its faust agents, with no
    events consumed and nothing in the log."""
    if task.cancelled() or task.exception() is None:
        return
    error = task.exception()
    assert error is not None
    logger.error("the events pipeline stopped on an error; stopping the worker so that it "
                 "is restarted: %r", error, exc_info=error)
    asyncio.ensure_future(crash(error))


def create_app(settings: Settings, runtime: WorkerRuntime | None = None) -> faust.App:
    """The faust app for ``settings`` (Kafka and Redis addresses already resolved)."""
    # A name of its own: a parameter narrowed from Optional stays Optional to mypy inside
    # the EventsService class below.
    worker = runtime if runtime is not None else WorkerRuntime(settings)
    patch_aiokafka()  # several workers on the embedded broker (see streams.faust_compat)
    limit_consumer_thread_stop()  # a SIGTERM with the broker gone took a minute
    # faust keeps table state under its datadir, "<app id>-data" in the working directory
    # by default. The tables here are in memory, so it only makes empty folders: they go
    # to a temporary directory, removed when the process exits, not into the user's
    # checkout (a `make test` left dozens there).
    datadir = tempfile.TemporaryDirectory(prefix=f"{settings.app_id}-")
    worker.datadir = datadir
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        broker_credentials=faust_broker_credentials(settings),
        # The embedded broker cannot create topics; streamrec creates them up front.
        topic_allow_declare=False,
        topic_partitions=settings.partitions,
        store="memory://",
        datadir=datadir.name,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        # faust's 60 s defaults kept a worker restarted after kill -9 waiting a minute for
        # the dead member's session to expire before it got the catalogue partitions.
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 10,
        broker_rebalance_timeout=settings.session_timeout_s,
    )
    catalog_topic = app.topic(settings.topics.catalog, key_type=bytes, value_type=bytes,
                              key_serializer="raw", value_serializer="raw")

    @app.agent(catalog_topic)
    async def catalog(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            await worker.handle_catalog(message.key, message.value, message.partition,
                                        message.offset)

    @app.timer(interval=GAUGE_INTERVAL_S)
    async def gauges() -> None:
        worker.update_gauges()

    @app.timer(interval=settings.checkpoint_interval_s)
    async def checkpoint() -> None:
        await worker.checkpoint()

    class EventsService(mode.Service):
        """Runs the batched events pipeline for as long as the app runs."""

        async def on_start(self) -> None:
            await worker.start()

        async def on_started(self) -> None:
            assert worker.pipeline is not None
            if settings.pipeline == "batched":
                self._task = asyncio.ensure_future(worker.pipeline.run())
                self._task.add_done_callback(lambda task: pipeline_ended(task, self.crash))

        async def on_stop(self) -> None:
            if worker.pipeline is not None:
                worker.pipeline.request_stop()
                try:
                    await asyncio.wait_for(self._task, SHUTDOWN_TIMEOUT_S)
                except (TimeoutError, AttributeError):
                    logger.error("events pipeline did not stop within %ss", SHUTDOWN_TIMEOUT_S)
            await worker.checkpoint(final=True)
            await worker.stop()

    if settings.pipeline == "per-record":
        from streams.per_record import add_events_agent

        add_events_agent(app, worker)
    app.service(EventsService)
    return app
