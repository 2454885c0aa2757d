"""Online forecast of next hour's plays per title and country, with hour-of-week seasonality.

The cache-hints path (``streams.cache_hints``) feeds it the plays of each hour of event
time as the hour closes and asks it for the next hour's most played titles. No I/O.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

HOURS_PER_WEEK = 168
# Day parts (6 hours each) for the per-title time-of-day profile.
DAY_PARTS = 4


def hour_of_week(hour_start: float) -> int:
    """0..167, Monday 00:00 UTC is 0 (the epoch was a Thursday, hence the 72-hour shift)."""
    return (int(hour_start // 3600) + 72) % HOURS_PER_WEEK


def day_part(hour_start: float) -> int:
    return int(hour_start // 3600) % 24 // (24 // DAY_PARTS)


class SeasonalForecaster:
    """Expected plays of each title in a country's next hour.

    ``expected(c, t, h) = volume(c, h) * share(c, t, h)``:

    * ``volume``: the country's plays per hour, Holt-Winters style without trend: a level
      (exponentially smoothed with ``level_alpha``) times a multiplicative hour-of-week
      index (smoothed with ``season_alpha``; 1 until that hour of the week was seen);
    * ``share``: the title's share of the country's plays, a blend of its recent share
      (smoothed hour by hour with ``share_alpha``, so a title that starts trending rises
      within a few hours) and its share in the same part of the day (morning, afternoon,
      evening, night), weighted ``day_part_weight``.

    Bounded: at most ``titles_per_country`` titles per country (the smallest shares are
    dropped) and ``max_countries`` countries.

    Examples
    --------
    >>> f = SeasonalForecaster()
    >>> for h in range(48):
    ...     f.learn_hour("SE", h * 3600.0, {"a": 10, "b": 2 if h % 24 < 12 else 20})
    >>> [t for t, _ in f.forecast("SE", 48 * 3600.0 + 13 * 3600.0, 2)]
    ['b', 'a']
    """

    def __init__(self, level_alpha: float = 0.2, season_alpha: float = 0.3,
                 share_alpha: float = 0.1, day_part_weight: float = 0.6,
                 titles_per_country: int = 1000, max_countries: int = 300) -> None:
        for name, value in (("level_alpha", level_alpha), ("season_alpha", season_alpha),
                            ("share_alpha", share_alpha)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be within (0, 1], got {value}")
        if not 0.0 <= day_part_weight <= 1.0:
            raise ValueError(f"day_part_weight must be within [0, 1], got {day_part_weight}")
        if titles_per_country <= 0 or max_countries <= 0:
            raise ValueError("titles_per_country and max_countries must be positive")
        self.level_alpha = level_alpha
        self.season_alpha = season_alpha
        self.share_alpha = share_alpha
        self.day_part_weight = day_part_weight
        self.titles_per_country = titles_per_country
        self.max_countries = max_countries
        self._level: dict[str, float] = {}
        self._season: dict[str, list[float]] = {}
        # country -> title -> [recent share, day-part shares...]
        self._share: dict[str, dict[str, list[float]]] = {}

    def _get_params(self) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def clone(self) -> SeasonalForecaster:
        return type(self)(**copy.deepcopy(self._get_params()))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({params})"

    def countries(self) -> list[str]:
        return list(self._level)

    def learn_hour(self, country: str, hour_start: float, plays: Mapping[str, int]) -> None:
        """The plays of each title in ``country`` during the hour starting ``hour_start``."""
        total = float(sum(plays.values()))
        if country not in self._level:
            if len(self._level) >= self.max_countries:
                oldest = next(iter(self._level))
                for table in (self._level, self._season, self._share):
                    table.pop(oldest, None)
            self._level[country] = total
            self._season[country] = [0.0] * HOURS_PER_WEEK
            self._share[country] = {}
        how = hour_of_week(hour_start)
        season = self._season[country]
        index = season[how] or 1.0
        level = self._level[country]
        self._level[country] = ((1 - self.level_alpha) * level
                                + self.level_alpha * total / max(index, 0.05))
        observed = total / level if level > 0 else 1.0
        season[how] = (observed if season[how] == 0.0
                       else (1 - self.season_alpha) * season[how] + self.season_alpha * observed)
        self._learn_shares(country, day_part(hour_start), plays, total)

    def _learn_shares(self, country: str, part: int, plays: Mapping[str, int],
                      total: float) -> None:
        shares = self._share[country]
        alpha = self.share_alpha
        keep = 1.0 - alpha
        for entry in shares.values():
            entry[0] *= keep
            entry[1 + part] *= keep
        if total > 0:
            for title, count in plays.items():
                title_shares = shares.get(title)
                if title_shares is None:
                    title_shares = shares[title] = [0.0] * (1 + DAY_PARTS)
                share = alpha * count / total
                title_shares[0] += share
                title_shares[1 + part] += share
        if len(shares) > self.titles_per_country * 1.25:
            ranked = sorted(shares.items(), key=lambda kv: -(kv[1][0] + max(kv[1][1:])))
            for title, _ in ranked[self.titles_per_country:]:
                del shares[title]

    def forget(self, title: str) -> None:
        """Drop ``title`` from every country's shares (it left the catalogue); the
        countries' volumes are unchanged."""
        for shares in self._share.values():
            shares.pop(title, None)

    def expected_volume(self, country: str, hour_start: float) -> float:
        level = self._level.get(country)
        if level is None:
            return 0.0
        index = self._season[country][hour_of_week(hour_start)] or 1.0
        return level * index

    def forecast(self, country: str, hour_start: float, n: int) -> list[tuple[str, float]]:
        """The ``n`` titles with the most expected plays in that hour, with the numbers."""
        shares = self._share.get(country)
        if not shares:
            return []
        volume = self.expected_volume(country, hour_start)
        part = 1 + day_part(hour_start)
        w = self.day_part_weight
        part_total = sum(entry[part] for entry in shares.values())
        scored = []
        for title, entry in shares.items():
            share = entry[0]
            if part_total > 0:
                share = (1 - w) * share + w * entry[part] / part_total
            scored.append((title, volume * share))
        scored.sort(key=lambda ts: (-ts[1], ts[0]))
        return scored[:n]

    def size(self) -> dict[str, int]:
        return {"countries": len(self._level),
                "titles": sum(len(s) for s in self._share.values())}
