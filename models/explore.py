"""Exploration by Thompson sampling: cold start for new users and new titles."""

from __future__ import annotations

import numpy as np

from models.base import Recommender, RowProfile, grow


class ThompsonExplorer(Recommender):
    """A Beta-Bernoulli bandit over titles: how often does starting a title go well?

    Each title has ``Beta(prior_a + successes, prior_b + failures)``: a positive event
    (watched on, completed, resumed) is a success, an abandonment a failure. Scoring draws
    one sample per candidate, so titles nobody has tried yet (wide posteriors) get shown
    now and then and well-liked ones most of the time. This ranks for users with no
    history, and fills the hybrid's exploration slots.

    Parameters
    ----------
    prior_a, prior_b
        The Beta prior for a title never seen.
    seed
        Seeds the sampler (deterministic under a seed).
    capacity
        Most titles held.

    Examples
    --------
    >>> m = ThompsonExplorer(seed=0)
    >>> for _ in range(50):
    ...     m.learn_one("u", "good", 1.0)
    ...     m.learn_one("u", "bad", -1.0)
    >>> m.rank("new-user", ["bad", "good"])
    ['good', 'bad']
    """

    def __init__(self, prior_a: float = 1.0, prior_b: float = 1.0, seed: int = 42,
                 capacity: int = 200_000) -> None:
        if prior_a <= 0 or prior_b <= 0:
            raise ValueError("prior_a and prior_b must be positive")
        self.prior_a = prior_a
        self.prior_b = prior_b
        self.seed = seed
        self.capacity = capacity
        self._init_items(capacity)
        self._rng = np.random.default_rng(seed)
        self._a = np.zeros(0)
        self._b = np.zeros(0)

    def _ensure_rows(self) -> None:
        self._a = grow(self._a, self._items.rows)
        self._b = grow(self._b, self._items.rows)

    def _reset_row(self, row: int) -> None:
        if row < len(self._a):
            self._a[row] = self._b[row] = 0.0

    def _learn_row(self, row, y, profile, ts):
        if y > 0:
            self._a[row] += min(y, 1.0)
        else:
            self._b[row] += min(-y, 1.0) if y < 0 else 1.0

    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        return self._rng.beta(self.prior_a + self._a[rows], self.prior_b + self._b[rows])

    def exposure(self, rows: np.ndarray) -> np.ndarray:
        """Evidence seen per title (successes + failures)."""
        return self._a[rows] + self._b[rows]
