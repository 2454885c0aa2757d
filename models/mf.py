"""Online matrix factorisation for implicit feedback, BPR-style, with item-based users."""

from __future__ import annotations

import numpy as np

from models.base import Recommender, RowProfile, grow


class ImplicitMF(Recommender):
    """Factorisation learned one event at a time with sampled negatives (BPR).

    Users are not stored: a user's vector is the weighted mean of the "history" factors of
    their recent positive titles (as in FISM / asymmetric SVD), so any worker can score any
    user from the profile in Redis and the model's memory is bounded by the catalogue.
    ``score(u, i) = u . X[i] + b[i]``. A positive event takes one BPR step against
    ``n_negatives`` titles drawn uniformly from those known; a negative event (early
    abandonment) takes a pointwise step pushing the score down.

    Parameters
    ----------
    n_factors
        Latent dimensions.
    learning_rate, l2
        SGD step size and L2 penalty.
    n_negatives
        Sampled negatives per positive event.
    init_scale
        Standard deviation of the initial factors.
    seed
        Seeds factor initialisation and negative sampling (deterministic under a seed).
    capacity
        Most titles held.

    Examples
    --------
    >>> from models.base import UserProfile
    >>> m = ImplicitMF(n_factors=8, seed=1)
    >>> for user, item in [("u", "a"), ("v", "c")]:
    ...     m.learn_one(user, item, 1.0, UserProfile(user))
    >>> for _ in range(200):
    ...     m.learn_one("u", "b", 1.0, UserProfile("u", history=[("a", 1.0)]))
    ...     m.learn_one("v", "d", 1.0, UserProfile("v", history=[("c", 1.0)]))
    >>> m.rank("w", ["d", "b"], UserProfile("w", history=[("a", 1.0)]))
    ['b', 'd']
    """

    def __init__(self, n_factors: int = 32, learning_rate: float = 0.05, l2: float = 0.002,
                 n_negatives: int = 2, init_scale: float = 0.05, seed: int = 42,
                 capacity: int = 200_000) -> None:
        if n_factors <= 0 or n_negatives < 0:
            raise ValueError("n_factors must be positive and n_negatives >= 0")
        self.n_factors = n_factors
        self.learning_rate = learning_rate
        self.l2 = l2
        self.n_negatives = n_negatives
        self.init_scale = init_scale
        self.seed = seed
        self.capacity = capacity
        self._init_items(capacity)
        self._rng = np.random.default_rng(seed)
        self._x = np.zeros((0, n_factors), dtype=np.float32)
        self._y = np.zeros((0, n_factors), dtype=np.float32)
        self._b = np.zeros(0, dtype=np.float32)
        self._initialised = np.zeros(0, dtype=bool)

    def _ensure_rows(self) -> None:
        rows = self._items.rows
        self._x = grow(self._x, rows)
        self._y = grow(self._y, rows)
        self._b = grow(self._b, rows)
        self._initialised = grow(self._initialised, rows)
        new = np.nonzero(~self._initialised[:rows])[0]
        if len(new):
            self._init(new)

    def _init(self, rows: np.ndarray) -> None:
        shape = (len(rows), self.n_factors)
        self._x[rows] = self._rng.normal(0.0, self.init_scale, shape)
        self._y[rows] = self._rng.normal(0.0, self.init_scale, shape)
        self._b[rows] = 0.0
        self._initialised[rows] = True

    def _reset_row(self, row: int) -> None:
        if row < len(self._initialised):
            self._init(np.array([row]))

    def _user_vector(self, profile: RowProfile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        positive = profile.weights > 0
        hist = profile.rows[positive]
        if len(hist) == 0:
            return np.zeros(self.n_factors, dtype=np.float32), hist, np.zeros(0)
        # Clip so one binge-watched title cannot dominate the user's vector.
        w = np.minimum(profile.weights[positive], 3.0)
        w = w / np.sqrt(len(hist)) / w.mean()
        return (w @ self._y[hist]).astype(np.float32), hist, w

    def _learn_row(self, row, y, profile, ts):
        u, hist, w = self._user_vector(profile)
        lr, l2 = self.learning_rate, self.l2
        x, b = self._x, self._b
        if y > 0:
            known = self._items.rows
            negs = self._rng.integers(0, known, size=self.n_negatives) if known > 1 else []
            grad_u = np.zeros(self.n_factors, dtype=np.float32)
            xj = x[row].copy()
            for k in negs:
                if k == row or not self._initialised[k]:
                    continue
                xk = x[k].copy()
                diff = float(u @ (xj - xk) + b[row] - b[k])
                g = lr * min(y, 3.0) / (1.0 + np.exp(diff)) if diff < 30 else 0.0
                x[row] += g * u - lr * l2 * x[row]
                x[k] += -g * u - lr * l2 * xk
                b[row] += g - lr * l2 * b[row]
                b[k] += -g - lr * l2 * b[k]
                grad_u += g * (xj - xk)
        else:
            score = float(u @ x[row] + b[row])
            g = lr * min(-y, 3.0) / (1.0 + np.exp(-score)) if score > -30 else 0.0
            x[row] -= g * u + lr * l2 * x[row]
            b[row] -= g
            grad_u = -g * x[row]
        if len(hist):
            self._y[hist] += np.outer(w, grad_u).astype(np.float32) - lr * l2 * self._y[hist]

    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        u, _, _ = self._user_vector(profile)
        return (self._x[rows] @ u + self._b[rows]).astype(np.float64)
