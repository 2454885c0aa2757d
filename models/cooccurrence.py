"""Item-to-item co-occurrence with recency decay: "because you watched X"."""

from __future__ import annotations

import numpy as np

from models.base import Recommender, RowProfile, grow


class CoOccurrence(Recommender):
    """Titles watched by the same people close together, weighted toward recent history.

    When a user engages positively with title ``j``, each of their ``window`` most recent
    positive titles ``h`` (most recent first, position ``p``) gains co-occurrence
    ``y * recency**p`` with ``j``, in both directions. Each title keeps its
    ``max_neighbours`` strongest neighbours in fixed-width arrays (a bounded "heavy
    hitters" table: a new neighbour replaces the weakest), so scoring a user is one
    ``bincount`` over their history's neighbour rows, normalised like a cosine by
    ``(popularity_h * popularity_c) ** 0.5``.

    Parameters
    ----------
    window
        Recent positive titles paired with each new one.
    recency
        Per-position decay of history weight, in (0, 1].
    max_neighbours
        Neighbours kept per title.
    capacity
        Most titles held.

    Examples
    --------
    >>> from models.base import UserProfile
    >>> m = CoOccurrence()
    >>> m.learn_one("u1", "a", 1.0, UserProfile("u1"))
    >>> m.learn_one("u1", "b", 1.0, UserProfile("u1", history=[("a", 1.0)]))
    >>> m.learn_one("u2", "c", 1.0, UserProfile("u2"))
    >>> m.rank("u3", ["c", "b"], UserProfile("u3", history=[("a", 1.0)]))
    ['b', 'c']
    """

    def __init__(self, window: int = 10, recency: float = 0.8, max_neighbours: int = 64,
                 capacity: int = 200_000) -> None:
        if window <= 0 or max_neighbours <= 0:
            raise ValueError("window and max_neighbours must be positive")
        if not 0 < recency <= 1:
            raise ValueError(f"recency must be in (0, 1], got {recency}")
        self.window = window
        self.recency = recency
        self.max_neighbours = max_neighbours
        self.capacity = capacity
        self._init_items(capacity)
        self._nbr = np.full((0, max_neighbours), -1, dtype=np.int64)
        self._w = np.zeros((0, max_neighbours))
        self._pop = np.zeros(0)
        self._decay = recency ** np.arange(window)

    def _ensure_rows(self) -> None:
        old = len(self._nbr)
        self._nbr = grow(self._nbr, self._items.rows)
        if len(self._nbr) > old:
            self._nbr[old:] = -1
        self._w = grow(self._w, self._items.rows)
        self._pop = grow(self._pop, self._items.rows)

    def _reset_row(self, row: int) -> None:
        if row < len(self._nbr):
            self._nbr[row] = -1
            self._w[row] = 0.0
            self._pop[row] = 0.0
            # Other titles' links to the evicted one now point at a recycled row.
            self._w[self._nbr == row] = 0.0
            self._nbr[self._nbr == row] = -1

    def _bump(self, rows: np.ndarray, other: np.ndarray, amounts: np.ndarray) -> None:
        """Add ``amounts[i]`` to the link ``rows[i] -> other[i]`` for every i, vectorised."""
        nbr = self._nbr[rows]
        match = nbr == other[:, None]
        found = match.any(axis=1)
        slot = np.where(found, match.argmax(axis=1), self._w[rows].argmin(axis=1))
        weights = self._w[rows, slot]
        # A new neighbour takes the weakest slot only if it would be at least as strong.
        replace = ~found & (amounts >= weights)
        add = found | replace
        r, s = rows[add], slot[add]
        self._nbr[r, s] = other[add]
        self._w[r, s] = np.where(found[add], weights[add], 0.0) + amounts[add]

    def _learn_row(self, row, y, profile, ts):
        if y <= 0:
            return
        self._pop[row] += y
        hist = profile.rows[profile.weights > 0][: self.window]
        hist = hist[hist != row]
        if len(hist) == 0:
            return
        amounts = y * self._decay[: len(hist)]
        target = np.full(len(hist), row, dtype=np.int64)
        self._bump(hist, target, amounts)
        self._bump(target, hist, amounts)

    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        positive = profile.weights > 0
        hist, hist_w = profile.rows[positive][: self.window], profile.weights[positive]
        if len(hist) == 0:
            return np.zeros(len(rows))
        weights = np.minimum(hist_w[: self.window], 3.0) * self._decay[: len(hist)]
        weights = weights / np.sqrt(self._pop[hist] + 1.0)
        nbr = self._nbr[hist]
        valid = nbr >= 0
        totals = np.bincount(
            nbr[valid], weights=(self._w[hist] * weights[:, None])[valid],
            minlength=self._items.rows,
        )
        return totals[rows] / np.sqrt(self._pop[rows] + 1.0)

    def explain(self, row: int, profile: RowProfile) -> int | None:
        """The history row contributing most to ``row``'s score (for the reason string)."""
        hist = profile.rows[profile.weights > 0][: self.window]
        best, best_w = None, 0.0
        for h in hist:
            hit = np.nonzero(self._nbr[h] == row)[0]
            if len(hit) and self._w[h, hit[0]] > best_w:
                best, best_w = int(h), float(self._w[h, hit[0]])
        return best

    def size(self):
        return {"titles": len(self._items), "links": int((self._nbr[: self._items.rows] >= 0).sum())}
