"""Batched entry points of the :class:`~models.hybrid.Hybrid`: learn and rank many at once.

The worker's hot path sees events in batches of up to ~1,000 and ranks every user of a
batch once. Doing that one call at a time costs about 35 us per ``learn_one`` and 400 us
per ``recommend`` (mostly numpy call overhead on small arrays and Python loops); here the
same models do the same work with a few array operations per batch:

``recommend_many``
    Scores every (user, candidate) pair of the batch as dense ``(users, titles)``
    matrices: trending decayed to each user's event time, co-occurrence as one
    ``bincount`` over all users' neighbour lists, the MF and content user vectors as one
    matrix product each. Min-max scaling, the blend, the top-k, genre diversity and the
    reasons are those of :meth:`Hybrid.recommend`; lists are identical for the same model
    state (``tests/unit/test_batched.py`` checks it). One difference, in the Thompson
    draws: instead of one posterior sample per (user, title), which costs ~70 us per user
    in Beta sampling alone, ``SAMPLE_SETS`` independent posterior samples per title are
    drawn per batch and users take them in turn. Each user's exploration slot (and a cold
    user's sampled score) is still an exact draw from the current posterior; users of one
    batch who share a sample set are correlated.
``learn_many``
    Replays a batch of (title, feedback, time, history-before-the-event) as minibatch
    updates computed from the model state at the start of the batch: trending and the
    bandit exactly (sums of the same increments), matrix factorisation as one minibatch
    SGD step (the same BPR and pointwise gradients, summed), co-occurrence by adding the
    batch's links and keeping each title's ``max_neighbours`` strongest (the one-at-a-time
    rule keeps the strongest too, comparing one increment at a time), and the blend's
    pairwise steps in order with features from the batch-start state.

Both fall back to the one-at-a-time API when the batch cannot be done densely (more known
titles than ``Hybrid.max_candidates`` or ``DENSE_MAX_TITLES``, or a title eviction inside
the batch), so they are always correct, only faster when they can be.

Examples
--------
>>> from models.base import UserProfile
>>> from models.hybrid import Hybrid
>>> h = Hybrid(seed=1, exploration=0.0)
>>> for t, g in [("a", "Drama"), ("b", "Drama"), ("c", "Comedy")]:
...     h.add_title({"title_id": t, "genres": [g]})
>>> learn_many(h, ["a", "b"], [1.0, 1.0], [1e9, 1e9], [[], [("a", 1.0)]])
>>> lists = recommend_many(h, [UserProfile("u2", history=[("a", 1.0)], completed={"a"})],
...                        n=2, ts=[1e9])
>>> [r.title_id for r in lists[0]], lists[0][0].reason
(['b', 'c'], 'because_you_watched:a')
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.base import UserProfile
from models.hybrid import COMPONENTS, REASON_OF, Hybrid, Recommendation

# Independent posterior samples per title drawn per batch for Thompson sampling (see the
# module docstring): 16 keeps users of a batch mostly on different draws, for about 1 ms
# of Beta sampling per batch on a 1,000-title catalogue instead of ~70 us per user.
SAMPLE_SETS = 16
# Dense (queries x titles) matrices above this many titles would cost more memory than
# they save time (8 bytes x users x titles per component); larger catalogues rank one
# user at a time through Hybrid.recommend, which pre-selects candidates.
DENSE_MAX_TITLES = 4096
# History entries per user the models look at (RowProfile.build's default).
MAX_HISTORY = 50
# Clip of one title's weight in a user's vectors (as in the MF and content models).
WEIGHT_CLIP = 3.0

History = Sequence[tuple[str, float]]


class HistoryMatrix:
    """Padded histories of many queries as item-table rows: ``rows`` (-1 = padding or a
    title the models do not know) and ``weights`` (0 there), most recent first."""

    __slots__ = ("rows", "weights", "positive", "clipped")

    def __init__(self, index: dict[str, int], histories: Sequence[History],
                 max_history: int = MAX_HISTORY) -> None:
        lengths = np.fromiter((min(len(h), max_history) for h in histories), dtype=np.int64,
                              count=len(histories))
        width = max(int(lengths.max(initial=0)), 1)
        get = index.get
        titles = [t for h in histories for t, _ in h[:max_history]]
        flat_rows = np.fromiter((get(t, -1) for t in titles), dtype=np.int64,
                                count=len(titles))
        flat_w = np.fromiter((w for h in histories for _, w in h[:max_history]),
                             dtype=np.float64, count=len(titles))
        rows = np.full((len(histories), width), -1, dtype=np.int64)
        weights = np.zeros((len(histories), width))
        filled = np.arange(width)[None, :] < lengths[:, None]
        rows[filled] = flat_rows
        weights[filled] = flat_w
        weights[rows < 0] = 0.0
        self.rows = rows
        self.weights = weights
        self.positive = (rows >= 0) & (weights > 0)
        # Row index safe for fancy indexing (padding points at row 0 with weight 0).
        self.clipped = np.maximum(rows, 0)

    def take(self, queries: np.ndarray) -> HistoryMatrix:
        """The histories of ``queries`` only."""
        out = HistoryMatrix.__new__(HistoryMatrix)
        for name in HistoryMatrix.__slots__:
            setattr(out, name, getattr(self, name)[queries])
        return out


class _Scorer:
    """The four components' raw scores for many queries (user profiles at a time)."""

    def __init__(self, model: Hybrid, hist: HistoryMatrix, ts: np.ndarray) -> None:
        self.model = model
        self.hist = hist
        self.ts = ts
        self.n_rows = model._items.rows

    def trending(self, cols: np.ndarray) -> np.ndarray:
        tr = self.model.trending
        now = np.maximum(self.ts, tr._now)[:, None]
        elapsed = np.maximum(now - tr._t[cols][None, :], 0.0)
        return tr._score[cols][None, :] * np.exp2(-elapsed / tr.half_life_s)

    def cooccurrence_dense(self) -> np.ndarray:
        """(queries, rows) co-occurrence scores over every row of the item table."""
        co = self.model.cooccurrence
        hist, n_rows = self.hist, self.n_rows
        rank = np.cumsum(hist.positive, axis=1) - 1
        sel = hist.positive & (rank < co.window)
        q_idx, pos = np.nonzero(sel)
        out = np.zeros((len(hist.rows), n_rows))
        if len(q_idx) == 0:
            return out
        h = hist.rows[q_idx, pos]
        weight = (np.minimum(hist.weights[q_idx, pos], WEIGHT_CLIP) * co._decay[rank[q_idx, pos]]
                  / np.sqrt(co._pop[h] + 1.0))
        nbr = co._nbr[h]
        valid = nbr >= 0
        flat = (q_idx[:, None] * n_rows + nbr)[valid]
        totals = np.bincount(flat, weights=(co._w[h] * weight[:, None])[valid],
                             minlength=len(hist.rows) * n_rows)
        out = totals.reshape(len(hist.rows), n_rows)
        return out / np.sqrt(co._pop[:n_rows] + 1.0)[None, :]

    def mf_user_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """User vectors (queries, factors) and the normalised history weights used."""
        mf, hist = self.model.mf, self.hist
        w = np.where(hist.positive, np.minimum(hist.weights, WEIGHT_CLIP), 0.0)
        count = hist.positive.sum(axis=1)
        total = w.sum(axis=1)
        safe = np.where(count > 0, count, 1)
        mean = np.where(total > 0, total / safe, 1.0)
        wn = w / (np.sqrt(safe) * mean)[:, None]
        users = np.einsum("ql,qlf->qf", wn, mf._y[hist.clipped]).astype(np.float32)
        return users, wn

    def mf(self, cols: np.ndarray, users: np.ndarray) -> np.ndarray:
        mf = self.model.mf
        return (users @ mf._x[cols].T + mf._b[cols][None, :]).astype(np.float64)

    def content_user_vectors(self) -> np.ndarray:
        content, hist = self.model.content, self.hist
        w = np.where(hist.weights > 0, np.minimum(hist.weights, WEIGHT_CLIP),
                     content.negative_weight * np.maximum(hist.weights, -WEIGHT_CLIP))
        w = np.where(hist.rows >= 0, w, 0.0).astype(np.float32)
        vec = np.einsum("ql,qlf->qf", w, content._f[hist.clipped])
        norm = np.linalg.norm(vec, axis=1)
        return vec / np.where(norm > 0, norm, 1.0)[:, None]

    def content(self, cols: np.ndarray, users: np.ndarray) -> np.ndarray:
        return (users @ self.model.content._f[cols].T).astype(np.float64)


