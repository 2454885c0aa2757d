"""The hybrid ranker: a learned, two-stage blend of every model, with exploration and diversity."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.base import (
    MAX_HISTORY,
    TOP_BY_ARGMAX,
    HistoryMatrix,
    ItemTable,
    Recommender,
    RowProfile,
    UserProfile,
    remember,
    top_k,
)
from models.content import ContentModel
from models.cooccurrence import CoOccurrence
from models.explore import ThompsonExplorer
from models.mf import ImplicitMF
from models.recent import RecentCoOccurrence
from models.trending import Trending

# The blended features, in order: one per component, plus the titles' all-time popularity
# (kept by the co-occurrence model) and recent co-occurrence (models.recent).
COMPONENTS = ("trending", "cooccurrence", "mf", "content", "popularity", "recent")
_COOCCURRENCE = COMPONENTS.index("cooccurrence")
# The reason shown for a pick by the component contributing most (co-occurrence's and
# content's are refined per title in Hybrid._reasons).
REASON_OF = {"trending": "trending", "mf": "similar_users", "popularity": "popular",
             "recent": "similar_users"}
# Titles outside a user's pool are ranked after every pool title, in first-stage order:
# pool scores are sums of a few standardised features, far smaller than this.
BELOW_POOL = 1e3
# Recent co-occurrence starts at 0: the blend learns what it is worth next to the
# all-time links it mostly agrees with.
DEFAULT_WEIGHTS = {"trending": 0.1, "cooccurrence": 1.0, "mf": 0.3, "content": 0.3,
                   "popularity": 0.3, "recent": 0.0}
# A blend step ranks every title anybody has engaged with; past this many (about 0.5 ms
# of work per step) only those that can make a pool: the users' co-occurrence neighbours
# and the most popular titles.
LEARN_MAX_TITLES = 4096
# Layout of the learned state; a checkpoint of another layout is not loaded.
STATE_FORMAT = 3
# The blend's context (see Hybrid): anchors on h (a new user, some history, a long one),
# and the part of the day (UTC hours 0-5, 6-11, 12-17, 18-23).
CONTEXT_KNOTS = 3
DAYPARTS = 4
# The genre cap stretches to a genre's share of the user's own history, but however much
# that leans to one genre, 2 of the top 10 always go to others.
MOST_OF_ONE_GENRE = 8


@dataclass(frozen=True, slots=True)
class Recommendation:
    title_id: str
    score: float
    reason: str


@dataclass
class Ranking:
    """A block of users x candidate titles scored by :meth:`Hybrid.rank_matrix`.

    ``scores`` (users, titles): pool titles by the blend, the others below them in
    first-stage order. ``pool`` (users, pool) positions of each user's pool among the
    titles, ``valid`` which of them are candidates, ``z`` (features, users, pool) the
    standardised features and ``contributions`` each feature's share of a pool score.
    """

    scores: np.ndarray
    pool: np.ndarray
    valid: np.ndarray
    z: np.ndarray
    contributions: np.ndarray


def context(positives: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(users, CONTEXT_KNOTS + DAYPARTS) context of the blend: how each user's history
    length ``h = log1p(positives) / log1p(MAX_HISTORY)`` interpolates between evenly
    spaced knots over 0..1, then the part of the (UTC) day of ``times``, one-hot.

    Examples
    --------
    >>> context(np.array([0, 6, 50]), np.array([0.0, 8 * 3600.0, 20 * 3600.0])).round(2)
    array([[1.  , 0.  , 0.  , 1.  , 0.  , 0.  , 0.  ],
           [0.01, 0.99, 0.  , 0.  , 1.  , 0.  , 0.  ],
           [0.  , 0.  , 1.  , 0.  , 0.  , 0.  , 1.  ]])
    """
    positives = np.asarray(positives)
    h = np.log1p(np.minimum(positives, MAX_HISTORY)) / _LOG_HISTORY
    out = np.empty((len(positives), CONTEXT_KNOTS + DAYPARTS))
    out[:, :CONTEXT_KNOTS] = np.maximum(
        0.0, 1.0 - np.abs(h[:, None] - _KNOTS[None, :]) * (CONTEXT_KNOTS - 1))
    times = np.asarray(times)
    if times.shape != positives.shape:
        times = np.broadcast_to(times, positives.shape)
    part = times // 3600 % 24 // (24 // DAYPARTS)
    out[:, CONTEXT_KNOTS:] = _DAYPART_ONE_HOT[part.astype(np.int64)]
    return out


# context()'s constants, built once: it runs on every ranking and blend step.
_LOG_HISTORY = np.log1p(MAX_HISTORY)
_KNOTS = np.linspace(0.0, 1.0, CONTEXT_KNOTS)
_DAYPART_ONE_HOT = np.eye(DAYPARTS)
# context() of one user by (positives capped at MAX_HISTORY, part of the day): at most
# 51 x 4 rows of 7 floats, each computed by context() itself. Ranking one user at a time
# (a paced worker's batches) asked context() for it on every call (~35 us of numpy calls).
_CONTEXT_ROWS: dict[tuple[int, int], np.ndarray] = {}


