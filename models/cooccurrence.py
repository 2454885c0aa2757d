"""Item-to-item co-occurrence with recency decay: "because you watched X"."""

from __future__ import annotations

import weakref

import numpy as np

from models.base import WEIGHT_CLIP, HistoryMatrix, Recommender, RowProfile, grow

# Arrays of rows found to be 0..n-1 in order, by id while they live. Ranking one user at
# a time passes the item table's cached known rows (never modified; replaced by a new
# array when titles come or go) on every call: checked once, not per user.
_IN_ORDER: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()


class CoOccurrence(Recommender):
    """Titles liked by the same people, weighted toward the user's recent history.

    Learning: when a user engages positively with title ``j``, each of their ``window``
    most recent positive titles ``h`` (most recent first, position ``p``) gains
    co-occurrence ``y * recency**p`` with ``j``, in both directions. Each title keeps its
    ``max_neighbours`` strongest neighbours in fixed-width arrays (a bounded "heavy
    hitters" table: a new neighbour takes the weakest slot and its count, as in
    Space-Saving, Metwally et al. 2005), so memory is bounded by the catalogue.

    Scoring: the user's ``history`` most recent positive titles vote for their
    neighbours with weight ``history_recency**p``, so the last few titles count most
    ("because you watched"). A link ``h -> c`` is normalised by ``pop_h**beta *
    pop_c**alpha``: ``beta`` turns raw counts into "how often people who liked ``h`` went
    on to ``c``", and ``alpha < beta`` leaves a small popularity prior in the ranking
    (``alpha = beta = 0.5`` is cosine similarity, which over-promotes rare titles).

    Parameters
    ----------
    window
        Recent positive titles paired with each new one when learning.
    recency
        Per-position decay of a pair's weight when learning, in (0, 1].
    history
        Recent positive titles that vote when scoring.
    history_recency
        Per-position decay of a vote, in (0, 1].
    alpha, beta
        Popularity exponents of the candidate and of the history title.
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

    def __init__(self, window: int = 20, recency: float = 0.98, history: int = 50,
                 history_recency: float = 0.8, alpha: float = 0.2, beta: float = 0.5,
                 max_neighbours: int = 256, capacity: int = 200_000) -> None:
        if window <= 0 or history <= 0 or max_neighbours <= 0:
            raise ValueError("window, history and max_neighbours must be positive")
        for name, value in (("recency", recency), ("history_recency", history_recency)):
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if alpha < 0 or beta < 0:
            raise ValueError("alpha and beta must be >= 0")
        self.window = window
        self.recency = recency
        self.history = history
        self.history_recency = history_recency
        self.alpha = alpha
        self.beta = beta
        self.max_neighbours = max_neighbours
        self.capacity = capacity
        self._init_items(capacity)
        self._nbr = np.full((0, max_neighbours), -1, dtype=np.int64)
        self._w = np.zeros((0, max_neighbours))
        self._pop = np.zeros(0)
        # Per-position weights: of a pair when learning, of a vote when scoring.
        self._decay = recency ** np.arange(window)
        self._vote_decay = history_recency ** np.arange(history)

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
            stale = self._nbr == row
            self._w[stale] = 0.0
            self._nbr[stale] = -1

    def _bump(self, rows: np.ndarray, other: np.ndarray, amounts: np.ndarray) -> None:
        """Add ``amounts[i]`` to the link ``rows[i] -> other[i]`` (distinct ``rows``),
        vectorised; a new link takes the weakest slot and its count (Space-Saving)."""
        nbr = self._nbr[rows]
        match = nbr == other[:, None]
        found = match.any(axis=1)
        slot = np.where(found, match.argmax(axis=1), self._w[rows].argmin(axis=1))
        self._nbr[rows, slot] = other
        self._w[rows, slot] += amounts

    def _merge(self, row: int, others: np.ndarray, amounts: np.ndarray) -> None:
        """Add ``amounts`` to the links ``row -> others`` (distinct titles), keeping the
        ``max_neighbours`` strongest of the old and new links."""
        nbr, w = self._nbr[row], self._w[row]
        match = nbr[:, None] == others[None, :]
        found = match.any(axis=0)
        w[match.argmax(axis=0)[found]] += amounts[found]
        if found.all():
            return
        links = np.concatenate((nbr, others[~found]))
        weights = np.concatenate((w, amounts[~found]))
        weights[links < 0] = -1.0  # empty slots go first
        keep = np.argpartition(-weights, self.max_neighbours - 1)[: self.max_neighbours]
        kept = weights[keep]
        self._nbr[row] = np.where(kept >= 0, links[keep], -1)
        self._w[row] = np.maximum(kept, 0.0)

    def _learn_row(self, row, y, profile, ts):
        if y <= 0:
            return
        self._pop[row] += y
        hist = profile.rows[profile.weights > 0][: self.window]
        hist = hist[hist != row]
        if len(hist) == 0:
            return
        amounts = y * self._decay[: len(hist)]
        self._bump(hist, np.full(len(hist), row, dtype=np.int64), amounts)
        self._merge(row, hist, amounts)

    def counts(self, rows: np.ndarray | slice) -> np.ndarray:
        """Each title's summed positive feedback (all time), what links are normalised by."""
        return self._pop[rows]

    def popularity(self, rows: np.ndarray) -> np.ndarray:
        """``log1p`` of each title's summed positive feedback (all time)."""
        return np.log1p(self.counts(rows))

    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        if not (profile.weights > 0).any():
            return self.popularity(rows)
        return self.score_matrix(profile.matrix())[0, rows]

    def _votes(self, hist: HistoryMatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, history row, weight) of every vote: the ``history`` most recent positive
        titles, decayed by position and normalised by their popularity."""
        rank = hist.positive_rank()
        q_idx, pos = np.nonzero(hist.positive & (rank < self.history))
        h = hist.rows[q_idx, pos]
        weight = (np.minimum(hist.weights[q_idx, pos], WEIGHT_CLIP)
                  * self._vote_decay[rank[q_idx, pos]] / (self.counts(h) + 1.0) ** self.beta)
        return q_idx, h, weight

    def score_matrix(self, hist: HistoryMatrix, cols: np.ndarray | None = None) -> np.ndarray:
        """(users, rows) scores of every item-table row for every user of ``hist`` (0 for
        users with no positive history), one ``bincount``; of rows ``cols`` only if given
        (the normalisation is then done for those alone)."""
        totals = self._totals(hist)
        if totals is None:
            return np.zeros((len(hist.rows), self._items.rows if cols is None else len(cols)))
        # Normalised in place, on a view when cols are all the rows in order (usually):
        # no second and third (users, rows) array.
        if cols is None:
            cols = np.arange(self._items.rows)
            everything = True
        elif _IN_ORDER.get(id(cols)) is cols:
            everything = len(cols) == totals.shape[1]
        else:
            everything = (len(cols) == totals.shape[1] and len(cols) > 0 and cols[0] == 0
                          and bool((np.diff(cols) == 1).all()))
            if everything:
                _IN_ORDER[id(cols)] = cols
        out = totals if everything else totals[:, cols]
        out /= ((self.counts(cols) + 1.0) ** self.alpha)[None, :]
        return out

    def score_at(self, hist: HistoryMatrix, rows: np.ndarray) -> np.ndarray:
        """``score_matrix(hist)[u, rows[u]]`` for (users, k) ``rows``: only those scores
        normalised (element by element the same arithmetic).

        Examples
        --------
        >>> from models.base import UserProfile
        >>> m = CoOccurrence()
        >>> m.learn_one("u1", "a", 1.0, UserProfile("u1"))
        >>> m.learn_one("u1", "b", 1.0, UserProfile("u1", history=[("a", 1.0)]))
        >>> hist = RowProfile.build(m._items, UserProfile("u2", history=[("a", 1.0)])).matrix()
        >>> rows = np.array([[1, 0]])
        >>> bool((m.score_at(hist, rows) == m.score_matrix(hist)[:, [1, 0]]).all())
        True
        """
        totals = self._totals(hist)
        if totals is None:
            return np.zeros(rows.shape)
        return totals[np.arange(len(rows))[:, None], rows] / (self.counts(rows) + 1.0) ** self.alpha

    def _totals(self, hist: HistoryMatrix) -> np.ndarray | None:
        """(users, rows) summed votes before normalisation; None when nobody votes."""
        n_rows = self._items.rows
        n_users = len(hist.rows)
        q_idx, h, weight = self._votes(hist)
        if len(q_idx) == 0:
            return None
        nbr = self._nbr[h]
        votes = self._w[h] * weight[:, None]
        # The same links in the same order either way (so the same sums); the masking
        # and offsets are skipped when they change nothing (one user, full neighbour lists).
        cells = nbr if n_users == 1 else q_idx[:, None] * n_rows + nbr
        valid = nbr >= 0
        if not valid.all():
            cells, votes = cells[valid], votes[valid]
        totals = np.bincount(cells.ravel(), weights=votes.ravel(),
                             minlength=n_users * n_rows).reshape(n_users, n_rows)
        return totals.astype(np.float64, copy=False)  # (int64 when no link is valid)

    def sources(self, targets: np.ndarray, hist: HistoryMatrix) -> np.ndarray:
        """For the reason strings: the history row contributing most to the score of each
        row of ``targets``, for the one user of ``hist`` (-1 where none does).

        Examples
        --------
        >>> from models.base import UserProfile
        >>> m = CoOccurrence()
        >>> m.learn_one("u1", "a", 1.0, UserProfile("u1"))
        >>> m.learn_one("u1", "b", 1.0, UserProfile("u1", history=[("a", 1.0)]))
        >>> m.learn_one("u1", "c", 1.0, UserProfile("u1"))
        >>> profile = RowProfile.build(m._items, UserProfile("u2", history=[("a", 1.0)]))
        >>> m.sources(m.item_rows(["b", "c"]), profile.matrix()).tolist()
        [0, -1]
        """
        _, h, weights = self._votes(hist)
        if len(h) == 0 or len(targets) == 0:
            return np.full(len(targets), -1, dtype=np.int64)
        # Each vote's link weight to each target, (votes, targets): only the targets' slots
        # of the votes' neighbour lists are looked at (a title is listed once per row).
        # (An empty slot, -1, reads the last entry: always -1.)
        place = np.full(self._items.rows + 1, -1, dtype=np.int64)
        place[targets] = np.arange(len(targets))
        at = place[self._nbr[h]]
        vote, slot = np.nonzero(at >= 0)
        links = np.zeros((len(h), len(targets)))
        links[vote, at[vote, slot]] = self._w[h][vote, slot]
        contributions = links * weights[:, None]
        best = contributions.argmax(axis=0)
        strongest = contributions[best, np.arange(len(targets))]
        return np.where(strongest > 0, h[best], -1)

    def size(self):
        links = int((self._nbr[: self._items.rows] >= 0).sum())
        return {"titles": len(self._items), "links": links}
