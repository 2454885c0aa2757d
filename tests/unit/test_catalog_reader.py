"""The catalogue reader's waiting rules, and which batches ask the broker where the
catalogue ends, against a stand-in consumer (no broker)."""

from __future__ import annotations

import asyncio
import logging

import orjson
from confluent_kafka import KafkaError, KafkaException, TopicPartition

import streams.catalog_reader
from streamrec import metrics
from streamrec.settings import Settings
from streams.catalog_reader import CatalogReader
from streams.pipeline import EventsPipeline


class Record:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value


class OnePartition:
    """A partition that ends at offset 5, of which only the records in ``queue`` ever
    arrive (fewer: a partition the reader cannot fetch from). ``last_fetch_end`` is the
    end the reader's last fetch reported; ``in_flight`` records arrive only from the
    second consume call on (sent just before the batch that waits for them)."""

    def __init__(self, last_fetch_end: int = 5) -> None:
        self.consumed = 0
        self.queue: list[Record] = []
        self.in_flight: list[Record] = []
        self.last_fetch_end = last_fetch_end
        self.broker_answers = True

    def consume(self, n: int, timeout: float) -> list[Record]:
        taken, self.queue = self.queue[:n], self.queue[n:]
        self.queue, self.in_flight = self.queue + self.in_flight, []
        self.consumed += len(taken)
        return taken

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(p.topic, p.partition, self.consumed) for p in partitions]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        return 0, self.last_fetch_end

    def offsets_for_times(self, partitions: list[TopicPartition],
                          timeout: float) -> list[TopicPartition]:
        if not self.broker_answers:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return [TopicPartition(p.topic, p.partition, 5) for p in partitions]


def reader_on(consumer: OnePartition, applied: list[str]) -> CatalogReader:
    reader = CatalogReader(Settings(), lambda title: applied.append(title["title_id"]),
                           wait_s=0.3)
    reader._consumer = consumer  # type: ignore[assignment]
    reader._ends_client = consumer  # type: ignore[assignment]
    reader._partitions = [TopicPartition("catalog", 0)]
    return reader


def waited_s() -> float:
    """Seconds batches have waited for the reader so far (the exported counter)."""
    return metrics.CATALOG_WAIT_SECONDS._value.get()


def title(n: int) -> Record:
    return Record(orjson.dumps({"event_id": f"c{n}", "type": "title_added", "ts": 1.7e9,
                                "title_id": f"t{n}", "name": f"Title {n}"}))


def test_a_reader_that_cannot_catch_up_holds_one_batch_then_none_for_a_while(caplog):
    applied: list[str] = []
    consumer = OnePartition()
    consumer.queue = [title(0), Record(b"{broken"), title(1)]  # 3 of the 5 ever arrive
    reader = reader_on(consumer, applied)
    caplog.set_level(logging.WARNING)
    before = waited_s()
    asyncio.run(reader.catch_up())
    assert applied == ["t0", "t1"]  # the broken record is the catalogue agent's to report
    assert reader.lag() == 2
    assert waited_s() - before >= 0.3  # the whole wait_s, counted
    assert "still 2 records behind" in caplog.text
    before = waited_s()
    asyncio.run(reader.catch_up())  # the next batches do not wait ...
    assert waited_s() == before


def test_after_the_backoff_batches_wait_again(monkeypatch):
    reader = reader_on(OnePartition(), [])
    monkeypatch.setattr(streams.catalog_reader, "BACKOFF_S", 0.0)  # ... until it ends
    asyncio.run(reader.catch_up())
    before = waited_s()
    asyncio.run(reader.catch_up())
    assert waited_s() - before >= 0.3


def test_a_reader_that_has_caught_up_holds_nothing():
    applied: list[str] = []
    consumer = OnePartition()
    consumer.queue = [title(n) for n in range(5)]  # all 5
    reader = reader_on(consumer, applied)
    before = waited_s()
    asyncio.run(reader.catch_up())
    assert len(applied) == 5 and reader.lag() == 0
    assert waited_s() == before


def test_a_batch_waits_for_titles_sent_after_the_readers_last_fetch():
    # The reader's last fetch saw an empty catalogue; 5 titles were sent since (and
    # before this batch's events). The broker's answer, not that fetch, says to wait.
    applied: list[str] = []
    consumer = OnePartition(last_fetch_end=0)
    consumer.in_flight = [title(n) for n in range(5)]
    reader = reader_on(consumer, applied)
    asyncio.run(reader.catch_up())
    assert applied == [f"t{n}" for n in range(5)]


def test_a_broker_that_does_not_say_where_the_catalogue_ends_holds_nothing(caplog):
    consumer = OnePartition()
    consumer.broker_answers = False
    reader = reader_on(consumer, [])
    before = waited_s()
    asyncio.run(reader.catch_up())
    assert waited_s() == before
    assert "did not say where the catalogue ends" in caplog.text


def test_a_batch_that_does_not_ask_goes_by_the_end_the_last_fetch_saw():
    applied: list[str] = []
    consumer = OnePartition(last_fetch_end=0)
    consumer.in_flight = [title(n) for n in range(5)]
    consumer.broker_answers = False  # not asked: no warning, no backoff either
    reader = reader_on(consumer, applied)
    asyncio.run(reader.catch_up(ask=False))
    assert applied == []  # the window asking closes, for batches that need it
    asyncio.run(reader.catch_up(ask=False))
    assert applied == [f"t{n}" for n in range(5)]  # they arrive with the next fetch


def test_only_a_batch_naming_an_uncatalogued_title_asks():
    pipeline = EventsPipeline(Settings(), model=None, store=None,  # type: ignore[arg-type]
                              model_version=lambda: "v")
    pipeline.catalogued = {"t1"}
    play = {"type": "play", "title_id": "t1"}
    assert not pipeline._needs_current_catalogue([play, {**play, "type": "complete"}])
    assert pipeline._needs_current_catalogue([play, {"type": "play", "title_id": "t2"}])
    assert not pipeline._needs_current_catalogue([play, {"type": "search", "query": "heat"}])
    assert pipeline._needs_current_catalogue([{"type": "search", "query": "up",
                                               "title_id": "t3"}])
    pipeline.catalogued = None  # without a record of what is catalogued: always
    assert pipeline._needs_current_catalogue([play])