def context_row(positives: int, ts: float) -> np.ndarray:
    """``context(np.array([positives]), np.array([ts]))``, (1, features), from a table
    (callers only read it).

    Examples
    --------
    >>> bool((context_row(6, 8 * 3600.0) == context(np.array([6]), np.array([8 * 3600.0]))).all())
    True
    """
    # (The part of the day with numpy's float arithmetic, as context() computes it.)
    key = (min(positives, MAX_HISTORY), int(np.float64(ts) // 3600 % 24 // (24 // DAYPARTS)))
    row = _CONTEXT_ROWS.get(key)
    if row is None:
        row = _CONTEXT_ROWS[key] = context(np.array([key[0]]), np.array([ts]))
        row.flags.writeable = False
    return row


def _user_index(n_users: int) -> np.ndarray:
    """``arange(n_users)[:, None]``: the first index of a (users, k) fancy index."""
    return _USERS[:n_users] if n_users <= len(_USERS) else np.arange(n_users)[:, None]


_USERS = np.arange(4096)[:, None]
_USERS.flags.writeable = False


def min_max(raw: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``raw`` (users, titles) scaled to [0, 1] per user over the titles in ``mask``."""
    if mask.all():  # (one user's ranking: every title a candidate) no masking passes
        return _scaled(raw, raw.min(axis=1, keepdims=True), raw.max(axis=1, keepdims=True))
    # One (users, titles) buffer for both extremes and the result: fresh large arrays
    # cost page faults on every batch.
    buffer = np.where(mask, raw, np.inf)
    low = buffer.min(axis=1, keepdims=True)
    np.copyto(buffer, -np.inf, where=~mask)
    high = buffer.max(axis=1, keepdims=True)
    return _scaled(raw, low, high, out=buffer)


def min_max_row(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """:func:`min_max` of one row of ``values`` (titles) shared by every user of ``mask``
    (users, titles), without a (users, titles) pass per extreme: a user's lowest
    candidate is usually among the few lowest titles overall (``mask`` only drops the
    titles a user completed), so those are looked at first.

    Examples
    --------
    >>> mask = np.array([[True, True, True], [False, True, False]])
    >>> min_max_row(np.array([1.0, 3.0, 2.0]), mask)
    array([[0. , 1. , 0.5],
           [0. , 0. , 0. ]])
    """
    n_users, n_cols = mask.shape
    if n_users <= _EXTREMES_LOOKED_AT or not np.isfinite(values).all():
        # (One user: a view of the row as a matrix, cheaper than broadcast_to.)
        return min_max(values[None, :] if n_users == 1 else np.broadcast_to(values, mask.shape),
                       mask)
    ascending = np.argsort(values, kind="stable")
    width = min(n_cols, _EXTREMES_LOOKED_AT)
    low = np.empty((n_users, 1))
    high = np.empty((n_users, 1))
    for extreme, order in ((low, ascending), (high, ascending[::-1])):
        head = mask[:, order[:width]]
        first = head.argmax(axis=1)
        extreme[:, 0] = values[order[first]]
        missed = np.nonzero(~head[np.arange(n_users), first])[0]
        if len(missed):  # every one of those titles excluded: look at all of them
            rest = np.where(mask[missed], values, np.inf if extreme is low else -np.inf)
            extreme[missed, 0] = rest.min(axis=1) if extreme is low else rest.max(axis=1)
    return _scaled(np.broadcast_to(values, mask.shape), low, high)


# Titles min_max_row looks at first for each user's lowest and highest candidate.
_EXTREMES_LOOKED_AT = 16


def _scaled(raw: np.ndarray, low: np.ndarray, high: np.ndarray,
            out: np.ndarray | None = None) -> np.ndarray:
    """``(raw - low) / (high - low)`` per user, 0 for users with no spread, into ``out``
    (a new array if None) in place: this runs over every (user, title) of a batch."""
    span = high - low
    ok = span > 1e-12
    out = np.subtract(raw, np.where(ok, low, 0.0), out=out)
    out /= np.where(ok, span, 1.0)
    if not ok.all():
        out[~ok[:, 0]] = 0.0
    return out


def _top_few(scores: np.ndarray, k: int) -> list[int]:
    """``top_k(scores, k)`` as ints; up to ``TOP_BY_ARGMAX`` by repeated argmax, as
    :func:`~models.base.top_by_argmax` does for many rows (used on one user's Thompson
    draws: continuous, so never tied). One row on scalars: 3.6 us for one pick on 990
    draws, against 15 us through the (rows, k) arrays of ``top_by_argmax``."""
    if k > TOP_BY_ARGMAX or k >= len(scores):
        return top_k(scores, k).tolist()
    scores = scores.copy()
    out = []
    for _ in range(k):
        best = int(scores.argmax())
        out.append(best)
        scores[best] = -np.inf
    return out


def _scaled_alone(raw: np.ndarray) -> np.ndarray:
    """:func:`min_max` of one user's row ``raw`` (1, titles), every title a candidate:
    the extremes as scalars (the same values and arithmetic as :func:`_scaled`)."""
    low, high = raw.min(), raw.max()
    span = high - low
    if not span > 1e-12:  # no spread (or not finite): 0 everywhere
        return np.zeros_like(raw)
    out = raw - low
    out /= span
    return out


def standardise(raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(features, users, pool) ``raw`` standardised per feature and user over the ``valid``
    (users, pool) titles. A value that is not finite (a diverged factor, say) counts as
    that feature's mean, 0, and stays out of the mean and spread: one bad title must not
    turn a user's whole pool into NaN.

    Examples
    --------
    >>> standardise(np.array([[[1.0, 3.0, np.inf, 9.0]]]), np.array([[True, True, True, False]]))
    array([[[-1.,  1.,  0.,  0.]]])
    """
    ok = valid & np.isfinite(raw)
    if ok.all():  # the usual case: the same arithmetic without the masking passes
        count = raw.shape[2]
        centred = raw - raw.sum(axis=2, keepdims=True) / count
        std = np.sqrt((centred * centred).sum(axis=2, keepdims=True) / count)
        spread = std > 1e-12
        if spread.all():  # (usually: no masking passes)
            centred /= std
            return centred
        centred /= np.where(spread, std, 1.0)
        np.copyto(centred, 0.0, where=~spread)
        return centred
    count = np.maximum(ok.sum(axis=2, keepdims=True), 1)
    safe = np.where(ok, raw, 0.0)
    mean = safe.sum(axis=2, keepdims=True) / count
    std = np.sqrt(np.where(ok, (safe - mean) ** 2, 0.0).sum(axis=2, keepdims=True) / count)
    spread = ok & (std > 1e-12)
    return np.where(spread, (safe - mean) / np.where(std > 1e-12, std, 1.0), 0.0)


class Hybrid(Recommender):
    """Two-stage blend of trending, co-occurrence, matrix factorisation, content,
    popularity and recent co-occurrence, with weights learned online from what users go on
    to watch.

    Stage one picks each user's pool: the ``pool_size`` candidates with the best
    co-occurrence score (min-max scaled) plus ``pool_popularity`` times their popularity
    (likewise scaled), so short histories still get a full pool. Stage two ranks the pool
    by a weighted sum of the six features, each standardised over the pool. The weights
    depend on the context: the length of the user's positive history ``h`` (0 for a new
    user, 1 at ``MAX_HISTORY`` titles, on a log scale), interpolated linearly between
    ``CONTEXT_KNOTS`` columns of ``W`` (h = 0, 0.5, 1), plus a column per part of the
    day (``DAYPARTS``, from the event time): ``w = W @ context``. What predicts a
    newcomer's next title (popularity) is not what predicts a long-time viewer's (their
    own recent titles), and late-night viewing need not look like Sunday afternoon's.

    ``W`` is learned online from every ``blend_every``-th positive event whose title had
    been engaged with before: the user's pool is built as it would have been just before
    the event, and if the title watched is in it, ``W`` takes an Adagrad step on the
    softmax log-likelihood of that title within the pool (kept >= 0). So the blend learns
    exactly the choice it is used for: which of the titles it would have shown the user
    went on to watch.

    Exploration: a share of every list's slots goes to the explorer's Thompson samples,
    favouring little-seen titles: the new-title and new-user path. The share is
    ``2 * exploration`` for a user with no positive history, about whom there is most to
    learn, and ``exploration * (1 - h)`` after that, so it fades as the history grows and
    is 0 from ``MAX_HISTORY`` positive titles on: a long-time viewer's list is spent on
    what the blend predicts, new titles reach them once others engaged. The share is
    exact on average: ``share * n`` slots rounded down, plus one more with probability
    equal to the remainder. Lists are diversified so that no genre takes more of the top
    10 than ``max_per_genre`` or, if more, its share of the user's recent positive titles
    (rounded up, at most ``MOST_OF_ONE_GENRE``), and never contain a title the user
    completed.

    Parameters
    ----------
    trending, cooccurrence, mf, content, explorer, recent
        The component models (defaults are created when ``None``).
    weights
        Initial blend weights by feature name (both contexts); see ``DEFAULT_WEIGHTS``.
    blend_learning_rate
        Adagrad step size of the blend.
    blend_every
        The blend learns from every ``blend_every``-th positive event (1: all of them).
    pool_size
        Titles re-ranked per user by the blend.
    pool_popularity
        Weight of popularity next to co-occurrence when picking the pool.
    exploration
        Share of slots filled by exploration, 0..1.
    max_per_genre
        Most titles of one genre among the top 10, unless the user's history leans to it
        more (see above).
    max_candidates
        When more titles are known, candidates are pre-selected from popular titles, the
        user's co-occurrence neighbours and a random sample.
    seed, capacity
        Seed for sampling; most titles held.

    Examples
    --------
    >>> from models.base import UserProfile
    >>> h = Hybrid(seed=1)
    >>> for t, g in [("a", "Drama"), ("b", "Drama"), ("c", "Comedy")]:
    ...     h.add_title({"title_id": t, "genres": [g]})
    >>> h.learn_one("u1", "a", 1.0, UserProfile("u1"), ts=1e9)
    >>> h.learn_one("u1", "b", 1.0, UserProfile("u1", history=[("a", 1.0)]), ts=1e9)
    >>> recs = h.recommend(UserProfile("u2", history=[("a", 1.0)], completed={"a"}), n=2,
    ...                    ts=1e9)
    >>> [r.title_id for r in recs], recs[0].reason
    (['b', 'c'], 'because_you_watched:a')
    """

    def __init__(
        self,
        trending: Trending | None = None,
        cooccurrence: CoOccurrence | None = None,
        mf: ImplicitMF | None = None,
        content: ContentModel | None = None,
        explorer: ThompsonExplorer | None = None,
        recent: RecentCoOccurrence | None = None,
        weights: dict[str, float] | None = None,
        blend_learning_rate: float = 0.05,
        blend_every: int = 1,
        pool_size: int = 100,
        pool_popularity: float = 0.3,
        exploration: float = 0.05,
        max_per_genre: int = 5,
        max_candidates: int = 2000,
        seed: int = 42,
        capacity: int = 200_000,
    ) -> None:
        if not 0.0 <= exploration <= 1.0:
            raise ValueError(f"exploration must be within 0..1, got {exploration}")
        if blend_every <= 0 or pool_size <= 0 or max_per_genre <= 0:
            raise ValueError("blend_every, pool_size and max_per_genre must be positive")
        unknown = set(weights or {}) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown blend weights {sorted(unknown)}; known: {COMPONENTS}")
        self.trending = trending if trending is not None else Trending(capacity=capacity)
        self.cooccurrence = (cooccurrence if cooccurrence is not None
                             else CoOccurrence(capacity=capacity))
        self.mf = mf if mf is not None else ImplicitMF(seed=seed, capacity=capacity)
        self.content = content if content is not None else ContentModel(capacity=capacity)
        self.explorer = (explorer if explorer is not None
                         else ThompsonExplorer(seed=seed, capacity=capacity))
        self.recent = recent if recent is not None else RecentCoOccurrence(capacity=capacity)
        self.weights = weights
        self.blend_learning_rate = blend_learning_rate
        self.blend_every = blend_every
        self.pool_size = pool_size
        self.pool_popularity = pool_popularity
        self.exploration = exploration
        self.max_per_genre = max_per_genre
        self.max_candidates = max_candidates
        self.seed = seed
        self.capacity = capacity
        self._items = ItemTable(capacity)
        for model in self._components_and_explorer():
            model.use_item_table(self._items)
        initial = {**DEFAULT_WEIGHTS, **(weights or {})}
        column = np.array([initial[name] for name in COMPONENTS], dtype=np.float64)
        # (features, context): history-length knots (the prior weights), then dayparts
        # (adjustments, starting at 0).
        self._w = np.hstack([np.repeat(column[:, None], CONTEXT_KNOTS, axis=1),
                             np.zeros((len(column), DAYPARTS))])
        # Adagrad's running sum of squared gradients (starts at 1e-2: the first steps are
        # at most lr / 0.1 = 10 lr, not unbounded).
        self._g2 = np.full_like(self._w, 1e-2)
        self._rng = np.random.default_rng(seed)
        self._positives_seen = 0
        # Titles taken out of the catalogue (title_removed), oldest first, at most
        # ``capacity``: events still name them (a stale client, a resume point), and
        # learning those would bring a removed title back into every list.
        self._removed: dict[str, None] = {}
        self._format = STATE_FORMAT

    def clone(self) -> Hybrid:
        params = self._get_params()
        for name in ("trending", "cooccurrence", "mf", "content", "explorer", "recent"):
            params[name] = params[name].clone()
        return type(self)(**params)

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("_format") != STATE_FORMAT:
            raise ValueError(f"a Hybrid of state format {state.get('_format', 1)}, this code "
                             f"reads format {STATE_FORMAT}; it has to learn afresh")
        # Components re-register with the shared table themselves when unpickled.
        self.__dict__.update(state)
        if "_removed" not in state:  # pickled before removed titles were remembered
            self._removed = {}

    def _components_and_explorer(self) -> list[Recommender]:
        return [self.trending, self.cooccurrence, self.mf, self.content, self.explorer,
                self.recent]

    @property
    def blend_weights(self) -> dict[str, float]:
        """The blend's weights for a user halfway between new and long history, averaged
        over the parts of the day."""
        if self._w.ndim == 2:
            halfway = np.interp(0.5, np.linspace(0.0, 1.0, CONTEXT_KNOTS),
                                np.arange(CONTEXT_KNOTS))  # fractional knot index
            knots = np.maximum(0.0, 1.0 - np.abs(np.arange(CONTEXT_KNOTS) - halfway))
            w = self._w @ np.concatenate([knots, np.full(DAYPARTS, 1.0 / DAYPARTS)])
        else:
            w = self._w
        return {name: float(v) for name, v in zip(COMPONENTS, w, strict=True)}

    def user_weights(self, positives: np.ndarray, times: np.ndarray) -> np.ndarray:
        """(users, features) blend weights for users with ``positives`` history titles, at
        event times ``times``."""
        if self._w.ndim == 1:  # fixed weights (an experiment's view)
            return np.broadcast_to(self._w, (len(positives), len(self._w)))
        if len(positives) == 1 and np.size(times) == 1:  # one user: a row of the table
            return context_row(int(positives[0]), float(np.ravel(times)[0])) @ self._w.T
        return context(positives, times) @ self._w.T

    # -- learning ------------------------------------------------------------------------------
    def _ensure_rows(self) -> None:
        # Runs on every learn_one; the components' arrays only grow when the shared item
        # table has more rows than when they last grew.
        rows = self._items.rows
        if rows == self.__dict__.get("_rows_ensured"):
            return
        for model in self._components_and_explorer():
            model._ensure_rows()
        self._rows_ensured = rows

    def add_title(self, title: dict[str, Any]) -> None:
        self._removed.pop(title["title_id"], None)  # back in the catalogue
        self.content.add_title(title)  # adds the row to the shared table too
        self._ensure_rows()

    def remove_title(self, title_id: str) -> None:
        """A title left the catalogue: forgotten, and not learned again from events that
        still name it (see :attr:`removed_titles`) until the catalogue adds it back."""
        super().remove_title(title_id)
        remember(self._removed, title_id, self.capacity)

    @property
    def removed_titles(self) -> Collection[str]:
        """Titles the catalogue removed (the latest ``capacity`` of them). The events path
        learns nothing from events naming one, so it is never ranked again; a title the
        catalogue never had is different: a stub, learned and ranked like any other.

        Examples
        --------
        >>> model = Hybrid()
        >>> model.add_title({"title_id": "a", "genres": ["Drama"]})
        >>> model.remove_title("a")
        >>> "a" in model.removed_titles
        True
        >>> model.add_title({"title_id": "a", "genres": ["Drama"]})
        >>> "a" in model.removed_titles
        False
        """
        return self._removed.keys()

    def _learn_row(self, row, y, profile, ts):
        if y > 0:
            self._positives_seen += 1
            if self._positives_seen % self.blend_every == 0:
                now = self.trending._now if ts is None else ts
                self.learn_blend(np.array([row]), profile.matrix(), np.array([now]))
        for model in self._components_and_explorer():
            model._learn_row(row, y, profile, ts)

    def learn_blend(self, rows: np.ndarray, hist: HistoryMatrix, times: np.ndarray) -> None:
        """One blend step per positive event (title ``rows[i]``, the user's history just
        before it, event time): the pools are built from the current model state, the
        steps taken in order. Events whose title nobody had engaged with before, or that
        the user had already engaged with, or that their pool missed, teach nothing."""
        if self._w.ndim != 2:
            return
        # Only a first engagement with a title somebody engaged with before teaches the
        # blend anything (checked before any scoring: most positive events are neither).
        fresh = (self.cooccurrence._pop[rows] > 0) & ~(hist.rows == rows[:, None]).any(axis=1)
        if not fresh.any():
            return
        if not fresh.all():
            rows, hist, times = rows[fresh], hist.take(np.nonzero(fresh)[0]), times[fresh]
        known = self._items.known_rows()
        cols = known[self.cooccurrence._pop[known] > 0]  # pools never hold unwatched titles
        if len(cols) > LEARN_MAX_TITLES:
            voters = hist.rows[hist.positive]
            neighbours = self.cooccurrence._nbr[voters].ravel()
            popular = cols[top_k(self.cooccurrence.popularity(cols), self.pool_size)]
            cols = np.unique(np.concatenate([neighbours[neighbours >= 0], popular, rows]))
        position = np.full(self._items.rows, -1, dtype=np.int64)
        position[cols] = np.arange(len(cols))
        candidate = np.ones((len(rows), len(cols)), dtype=bool)
        q_idx, slot = np.nonzero(hist.rows >= 0)
        seen = position[hist.rows[q_idx, slot]]
        candidate[q_idx[seen >= 0], seen[seen >= 0]] = False
        target = position[rows]
        first, pool, valid, pool_co = self.first_stage(hist, cols, candidate)
        hit = (pool == target[:, None]) & valid
        steps = np.nonzero(hit.any(axis=1))[0]
        if len(steps) == 0:
            return
        # The second stage for the events whose title made the pool only (the others
        # teach nothing): about half the work of ranking them all.
        if len(steps) < len(rows):
            hist, pool, valid, pool_co, times, hit = (
                hist.take(steps), pool[steps], valid[steps], pool_co[steps], times[steps],
                hit[steps])
        z = self.pool_features(hist, cols[pool], valid, pool_co, times)
        contexts = context(hist.positive_count(), times)
        slots = hit.argmax(axis=1)
        # Per step, its pool's candidates' features and the watched title's (gathered for
        # every step at once; only W changes from one step to the next).
        truths = z[:, np.arange(len(steps)), slots].T                  # (steps, features)
        whole: list[bool] = np.all(valid, axis=1).tolist()
        lr, g2 = self.blend_learning_rate, self._g2
        # The steps write into buffers (w is a copy, replacing _w at the end): a step's
        # arrays are tiny, so numpy's per-call and allocation costs are most of it.
        w = self._w.copy()
        grad, step = np.empty_like(w), np.empty_like(w)
        multiply, divide, sqrt, exp, maximum = (np.multiply, np.divide, np.sqrt, np.exp,
                                                np.maximum)
        for i, (truth, ctx) in enumerate(zip(truths, contexts, strict=True)):
            zs = z[:, i] if whole[i] else z[:, i, valid[i]]
            logits = (w @ ctx) @ zs
            logits -= logits.max()
            p = exp(logits, out=logits)
            p /= p.sum()
            multiply((truth - zs @ p)[:, None], ctx, out=grad)  # the outer product
            g2 += multiply(grad, grad, out=step)
            divide(multiply(grad, lr, out=grad), sqrt(g2, out=step), out=step)
            w += step
            maximum(w, 0.0, out=w)
        self._w = w

    # -- scoring -------------------------------------------------------------------------------
    def rank_matrix(self, hist: HistoryMatrix, cols: np.ndarray, candidate: np.ndarray,
                    times: np.ndarray) -> Ranking:
        """Score titles ``cols`` for every user of ``hist`` (``candidate`` (users, titles)
        marks what each may be shown; ``times`` their query times): the two stages."""
        first, pool, valid, pool_co = self.first_stage(hist, cols, candidate)
        z = self.pool_features(hist, cols[pool], valid, pool_co, times)
        weights = self.user_weights(hist.positive_count(), times)
        contributions = weights.T[:, :, None] * z
        scores = first  # (stage one's scores are not needed past this)
        scores -= BELOW_POOL
        # Fancy indexing by (user, pool slot) rather than take/put_along_axis, whose
        # index building costs more than the work for a user or a few.
        users = _user_index(len(pool))
        if valid.all():
            scores[users, pool] = contributions.sum(axis=0)
        else:
            scores[users, pool] = np.where(valid, contributions.sum(axis=0), scores[users, pool])
        return Ranking(scores, pool, valid, z, contributions)

    def first_stage(self, hist: HistoryMatrix, cols: np.ndarray, candidate: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Stage one of :meth:`rank_matrix`: the first-stage scores (users, titles), each
        user's pool (positions among ``cols``), which pool titles are candidates, and
        their co-occurrence scores."""
        n_users, n_cols = candidate.shape
        co = self.cooccurrence.score_matrix(hist, cols)
        # One user with every title a candidate (Hybrid.ranked, a paced worker's usual
        # batch): the same arithmetic on scalar extremes, without the masking passes.
        alone = n_users == 1 and bool(candidate.all())
        if alone:
            popular = _scaled_alone(self.cooccurrence.popularity(cols)[None, :])
        else:
            popular = min_max_row(self.cooccurrence.popularity(cols), candidate)
        popular *= self.pool_popularity
        first = _scaled_alone(co) if alone else min_max(co, candidate)
        first += popular
        size = min(self.pool_size, n_cols)
        # Ties (titles nobody engaged with) are broken by row, so a user's pool does not
        # depend on which other titles were scored alongside (one user or a batch).
        # Negated for argpartition (which puts the smallest first): non-candidates last.
        unranked = np.subtract(1e-12 * cols, first, out=popular)  # popular is spent
        if not alone:
            np.copyto(unranked, np.inf, where=~candidate)
        pool = (np.argpartition(unranked, size - 1, axis=1)[:, :size] if size < n_cols
                else np.tile(np.arange(n_cols), (n_users, 1)))
        users = _user_index(n_users)
        return first, pool, candidate[users, pool], co[users, pool]

    def pool_features(self, hist: HistoryMatrix, rows: np.ndarray, valid: np.ndarray,
                      co: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Stage two's features (features, users, pool) of the pool titles ``rows``
        (users, pool; ``valid`` the candidates, ``co`` their co-occurrence scores),
        standardised per user."""
        mf_users, _ = self.mf.user_vectors(hist)
        raw = np.stack([
            self.trending.decayed(rows, times),
            co,
            self.mf.scores(mf_users, rows),
            self.content.scores(self.content.user_vectors(hist), rows),
            self.cooccurrence.popularity(rows),
            self.recent.score_at(hist, rows),
        ])
        return standardise(raw, valid)

    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        now = np.array([self.trending._now if ts is None else ts])
        candidate = np.ones((1, len(rows)), dtype=bool)
        return self.rank_matrix(profile.matrix(), rows, candidate, now).scores[0]

    def candidate_rows(self, profile: RowProfile, ts: float | None) -> np.ndarray:
        """Rows worth scoring for this user (every known title when there are few)."""
        known = self._items.known_rows()
        if len(known) <= self.max_candidates:
            return known
        popular = self.cooccurrence.popularity(known)
        picked = [known[top_k(popular, self.max_candidates // 2)]]
        nbr = self.cooccurrence._nbr[profile.rows[profile.weights > 0]].ravel()
        picked.append(nbr[nbr >= 0])
        picked.append(self._rng.choice(known, size=self.max_candidates // 4, replace=False))
        return np.unique(np.concatenate(picked))

    def recommend(
        self, profile: UserProfile, n: int = 20, ts: float | None = None,
        candidates: Sequence[str] | None = None,
    ) -> list[Recommendation]:
        """The user's top ``n``: blended, diversified, explored, completed titles removed."""
        return [Recommendation(*entry) for entry in self.ranked(profile, n, ts, candidates)]

    def ranked(
        self, profile: UserProfile, n: int = 20, ts: float | None = None,
        candidates: Sequence[str] | None = None,
    ) -> list[tuple[str, float, str]]:
        """:meth:`recommend` as plain ``(title_id, score, reason)`` tuples."""
        row_profile = RowProfile.build(self._items, profile)
        if candidates is None:
            rows = self.candidate_rows(row_profile, ts)
        else:
            rows = self._items.rows_of(list(candidates))
            rows = rows[rows >= 0]
        if len(row_profile.completed_rows):
            rows = rows[~np.isin(rows, row_profile.completed_rows)]
        if len(rows) == 0:
            return []
        scores, picks, ranking = self._rank(rows, row_profile, n, ts)
        at = [i for i, _ in picks]
        ids = self._items.ids
        return [(ids[row] or "", score, reason)
                for row, score, reason in zip(rows[at].tolist(), scores[at].tolist(),
                                              self._reasons(rows, picks, ranking, row_profile),
                                              strict=True)]

    def list_rows(self, rows: np.ndarray, profile: UserProfile, n: int, ts: float | None = None
                  ) -> tuple[np.ndarray, list[int]]:
        """What :meth:`recommend` does for candidate ``rows`` (see :meth:`item_rows`):
        the score of every row, and the positions in ``rows`` of the ``n`` titles listed,
        in list order (diversified, with exploration slots)."""
        if len(rows) == 0:
            return np.zeros(0), []
        scores, picks, _ = self._rank(rows, RowProfile.build(self._items, profile), n, ts)
        return scores, [i for i, _ in picks]

    def _rank(self, rows: np.ndarray, row_profile: RowProfile, n: int, ts: float | None):
        now = np.array([self.trending._now if ts is None else ts])
        ranking = self.rank_matrix(row_profile.matrix(), rows,
                                   np.ones((1, len(rows)), dtype=bool), now)
        scores = ranking.scores[0]
        order = top_k(scores, min(len(rows), 3 * n))
        chosen = self._diversify(rows, order, n, self.genre_caps(row_profile))
        picks = [(int(i), "") for i in chosen]
        n_explore = self._explore_slot_count(n, int((row_profile.weights > 0).sum()))
        if n_explore and len(rows) > len(picks) - n_explore:
            picks = self._explore_slots(rows, picks, n_explore, row_profile, ts)
        return scores, picks[:n], ranking

    def explore_slots(self, n: int, positives: np.ndarray) -> np.ndarray:
        """Exploration slots of an ``n``-title list for each user (``positives``: titles in
        their positive history): the share times ``n``, the remainder granted with its
        probability."""
        if len(positives) == 1:  # one user: the same arithmetic on scalars (~5x cheaper)
            return np.array([self._explore_slot_count(n, int(positives[0]))])
        h = np.log1p(np.minimum(positives, MAX_HISTORY)) / _LOG_HISTORY
        share = self.exploration * np.where(positives == 0, 2.0, 1.0 - h) * n
        whole = np.floor(share)
        slots = whole.astype(np.int64)
        partial = share > whole
        if partial.any():
            slots[partial] += self._rng.random(int(partial.sum())) < (share - whole)[partial]
        return slots

    def _explore_slot_count(self, n: int, positives: int) -> int:
        """:meth:`explore_slots` of one user, in float64 scalars: the same values and the
        same draw (``random(1)``) as the array code."""
        h = np.log1p(np.float64(min(positives, MAX_HISTORY))) / _LOG_HISTORY
        share = self.exploration * (np.float64(2.0) if positives == 0 else 1.0 - h) * n
        whole = np.floor(share)
        slots = int(whole)
        if share > whole:
            slots += int(self._rng.random(1)[0] < share - whole)
        return slots

    def genre_caps(self, profile: RowProfile) -> dict[str, int]:
        """Genres the user's positive history allows more than ``max_per_genre`` of the
        top 10: ``ceil(10 * share)`` of their positive titles, at most
        ``MOST_OF_ONE_GENRE``."""
        liked = profile.rows[profile.weights > 0]
        counts: dict[str, int] = {}
        for row in liked.tolist():
            for g in self.content.genres_of_row(row):
                counts[g] = counts.get(g, 0) + 1
        caps = {g: min(MOST_OF_ONE_GENRE, -(-10 * c // len(liked))) for g, c in counts.items()}
        return {g: cap for g, cap in caps.items() if cap > self.max_per_genre}

    def _diversify(self, rows: np.ndarray, order: np.ndarray, n: int,
                   caps: dict[str, int]) -> list[int]:
        """Greedy: no genre more than its cap (``caps``, else ``max_per_genre``) times in
        the first 10 slots."""
        most = self.max_per_genre
        genres_of = self.content.genres_of_row
        counts: dict[str, int] = {}
        chosen: list[int] = []
        deferred: list[int] = []
        # Plain ints from one conversion: per-element numpy indexing costs more than the walk.
        for i, row in zip(order.tolist(), rows[order].tolist(), strict=True):
            if len(chosen) < 10:
                genres = genres_of(row)
                if any(counts.get(g, 0) >= caps.get(g, most) for g in genres):
                    deferred.append(i)
                    continue
                for g in genres:
                    counts[g] = counts.get(g, 0) + 1
            chosen.append(i)
            if len(chosen) >= n:
                break
        return (chosen + deferred)[:n]

    def _explore_slots(self, rows, picks, n_explore, profile, ts):
        free = np.ones(len(rows), dtype=bool)
        free[[i for i, _ in picks]] = False
        pool = np.flatnonzero(free)
        if len(pool) == 0:
            return picks
        unseen = rows[pool]
        samples = self.explorer._score_rows(unseen, profile, ts)
        # Favour titles with little evidence: that is what exploration is for.
        samples = samples / (1.0 + self.explorer.exposure(unseen) / 10.0)
        explored = [(int(pool[j]), "explore") for j in _top_few(samples, n_explore)]
        keep = len(picks) - len(explored) if len(picks) >= len(explored) else 0
        head = picks[:keep]
        # Exploration slots are spread through the list, not parked at the bottom.
        step = max(1, len(head) // (len(explored) + 1))
        for k, slot in enumerate(explored):
            head.insert(min(len(head), (k + 1) * step + k), slot)
        return head

    def _reasons(self, rows: np.ndarray, picks: list[tuple[int, str]], ranking: Ranking,
                 profile: RowProfile) -> list[str]:
        """The reason shown with each pick (positions in ``rows``, the columns of the
        one-user ``ranking``) that has none yet: the component contributing most to its
        score, refined per title for co-occurrence (the history title contributing most)
        and content (the title's first genre). All picks at once: per pick, the calls
        cost more than the work."""
        out = [reason for _, reason in picks]
        todo = [k for k, reason in enumerate(out) if not reason]
        if not todo:
            return out
        at = np.array([picks[k][0] for k in todo], dtype=np.int64)
        # Each pick's contributions (features, picks): 0 outside the pool's candidates.
        pool, valid = ranking.pool[0], ranking.valid[0]
        slot_of = np.full(len(rows), -1, dtype=np.int64)
        slot_of[pool[valid]] = np.flatnonzero(valid)
        slot = slot_of[at]
        contributions = np.where(slot >= 0, ranking.contributions[:, 0, slot], 0.0)
        best = contributions.argmax(axis=0)
        strongest = contributions[best, np.arange(len(at))].tolist()
        best_list = best.tolist()
        co = best == _COOCCURRENCE
        sources = iter(self.cooccurrence.sources(rows[at[co]], profile.matrix()).tolist()
                       if co.any() else [])
        ids = self._items.ids
        for k, row, b, top in zip(todo, rows[at].tolist(), best_list, strongest, strict=True):
            component = COMPONENTS[b]
            if component == "cooccurrence":
                source = next(sources)
            if top <= 0:  # nothing personal stood out: a popular pick
                out[k] = REASON_OF["popularity"]
            elif component == "cooccurrence":
                out[k] = (f"because_you_watched:{ids[source]}" if source >= 0
                          else "similar_users")
            elif component == "content":
                genres = self.content.genres_of_row(row)
                out[k] = f"genre:{genres[0]}" if genres else "similar_users"
            else:
                out[k] = REASON_OF[component]
        return out

    def size(self) -> dict[str, int]:
        return {"titles": len(self._items),
                "links": self.cooccurrence.size().get("links", 0)}
