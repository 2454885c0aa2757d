"""The worker's in-process catalogue: what rows, artwork, search and notifications need.

The models know titles only as rows and genres; the product features also need names,
series, cast and artwork. :class:`TitleIndex` keeps those for every catalogue title,
bounded by a capacity (the oldest-added titles are dropped first, as the item models
evict theirs), and tracks the newest titles for the ``new_releases`` row. It is filled
by the catalogue agent and, at start-up, from the catalogue copy in Redis
(``streams.checkpoint``). No I/O here.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from models.base import remember

# Newest titles remembered for the new_releases row; a row shows far fewer.
NEWEST_CAP = 200


@dataclass(frozen=True, slots=True)
class TitleInfo:
    title_id: str
    name: str
    kind: str
    series_id: str | None
    genres: tuple[str, ...]
    cast: tuple[str, ...]
    director: str | None
    artwork_ids: tuple[str, ...]
    added_ts: float
    # ("g:<genre>", 1.0) per genre and ("c:<person>", 0.5) for the first three cast
    # members: what a user's genre and cast affinities are summed from.
    tokens: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_catalog(cls, title: Mapping[str, Any]) -> TitleInfo:
        """From a validated ``catalog`` event (``streamrec.schema.validate_catalog``)."""
        genres = tuple(title.get("genres") or ())
        cast = tuple(title.get("cast") or ())
        tokens = tuple(("g:" + g.lower(), 1.0) for g in genres) + tuple(
            ("c:" + c.lower(), 0.5) for c in cast[:3])
        return cls(
            title_id=title["title_id"],
            name=title.get("name") or title["title_id"],
            kind=title.get("kind") or "movie",
            series_id=title.get("series_id"),
            genres=genres,
            cast=cast,
            director=title.get("director"),
            artwork_ids=tuple(title.get("artwork_ids") or ()),
            added_ts=float(title.get("ts") or 0.0),
            tokens=tokens,
        )


class TitleIndex:
    """title_id -> :class:`TitleInfo`, bounded, with the newest titles kept in order.

    Parameters
    ----------
    capacity
        Most titles held; adding one more drops the oldest added.

    Examples
    --------
    >>> index = TitleIndex(capacity=2)
    >>> index.add({"title_id": "a", "name": "Heat", "ts": 1.0})
    >>> index.add({"title_id": "b", "name": "Ran", "ts": 3.0, "kind": "episode",
    ...            "series_id": "s1"})
    >>> index.add({"title_id": "c", "name": "Up", "ts": 2.0})
    >>> "a" in index, index.newest(5), index["b"].series_id
    (False, ['b', 'c'], 's1')
    """

    def __init__(self, capacity: int = 200_000) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        # dicts keep insertion order: the first key is the oldest added. Read-only for
        # callers (``by_id``): the hot path looks titles up without a method call.
        self._titles: dict[str, TitleInfo] = {}
        self.by_id = self._titles
        # title_id -> series_id, for episodes only (the rows' one-episode-per-series rule
        # looks every row title up in it).
        self.series: dict[str, str] = {}
        self._newest: list[tuple[float, str]] = []  # ascending (added_ts, title_id)
        # Titles the catalogue removed (:meth:`withdraw`), oldest first, at most
        # ``capacity`` (as the item models remember theirs): events still naming one (a
        # stale client, a resume point) must not put it back on a page or in a cache
        # hint. Read-only for callers (``title in index.removed``).
        self.removed: dict[str, None] = {}
        self.on_add: list[Any] = []
        self.on_remove: list[Any] = []

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["on_add"], state["on_remove"] = [], []
        return state

    def __len__(self) -> int:
        return len(self._titles)

    def __contains__(self, title_id: object) -> bool:
        return title_id in self._titles

    def __getitem__(self, title_id: str) -> TitleInfo:
        return self._titles[title_id]

    def __iter__(self) -> Iterator[TitleInfo]:
        return iter(self._titles.values())

    def get(self, title_id: str) -> TitleInfo | None:
        return self._titles.get(title_id)

    def add(self, title: Mapping[str, Any]) -> None:
        """A catalogue title was added or updated."""
        info = TitleInfo.from_catalog(title)
        if self._titles.get(info.title_id) == info:
            # The same entry again (every worker's catalogue reader and the catalogue
            # agent both add it; a replayed catalogue): removing it would make the
            # listeners forget what was learned about the title.
            return
        self.removed.pop(info.title_id, None)  # (back) in the catalogue
        if info.title_id in self._titles:
            self.remove(info.title_id)
        elif len(self._titles) >= self.capacity:
            self.remove(next(iter(self._titles)))
        self._titles[info.title_id] = info
        if info.series_id is not None:
            self.series[info.title_id] = info.series_id
        entry = (info.added_ts, info.title_id)
        if len(self._newest) < NEWEST_CAP or entry > self._newest[0]:
            bisect.insort(self._newest, entry)
            del self._newest[: max(0, len(self._newest) - NEWEST_CAP)]
        for callback in self.on_add:
            callback(info)

    def remove(self, title_id: str) -> None:
        info = self._titles.pop(title_id, None)
        if info is None:
            return
        self.series.pop(title_id, None)
        entry = (info.added_ts, title_id)
        i = bisect.bisect_left(self._newest, entry)
        if i < len(self._newest) and self._newest[i] == entry:
            del self._newest[i]
        for callback in self.on_remove:
            callback(info)

    def withdraw(self, title_id: str) -> None:
        """The catalogue removed ``title_id``: :meth:`remove` it, and remember that it is
        gone (``removed``) until the catalogue adds it again. (:meth:`remove` alone is
        also what an update or an eviction does.)

        Examples
        --------
        >>> index = TitleIndex()
        >>> index.add({"title_id": "a", "name": "Heat"})
        >>> index.withdraw("a")
        >>> "a" in index, "a" in index.removed
        (False, True)
        """
        self.remove(title_id)
        remember(self.removed, title_id, self.capacity)

    def newest(self, n: int) -> list[str]:
        """The ``n`` most recently added titles, newest first."""
        return [t for _, t in reversed(self._newest[-n:])] if n > 0 else []

    def series_of(self, title_id: str) -> str | None:
        return self.series.get(title_id)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "removed" not in state:  # pickled before removed titles were remembered
            self.removed = {}
        if "series" not in state:  # pickled before the series map existed
            self.series = {t: i.series_id for t, i in self._titles.items()
                           if i.series_id is not None}
