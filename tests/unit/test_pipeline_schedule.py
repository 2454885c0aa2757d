"""When ``EventsPipeline.run`` finishes a batch, relative to taking the next one.

A worker that keeps up finishes each batch before it takes the next, so a record does not
wait an extra batch cycle; a worker with records queueing overlaps the next batch's state
write with the previous batch's ranking. The Kafka, Redis and model work is faked: only
the order of the steps is checked.
"""

from __future__ import annotations

import asyncio

from streamrec import metrics
from streamrec.exceptions import StateStoreUnavailable
from streamrec.settings import Settings
from streams.pipeline import EventsPipeline, _InFlight


class Record:
    def __init__(self, name: str) -> None:
        self.name = name

    def error(self) -> None:
        return None


class ScriptedConsumer:
    """Returns one scripted list of records per consume() call, then nothing."""

    def __init__(self, script: list[list[str]], pipeline: EventsPipeline) -> None:
        self.script = script
        self.pipeline = pipeline

    def consume(self, n: int, timeout: float) -> list[Record]:
        if not self.script:
            self.pipeline.request_stop()
            return []
        names = self.script.pop(0)
        assert len(names) <= n
        return [Record(name) for name in names]


class NoProducer:
    def poll(self, timeout: float) -> int:
        return 0


def run_scripted(script: list[list[str]], batch_size: int = 4) -> list[str]:
    """The steps run() takes, as 'start a,b' and 'complete a,b'."""
    steps: list[str] = []

    async def main() -> None:
        pipeline = EventsPipeline(Settings(batch_size=batch_size), model=None, store=None,
                                  model_version=lambda: "v")
        pipeline._consumer = ScriptedConsumer(script, pipeline)
        pipeline._producer = NoProducer()

        def start(records: list[Record]) -> _InFlight:
            names = ",".join(r.name for r in records)
            steps.append(f"start {names}")
            done = asyncio.get_running_loop().create_future()
            done.set_result(names)
            return _InFlight(records, None, done, 0.0)

        async def complete(batch: _InFlight, applied: str) -> None:
            steps.append(f"complete {applied}")

        pipeline._start = start
        pipeline._complete = complete
        pipeline._commit_if_delivered = lambda: None
        pipeline._finish = lambda: None
        await pipeline.run()

    asyncio.run(main())
    return steps


def test_a_worker_that_keeps_up_finishes_each_batch_before_taking_the_next():
    # Small batches: 'b' is taken while 'a' is written, but 'a' is finished first and 'b'
    # is topped up with what arrived meanwhile ('c').
    steps = run_scripted([["a"], ["b"], ["c"], []])
    assert steps == ["start a", "complete a", "start b,c", "complete b,c"]


def test_a_worker_with_records_queueing_overlaps_consecutive_batches():
    # Full batches: the next batch's state write starts before the previous is finished.
    steps = run_scripted([["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"], [], []])
    assert steps == ["start a1,a2,a3,a4", "start b1,b2,b3,b4", "complete a1,a2,a3,a4",
                     "complete b1,b2,b3,b4"]


class PausableConsumer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def assignment(self) -> list[str]:
        return ["events[0]"]

    def pause(self, partitions: list[str]) -> None:
        self.calls.append("pause")

    def resume(self, partitions: list[str]) -> None:
        self.calls.append("resume")


def test_any_redis_write_that_meets_an_outage_pauses_consumption_until_it_succeeds():
    # The product aggregates of the batch being completed can be the first write to meet
    # the outage (a worker that keeps up has no state write running meanwhile): it pauses
    # consumption and reports the pipeline down, like a failing state write.
    async def main() -> tuple[list[str], list[float]]:
        pipeline = EventsPipeline(Settings(), model=None, store=None, model_version=lambda: "v")
        consumer = pipeline._consumer = PausableConsumer()
        seen_up: list[float] = []

        async def no_wait(delay: float) -> None:
            seen_up.append(metrics.PIPELINE_UP._value.get())

        pipeline._wait = no_wait
        attempts = iter([StateStoreUnavailable("down"), StateStoreUnavailable("down"), None])

        async def flush() -> str:
            failure = next(attempts)
            if failure is not None:
                raise failure
            return "written"

        assert await pipeline._until_written(flush, "product aggregates") == "written"
        seen_up.append(metrics.PIPELINE_UP._value.get())
        return consumer.calls, seen_up

    calls, seen_up = asyncio.run(main())
    assert calls == ["pause", "resume"]
    assert seen_up == [0.0, 0.0, 1.0]


def test_only_the_worker_holding_events_partition_0_shares_the_blend():
    # streams.model_sync: one worker learns the blend's weights for the group; a
    # rebalance moves that role with partition 0.
    from types import SimpleNamespace

    from confluent_kafka import TopicPartition

    pipeline = EventsPipeline(Settings(), model=None, store=None, model_version=lambda: "v")
    pipeline.sync = SimpleNamespace(shares_blend=True)
    pipeline._on_assign(None, [TopicPartition("events", 1), TopicPartition("events", 3)])
    assert pipeline.sync.shares_blend is False
    pipeline._on_assign(None, [TopicPartition("events", 2), TopicPartition("events", 0)])
    assert pipeline.sync.shares_blend is True
