"""Helpers for the fault tests: streams with known answers, producers, collectors, checks.

A stream for a fault test is a list of ``(key, value)`` records together with what a
correct worker must end with: the distinct valid event ids of every user, and how many
malformed records there are (each must reach the dead-letter topic; one counted per
offset, since a dead letter may be sent again after a crash).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import redis
from confluent_kafka import Consumer, Producer

from streamrec.broker import EmbeddedBroker
from streamrec.kafka import required_topics
from streamrec.redis_conn import EmbeddedRedis
from streamrec.settings import Secret, Settings, Topics
from streams.state import events_applied

GENRES = ["Drama", "Comedy", "Action", "Horror", "Documentary", "Romance"]
PLAYBACK = ["play", "pause", "resume", "seek", "stop", "complete"]


class FaultCluster:
    """A private broker and a private, persistent Redis for one test."""

    def __init__(self, data_dir: str, partitions: int = 4) -> None:
        self.partitions = partitions
        self.broker = EmbeddedBroker(partitions=partitions).start()
        self.redis = EmbeddedRedis(persist=True, data_dir=data_dir).start()

    def settings(self, **overrides: object) -> Settings:
        suffix = uuid.uuid4().hex[:8]
        topics = Topics(
            events=f"events-{suffix}", catalog=f"catalog-{suffix}",
            recommendations=f"recs-{suffix}", dlq=f"dlq-{suffix}",
            notifications=f"notif-{suffix}", cache_hints=f"hints-{suffix}",
        )
        settings = Settings(
            kafka_bootstrap_servers=self.broker.bootstrap_servers,
            redis_url=Secret(self.redis.url), topics=topics, partitions=self.partitions,
            app_id=f"fault-{suffix}", metrics_port=0,
        ).replace(**overrides)
        self.broker.create_topics(topics.all(), self.partitions)
        self.broker.create_topics(
            [t for t in required_topics(settings) if t not in topics.all()], 1)
        return settings

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.redis.port, socket_timeout=5)

    def restart_redis(self) -> None:
        """Start Redis again on the same port and directory (after ``redis.kill()``)."""
        self.redis.start()

    def close(self) -> None:
        self.redis.stop()
        self.broker.stop()


# -- the input stream ------------------------------------------------------------------------
@dataclass
class Stream:
    """Records to send and what the worker must end with."""

    catalog: list[dict]
    records: list[tuple[bytes | None, bytes]]
    # user -> distinct valid event ids
    expected: dict[str, set[str]] = field(default_factory=dict)
    malformed: int = 0
    duplicates: int = 0

    @property
    def valid_events(self) -> int:
        return sum(len(ids) for ids in self.expected.values())


def make_catalog(n_titles: int, ts: float) -> list[dict]:
    return [
        {"event_id": f"c{i}", "type": "title_added", "ts": ts, "title_id": f"t{i}",
         "name": f"Title {i}", "kind": "movie", "genres": [GENRES[i % len(GENRES)]],
         "duration_s": 3000.0}
        for i in range(n_titles)
    ]


# Malformed records a careless or hostile producer sends; every one must be dead-lettered.
def _malformed(rng: random.Random, good: dict) -> bytes:
    kind = rng.randrange(10)
    if kind == 0:
        return orjson.dumps(good)[: rng.randrange(1, 20)]  # truncated
    if kind == 1:
        return b"\xff\xfe" + orjson.dumps(good)  # invalid UTF-8
    if kind == 2:
        return orjson.dumps(good).replace(b'"ts":', b'"ts":NaN,"x":', 1)
    if kind == 3:
        return orjson.dumps({**good, "type": "teleport"})
    if kind == 4:
        return orjson.dumps({**good, "user_id": 42})
    if kind == 5:
        return orjson.dumps({**good, "ts": 1e12})  # far future
    if kind == 6:
        return orjson.dumps({**good, "type": "pause", "position_s": -5.0})
    if kind == 7:
        return b"[" * 2000 + b"]" * 2000  # deeply nested
    if kind == 8:
        return orjson.dumps({**good, "pad": "x" * 70_000})  # oversized
    return orjson.dumps([good])  # not an object


def make_stream(n_events: int, n_users: int, n_titles: int, seed: int,
                malformed_fraction: float = 0.01, duplicate_fraction: float = 0.02,
                run_id: str | None = None) -> Stream:
    """A viewing stream with malformed records and redelivered duplicates mixed in."""
    rng = random.Random(seed)
    run_id = run_id or uuid.uuid4().hex[:6]
    users = [f"f{run_id}-{i}" for i in range(n_users)]
    # Zipf-ish activity and popularity, so some users and titles are much busier.
    user_weights = [1.0 / (i + 1) ** 0.7 for i in range(n_users)]
    title_weights = [1.0 / (i + 1) ** 0.9 for i in range(n_titles)]
    now = time.time()
    stream = Stream(catalog=make_catalog(n_titles, now - 86_400), records=[])
    sent_valid: list[tuple[bytes, bytes]] = []
    for n in range(n_events):
        user = rng.choices(users, user_weights)[0]
        kind = rng.choice(PLAYBACK + ["search", "rate", "click", "impression"])
        event: dict = {"event_id": f"{run_id}-{n}", "type": kind, "user_id": user,
                       "ts": now - 3600 + n * 0.05, "device": rng.choice(["tv", "web"]),
                       "country": "SE"}
        if kind == "search":
            event["query"] = rng.choice(["drama", "space", "love"])
        else:
            event["title_id"] = f"t{rng.choices(range(n_titles), title_weights)[0]}"
        if kind in PLAYBACK:
            event["position_s"] = float(rng.randrange(0, 3000))
            event["duration_s"] = 3000.0
        if kind == "rate":
            event["rating"] = rng.randint(1, 5)
        if kind in ("impression", "click"):
            event["row"] = "trending"
        roll = rng.random()
        if roll < malformed_fraction:
            stream.records.append((user.encode(), _malformed(rng, event)))
            stream.malformed += 1
            continue
        if roll < malformed_fraction + duplicate_fraction and sent_valid:
            # A producer retry: the same record again, a little later.
            stream.records.append(rng.choice(sent_valid[-500:]))
            stream.duplicates += 1
        record = (user.encode(), orjson.dumps(event))
        stream.records.append(record)
        sent_valid.append(record)
        stream.expected.setdefault(user, set()).add(event["event_id"])
    return stream


def produce(settings: Settings, records: list[tuple[bytes | None, bytes]], topic: str,
            rate: float | None = None, stop: threading.Event | None = None) -> int:
    """Send ``records`` (at most ``rate`` per second); returns how many were delivered."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "linger.ms": 20, "compression.type": "lz4",
                         "enable.idempotence": True, "message.timeout.ms": 0,
                         "queue.buffering.max.messages": 2_000_000})
    delivered = 0

    def on_delivery(err, _msg) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1

    started = time.monotonic()
    for i, (key, value) in enumerate(records):
        if stop is not None and stop.is_set():
            break
        if rate is not None and i % 100 == 0:
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    while len(producer) and not (stop is not None and stop.is_set()):
        producer.flush(1)
    return delivered


