"""A Kafka outage in the worker's log: aiokafka's per-retry errors once a minute per kind,
with a count, instead of ~75 lines a second."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from streamrec.log_repeats import REPEAT_INTERVAL_S, RepeatFilter, install


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged() -> Iterator[tuple[io.StringIO, Clock]]:
    """A handler like the CLI's root handler, with the filter installed, on the loggers
    aiokafka and the worker use."""
    out, clock = io.StringIO(), Clock()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter(clock=clock))
    names = ("aiokafka", "aiokafka.consumer.fetcher", "streams.pipeline")
    for name in names:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).propagate = False
    yield out, clock
    for name in names:
        logging.getLogger(name).removeHandler(handler)
        logging.getLogger(name).propagate = True


def _outage(seconds: int, clock: Clock) -> None:
    """What aiokafka logs with the broker gone: errors of a few kinds, many a second."""
    for _ in range(seconds * 16):  # 1/16 s apart: exact in binary, so 60 s is 60.0
        logging.getLogger("aiokafka").error(
            "Unable connect to node with id %s: %s", 1, "[Errno 111] Connect call failed")
        logging.getLogger("aiokafka").error("Unable to update metadata from %s", [1])
        logging.getLogger("aiokafka.consumer.fetcher").error(
            "Failed fetch messages from %s: %s", 1, "NodeNotReadyError")
        clock.now += 0.0625


def test_an_outage_is_a_line_per_kind_not_a_line_per_retry(logged) -> None:
    out, clock = logged
    _outage(30, clock)
    lines = out.getvalue().splitlines()
    assert lines == [
        "ERROR aiokafka: Unable connect to node with id 1: [Errno 111] Connect call failed",
        "ERROR aiokafka: Unable to update metadata from [1]",
        "ERROR aiokafka.consumer.fetcher: Failed fetch messages from 1: NodeNotReadyError",
    ]


def test_the_next_line_of_a_kind_counts_the_ones_not_shown(logged) -> None:
    out, clock = logged
    _outage(int(REPEAT_INTERVAL_S) + 5, clock)
    lines = out.getvalue().splitlines()
    assert len(lines) == 6
    assert lines[3] == ("ERROR aiokafka: Unable connect to node with id 1: [Errno 111] "
                        "Connect call failed (959 more like it in the last 60 s not shown)")


def test_other_loggers_and_new_kinds_are_never_held_back(logged) -> None:
    out, clock = logged
    _outage(2, clock)
    logging.getLogger("aiokafka").warning("Marking the coordinator dead (node %s)", 1)
    for _ in range(3):
        logging.getLogger("streams.pipeline").error("Kafka unreachable; retrying")
    lines = out.getvalue().splitlines()
    assert "WARNING aiokafka: Marking the coordinator dead (node 1)" in lines
    assert lines.count("ERROR streams.pipeline: Kafka unreachable; retrying") == 3


def test_install_puts_one_filter_on_each_handler() -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(io.StringIO()),
                                       logging.StreamHandler(io.StringIO())]
    limiter = install(handlers)
    assert all(h.filters == [limiter] for h in handlers)
