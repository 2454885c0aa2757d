"""Keep a retrying library's repeated log lines to one per interval.

faust's Kafka client, aiokafka, logs an ERROR on every failed reconnect, metadata refresh,
fetch and coordinator lookup: with the broker gone a worker wrote about 75 lines a second
(3,119 in 41 s) beside the pipeline's single "Kafka unreachable" line. The first line of
each kind still shows at once, so nothing new is hidden; its repeats within the interval
are counted and the next line of that kind says how many there were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

# Loggers whose lines repeat once per retry during an outage.
RETRYING_LOGGERS = ("aiokafka",)
# One line of a kind per this many seconds: an outage stays visible (a line a minute per
# kind) without burying the product's own lines.
REPEAT_INTERVAL_S = 60.0


class RepeatFilter(logging.Filter):
    """Let through the first record of each (logger, message template) per
    ``interval_s``; the next one after that carries the count of those held back.

    Only records of loggers under ``prefixes`` are limited; the template is the message
    before its arguments are filled in, so 'Unable connect to node with id %s: %s' is one
    kind whatever the node and error.
    """

    def __init__(self, prefixes: tuple[str, ...] = RETRYING_LOGGERS,
                 interval_s: float = REPEAT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.interval_s = interval_s
        self._clock = clock
        # (logger name, template) -> [when last let through, records held back since]
        self._seen: dict[tuple[str, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if not any(name == p or name.startswith(p + ".") for p in self.prefixes):
            return True
        key = (name, str(record.msg))
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} ({int(seen[1])} more like it in the last " \
                         f"{self.interval_s:.0f} s not shown)"
        self._seen[key] = [now, 0]
        return True


def install(handlers: list[logging.Handler]) -> RepeatFilter:
    """Add one :class:`RepeatFilter` to each of ``handlers`` (the root logger's: records
    of child loggers skip their parents' filters, not the handlers')."""
    limiter = RepeatFilter()
    for handler in handlers:
        handler.addFilter(limiter)
    return limiter