def send_catalog(settings: Settings, catalog: list[dict]) -> None:
    produce(settings, [(t["title_id"].encode(), orjson.dumps(t)) for t in catalog],
            settings.topics.catalog)


class Background(threading.Thread):
    """Runs ``produce`` in a thread, so a test can inject faults while records flow."""

    def __init__(self, target: Callable[[threading.Event], object]) -> None:
        super().__init__(daemon=True)
        self._target_fn = target
        self.stop_event = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._target_fn(self.stop_event)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def finish(self, timeout_s: float) -> object:
        self.join(timeout_s)
        if self.is_alive():
            self.stop_event.set()
            self.join(10)
            raise AssertionError(f"background producer did not finish in {timeout_s}s")
        if self.error is not None:
            raise self.error
        return self.result


class TopicCollector(threading.Thread):
    """Reads topics from the beginning while the test runs (nothing is lost to retention).

    ``values[topic]`` holds every value read; ``keys[topic]`` every key.
    """

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        super().__init__(daemon=True)
        self._consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"collector-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })
        self._consumer.subscribe(topics)
        self.values: dict[str, list[bytes]] = {t: [] for t in topics}
        self.keys: dict[str, set[bytes]] = {t: set() for t in topics}
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                for message in self._consumer.consume(1000, 0.2):
                    if message.error() is not None:
                        continue
                    with self._lock:
                        self.values[message.topic()].append(message.value())
                        if message.key() is not None:
                            self.keys[message.topic()].add(message.key())
        finally:
            self._consumer.close()

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self.values[topic])

    def keys_of(self, topic: str) -> set[bytes]:
        """A copy of the keys read so far: the thread keeps adding while the test reads."""
        with self._lock:
            return set(self.keys[topic])

    def values_of(self, topic: str) -> list[bytes]:
        """A copy of the values read so far (see keys_of)."""
        with self._lock:
            return list(self.values[topic])

    def close(self) -> None:
        self._stopping.set()
        self.join(15)


