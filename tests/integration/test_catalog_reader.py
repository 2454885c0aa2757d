"""A catalogue sent together with its events reaches the worker first.

``streams.catalog_reader``: every worker reads every catalogue partition itself and
applies it before each batch of events, waiting (bounded) while it lags. Before it, all
the searches of a stream sent right behind its catalogue were counted unmatched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import orjson
import pytest
from confluent_kafka import Producer

from producers.simulator import generate_events, generate_world
from streams.catalog_reader import CatalogReader
from streams.search import SearchIndex
from streams.titles import TitleIndex
from tests.integration.test_two_workers import send_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def unmatched_with_whole_catalogue(titles: list[dict], events: list[dict]) -> int:
    index = TitleIndex()
    search = SearchIndex(index)
    for title in titles:
        index.add(title)
    return sum(1 for e in events if e["type"] == "search" and not search.match(e["query"], 1))


def test_searches_sent_right_behind_their_catalogue_are_matched(make_settings, start_worker):
    settings = make_settings()
    world = generate_world(200, 300, seed=0)
    events = [e for e in generate_events(world, 20_000, seed=0) if isinstance(e, dict)]
    searches = sum(1 for e in events if e["type"] == "search")
    expected = unmatched_with_whole_catalogue(world.titles, events)
    assert searches > 100 and expected < searches / 4  # most searches name a catalogued title
    worker = start_worker(settings)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "linger.ms": 5})
    for title in world.titles:  # no pause between the catalogue and the events
        producer.produce(settings.topics.catalog, orjson.dumps(title), title["title_id"])
    send_events(producer, settings.topics.events, events)
    deadline = time.monotonic() + 120
    while (time.monotonic() < deadline
           and worker.counter("streamrec_events_consumed_total") < len(events)):
        time.sleep(0.5)
    assert worker.counter("streamrec_searches_total") == searches
    # Exactly the searches the whole catalogue does not match (it was all of them).
    assert worker.counter("streamrec_search_unmatched_total") == expected
    assert worker.stop() == 0


def test_the_reader_applies_valid_titles_and_waits_for_what_was_sent(make_settings):
    settings = make_settings(partitions=2)
    applied: list[str] = []
    reader = CatalogReader(settings, lambda title: applied.append(title["title_id"]),
                           wait_s=10.0)
    reader.start()
    try:
        # The reader's fetches have seen the catalogue empty (in the CI run that failed,
        # catch_up then returned at once: the end its last fetch reported was 0).
        time.sleep(0.2)
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
        titles = [{"event_id": f"c{i}", "type": "title_added", "ts": 1.7e9,
                   "title_id": f"t{i}", "name": f"Title {i}", "genres": ["Drama"]}
                  for i in range(50)]
        for title in titles:
            producer.produce(settings.topics.catalog, orjson.dumps(title), title["title_id"])
        producer.produce(settings.topics.catalog, b"{not json", b"broken")  # the agent's
        producer.flush()
        asyncio.run(reader.catch_up())  # one call: it waits until everything sent is in
        assert sorted(applied) == sorted(t["title_id"] for t in titles)
        assert reader.lag() == 0
        asyncio.run(reader.catch_up())  # nothing new: nothing applied twice
        assert len(applied) == len(titles)
    finally:
        reader.close()


def test_a_missing_catalogue_topic_holds_nothing_back(make_settings, caplog):
    settings = make_settings()
    settings = settings.replace(topics=dataclasses.replace(settings.topics,
                                                           catalog="no-such-catalogue"))
    reader = CatalogReader(settings, lambda title: None, wait_s=10.0)
    reader.start()
    try:
        started = time.monotonic()
        asyncio.run(reader.catch_up())
        assert time.monotonic() - started < 1.0  # not the 10 s wait
        assert reader.lag() == 0
        assert "catalogue topic no-such-catalogue unreadable" in caplog.text
    finally:
        reader.close()
