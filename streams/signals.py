"""Implicit feedback: how much a viewer event says the user liked the title.

One pure function, shared by the worker and the offline evaluator so both learn from
the same signal. The mapping (documented in the README):

============  ==========================================================================
event         feedback ``y``
============  ==========================================================================
play          +0.3 (started it: weak interest); +1.5 more if the user had completed it
              before (a re-watch is a strong positive)
resume        +0.8 (came back to it after a pause: strong positive)
pause         0 (pausing says little by itself)
seek          0
stop          watch ratio ``r = position/duration``: ``r < 0.1`` early abandonment
              ``-1.0``; ``r < 0.25`` ``-0.3``; otherwise ``2*r - 0.2`` (up to +1.8)
complete      +2.0
rate          ``(rating - 3) / 1.0`` (5 stars +2, 1 star -2)
click         +0.2 (chose it from a row)
impression    0 (shown, not chosen; the artwork and row bandits learn from it)
search        0 for titles; searches shift genre and title affinity through ``search``
============  ==========================================================================

A stop without a duration uses ``position / DEFAULT_DURATION_S``. Time of day and device
are context carried in the user's profile, not part of ``y``.
"""

from __future__ import annotations

from typing import Any

# When a stop carries no duration, assume a feature-length title (seconds).
DEFAULT_DURATION_S = 5400.0
# Watch ratio below which a stop is early abandonment.
ABANDON_RATIO = 0.10
REWATCH_BONUS = 1.5

_FIXED = {
    "play": 0.3,
    "resume": 0.8,
    "pause": 0.0,
    "seek": 0.0,
    "complete": 2.0,
    "click": 0.2,
    "impression": 0.0,
    "search": 0.0,
}


def watch_ratio(event: dict[str, Any]) -> float:
    duration = event.get("duration_s") or DEFAULT_DURATION_S
    return min(max(event.get("position_s", 0.0) / duration, 0.0), 1.0)


def feedback(event: dict[str, Any], rewatch: bool = False) -> float:
    """Implicit feedback ``y`` of one validated event (see the module table).

    Examples
    --------
    >>> feedback({"type": "stop", "position_s": 60, "duration_s": 3600})
    -1.0
    >>> feedback({"type": "stop", "position_s": 3240, "duration_s": 3600})
    1.6
    >>> feedback({"type": "play"}, rewatch=True)
    1.8
    """
    kind = event["type"]
    y = _FIXED.get(kind)
    if y is not None:  # most events (checked first: this runs for every event of a batch)
        return y + REWATCH_BONUS if rewatch and kind == "play" else y
    if kind == "stop":
        ratio = watch_ratio(event)
        if ratio < ABANDON_RATIO:
            return -1.0
        if ratio < 0.25:
            return -0.3
        return round(2.0 * ratio - 0.2, 6)
    if kind == "rate":
        return float(event["rating"]) - 3.0
    return 0.0


def hour_of_day(ts: float) -> int:
    """UTC hour of an epoch timestamp (the time-of-day context feature)."""
    return int(ts // 3600) % 24