def applied_counts(client: redis.Redis, users: list[str]) -> dict[str, int]:
    """events_applied per user, read in one pipeline."""
    return events_applied(client, users)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str,
             interval_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass  # the service may be the one we took down
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@dataclass
class Outcome:
    users: int
    valid_events: int
    applied: int
    lost: int
    applied_twice: int
    users_wrong: int
    users_without_recs: int
    dead_letters: int
    malformed: int

    def show(self, title: str) -> str:
        return (f"{title}: users={self.users} valid_events={self.valid_events} "
                f"applied={self.applied} lost={self.lost} applied_twice={self.applied_twice} "
                f"users_wrong={self.users_wrong} users_without_recs={self.users_without_recs} "
                f"dead_lettered={self.dead_letters}/{self.malformed} malformed")


def outcome(client: redis.Redis, stream: Stream, collector: TopicCollector,
            settings: Settings) -> Outcome:
    """Compare what the worker holds with what the stream must produce."""
    users = sorted(stream.expected)
    counts = applied_counts(client, users)
    lost = twice = wrong = 0
    for user in users:
        want, got = len(stream.expected[user]), counts[user]
        lost += max(0, want - got)
        twice += max(0, got - want)
        wrong += want != got
    with_recs = {k.decode() for k in collector.keys_of(settings.topics.recommendations)}
    dead = collector.values_of(settings.topics.dlq)
    # A dead letter may be re-sent after a crash; count each malformed record once.
    dead_offsets = {(d["partition"], d["offset"]) for d in map(orjson.loads, dead)}
    return Outcome(
        users=len(users), valid_events=stream.valid_events, applied=sum(counts.values()),
        lost=lost, applied_twice=twice, users_wrong=wrong,
        users_without_recs=sum(1 for u in users if u not in with_recs),
        dead_letters=len(dead_offsets), malformed=stream.malformed,
    )


def events_consumed(worker, metric: str = "streamrec_events_consumed_total") -> float:
    """Sum of a counter (over its labels) on a worker's /metrics."""
    return worker.counter(metric)


class StreamRun:
    """One fault test's stream: the catalogue sent, a collector on the output topics, and
    the checks every fault test makes once the worker has caught up."""

    def __init__(self, cluster: FaultCluster, settings: Settings, stream: Stream) -> None:
        self.settings = settings
        self.stream = stream
        self.client = cluster.client()
        self.collector = TopicCollector(
            settings, [settings.topics.recommendations, settings.topics.dlq])

    def __enter__(self) -> StreamRun:
        self.collector.start()
        send_catalog(self.settings, self.stream.catalog)
        return self

    def __exit__(self, *exc: object) -> None:
        self.collector.close()

    def start_sending(self, rate: float) -> Background:
        """Produce the stream's events at ``rate`` per second, in a background thread."""
        settings, records = self.settings, self.stream.records
        sender = Background(lambda stop: produce(
            settings, records, settings.topics.events, rate=rate, stop=stop))
        sender.start()
        return sender

    def outcome(self) -> Outcome:
        return outcome(self.client, self.stream, self.collector, self.settings)

    def wait_caught_up(self, timeout_s: float, what: str) -> None:
        """Until every valid event is applied and every malformed one dead-lettered."""
        def caught_up() -> bool:
            result = self.outcome()
            return (result.applied >= result.valid_events
                    and result.dead_letters >= self.stream.malformed)

        wait_for(caught_up, timeout_s, what)


def assert_exactly_once(result: Outcome, stream: Stream) -> None:
    """Nothing lost, nothing applied twice, every user has recommendations, and every
    malformed record dead-lettered once."""
    assert result.lost == 0
    assert result.applied_twice == 0
    assert result.users_wrong == 0
    assert result.users_without_recs == 0
    assert result.dead_letters == stream.malformed
