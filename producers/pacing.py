"""Sending records on schedule: original event-time gaps scaled by a speed, and a cap.

Each record gets a due time on the monotonic clock: the first record is due at once and
record ``i`` is due ``(ts_i - ts_0) / speed`` seconds later; a rate cap ``R`` also keeps
it at least ``1/R`` seconds after the previous record's due time. Due times are computed
from the schedule, never from when the previous record actually went out, so small
delays do not accumulate into drift. Lateness (sent minus due) is recorded per record.

A file that is not in event-time order cannot be paced faithfully: a record whose event
time is earlier than an already-sent one is due in the past and goes out at once; its
lateness shows by how much.
"""

from __future__ import annotations

import random
import time
from array import array
from collections.abc import Callable

# Sleeps longer than this are cut into slices, calling ``idle`` between them, so the
# producer keeps serving delivery reports and progress keeps printing during long gaps.
IDLE_SLICE_S = 0.1
# Lateness samples kept: every record's up to this many, then a uniform random sample of
# this size (reservoir sampling), so a replay of any length uses at most 8 MB for them
# and the percentiles stay accurate to well under 0.1 percentile point.
LATENESS_SAMPLES = 1_000_000


class Pacer:
    """Waits until each record is due.

    Parameters
    ----------
    speed
        Event-time seconds per wall-clock second (``1`` keeps the original gaps,
        ``10`` is ten times faster); ``None`` ignores event times.
    rate
        Most records per second; ``None`` for no cap.
    clock, sleep
        Injected for tests: a monotonic clock in seconds and a sleep function.

    Examples
    --------
    >>> now = [0.0]
    >>> pacer = Pacer(speed=2.0, clock=lambda: now[0],
    ...               sleep=lambda s: now.__setitem__(0, now[0] + s))
    >>> for ts in (100.0, 101.0, 104.0):
    ...     pacer.wait(ts)
    >>> now[0]  # 4 s of event time at speed 2
    2.0
    """

    def __init__(
        self,
        speed: float | None = None,
        rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        self.speed = speed
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._origin_clock: float | None = None
        self._origin_ts = 0.0
        self._previous_due = float("-inf")
        self._min_gap = 1.0 / rate if rate else 0.0
        self.lateness_s = array("d")  # when records were released minus when due
        self.released = 0
        self._max_lateness_s = float("-inf")
        self._sampler = random.Random(0)

    def due(self, ts: float) -> float:
        """The monotonic-clock time at which the record with event time ``ts`` is due."""
        if self._origin_clock is None:
            self._origin_clock = self._clock()
            self._origin_ts = ts
            return self._origin_clock
        due = float("-inf")
        if self.speed is not None:
            due = self._origin_clock + (ts - self._origin_ts) / self.speed
        if self.rate is not None:
            due = max(due, self._previous_due + self._min_gap)
        return due

    def event_time(self) -> float | None:
        """The event time the schedule has reached by now (``None`` before the first record
        or without ``speed``): how far a paced replay has got while it waits."""
        if self._origin_clock is None or self.speed is None:
            return None
        return self._origin_ts + (self._clock() - self._origin_clock) * self.speed

    def wait(self, ts: float, idle: Callable[[], None] | None = None) -> None:
        """Block until the record with event time ``ts`` is due; record its lateness."""
        due = self.due(ts)
        self._previous_due = due
        clock, sleep = self._clock, self._sleep
        now = clock()
        while now < due:
            remaining = due - now
            if idle is not None and remaining > IDLE_SLICE_S:
                sleep(IDLE_SLICE_S)
                idle()
            else:
                sleep(remaining)
            now = clock()
        self._record_lateness(now - due)

    def _record_lateness(self, lateness: float) -> None:
        self.released += 1
        if lateness > self._max_lateness_s:
            self._max_lateness_s = lateness
        if self.released <= LATENESS_SAMPLES:
            self.lateness_s.append(lateness)
            return
        slot = self._sampler.randrange(self.released)
        if slot < LATENESS_SAMPLES:
            self.lateness_s[slot] = lateness

    def lateness_ms(self) -> dict[str, float] | None:
        """p50/p95/p99/max lateness in milliseconds, or ``None`` before any record."""
        if not self.lateness_s:
            return None
        import numpy as np

        values = np.frombuffer(self.lateness_s, dtype=np.float64) * 1000.0
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return {"p50": round(float(p50), 3), "p95": round(float(p95), 3),
                "p99": round(float(p99), 3), "max": round(self._max_lateness_s * 1000.0, 3)}
