"""Online matrix factorisation for implicit feedback, BPR-style, with item-based users."""

from __future__ import annotations

import numpy as np

from models.base import WEIGHT_CLIP, HistoryMatrix, Recommender, RowProfile, grow


class ImplicitMF(Recommender):
    """Factorisation learned one event at a time with sampled negatives (BPR).

    Users are not stored: a user's vector is the weighted sum of the "history" factors of
    their recent positive titles (as in FISM / asymmetric SVD), each weighted by its
    feedback (clipped) and ``history_recency`` per position, most recent first, and the
    weights scaled to unit length; so any worker can score any user from the profile in
    Redis and the model's memory is bounded by the catalogue.
    ``score(u, i) = u . X[i] + b[i]``. A positive event takes one BPR step against
    ``n_negatives`` titles drawn uniformly from those watched so far (a title nobody
    watched is no competition worth learning from); a negative event (early abandonment)
    takes a pointwise step pushing the score down.

    Parameters
    ----------
    n_factors
        Latent dimensions.
    learning_rate, l2
        SGD step size and L2 penalty.
    n_negatives
        Sampled negatives per positive event.
    history_recency
        Per-position decay of a history title's weight in the user vector, in (0, 1].
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

    def __init__(self, n_factors: int = 32, learning_rate: float = 0.2, l2: float = 0.002,
                 n_negatives: int = 8, history_recency: float = 0.9, init_scale: float = 0.05,
                 seed: int = 42, capacity: int = 200_000) -> None:
        if n_factors <= 0 or n_negatives < 0:
            raise ValueError("n_factors must be positive and n_negatives >= 0")
        if not 0 < history_recency <= 1:
            raise ValueError(f"history_recency must be in (0, 1], got {history_recency}")
        self.n_factors = n_factors
        self.learning_rate = learning_rate
        self.l2 = l2
        self.n_negatives = n_negatives
        self.history_recency = history_recency
        self.init_scale = init_scale
        self.seed = seed
        self.capacity = capacity
        self._init_items(capacity)
        self._rng = np.random.default_rng(seed)
        self._x = np.zeros((0, n_factors), dtype=np.float32)
        self._y = np.zeros((0, n_factors), dtype=np.float32)
        self._b = np.zeros(0, dtype=np.float32)
        self._initialised = np.zeros(0, dtype=bool)
        # Titles with a positive event so far, the pool negatives are drawn from: a title
        # nobody has watched is no competition worth learning from.
        self._engaged = np.zeros(0, dtype=bool)
        self._engaged_rows = np.zeros(0, dtype=np.int64)
        self._n_engaged = 0

    def _ensure_rows(self) -> None:
        rows = self._items.rows
        self._x = grow(self._x, rows)
        self._y = grow(self._y, rows)
        self._b = grow(self._b, rows)
        self._engaged = grow(self._engaged, rows)
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
            self._engaged[row] = False

    def mark_engaged(self, rows: np.ndarray) -> None:
        """Titles ``rows`` had a positive event: from now on they are sampled as negatives."""
        fresh = rows[~self._engaged[rows]]
        if len(fresh) == 0:  # usually: every title was engaged with before
            return
        new = np.unique(fresh)
        if len(new):
            self._engaged[new] = True
            self._engaged_rows = grow(self._engaged_rows, self._n_engaged + len(new))
            self._engaged_rows[self._n_engaged:self._n_engaged + len(new)] = new
            self._n_engaged += len(new)

    def sample_negatives(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Rows drawn uniformly from the engaged titles, and which of them are usable (an
        evicted title's row may still be listed)."""
        if self._n_engaged == 0:
            return np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=bool)
        rows = self._engaged_rows[self._rng.integers(0, self._n_engaged, size=shape)]
        return rows, self._engaged[rows] & self._initialised[rows]

    def user_vectors(self, hist: HistoryMatrix) -> tuple[np.ndarray, np.ndarray]:
        """User vectors (users, factors) and the history weights (users, history) used."""
        w = np.where(hist.positive, np.minimum(hist.weights, WEIGHT_CLIP), 0.0)
        w = w * self.history_recency ** np.maximum(hist.positive_rank(), 0)
        norm = np.sqrt((w * w).sum(axis=1, keepdims=True))
        w = w / np.where(norm > 0, norm, 1.0)
        users = np.einsum("ql,qlf->qf", w, self._y[hist.clipped]).astype(np.float32)
        return users, w

    def _learn_row(self, row, y, profile, ts):
        users, w = self.user_vectors(profile.matrix())
        u, w = users[0].astype(np.float64), w[0]
        hist = profile.rows
        lr, l2 = self.learning_rate, self.l2
        x, b = self._x, self._b
        xj = x[row].astype(np.float64)
        if y > 0:
            negs, ok = self.sample_negatives((self.n_negatives,))
            negs = negs[ok & (negs != row)]
            if not self._engaged[row]:
                self.mark_engaged(np.array([row]))
            if len(negs) == 0:
                return
            xk = x[negs].astype(np.float64)
            apart = xj - xk
            diff = apart @ u + b[row] - b[negs]
            # The BPR steps against every negative, from the same starting point and
            # averaged: one event moves the model by one step whatever n_negatives is (a
            # sum of eight undamped steps diverges on small catalogues).
            g = np.where(diff < 30, lr * min(y, WEIGHT_CLIP) / (1.0 + np.exp(np.minimum(diff, 30))),
                         0.0) / len(negs)
            g_sum, minus_g = g.sum(), -g
            x[row] += g_sum * u - lr * l2 * xj
            b[row] += g_sum - lr * l2 * b[row]
            dx = minus_g[:, None] * u - lr * l2 * xk / len(negs)
            db = minus_g - lr * l2 * b[negs] / len(negs)
            if len(set(negs.tolist())) == len(negs):  # usually: plain fancy indexing
                x[negs] += dx
                b[negs] += db
            else:
                np.add.at(x, negs, dx)
                np.add.at(b, negs, db)
            grad_u = g @ apart
        else:
            score = float(u @ xj + b[row])
            g = lr * min(-y, WEIGHT_CLIP) / (1.0 + np.exp(-score)) if score > -30 else 0.0
            step = g * u + lr * l2 * xj
            x[row] -= step
            b[row] -= g
            grad_u = -g * (xj - step)
        liked = w > 0
        if liked.any():
            h = hist[liked]
            self._y[h] += (w[liked][:, None] * grad_u - lr * l2 * self._y[h]).astype(np.float32)

    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        users, _ = self.user_vectors(profile.matrix())
        return self.scores(users, rows)[0]

    def scores(self, users: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Scores (users, titles) of ``rows`` (titles, or (users, titles) per user)."""
        if rows.ndim == 1:
            return (users @ self._x[rows].T + self._b[rows][None, :]).astype(np.float64)
        return (np.einsum("qf,qcf->qc", users, self._x[rows]) + self._b[rows]).astype(np.float64)
