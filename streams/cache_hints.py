"""Cache hints: every hour of event time, the titles each country will most likely play next.

The events path counts ``play`` events per country and title in the current hour of
event time. When an event from a later hour arrives, the hour (and any empty hours
skipped) is closed: its counts teach :class:`models.forecast.SeasonalForecaster`, and
for every country seen a message goes to the ``cache-hints`` topic (key = country)::

    {"country": "SE", "hour": 1704070800,
     "titles": [{"title_id": "t7", "expected_plays": 41.2}, ...]}

``hour`` is the epoch second the forecast hour starts (the hour that just began).
A CDN or edge cache pre-positions those titles. With several workers each forecasts
from the users of its partitions: hints for one ``(country, hour)`` add up.

Events that arrive late (from an hour already closed) count toward the current hour.
:func:`evaluate_cache_hints` scores the same forecasts offline on a recorded stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from models.forecast import SeasonalForecaster

HOUR_S = 3600
# An event this many hours ahead of the current hour closes at most this many hours
# (a wild timestamp must not make the worker replay weeks of empty hours).
MAX_HOURS_CLOSED = 24 * 7
UNKNOWN_COUNTRY = "unknown"


def hour_start(ts: float) -> int:
    return int(ts // HOUR_S) * HOUR_S


class CacheHints:
    """Counts plays in the current event-time hour; closes hours; builds hint messages.

    Examples
    --------
    >>> hints = CacheHints(top=2)
    >>> for i in range(3):
    ...     _ = hints.observe("SE", "a", 1000.0 + i)
    >>> messages = hints.observe("SE", "b", 3600.0 + 5)
    >>> [orjson.loads(v)["titles"][0]["title_id"] for _, v in messages]
    ['a']
    """

    def __init__(self, top: int = 50, forecaster: SeasonalForecaster | None = None) -> None:
        if top <= 0:
            raise ValueError(f"top must be positive, got {top}")
        self.top = top
        self.forecaster = forecaster if forecaster is not None else SeasonalForecaster()
        self.current_hour: int | None = None
        self._counts: dict[str, dict[str, int]] = {}
        self.published = 0

    def observe(self, country: str | None, title: str, ts: float,
                count: bool = True) -> list[tuple[bytes, bytes]]:
        """Count one play (``count=False``: only move the clock, e.g. a play of a title
        the catalogue removed); returns the hint messages (key, value) if an hour closed."""
        hour = hour_start(ts)
        messages: list[tuple[bytes, bytes]] = []
        if self.current_hour is None:
            self.current_hour = hour
        elif hour > self.current_hour:
            messages = self.close_until(hour)
        if count:
            counts = self._counts.setdefault(country or UNKNOWN_COUNTRY, {})
            counts[title] = counts.get(title, 0) + 1
        return messages

    def forget(self, title: str) -> None:
        """The catalogue removed ``title``: no hint names it from now on.

        Examples
        --------
        >>> hints = CacheHints(top=2)
        >>> _ = [hints.observe("SE", t, 1000.0) for t in ("a", "a", "b")]
        >>> hints.forget("a")
        >>> (_, value), = hints.observe("SE", "b", 3605.0)
        >>> [t["title_id"] for t in orjson.loads(value)["titles"]]
        ['b']
        """
        for counts in self._counts.values():
            counts.pop(title, None)
        self.forecaster.forget(title)

    def close_until(self, hour: int) -> list[tuple[bytes, bytes]]:
        """Close every hour before ``hour``; hints for ``hour``."""
        assert self.current_hour is not None
        closing = max(self.current_hour, hour - MAX_HOURS_CLOSED * HOUR_S)
        countries = set(self.forecaster.countries()) | set(self._counts)
        while closing < hour:
            for country in countries:
                self.forecaster.learn_hour(country, closing, self._counts.get(country, {}))
            self._counts = {}
            closing += HOUR_S
        self.current_hour = hour
        return self.hints(hour)

    def forecasts(self, hour: int) -> dict[str, list[tuple[str, float]]]:
        return {country: self.forecaster.forecast(country, hour, self.top)
                for country in self.forecaster.countries()}

    def hints(self, hour: int) -> list[tuple[bytes, bytes]]:
        messages = []
        for country, titles in sorted(self.forecasts(hour).items()):
            if not titles:
                continue
            value = {"country": country, "hour": hour, "titles": [
                {"title_id": t, "expected_plays": round(e, 3)} for t, e in titles]}
            messages.append((country.encode(), orjson.dumps(value)))
        self.published += len(messages)
        return messages


def evaluate_cache_hints(events: Iterable[Mapping[str, Any]], k: int = 10,
                         min_plays: int = 20) -> dict[str, Any]:
    """Recall@k of the hourly forecasts on a stream of events (time-ordered enough).

    For every (country, hour) after the first with at least ``min_plays`` plays, recall is
    the share of that hour's ``k`` most played titles that the forecast made at the
    hour's start had in its top ``k``. ``baseline_recall`` is the same for "last hour's
    top k" (persistence), the forecast to beat.

    Examples
    --------
    >>> events = [{"type": "play", "country": "SE", "title_id": f"t{i % 3}",
    ...            "ts": 3600.0 * (i // 30) + i} for i in range(300)]
    >>> result = evaluate_cache_hints(events, k=3, min_plays=5)
    >>> result["recall"], result["hours"]
    (1.0, 9)
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    hints = CacheHints(top=k)
    forecasts: dict[str, list[tuple[str, float]]] | None = None  # none for the first hour
    previous: dict[str, dict[str, int]] = {}
    actual: dict[str, dict[str, int]] = {}
    hits = baseline_hits = total = hours = 0

    def score() -> None:
        nonlocal hits, baseline_hits, total, hours
        if forecasts is None:
            return
        for country, counts in actual.items():
            if sum(counts.values()) < min_plays:
                continue
            truth = {t for t, _ in sorted(counts.items(), key=lambda tc: (-tc[1], tc[0]))[:k]}
            predicted = {t for t, _ in forecasts.get(country, [])}
            last = previous.get(country, {})
            persisted = {t for t, _ in sorted(last.items(), key=lambda tc: (-tc[1], tc[0]))[:k]}
            hits += len(truth & predicted)
            baseline_hits += len(truth & persisted)
            total += len(truth)
            hours += 1

    for event in events:
        if event.get("type") != "play" or not event.get("title_id"):
            continue
        ts = float(event["ts"])
        hour = hour_start(ts)
        if hints.current_hour is not None and hour > hints.current_hour:
            score()
            previous = actual
            actual = {}
            hints.close_until(hour)
            forecasts = hints.forecasts(hour)
        country = event.get("country") or UNKNOWN_COUNTRY
        hints.observe(country, event["title_id"], ts)
        counts = actual.setdefault(country, {})
        counts[event["title_id"]] = counts.get(event["title_id"], 0) + 1
    score()
    return {
        "k": k, "hours": hours, "min_plays": min_plays,
        "recall": round(hits / total, 6) if total else None,
        "baseline_recall": round(baseline_hits / total, 6) if total else None,
        "baseline": "last hour's top k",
    }
