"""The catalogue agent's handler, without Kafka or Redis: what it does before start()."""

from __future__ import annotations

import asyncio
import logging
from unittest import mock

import orjson

from streamrec.settings import Settings
from streams.app import WorkerRuntime
from streams.checkpoint import Checkpointer
from streams.model_sync import ModelSync
from streams.notifications import NotifyOutcome
from streams.pipeline import EventsPipeline
from streams.product import ProductLayer

TITLE = {"event_id": "c1", "type": "title_added", "ts": 1.7e9, "title_id": "t1", "name": "One",
         "genres": ["Drama"]}


def test_a_title_that_arrives_before_start_waits_for_it_and_is_then_added():
    runtime = WorkerRuntime(Settings(product_features=False))

    async def scenario() -> tuple[bool, bool]:
        handling = asyncio.ensure_future(
            runtime.handle_catalog(b"t1", orjson.dumps(TITLE), 0, 0))
        await asyncio.sleep(0.2)
        waited = not handling.done()  # not started yet: it waits, it does not fail
        runtime.checkpointer = mock.create_autospec(Checkpointer, instance=True, spec_set=True)
        runtime.sync = mock.create_autospec(ModelSync, instance=True, spec_set=True)
        runtime.started.set()  # what the end of start() does
        await asyncio.wait_for(handling, 5)
        return waited, handling.exception() is None

    waited, ok = asyncio.run(scenario())
    assert waited and ok
    (model, title), _ = runtime.sync.add_title.call_args
    assert model is runtime.model and title["title_id"] == "t1" and title["name"] == "One"
    runtime.checkpointer.save_title.assert_called_once_with(title)


def test_the_worker_keeps_which_titles_it_has_catalogued_without_the_product_layer():
    # What decides whether a batch makes the catalogue reader ask the broker where the
    # catalogue ends (streams.pipeline): every batch would, without this record.
    runtime = WorkerRuntime(Settings(product_features=False))
    runtime.sync = mock.create_autospec(ModelSync, instance=True, spec_set=True)
    runtime.apply_catalog_title(TITLE)
    runtime.apply_catalog_title({**TITLE, "event_id": "c2", "title_id": "t2"})
    runtime.apply_catalog_title({"event_id": "c3", "type": "title_removed", "ts": 1.7e9,
                                 "title_id": "t1"})
    assert runtime.catalogued == {"t2"}


def test_a_redis_outage_is_logged_when_it_starts_and_ends_not_per_retry(caplog, monkeypatch):
    from streamrec.exceptions import StateStoreUnavailable

    runtime = WorkerRuntime(Settings(product_features=False))
    failures = iter(range(20))

    async def save() -> str:
        if next(failures, None) is not None:
            raise StateStoreUnavailable("could not save a catalogue title: Connection refused")
        return "saved"

    real_sleep = asyncio.sleep
    monkeypatch.setattr(asyncio, "sleep", lambda delay: real_sleep(0))  # backoff not waited
    with caplog.at_level("WARNING", logger="streams.app"):
        assert asyncio.run(runtime._retry(save)) == "saved"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "could not save a catalogue title: Connection refused; retrying until "
                  "Redis answers"),
        ("WARNING", "Redis is back; done after 20 failed attempts"),
    ]


def test_a_pipeline_that_ends_on_an_error_crashes_the_worker(caplog) -> None:
    # Nothing awaits the pipeline's task until shutdown: an error in it left the worker
    # running with no events consumed and nothing in the log.
    from streams.app import pipeline_ended

    crashed: list[BaseException] = []

    async def crash(error: BaseException) -> None:
        crashed.append(error)

    async def scenario() -> None:
        async def broken_pipeline() -> None:
            raise RuntimeError("boom")

        async def stopped_pipeline() -> None:
            return None

        for run in (broken_pipeline, stopped_pipeline):
            task = asyncio.ensure_future(run())
            task.add_done_callback(lambda t: pipeline_ended(t, crash))
            await asyncio.wait([task])
            await asyncio.sleep(0)  # the crash is scheduled from the callback

    with caplog.at_level(logging.ERROR, logger="streams.app"):
        asyncio.run(scenario())
    assert [repr(e) for e in crashed] == ["RuntimeError('boom')"]  # not for a clean stop
    assert "the events pipeline stopped on an error" in caplog.text
    assert "boom" in caplog.text


def started_later(runtime: WorkerRuntime, *records: tuple[bytes, bytes]) -> bool:
    """Hand the agent ``records`` before start(), then do what start() does; whether the
    handler waited for it."""

    async def scenario() -> bool:
        handling = [asyncio.ensure_future(runtime.handle_catalog(key, value, 0, offset))
                    for offset, (key, value) in enumerate(records)]
        await asyncio.sleep(0.2)
        waited = not any(h.done() for h in handling)
        runtime.checkpointer = mock.create_autospec(Checkpointer, instance=True, spec_set=True)
        runtime.sync = mock.create_autospec(ModelSync, instance=True, spec_set=True)
        runtime.pipeline = mock.create_autospec(EventsPipeline, instance=True)
        runtime.pipeline._producer = mock.Mock()
        runtime.started.set()
        await asyncio.wait_for(asyncio.gather(*handling), 5)
        return waited

    return asyncio.run(scenario())


def test_a_bad_catalogue_record_before_start_is_dead_lettered_once_started():
    # A worker starting with catalogue records waiting: the dead letter was dropped.
    runtime = WorkerRuntime(Settings(product_features=False))
    assert started_later(runtime, (b"t9", b"{not json"))
    (topic, [(key, letter)]), _ = runtime.pipeline.produce.call_args
    assert topic == runtime.settings.topics.dlq and key == b"t9"
    assert orjson.loads(letter)["reason"] == "invalid_json"


def test_a_release_before_start_sends_its_notifications_once_started():
    # Releases sent while the worker was down: their notifications were claimed in Redis
    # (so never sent again) and dropped, the producer not being there yet.
    runtime = WorkerRuntime(Settings())
    runtime.product = mock.create_autospec(ProductLayer, instance=True, spec_set=True)
    sent = [(b"u1", b'{"notification_id": "n1"}')]
    runtime.product.on_catalog.return_value = NotifyOutcome(messages=list(sent))
    release = {"event_id": "c9", "type": "episode_released", "ts": 1.7e9, "title_id": "e2",
               "series_id": "s1", "name": "S1E2"}
    assert started_later(runtime, (b"e2", orjson.dumps(release)))
    runtime.pipeline.produce.assert_called_once_with(runtime.settings.topics.notifications,
                                                     sent)