def _min_max(raw: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scale ``raw`` (queries, cols) to [0, 1] per query over the columns in ``mask``."""
    low = np.where(mask, raw, np.inf).min(axis=1, keepdims=True)
    high = np.where(mask, raw, -np.inf).max(axis=1, keepdims=True)
    span = high - low
    ok = span > 1e-12
    return np.where(ok, (raw - np.where(ok, low, 0.0)) / np.where(ok, span, 1.0), 0.0)


def _posterior_samples(model: Hybrid, cols: np.ndarray, sets: int) -> np.ndarray:
    """(sets, cols) independent draws from each title's Beta posterior."""
    ex = model.explorer
    a = np.broadcast_to(ex.prior_a + ex._a[cols], (sets, len(cols)))
    b = np.broadcast_to(ex.prior_b + ex._b[cols], (sets, len(cols)))
    return ex._rng.beta(a, b)


Ranked = list[tuple[str, float, str]]


def recommend_many(model: Hybrid, profiles: Sequence[UserProfile], n: int,
                   ts: Sequence[float]) -> list[list[Recommendation]]:
    """:meth:`Hybrid.recommend` for many users at once (each with its own event time).

    Parameters
    ----------
    model
        The hybrid (not modified, except its explorer's random state).
    profiles
        One profile per user, as after the batch's events.
    n
        List length.
    ts
        Each user's query time (the event time of the user's last event).
    """
    return [[Recommendation(t, s, r) for t, s, r in ranked]
            for ranked in rank_many(model, profiles, n, ts)]


def rank_many(model: Hybrid, profiles: Sequence[UserProfile], n: int,
              ts: Sequence[float]) -> list[Ranked]:
    """:func:`recommend_many` as plain ``(title_id, score, reason)`` tuples (the hot path
    serialises them directly)."""
    if len(profiles) != len(ts):
        raise ValueError("profiles and ts must have the same length")
    if not profiles:
        return []
    items = model._items
    cols = np.fromiter(items.index.values(), dtype=np.int64, count=len(items))
    if len(cols) > min(model.max_candidates, DENSE_MAX_TITLES) or len(cols) == 0 or n <= 0:
        return [[(r.title_id, r.score, r.reason) for r in model.recommend(p, n=n, ts=t)]
                for p, t in zip(profiles, ts, strict=True)]
    batch = _RankBatch(model, profiles, cols, np.asarray(ts, dtype=np.float64))
    return batch.lists(n)


class _RankBatch:
    """Scores of every (user, candidate) pair of a batch, then the lists."""

    def __init__(self, model: Hybrid, profiles: Sequence[UserProfile], cols: np.ndarray,
                 times: np.ndarray) -> None:
        self.model = model
        self.cols = cols
        items = model._items
        index = items.index
        n_users, n_cols = len(profiles), len(cols)
        self.hist = hist = HistoryMatrix(index, [p.history for p in profiles])
        scorer = _Scorer(model, hist, times)
        # Candidates: every known title but the user's completed ones, in the table's order.
        position = np.full(items.rows, -1, dtype=np.int64)
        position[cols] = np.arange(n_cols)
        self.candidate = candidate = np.ones((n_users, n_cols), dtype=bool)
        done = [(u, row) for u, p in enumerate(profiles) for row in
                (index.get(t) for t in p.completed) if row is not None]
        if done:
            done_u, done_rows = zip(*done, strict=True)
            candidate[np.array(done_u), position[np.array(done_rows)]] = False
        self.n_candidates = candidate.sum(axis=1)
        self.cold = cold = ~hist.positive.any(axis=1)

        trend = scorer.trending(cols)
        raw = np.empty((len(COMPONENTS), n_users, n_cols))
        raw[0] = trend
        raw[1] = scorer.cooccurrence_dense()[:, cols]
        mf_users, _ = scorer.mf_user_vectors()
        raw[2] = scorer.mf(cols, mf_users)
        raw[3] = scorer.content(cols, scorer.content_user_vectors())
        for k in range(len(COMPONENTS)):
            raw[k] = _min_max(raw[k], candidate) * model._w[k]
        self.contributions = raw  # (components, users, cols), weighted
        self.scores = scores = raw.sum(axis=0)

        exploration = model.exploration
        self.samples: np.ndarray | None = None
        self.which = np.zeros(n_users, dtype=np.int64)
        if cold.any() or exploration > 0:
            sets = min(SAMPLE_SETS, n_users)
            self.samples = _posterior_samples(model, cols, sets)
            self.which = np.arange(n_users) % sets
        if cold.any():
            assert self.samples is not None
            t_cold = trend[cold]
            top = np.where(candidate[cold], t_cold, -np.inf).max(axis=1, keepdims=True)
            t_cold = np.where(top > 0, t_cold / np.where(top > 0, top, 1.0), t_cold)
            scores[cold] = 0.7 * t_cold + 0.3 * self.samples[self.which[cold]]

    def lists(self, n: int) -> list[Ranked]:
        model, cols, candidate = self.model, self.cols, self.candidate
        n_users, n_cols = candidate.shape
        depth = min(3 * n, n_cols)
        ranked = np.where(candidate, self.scores, -np.inf)
        if depth < n_cols:
            part = np.argpartition(-ranked, depth - 1, axis=1)[:, :depth]
        else:
            part = np.broadcast_to(np.arange(n_cols), (n_users, n_cols))
        order = np.take_along_axis(
            part, np.argsort(-np.take_along_axis(ranked, part, axis=1), axis=1, kind="stable"),
            axis=1)
        genre_matrix, _ = self._genre_matrix()
        picks = _diversify_many(order, genre_matrix, n, model.max_per_genre,
                                np.minimum(self.n_candidates, depth))
        n_picked = (picks >= 0).sum(axis=1)
        n_explore = max(int(model.exploration * n), 1) if model.exploration > 0 else 0
        explored = np.full((n_users, max(n_explore, 1)), -1, dtype=np.int64)
        explore_users = np.nonzero(~self.cold & (n_explore > 0)
                                   & (self.n_candidates > n_picked - n_explore))[0]
        if len(explore_users):
            assert self.samples is not None
            pool = candidate[explore_users].copy()
            taken = picks[explore_users]
            r, c = np.nonzero(taken >= 0)
            pool[r, taken[r, c]] = False
            scale = 1.0 / (1.0 + model.explorer.exposure(cols) / 10.0)
            draws = np.where(pool, self.samples[self.which[explore_users]] * scale, -np.inf)
            k = min(n_explore, n_cols)
            if k == 1:
                best = draws.argmax(axis=1)[:, None]
            else:
                best = np.argpartition(-draws, k - 1, axis=1)[:, :k]
                best = np.take_along_axis(best, np.argsort(
                    -np.take_along_axis(draws, best, axis=1), axis=1, kind="stable"), axis=1)
            ok = np.take_along_axis(draws, best, axis=1) > -np.inf
            explored[explore_users, :k] = np.where(ok, best, -1)
        reasons = self._reasons(picks)
        ids = np.array(model._items.ids, dtype=object)
        titles = ids[cols[np.maximum(picks, 0)]].tolist()
        pick_scores = np.take_along_axis(self.scores, np.maximum(picks, 0), axis=1).tolist()
        picked_counts = n_picked.tolist()
        explored_cols = explored.tolist()
        out: list[Ranked] = []
        for u in range(n_users):
            m = picked_counts[u]
            entries = list(zip(titles[u][:m], pick_scores[u][:m], reasons[u][:m], strict=True))
            extra = [(ids[cols[i]], float(self.scores[u, i]), "explore")
                     for i in explored_cols[u] if i >= 0]
            if extra:
                entries = _insert_explored(entries, extra)
            out.append(entries[:n])
        return out

    def _genre_matrix(self) -> tuple[np.ndarray, list[str]]:
        genres = self.model.content._genres
        names: dict[str, int] = {}
        per_col = [genres.get(int(c), ()) for c in self.cols]
        for gs in per_col:
            for g in gs:
                names.setdefault(g, len(names))
        matrix = np.zeros((len(self.cols), max(len(names), 1)), dtype=bool)
        for i, gs in enumerate(per_col):
            for g in gs:
                matrix[i, names[g]] = True
        return matrix, list(names)

    def _reasons(self, picks: np.ndarray) -> list[list[str]]:
        """The word shown with each listed title (as :meth:`Hybrid._reason`)."""
        model, cols = self.model, self.cols
        co = model.cooccurrence
        ids = model._items.ids
        safe = np.maximum(picks, 0)
        users = np.arange(len(picks))[:, None]
        best = self.contributions[:, users, safe].argmax(axis=0)     # (users, n)
        by_component = np.array([REASON_OF.get(c, "similar_users") for c in COMPONENTS],
                                dtype=object)
        out = by_component[best]
        content = best == COMPONENTS.index("content")
        if content.any():
            genres = model.content._genres
            first_genre = np.array(
                [f"genre:{gs[0]}" if (gs := genres.get(int(c))) else "similar_users"
                 for c in cols[safe[content]]], dtype=object)
            out[content] = first_genre
        # Co-occurrence: the user's history title with the strongest link to the pick.
        cu, cj = np.nonzero(best == COMPONENTS.index("cooccurrence"))
        if len(cu):
            hist = self.hist
            rank = np.cumsum(hist.positive, axis=1) - 1
            window_mask = hist.positive & (rank < co.window)
            sizes = window_mask.sum(axis=1)
            width = max(int(sizes.max(initial=0)), 1)
            window = np.full((len(hist.rows), width), -1, dtype=np.int64)
            window[np.arange(width)[None, :] < sizes[:, None]] = hist.rows[window_mask]
            src = window[cu]                                   # (picks, width)
            safe_src = np.maximum(src, 0)
            target = cols[picks[cu, cj]]
            link = np.where(co._nbr[safe_src] == target[:, None, None], co._w[safe_src],
                            0.0).max(axis=2)
            link[src < 0] = 0.0
            j = link.argmax(axis=1)
            strength = link[np.arange(len(cu)), j]
            source = src[np.arange(len(cu)), j]
            named: dict[int, str] = {}
            labels = []
            for s, ok in zip(source.tolist(), (strength > 0.0).tolist(), strict=True):
                if not ok:
                    labels.append("similar_users")
                    continue
                label = named.get(s)
                if label is None:
                    label = named[s] = f"because_you_watched:{ids[s]}"
                labels.append(label)
            out[cu, cj] = np.array(labels, dtype=object)
        out[self.cold] = "trending"
        return out.tolist()


def _diversify_many(order: np.ndarray, genre_matrix: np.ndarray, n: int, max_per_genre: int,
                    lengths: np.ndarray) -> np.ndarray:
    """:meth:`Hybrid._diversify` for every user at once: (users, n) positions, -1 padded.

    Walks the ranked positions once, all users in step: among a list's first 10 titles no
    genre may appear more than ``max_per_genre`` times; a title that would break that is
    deferred to after the chosen ones.
    """
    n_users, depth = order.shape
    counts = np.zeros((n_users, genre_matrix.shape[1]), dtype=np.int64)
    chosen = np.zeros(n_users, dtype=np.int64)
    status = np.zeros((n_users, depth), dtype=np.int8)  # 1 chosen, 2 deferred
    onehot = genre_matrix[order]                        # (users, depth, genres)
    for j in range(depth):
        filling = (chosen < n) & (j < lengths)
        if not filling.any():
            break
        g = onehot[:, j, :]
        head = filling & (chosen < 10)
        over = head & ((counts >= max_per_genre) & g).any(axis=1)
        take = filling & ~over
        counts += g & (take & head)[:, None]
        status[take, j] = 1
        status[over, j] = 2
        chosen += take
    key = np.where(status == 1, 0, np.where(status == 2, depth, 2 * depth)) + np.arange(depth)
    first = np.argsort(key, axis=1, kind="stable")[:, :n]
    picked = np.take_along_axis(order, first, axis=1)
    keep = np.take_along_axis(status, first, axis=1) > 0
    width = min(n, depth)
    out = np.full((n_users, n), -1, dtype=np.int64)
    out[:, :width] = np.where(keep, picked, -1)[:, :width]
    return out


def _insert_explored(picks: list[tuple[int, str]], explored: list[tuple[int, str]]
                     ) -> list[tuple[int, str]]:
    """Spread exploration slots through the list as :meth:`Hybrid._explore_slots` does."""
    keep = len(picks) - len(explored) if len(picks) >= len(explored) else 0
    head = picks[:keep]
    step = max(1, len(head) // (len(explored) + 1))
    for k, slot in enumerate(explored):
        head.insert(min(len(head), (k + 1) * step + k), slot)
    return head

# -- learning -----------------------------------------------------------------------------------
def learn_many(model: Hybrid, titles: Sequence[str], ys: Sequence[float],
               ts: Sequence[float], histories: Sequence[History]) -> None:
    """:meth:`Hybrid.learn_one` for a batch of events, as one minibatch update.

    Parameters
    ----------
    titles, ys, ts
        Per event: the title, the implicit feedback (not 0) and the event time.
    histories
        Per event: the user's history (most recent first) just *before* the event.
    """
    if not (len(titles) == len(ys) == len(ts) == len(histories)):
        raise ValueError("titles, ys, ts and histories must have the same length")
    if not titles:
        return
    items = model._items
    unknown = sum(1 for t in set(titles) if t not in items.index)
    if len(items) + unknown > items.capacity or len(items) > DENSE_MAX_TITLES:
        # Evictions inside the batch would recycle rows mid-way: go one at a time.
        for title, y, t, h in zip(titles, ys, ts, histories, strict=True):
            model.learn_one("", title, y, UserProfile("", history=list(h)), t)
        return
    rows = np.fromiter((items.add(t) for t in titles), dtype=np.int64, count=len(titles))
    model._ensure_rows()
    y = np.asarray(ys, dtype=np.float64)
    times = np.asarray(ts, dtype=np.float64)
    hist = HistoryMatrix(items.index, histories)

    _learn_blend(model, rows, y, times, hist)
    users, wn = _Scorer(model, hist, times).mf_user_vectors()
    _learn_mf(model, rows, y, hist, users, wn)
    _learn_cooccurrence(model, rows, y, hist)
    _learn_trending(model, rows, y, times)
    _learn_explorer(model, rows, y)


def _learn_blend(model: Hybrid, rows: np.ndarray, y: np.ndarray, times: np.ndarray,
                 hist: HistoryMatrix) -> None:
    positives = np.nonzero(y > 0)[0]
    seen = model._positives_seen + np.arange(1, len(positives) + 1)
    model._positives_seen += len(positives)
    if model._items.rows <= 2:
        return
    steps = positives[seen % model.blend_every == 0]
    if len(steps) == 0:
        return
    n_rows = model._items.rows
    negatives = model._rng.integers(0, n_rows, size=(len(steps), model.blend_negatives))
    scorer = _Scorer(model, hist.take(steps), times[steps])
    cand = np.concatenate([rows[steps][:, None], negatives], axis=1)
    valid = np.ones_like(cand, dtype=bool)
    valid[:, 1:] = negatives != rows[steps][:, None]
    q = np.arange(len(steps))[:, None]
    all_rows = np.arange(n_rows)
    raw = np.empty((*cand.shape, len(COMPONENTS)))
    raw[:, :, 0] = scorer.trending(all_rows)[q, cand]
    raw[:, :, 1] = scorer.cooccurrence_dense()[q, cand]
    mf_users, _ = scorer.mf_user_vectors()
    raw[:, :, 2] = np.einsum("qf,qcf->qc", mf_users, model.mf._x[cand]) + model.mf._b[cand]
    content_users = scorer.content_user_vectors()
    raw[:, :, 3] = np.einsum("qf,qcf->qc", content_users, model.content._f[cand])
    for k in range(len(COMPONENTS)):
        raw[:, :, k] = _min_max(raw[:, :, k], valid)
    # The pairwise steps stay sequential: each one's margin depends on the weights so far.
    w = model._w
    lr = model.blend_learning_rate
    for s in range(len(steps)):
        negs = valid[s, 1:]
        if not negs.any():
            continue
        diffs = raw[s, 0] - raw[s, 1:][negs]
        margins = diffs @ w
        grads = (1.0 / (1.0 + np.exp(np.clip(margins, -30, 30))))[:, None] * diffs
        w = np.maximum(w + lr * grads.mean(axis=0), 0.0)
    model._w = w


def _scatter(n_rows: int, index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum of ``values`` rows per ``index`` into an (n_rows, width) array."""
    width = values.shape[1]
    flat = (index[:, None] * width + np.arange(width)[None, :]).ravel()
    return np.bincount(flat, weights=values.ravel(), minlength=n_rows * width).reshape(
        n_rows, width)


def _learn_mf(model: Hybrid, rows: np.ndarray, y: np.ndarray, hist: HistoryMatrix,
              users: np.ndarray, wn: np.ndarray) -> None:
    """One minibatch of the BPR (positives) and pointwise (negatives) steps of ImplicitMF."""
    mf = model.mf
    n_rows = model._items.rows
    lr, l2 = mf.learning_rate, mf.l2
    x, b = mf._x[:n_rows].astype(np.float64), mf._b[:n_rows].astype(np.float64)
    u = users.astype(np.float64)
    dx_idx: list[np.ndarray] = []
    dx_val: list[np.ndarray] = []
    db_idx: list[np.ndarray] = []
    db_val: list[np.ndarray] = []
    grad_u = np.zeros_like(u)

    pos = np.nonzero(y > 0)[0]
    if len(pos) and mf.n_negatives and n_rows > 1:
        negs = mf._rng.integers(0, n_rows, size=(len(pos), mf.n_negatives))
        j = rows[pos]
        ok = (negs != j[:, None]) & mf._initialised[negs]
        xj = x[j]
        xk = x[negs]                                     # (P, K, F)
        up = u[pos]
        diff = np.einsum("pf,pkf->pk", up, xj[:, None, :] - xk) + b[j][:, None] - b[negs]
        g = np.where(ok & (diff < 30),
                     lr * np.minimum(y[pos], 3.0)[:, None] / (1.0 + np.exp(np.minimum(diff, 30))),
                     0.0)
        n_ok = ok.sum(axis=1).astype(np.float64)
        gsum = g.sum(axis=1)
        dx_idx += [j, negs[ok]]
        dx_val += [gsum[:, None] * up - lr * l2 * n_ok[:, None] * xj,
                   (-g[:, :, None] * up[:, None, :] - lr * l2 * xk)[ok]]
        db_idx += [j, negs[ok]]
        db_val += [gsum - lr * l2 * n_ok * b[j], (-g - lr * l2 * b[negs])[ok]]
        grad_u[pos] = np.einsum("pk,pkf->pf", g, xj[:, None, :] - xk)

    neg = np.nonzero(y < 0)[0]
    if len(neg):
        j = rows[neg]
        xj = x[j]
        un = u[neg]
        score = np.einsum("pf,pf->p", un, xj) + b[j]
        g = np.where(score > -30,
                     lr * np.minimum(-y[neg], 3.0) / (1.0 + np.exp(-np.maximum(score, -30))), 0.0)
        step = g[:, None] * un + lr * l2 * xj
        dx_idx.append(j)
        dx_val.append(-step)
        db_idx.append(j)
        db_val.append(-g)
        grad_u[neg] = -g[:, None] * (xj - step)

    if dx_idx:
        mf._x[:n_rows] += _scatter(n_rows, np.concatenate(dx_idx),
                                   np.concatenate(dx_val)).astype(np.float32)
        mf._b[:n_rows] += np.bincount(np.concatenate(db_idx), weights=np.concatenate(db_val),
                                      minlength=n_rows).astype(np.float32)
    # History factors: every event moves its user's positive history rows.
    q_idx, slot = np.nonzero(hist.positive)
    if len(q_idx):
        h = hist.rows[q_idx, slot]
        update = wn[q_idx, slot][:, None] * grad_u[q_idx]
        counts = np.bincount(h, minlength=n_rows).astype(np.float64)
        dy = _scatter(n_rows, h, update) - lr * l2 * counts[:, None] * mf._y[:n_rows]
        mf._y[:n_rows] += dy.astype(np.float32)


def _learn_cooccurrence(model: Hybrid, rows: np.ndarray, y: np.ndarray,
                        hist: HistoryMatrix) -> None:
    co = model.cooccurrence
    pos = np.nonzero(y > 0)[0]
    if len(pos) == 0:
        return
    n_rows = model._items.rows
    co._pop[:n_rows] += np.bincount(rows[pos], weights=y[pos], minlength=n_rows)
    # Pairs: each positive event's first `window` positive history titles (not itself).
    positive = hist.positive[pos]
    hrows = hist.rows[pos]
    rank = np.cumsum(positive, axis=1) - 1
    sel = positive & (rank < co.window) & (hrows != rows[pos][:, None])
    order = np.cumsum(sel, axis=1) - 1
    e, slot = np.nonzero(sel)
    if len(e) == 0:
        return
    h = hrows[e, slot]
    j = rows[pos][e]
    amount = y[pos][e] * co._decay[order[e, slot]]
    src = np.concatenate([h, j])
    dst = np.concatenate([j, h])
    amt = np.concatenate([amount, amount])
    # Merge with the sources' current links and keep each source's strongest.
    sources = np.unique(src)
    width = co.max_neighbours
    cur_nbr = co._nbr[sources]
    cur_w = co._w[sources]
    have = cur_nbr >= 0
    all_src = np.concatenate([np.repeat(sources, width)[have.ravel()], src])
    all_dst = np.concatenate([cur_nbr[have], dst])
    all_w = np.concatenate([cur_w[have], amt])
    keys, inverse = np.unique(all_src * n_rows + all_dst, return_inverse=True)
    weights = np.bincount(inverse, weights=all_w, minlength=len(keys))
    k_src, k_dst = keys // n_rows, keys % n_rows
    order_k = np.lexsort((-weights, k_src))
    k_src, k_dst, weights = k_src[order_k], k_dst[order_k], weights[order_k]
    starts = np.searchsorted(k_src, k_src, side="left")
    rank_k = np.arange(len(k_src)) - starts
    keep = rank_k < width
    co._nbr[sources] = -1
    co._w[sources] = 0.0
    co._nbr[k_src[keep], rank_k[keep]] = k_dst[keep]
    co._w[k_src[keep], rank_k[keep]] = weights[keep]


def _learn_trending(model: Hybrid, rows: np.ndarray, y: np.ndarray, times: np.ndarray) -> None:
    tr = model.trending
    tr._now = max(tr._now, float(times.max()))
    pos = np.nonzero(y > 0)[0]
    if len(pos) == 0:
        return
    r, t, v = rows[pos], times[pos], y[pos]
    n_rows = model._items.rows
    latest = tr._t[:n_rows].copy()
    np.maximum.at(latest, r, t)
    touched = np.unique(r)
    hl = tr.half_life_s
    old = tr._score[touched] * np.exp2(-np.maximum(latest[touched] - tr._t[touched], 0.0) / hl)
    added = np.bincount(r, weights=v * np.exp2(-np.maximum(latest[r] - t, 0.0) / hl),
                        minlength=n_rows)
    tr._score[touched] = old + added[touched]
    tr._t[touched] = latest[touched]


def _learn_explorer(model: Hybrid, rows: np.ndarray, y: np.ndarray) -> None:
    ex = model.explorer
    n_rows = model._items.rows
    ex._a[:n_rows] += np.bincount(rows, weights=np.where(y > 0, np.minimum(y, 1.0), 0.0),
                                  minlength=n_rows)
    ex._b[:n_rows] += np.bincount(rows, weights=np.where(y < 0, np.minimum(-y, 1.0), 0.0),
                                  minlength=n_rows)
