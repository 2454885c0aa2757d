"""Time-decayed popularity: what many people are watching right now."""

from __future__ import annotations

import numpy as np

from models.base import Recommender, RowProfile, decay_factor, grow


class Trending(Recommender):
    """Exponentially decayed counts of positive plays per title, in event time.

    Each title keeps ``score`` as of ``t_last``; a positive event at ``t`` makes it
    ``score * 2**(-(t - t_last)/half_life_s) + y``. Scoring decays every candidate to the
    query time in one vectorised expression. Abandonment (``y <= 0``) does not count.

    Parameters
    ----------
    half_life_s
        Event-time seconds after which a play counts half as much.
    capacity
        Most titles held; the least recently seen are evicted.

    Examples
    --------
    >>> m = Trending(half_life_s=3600)
    >>> m.learn_one("u1", "a", 1.0, ts=1_000.0)
    >>> m.learn_one("u2", "b", 1.0, ts=4_600.0)
    >>> m.rank("u3", ["a", "b", "c"], ts=4_600.0)
    ['b', 'a', 'c']
    """

    def __init__(self, half_life_s: float = 24 * 3600.0, capacity: int = 200_000) -> None:
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be positive, got {half_life_s}")
        self.half_life_s = half_life_s
        self.capacity = capacity
        self._init_items(capacity)
        self._score = np.zeros(0)
        self._t = np.zeros(0)
        self._now = 0.0

    def _ensure_rows(self) -> None:
        self._score = grow(self._score, self._items.rows)
        self._t = grow(self._t, self._items.rows)

    def _reset_row(self, row: int) -> None:
        if row < len(self._score):
            self._score[row] = 0.0
            self._t[row] = 0.0

    def _learn_row(self, row, y, profile, ts):
        t = self._now if ts is None else ts
        self._now = max(self._now, t)
        if y <= 0:
            return
        self._score[row] = self._score[row] * decay_factor(t - self._t[row], self.half_life_s) + y
        self._t[row] = max(t, self._t[row])

    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        return self.decayed(rows, np.array(self._now if ts is None else ts))

    def decayed(self, rows: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Scores of ``rows`` (any shape) decayed to query times ``ts`` (broadcast against
        ``rows``' leading axes: one time per user for a (users, titles) block)."""
        now = np.maximum(ts, self._now)
        if now.ndim:
            now = now.reshape(now.shape + (1,) * (rows.ndim - now.ndim))
        return self._score[rows] * decay_factor(now - self._t[rows], self.half_life_s)

    def top(self, n: int, ts: float | None = None) -> list[tuple[str, float]]:
        """The ``n`` most trending titles with their scores."""
        rows = self._items.known_rows()
        if len(rows) == 0 or n <= 0:
            return []
        scores = self.decayed(rows, np.array(self._now if ts is None else ts))
        order = _top(scores, n)
        ids = self._items.ids
        return [(ids[row] or "", score)
                for row, score in zip(rows[order].tolist(), scores[order].tolist(), strict=True)]


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """``np.argsort(-scores, kind="stable")[:n]`` without sorting every score: the ``n``
    largest are found by a partition, then every score tied with the smallest of them
    is sorted along (ties keep their order, as in the full sort).

    Examples
    --------
    >>> _top(np.array([1.0, 3.0, 2.0, 3.0, 2.0]), 3)
    array([1, 3, 2])
    """
    if n >= len(scores):
        return np.argsort(-scores, kind="stable")
    threshold = scores[np.argpartition(-scores, n - 1)[:n]].min()
    if np.isnan(threshold):  # NaN scores sort last: the full sort handles them
        return np.argsort(-scores, kind="stable")[:n]
    near = np.flatnonzero(scores >= threshold)
    return near[np.argsort(-scores[near], kind="stable")[:n]]
