"""Reference rankers every streamrec model must beat: all-time popularity and random."""

from __future__ import annotations

import numpy as np

from models.base import Recommender, RowProfile, grow


class Popularity(Recommender):
    """All-time count of positive events per title: the literature's streaming baseline.

    No decay and no personalisation: every user gets the titles most often engaged with
    so far. This is the list a product team gets for free, and under test-then-train
    evaluation it is a hard one to beat (Kitazawa, CHIIR 2017).

    Parameters
    ----------
    capacity
        Most titles held.

    Examples
    --------
    >>> m = Popularity()
    >>> for item in ["a", "b", "b", "c", "b", "c"]:
    ...     m.learn_one("u", item, 1.0)
    >>> m.rank("v", ["a", "b", "c", "new"])
    ['b', 'c', 'a', 'new']
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._init_items(capacity)
        self._count = np.zeros(0)

    def _ensure_rows(self) -> None:
        self._count = grow(self._count, self._items.rows)

    def _reset_row(self, row: int) -> None:
        if row < len(self._count):
            self._count[row] = 0.0

    def _learn_row(self, row, y, profile, ts):
        if y > 0:
            self._count[row] += 1.0

    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        return self._count[rows]


class RandomRanker(Recommender):
    """Uniformly random scores: the floor any model must clear.

    Parameters
    ----------
    seed
        Seeds the scores (deterministic under a seed).
    capacity
        Most titles held.

    Examples
    --------
    >>> a, b = RandomRanker(seed=3), RandomRanker(seed=3)
    >>> items = ["a", "b", "c", "d"]
    >>> for m in (a, b):
    ...     for item in items:
    ...         m.learn_one("u", item, 1.0)
    >>> a.rank("u", items) == b.rank("u", items)
    True
    >>> sorted(a.rank("u", items)) == items
    True
    """

    def __init__(self, seed: int = 42, capacity: int = 200_000) -> None:
        self.seed = seed
        self.capacity = capacity
        self._init_items(capacity)
        self._rng = np.random.default_rng(seed)

    def _learn_row(self, row, y, profile, ts):
        """Nothing to learn."""

    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        return self._rng.random(len(rows))
