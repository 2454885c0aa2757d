"""Batched entry points of the :class:`~models.hybrid.Hybrid`: learn and rank many at once.

The worker's hot path sees events in batches of up to ~1,000 and ranks every user of a
batch once. Doing that one call at a time costs about 35 us per ``learn_one`` and 400 us
per ``recommend`` (mostly numpy call overhead on small arrays and Python loops); here the
same models do the same work with a few array operations per batch:

``recommend_many``
    Scores every (user, candidate) pair of the batch with the hybrid's own matrix code
    (:meth:`Hybrid.rank_matrix`, which scores one user as a matrix of one row: the same
    arithmetic). The top-k, genre diversity, exploration slots and reasons mirror
    :meth:`Hybrid.recommend`; lists are identical for the same model state
    (``tests/unit/test_batched.py`` checks it). One difference, in the Thompson draws:
    instead of one posterior sample per (user, title), which costs ~70 us per user in Beta
    sampling alone, ``SAMPLE_SETS`` independent posterior samples per title are drawn per
    batch and users take them in turn. Each user's exploration slots are still exact
    draws from the current posterior; users of one batch who share a sample set are
    correlated.
``learn_many``
    Replays a batch of (title, feedback, time, history-before-the-event) as minibatch
    updates computed from the model state at the start of the batch: trending and the
    bandit exactly (sums of the same increments), matrix factorisation as one minibatch
    SGD step (the same BPR and pointwise gradients, summed), co-occurrence by adding the
    batch's links and keeping each title's ``max_neighbours`` strongest (the one-at-a-time
    rule is Space-Saving, one increment at a time), and the blend's steps in order
    (:meth:`Hybrid.learn_blend`) with pools from the batch-start state.

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

import functools
import hashlib
import importlib
import inspect
import logging
import weakref
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from models.base import (  # noqa: F401 - MAX_HISTORY re-exported
    MAX_HISTORY,
    TOP_BY_ARGMAX,
    HistoryMatrix,
    UserProfile,
    top_by_argmax,
)
from models.cooccurrence import CoOccurrence
from models.hybrid import (
    COMPONENTS,
    MOST_OF_ONE_GENRE,
    REASON_OF,
    Hybrid,
    Ranking,
    Recommendation,
)

logger = logging.getLogger(__name__)

# The one-at-a-time code each batched path mirrors. When any of it changes, that path is
# switched off (one warning; every batch then goes one at a time, correct but slower)
# until this module is updated to match and the fingerprint below with it;
# tests/unit/test_batched.py fails meanwhile, naming what changed.
MIRRORED = {
    "rank": (
        "models.base:RowProfile.build", "models.base:top_k",
        "models.cooccurrence:CoOccurrence._votes",
        "models.content:ContentModel.add_title",
        "models.explore:ThompsonExplorer._score_rows", "models.explore:ThompsonExplorer.exposure",
        "models.hybrid:Hybrid.candidate_rows", "models.hybrid:Hybrid.ranked",
        "models.hybrid:Hybrid._rank", "models.hybrid:Hybrid.explore_slots",
        "models.hybrid:Hybrid._diversify", "models.hybrid:Hybrid.genre_caps",
        "models.hybrid:Hybrid._explore_slots",
        "models.hybrid:Hybrid._reasons", "models.cooccurrence:CoOccurrence.sources",
    ),
    "learn": (
        "models.base:Recommender.learn_one", "models.base:RowProfile.build",
        "models.hybrid:Hybrid._learn_row",
        "models.trending:Trending._learn_row",
        "models.cooccurrence:CoOccurrence.__init__",
        "models.cooccurrence:CoOccurrence._learn_row", "models.cooccurrence:CoOccurrence._bump",
        "models.cooccurrence:CoOccurrence._merge",
        "models.mf:ImplicitMF._learn_row", "models.mf:ImplicitMF.sample_negatives",
        "models.mf:ImplicitMF.mark_engaged",
        "models.explore:ThompsonExplorer._learn_row",
        "models.recent:RecentCoOccurrence._learn_row", "models.recent:RecentCoOccurrence.growth",
        "models.recent:RecentCoOccurrence.advance",
    ),
}
FINGERPRINTS = {"rank": "e26ed2e08f163110", "learn": "7691598ad4af1051"}


def fingerprint(kind: str) -> str | None:
    """A hash of the source of the code the ``kind`` path mirrors (None when the sources
    are not installed, or something it mirrors is gone)."""
    digest = hashlib.sha256()
    for name in MIRRORED[kind]:
        module, _, qualname = name.partition(":")
        try:
            obj: object = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            digest.update(inspect.getsource(obj).encode())  # type: ignore[arg-type]
        except AttributeError:
            return ""
        except (OSError, TypeError):
            return None
    return digest.hexdigest()[:16]


@functools.cache
def mirrors(kind: str) -> bool:
    """Whether the ``kind`` ("rank" or "learn") batched path matches the models' code."""
    current = fingerprint(kind)
    if current is None:  # no sources to compare (e.g. byte-code only): trust the build
        return True
    if current != FINGERPRINTS[kind]:
        logger.warning("models changed since models/batched.py was written (%s path: "
                       "%s, expected %s); batching it one at a time until it is updated",
                       kind, current, FINGERPRINTS[kind])
        return False
    return True


# Independent posterior samples per title drawn per batch for Thompson sampling (see the
# module docstring): 16 keeps users of a batch mostly on different draws, for about 1 ms
# of Beta sampling per batch on a 1,000-title catalogue instead of ~70 us per user.
SAMPLE_SETS = 16
# Dense (queries x titles) matrices above this many titles would cost more memory than
# they save time (8 bytes x users x titles per component); larger catalogues rank one
# user at a time through Hybrid.recommend, which pre-selects candidates.
DENSE_MAX_TITLES = 4096
# Below these sizes the fixed cost of the dense batch path (~0.3-0.7 ms) exceeds the
# one-at-a-time API's per-call cost, measured on 1,000 titles: such batches use it.
ONE_AT_A_TIME_USERS = 1
ONE_AT_A_TIME_EVENTS = 3
# Up to this many users a batch is diversified one user at a time in Python (~20 us each);
# above it, all users walk their ranked lists together in numpy (a fixed ~1 ms).
SMALL_BATCH_USERS = 32
# merge_links sums a batch's links in a dense (sources x titles) table when it has at most
# this many cells (8 bytes each: 16 MiB; 2.4 MiB for a 1,000-event batch on 1,000 titles)
# and at most this many per link (a cell costs ~1 ns, sorting a link ~45 ns, measured on
# 17,000 links); otherwise it sorts the links.
DENSE_MERGE_CELLS = 1 << 21
DENSE_MERGE_CELLS_PER_LINK = 32
# Up to this many users the lists are put together one user at a time (~25 us each); above
# it, for all users at once in numpy (a fixed ~0.15 ms, then ~3 us per user).
ASSEMBLE_EACH_USERS = 8
History = Sequence[tuple[str, float]]
# A list entry of any form (_insert_explored spreads both positions and finished tuples).
_Entry = TypeVar("_Entry")
# Decimal places of the scores in recommendation messages.
SCORE_DECIMALS = 6
# One list: (title_id, score, reason) per listed title, best first.
Ranked = list[tuple[str, float, str]]
# Per model, its genres as arrays (see _GenreTable), rebuilt when the catalogue changes.
_GENRE_CACHE: weakref.WeakKeyDictionary[Hybrid, _GenreTable] = weakref.WeakKeyDictionary()
# The reason shown for a pick by the component contributing most to it (content and
# co-occurrence ones are refined per title in _RankBatch._reasons).
_REASON_BY_COMPONENT = np.array([REASON_OF.get(c, "similar_users") for c in COMPONENTS],
                                dtype=object)
_CONTENT = COMPONENTS.index("content")
_COOCCURRENCE = COMPONENTS.index("cooccurrence")


def _selector(cols: np.ndarray) -> np.ndarray | slice:
    """``cols`` as an index; a slice (a view, no copy) when it is ``0..n-1`` in order, which
    it is unless titles were removed or evicted."""
    n = len(cols)
    if n and cols[0] == 0 and cols[-1] == n - 1 and bool((np.diff(cols) == 1).all()):
        return slice(0, n)
    return cols


class _LazyPosterior:
    """``sets`` independent draws from every candidate's Beta posterior, realised lazily.

    Exploration needs, per user, the title with the largest draw scaled by
    ``1 / (1 + exposure / 10)``. A draw is at most 1, so a title's scaled draw is at most
    its scale: drawing titles in decreasing order of scale and stopping once the best
    scaled draw so far beats the next title's scale gives exactly the argmax over all of
    them, usually after a small share of the catalogue (exact Thompson sampling, at a
    fraction of the ~100 ns per Beta draw). Cold users need whole draws (:meth:`full`).
    """

    def __init__(self, model: Hybrid, cols: np.ndarray | slice, sets: int) -> None:
        ex = model.explorer
        self.rng = ex._rng
        self.a = ex.prior_a + ex._a[cols]
        self.b = ex.prior_b + ex._b[cols]
        self.sets = max(sets, 1)
        self.scale = 1.0 / (1.0 + (ex._a[cols] + ex._b[cols]) / 10.0)
        self.order = np.argsort(-self.scale, kind="stable")
        self.draws = np.zeros((self.sets, len(self.a)))
        self.realised = np.zeros(self.sets, dtype=np.int64)
        # Per set, its largest scaled draw so far: no user of a set whose largest is below
        # the next title's scale can be done, so explore skips the look at their pools.
        self.largest = np.full(self.sets, -np.inf)

    def _realise(self, sets: np.ndarray, upto: int) -> None:
        # (A handful of sets: Python sets and lists cost less than np.unique and masks.)
        realised = self.realised.tolist()
        behind = [s for s in sorted(set(sets.tolist())) if realised[s] < upto]
        if not behind:
            return
        # One Beta call for every set's missing draws, laid out in the order one call per
        # set would draw them: the generator gives the same numbers, for less overhead.
        idx = [self.order[realised[s]:upto] for s in behind]
        flat = idx[0] if len(idx) == 1 else np.concatenate(idx)
        lengths = [upto - realised[s] for s in behind]
        drawn = self.rng.beta(self.a[flat], self.b[flat])
        # (A flat index into the contiguous draws: half the cost of a (set, title) pair.)
        self.draws.reshape(-1)[np.repeat(np.asarray(behind) * len(self.a), lengths) + flat] = drawn
        self.realised[behind] = upto
        starts = np.cumsum([0, *lengths[:-1]])
        self.largest[behind] = np.maximum(
            self.largest[behind], np.maximum.reduceat(drawn * self.scale[flat], starts))

    def full(self, which: np.ndarray) -> np.ndarray:
        """Whole draws (len(which), cols), for the sets in ``which``."""
        self._realise(which, len(self.a))
        return self.draws[which]

    def explore(self, pool: np.ndarray, which: np.ndarray, k: int) -> np.ndarray:
        """Per user, the ``k`` titles of its ``pool`` (bool, users x cols) with the largest
        scaled draws of its set ``which``, best first; -1 where the pool runs out."""
        n_cols = len(self.a)
        out = np.full((len(pool), k), -1, dtype=np.int64)
        pending = np.nonzero(pool.any(axis=1))[0]
        end, chunk = 0, 64
        while len(pending):
            end = min(n_cols, end + chunk)
            chunk *= 2
            sets = which[pending]
            self._realise(sets, end)
            if end < n_cols and (end < k or bool(
                    (self.largest[sets] < self.scale[self.order[end]]).all())):
                continue  # nobody can be done yet: the next titles' draws could beat theirs
            prefix = self.order[:end]
            # (Rows then columns with take: cheaper than a (users, titles) fancy index.)
            values = np.where(pool.take(pending, axis=0).take(prefix, axis=1),
                              self.draws.take(sets, axis=0).take(prefix, axis=1)
                              * self.scale.take(prefix), -np.inf)
            kk = min(k, end)
            if kk <= TOP_BY_ARGMAX:  # (one or two exploration slots, usually)
                top, top_values = top_by_argmax(values, kk)
            else:
                users = np.arange(len(pending))[:, None]
                top = np.argpartition(-values, kk - 1, axis=1)[:, :kk]
                top_values = values[users, top]
                order = np.argsort(-top_values, axis=1, kind="stable")
                top, top_values = top[users, order], top_values[users, order]
            bound = self.scale[self.order[end]] if end < n_cols else -np.inf
            done = (top_values[:, -1] >= bound) | (end >= n_cols)
            if kk < k:
                done &= end >= n_cols
            finished = pending[done]
            out[finished, :kk] = np.where(top_values[done] > -np.inf, prefix[top[done]], -1)
            pending = pending[~done]
        return out


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
    """:func:`recommend_many` as plain ``(title_id, score, reason)`` tuples, scores
    rounded to ``SCORE_DECIMALS`` places (what the recommendation messages carry)."""
    if len(profiles) != len(ts):
        raise ValueError("profiles and ts must have the same length")
    if not profiles:
        return []
    items = model._items
    cols = np.fromiter(items.index.values(), dtype=np.int64, count=len(items))
    if (len(cols) > min(model.max_candidates, DENSE_MAX_TITLES) or len(cols) == 0 or n <= 0
            or len(profiles) <= ONE_AT_A_TIME_USERS or not mirrors("rank")):
        return [[(title, round(score, SCORE_DECIMALS), reason)
                 for title, score, reason in model.ranked(p, n=n, ts=t)]
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
        self.hist = hist = HistoryMatrix.from_histories(index, [p.history for p in profiles])
        # Candidates: every known title but the user's completed ones, in the table's order.
        position = np.full(items.rows, -1, dtype=np.int64)
        position[cols] = np.arange(n_cols)
        self.candidate = candidate = np.ones((n_users, n_cols), dtype=bool)
        # One flat pass over every completed title (a Python loop per user costs more).
        per_user = np.fromiter((len(p.completed) for p in profiles), dtype=np.int64,
                               count=n_users)
        get = index.get
        done_rows = np.fromiter((get(t, -1) for p in profiles for t in p.completed),
                                dtype=np.int64, count=int(per_user.sum()))
        done_users = np.repeat(np.arange(n_users), per_user)
        known = done_rows >= 0
        candidate[done_users[known], position[done_rows[known]]] = False
        self.n_candidates = candidate.sum(axis=1)
        self.sel = sel = _selector(cols)
        self.ranking: Ranking = model.rank_matrix(hist, cols, candidate, times)
        self.scores = self.ranking.scores
        self.posterior = _LazyPosterior(model, sel, min(SAMPLE_SETS, n_users))
        self.which = np.arange(n_users) % self.posterior.sets

    def lists(self, n: int) -> list[Ranked]:
        model, candidate = self.model, self.candidate
        n_users, n_cols = candidate.shape
        depth = min(3 * n, n_cols)
        order = self._ranked(depth)
        lengths = np.minimum(self.n_candidates, depth)
        table = _genre_table(model)
        picks = self._diversify(order, lengths, n, table)
        n_picked = (picks >= 0).sum(axis=1)
        n_explore = model.explore_slots(n, self.hist.positive_count())
        width = max(int(n_explore.max(initial=0)), 1)
        explored = np.full((n_users, width), -1, dtype=np.int64)
        explore_users = np.nonzero((n_explore > 0)
                                   & (self.n_candidates > n_picked - n_explore))[0]
        if len(explore_users):
            pool = candidate[explore_users].copy()
            taken = picks[explore_users]
            r, c = np.nonzero(taken >= 0)
            pool[r, taken[r, c]] = False
            drawn = self.posterior.explore(pool, self.which[explore_users], width)
            wanted = np.arange(width)[None, :] < n_explore[explore_users][:, None]
            explored[explore_users] = np.where(wanted, drawn, -1)
        reasons = self._reasons(picks, table)
        return self._assemble(picks, n_picked, explored, reasons, n)

    def _ranked(self, depth: int) -> np.ndarray:
        """Each user's ``depth`` best candidates, best first (users, depth).

        When every user's pool holds ``depth`` candidates all scored above any title
        outside the pool (the blend's scores sit far above the first stage's), they are
        found among the pool's columns alone, a tenth of the catalogue at 1,000 titles."""
        scores, candidate, ranking = self.scores, self.candidate, self.ranking
        n_users, n_cols = candidate.shape
        pool = ranking.pool
        # (For a handful of users the full rows cost less than the extra calls.)
        if depth < pool.shape[1] and depth < n_cols and n_users > ASSEMBLE_EACH_USERS:
            pooled = np.take_along_axis(scores, pool, axis=1)
            in_pool = np.where(ranking.valid, pooled, -np.inf)
            part = np.argpartition(-in_pool, depth - 1, axis=1)[:, :depth]
            top = np.take_along_axis(in_pool, part, axis=1)
            # The best score outside the pools: masked in place and restored (a copy of
            # the whole matrix costs more).
            np.put_along_axis(scores, pool, -np.inf, axis=1)
            outside = scores.max(axis=1)
            np.put_along_axis(scores, pool, pooled, axis=1)
            if bool((top.min(axis=1) > outside).all()):
                by_score = np.argsort(-top, axis=1, kind="stable")
                return np.take_along_axis(np.take_along_axis(pool, part, axis=1), by_score,
                                          axis=1)
        ranked = np.where(candidate, scores, -np.inf)
        if depth < n_cols:
            part = np.argpartition(-ranked, depth - 1, axis=1)[:, :depth]
            users = np.arange(n_users)[:, None]
            return part[users, np.argsort(-ranked[users, part], axis=1, kind="stable")]
        return np.argsort(-ranked, axis=1, kind="stable")

    def _assemble(self, picks: np.ndarray, n_picked: np.ndarray, explored: np.ndarray,
                  reasons: np.ndarray, n: int) -> list[Ranked]:
        """The lists: each user's picks with its exploration slots spread through them as
        :func:`_insert_explored` does, laid out for all users at once (a Python loop per
        user and list entry costs more than the ranking itself at ~300 users)."""
        n_users, width = explored.shape
        if n_users <= ASSEMBLE_EACH_USERS:
            return self._assemble_each(picks, n_picked, explored, reasons, n)
        # Explored titles fill each row from the left (-1 after them).
        n_explored = (explored >= 0).sum(axis=1)
        keep = np.where(n_picked >= n_explored, n_picked - n_explored, 0)
        step = np.maximum(1, keep // (n_explored + 1))
        k = np.arange(width)[None, :]
        slot_at = np.minimum(keep[:, None] + k, (k + 1) * step[:, None] + k)
        slot_at = np.where((k < n_explored[:, None]) & (slot_at < n), slot_at, n)
        is_slot = np.zeros((n_users, n + 1), dtype=np.int64)
        np.put_along_axis(is_slot, slot_at, 1, axis=1)
        is_slot = is_slot[:, :n]
        before = np.cumsum(is_slot, axis=1) - is_slot    # exploration slots before each entry
        # Each entry's column in [picks | explored]: picks in order, slots where they fall.
        source = np.where(is_slot > 0, n + before, np.arange(n)[None, :] - before)
        length = np.minimum(keep + n_explored, n)
        listed = np.arange(n)[None, :] < length[:, None]
        source = np.where(listed, source, 0)
        at = np.take_along_axis(np.concatenate([picks, explored], axis=1), source, axis=1)[listed]
        users = np.nonzero(listed)[0]
        ids = np.array(self.model._items.ids, dtype=object)
        titles = ids[self.cols[at]].tolist()
        scores = self.scores[users, at]
        rounded = np.round(scores, SCORE_DECIMALS).tolist()
        explore = np.nonzero(is_slot[listed])[0]
        # Exploration scores rounded as the one-at-a-time path does (Python's round, which
        # can differ from np.round in the last place).
        for i, value in zip(explore.tolist(), scores[explore].tolist(), strict=True):
            rounded[i] = round(value, SCORE_DECIMALS)
        reason = np.concatenate([reasons, np.full((n_users, width), "explore", dtype=object)],
                                axis=1)
        words = np.take_along_axis(reason, source, axis=1)[listed].tolist()
        entries = list(zip(titles, rounded, words, strict=True))
        ends = np.cumsum(length).tolist()
        return [entries[end - m:end] for end, m in zip(ends, length.tolist(), strict=True)]

    def _assemble_each(self, picks: np.ndarray, n_picked: np.ndarray, explored: np.ndarray,
                       reasons: np.ndarray, n: int) -> list[Ranked]:
        """:meth:`_assemble` one user at a time (fewer numpy calls for a handful)."""
        ids, cols, scores = self.model._items.ids, self.cols, self.scores
        # Every user's titles and rounded scores in one conversion each (-1 pads read
        # column 0, never listed).
        safe = np.maximum(picks, 0)
        titles = cols[safe].tolist()
        rounded = np.round(scores[np.arange(len(picks))[:, None], safe], SCORE_DECIMALS).tolist()
        out: list[Ranked] = []
        for u, (row_titles, row_scores, m, words, extra) in enumerate(zip(
                titles, rounded, n_picked.tolist(), reasons.tolist(), explored.tolist(),
                strict=True)):
            entries: Ranked = [(ids[t] or "", s, w) for t, s, w in zip(
                row_titles[:m], row_scores[:m], words[:m], strict=True)]
            slots: Ranked = [(ids[cols[i]] or "", round(float(scores[u, i]), SCORE_DECIMALS),
                              "explore") for i in extra if i >= 0]
            out.append((_insert_explored(entries, slots) if slots else entries)[:n])
        return out

    def _diversify(self, order: np.ndarray, lengths: np.ndarray, n: int, table: _GenreTable
                   ) -> np.ndarray:
        """:meth:`Hybrid._diversify` for every user: (users, n) positions, -1 padded.

        A list changes only when some genre would pass ``max_per_genre`` among its first
        10 titles; the others are their first ``n`` ranked titles as they are.
        """
        model = self.model
        caps = _genre_caps(self.hist, table.matrix, model.max_per_genre)  # (users, genres)
        genre_matrix = table.matrix[self.sel]
        onehot = genre_matrix[order[:, :10]].astype(np.int16)     # (users, 10, genres)
        before = np.cumsum(onehot, axis=1) - onehot
        capped = ((before >= caps[:, None, :]) & (onehot > 0)).any(axis=(1, 2))
        capped |= lengths < min(n, order.shape[1])
        picks = np.full((len(order), n), -1, dtype=np.int64)
        width = min(n, order.shape[1])
        picks[:, :width] = order[:, :width]
        slow = np.nonzero(capped)[0]
        if len(slow) == 0:
            return picks
        if len(slow) <= SMALL_BATCH_USERS:
            raised = [{table.names[g]: int(caps[u, g])
                       for g in np.nonzero(caps[u] > model.max_per_genre)[0].tolist()}
                      for u in slow.tolist()]
            picks[slow] = _diversify_each(order[slow], lengths[slow], self.cols,
                                          model.content._genres, n, model.max_per_genre,
                                          raised)
        else:
            picks[slow] = _diversify_many(order[slow], genre_matrix, n, caps[slow],
                                          lengths[slow])
        return picks

    def _reasons(self, picks: np.ndarray, table: _GenreTable) -> np.ndarray:
        """The word shown with each pick (as :meth:`Hybrid._reasons`): (users, n) strings."""
        cols, ranking = self.cols, self.ranking
        safe = np.maximum(picks, 0)
        users = np.arange(len(picks))[:, None]
        # Each pick's slot in its user's pool (-1: outside it, no contribution).
        slot_of = np.full(self.scores.shape, -1, dtype=np.int32)
        slot_of[users, ranking.pool] = np.where(ranking.valid, np.arange(ranking.pool.shape[1]),
                                                -1)
        slot = slot_of[users, safe]
        contrib = np.where(slot >= 0, ranking.contributions[:, users, np.maximum(slot, 0)], 0.0)
        best = contrib.argmax(axis=0)                                   # (users, n)
        out = _REASON_BY_COMPONENT[best]
        content = best == _CONTENT
        if content.any():
            out[content] = table.label[cols[safe[content]]]
        cu, cj = np.nonzero(best == _COOCCURRENCE)
        if len(cu):
            out[cu, cj] = self._because(cu, cols[picks[cu, cj]])
        # Nothing personal stood out: a popular pick.
        out[contrib[best, users, np.arange(picks.shape[1])] <= 0] = REASON_OF["popularity"]
        return out

    def _because(self, users: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Co-occurrence reasons: per pick (its user, its item-table row), the user's vote
        (history title) contributing most to it, as :meth:`CoOccurrence.sources` finds it.

        Only each pick's own user's votes are compared with the vote's neighbours (not a
        batch-wide padded width of votes): that comparison is the cost here."""
        co, ids = self.model.cooccurrence, self.model._items.ids
        q_idx, h, weight = co._votes(self.hist)             # grouped by user, in order
        if len(h) == 0:
            return np.full(len(users), "similar_users", dtype=object)
        sizes = np.bincount(q_idx, minlength=len(self.hist.rows))
        first = np.concatenate([[0], np.cumsum(sizes)])
        counts = sizes[users]
        # Every (pick, vote of its user) pair: the pick, the vote's index in q_idx and its
        # place among the user's votes.
        pick = np.repeat(np.arange(len(users)), counts)
        place = np.arange(len(pick)) - np.repeat(np.cumsum(counts) - counts, counts)
        vote = first[users[pick]] + place
        src = h[vote]
        link = np.zeros((len(users), max(int(counts.max(initial=0)), 1)))
        link[pick, place] = _link_weights(co._nbr, co._w, src, targets[pick]) * weight[vote]
        j = link.argmax(axis=1)
        strongest = link[np.arange(len(users)), j]
        source = np.where(strongest > 0.0, h[np.minimum(first[users] + j, len(h) - 1)], -1)
        rows, inverse = np.unique(source, return_inverse=True)
        labels = np.array([f"because_you_watched:{ids[r]}" if r >= 0 else "similar_users"
                           for r in rows.tolist()], dtype=object)
        return labels[inverse]


def _link_weights(nbr: np.ndarray, w: np.ndarray, src: np.ndarray, dst: np.ndarray
                  ) -> np.ndarray:
    """The weight of each link ``src[i] -> dst[i]`` in the neighbour table ``nbr``/``w``
    (0 where there is none), looked up among the few links of the rows involved instead
    of comparing every pair with a whole row of ``max_neighbours`` slots.

    Examples
    --------
    >>> nbr = np.array([[1, 2, -1], [0, -1, -1], [-1, -1, -1]])
    >>> w = np.array([[0.5, 0.25, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> _link_weights(nbr, w, np.array([0, 0, 1, 2, 1]), np.array([2, 1, 0, 0, 2]))
    array([0.25, 0.5 , 2.  , 0.  , 0.  ])
    """
    rows = np.flatnonzero(np.bincount(src, minlength=len(nbr)))  # np.unique without a sort
    r, slot = np.nonzero(nbr[rows] >= 0)
    base = len(nbr)
    keys = rows[r] * base + nbr[rows[r], slot]
    order = np.argsort(keys, kind="stable")
    keys, weights = keys[order], w[rows[r], slot][order]
    if len(keys) == 0:
        return np.zeros(len(src))
    # A row lists a title once; were it listed twice, its weights would add up as a sum
    # over the row does.
    unique, start = np.unique(keys, return_index=True)
    sums = np.add.reduceat(weights, start)
    wanted = src * base + dst
    at = np.minimum(np.searchsorted(unique, wanted), len(unique) - 1)
    return np.where(unique[at] == wanted, sums[at], 0.0)


def _genre_caps(hist: HistoryMatrix, genre_matrix: np.ndarray, max_per_genre: int
                ) -> np.ndarray:
    """:meth:`Hybrid.genre_caps` for every user of ``hist`` as a (users, genres) matrix of
    caps (``max_per_genre`` where the history does not raise it)."""
    liked = genre_matrix[hist.clipped] & hist.positive[:, :, None]   # (users, history, genres)
    counts = liked.sum(axis=1)
    n = np.maximum(hist.positive_count(), 1)[:, None]
    share = np.minimum(MOST_OF_ONE_GENRE, -(-10 * counts // n))
    return np.maximum(share, max_per_genre)


def _diversify_each(order: np.ndarray, lengths: np.ndarray, cols: np.ndarray,
                    genres: dict[int, list[str]], n: int, max_per_genre: int,
                    caps: list[dict[str, int]]) -> np.ndarray:
    """:meth:`Hybrid._diversify` one user at a time (cheaper than the vectorised walk for
    a handful of users): (users, n) positions, -1 padded; ``caps`` per user as
    :meth:`Hybrid.genre_caps`."""
    out = np.full((len(order), n), -1, dtype=np.int64)
    for u, (ranked, length) in enumerate(zip(order.tolist(), lengths.tolist(), strict=True)):
        raised = caps[u]
        counts: dict[str, int] = {}
        chosen: list[int] = []
        deferred: list[int] = []
        for i in ranked[:length]:
            gs = genres.get(int(cols[i]), ())
            if len(chosen) < 10:
                if any(counts.get(g, 0) >= raised.get(g, max_per_genre) for g in gs):
                    deferred.append(i)
                    continue
                for g in gs:
                    counts[g] = counts.get(g, 0) + 1
            chosen.append(i)
            if len(chosen) >= n:
                break
        picked = (chosen + deferred)[:n]
        out[u, : len(picked)] = picked
    return out


class _GenreTable:
    """Per item-table row: which genres the title has (bool matrix) and the reason shown
    when content similarity placed it (``genre:<first genre>``)."""

    def __init__(self, genres: dict[int, list[str]], rows: int) -> None:
        self.source = dict(genres)
        names: dict[str, int] = {}
        for gs in genres.values():
            for g in gs:
                names.setdefault(g, len(names))
        self.names = list(names)
        self.matrix = np.zeros((max(rows, 1), max(len(names), 1)), dtype=bool)
        self.label = np.full(max(rows, 1), "similar_users", dtype=object)
        for row, gs in genres.items():
            if row < rows:
                for g in gs:
                    self.matrix[row, names[g]] = True
                if gs:
                    self.label[row] = f"genre:{gs[0]}"


def _genre_table(model: Hybrid) -> _GenreTable:
    """The model's :class:`_GenreTable`, rebuilt only when the catalogue's genres change
    (compared by value: an update replaces a title's genre list)."""
    genres = model.content._genres
    rows = model._items.rows
    cached = _GENRE_CACHE.get(model)
    if cached is None or len(cached.label) < rows or cached.source != genres:
        cached = _GENRE_CACHE[model] = _GenreTable(genres, rows)
    return cached


def _diversify_many(order: np.ndarray, genre_matrix: np.ndarray, n: int, caps: np.ndarray,
                    lengths: np.ndarray) -> np.ndarray:
    """:meth:`Hybrid._diversify` for every user at once: (users, n) positions, -1 padded.

    Walks the ranked positions once, all users in step: among a list's first 10 titles no
    genre may appear more than its cap (``caps``, users x genres) times; a title that
    would break that is deferred to after the chosen ones.
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
        if not (filling & (chosen < 10)).any():
            # Past every list's first 10 titles nothing is deferred any more.
            status[:, j:][filling[:, None] & (np.arange(j, depth)[None, :] < lengths[:, None])] = 1
            break
        g = onehot[:, j, :]
        head = filling & (chosen < 10)
        over = head & ((counts >= caps) & g).any(axis=1)
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


def _insert_explored(picks: list[_Entry], explored: list[_Entry]) -> list[_Entry]:
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
    unknown = len(set(titles).difference(items.index))
    if (len(items) + unknown > items.capacity or len(items) > DENSE_MAX_TITLES
            or len(titles) <= ONE_AT_A_TIME_EVENTS or not mirrors("learn")):
        # Tiny batches, or evictions inside the batch (rows recycled mid-way): one at a time.
        for title, feedback, t, h in zip(titles, ys, ts, histories, strict=True):
            model.learn_one("", title, feedback, UserProfile("", history=list(h)), t)
        return
    rows = (items.add_known(titles) if unknown == 0 else
            np.fromiter((items.add(t) for t in titles), dtype=np.int64, count=len(titles)))
    model._ensure_rows()
    y = np.asarray(ys, dtype=np.float64)
    times = np.asarray(ts, dtype=np.float64)
    hist = HistoryMatrix.from_histories(items.index, histories)

    _learn_blend(model, rows, y, times, hist)
    users, wn = model.mf.user_vectors(hist)
    _learn_mf(model, rows, y, hist, users, wn)
    # Both link tables learn the same links (their windows are equal by default).
    links = _links(rows, y, hist, model.cooccurrence.window)
    _learn_cooccurrence(model, rows, y, hist, links=links)
    _learn_recent(model, rows, y, times, hist, links)
    _learn_trending(model, rows, y, times)
    _learn_explorer(model, rows, y)


def _learn_blend(model: Hybrid, rows: np.ndarray, y: np.ndarray, times: np.ndarray,
                 hist: HistoryMatrix) -> None:
    positives = np.nonzero(y > 0)[0]
    seen = model._positives_seen + np.arange(1, len(positives) + 1)
    model._positives_seen += len(positives)
    steps = positives[seen % model.blend_every == 0]
    if len(steps):
        model.learn_blend(rows[steps], hist.take(steps), times[steps])


def _add_rows(target: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    """``target[index[i]] += values[i]`` for every i, repeated indices summed; only the
    rows touched are read and written."""
    # The rows touched, ascending, and each value's place among them: a count per row of
    # the table rather than a sort of the index.
    touched = np.bincount(index, minlength=len(target)) > 0
    rows = np.flatnonzero(touched)
    inverse = (np.cumsum(touched) - 1)[index]
    if values.ndim == 1:
        target[rows] += np.bincount(inverse, weights=values,
                                    minlength=len(rows)).astype(target.dtype)
        return
    width = values.shape[1]
    flat = (inverse[:, None] * width + np.arange(width)[None, :]).ravel()
    sums = np.bincount(flat, weights=values.ravel(), minlength=len(rows) * width)
    target[rows] += sums.reshape(len(rows), width).astype(target.dtype)


def _learn_mf(model: Hybrid, rows: np.ndarray, y: np.ndarray, hist: HistoryMatrix,
              users: np.ndarray, wn: np.ndarray) -> None:
    """One minibatch of the BPR (positives) and pointwise (negatives) steps of ImplicitMF."""
    mf = model.mf
    n_rows = model._items.rows
    lr, l2 = mf.learning_rate, mf.l2
    x, b = mf._x, mf._b.astype(np.float64)
    u = users.astype(np.float64)
    dx_idx: list[np.ndarray] = []
    dx_val: list[np.ndarray] = []
    db_idx: list[np.ndarray] = []
    db_val: list[np.ndarray] = []
    grad_u = np.zeros_like(u)

    pos = np.nonzero(y > 0)[0]
    if len(pos) and mf.n_negatives and n_rows > 1:
        negs, usable = mf.sample_negatives((len(pos), mf.n_negatives))
        j = rows[pos]
        ok = usable & (negs != j[:, None])
        xj = x[j].astype(np.float64)
        xk = x[negs].astype(np.float64)                  # (P, K, F)
        up = u[pos]
        apart = xj[:, None, :] - xk
        diff = np.einsum("pf,pkf->pk", up, apart) + b[j][:, None] - b[negs]
        n_ok = ok.sum(axis=1).astype(np.float64)
        share = 1.0 / np.maximum(n_ok, 1.0)[:, None]  # steps averaged over the negatives
        g = np.where(ok & (diff < 30),
                     lr * np.minimum(y[pos], 3.0)[:, None] / (1.0 + np.exp(np.minimum(diff, 30))),
                     0.0) * share
        gsum = g.sum(axis=1)
        any_ok = (n_ok > 0).astype(np.float64)
        dx_idx += [j, negs[ok]]
        dx_val += [gsum[:, None] * up - lr * l2 * any_ok[:, None] * xj,
                   (-g[:, :, None] * up[:, None, :] - lr * l2 * share[:, :, None] * xk)[ok]]
        db_idx += [j, negs[ok]]
        db_val += [gsum - lr * l2 * any_ok * b[j], (-g - lr * l2 * share * b[negs])[ok]]
        grad_u[pos] = np.einsum("pk,pkf->pf", g, apart)

    neg = np.nonzero(y < 0)[0]
    if len(neg):
        j = rows[neg]
        xj = x[j].astype(np.float64)
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

    if len(pos):
        mf.mark_engaged(rows[pos])
    if dx_idx:
        _add_rows(mf._x, np.concatenate(dx_idx), np.concatenate(dx_val))
        _add_rows(mf._b, np.concatenate(db_idx), np.concatenate(db_val))
    # History factors: every event moves its user's positive history rows (and decays
    # them once per event, as each one-at-a-time step does).
    q_idx, slot = np.nonzero(hist.positive)
    if len(q_idx):
        h = hist.rows[q_idx, slot]
        update = (wn[q_idx, slot][:, None] * grad_u[q_idx]
                  - lr * l2 * mf._y[h].astype(np.float64))
        _add_rows(mf._y, h, update)


Links = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _links(rows: np.ndarray, y: np.ndarray, hist: HistoryMatrix, window: int) -> Links:
    """The links a minibatch teaches: each positive event's first ``window`` positive
    history titles (not itself). Returns the positive events, then per link the event's
    place among them, the history title, the event's title and the link's rank."""
    pos = np.nonzero(y > 0)[0]
    positive = hist.positive[pos]
    hrows = hist.rows[pos]
    rank = np.cumsum(positive, axis=1) - 1
    sel = positive & (rank < window) & (hrows != rows[pos][:, None])
    order = np.cumsum(sel, axis=1) - 1
    e, slot = np.nonzero(sel)
    return pos, e, hrows[e, slot], rows[pos][e], order[e, slot]


def _learn_cooccurrence(model: Hybrid, rows: np.ndarray, y: np.ndarray,
                        hist: HistoryMatrix, co: CoOccurrence | None = None,
                        links: Links | None = None) -> None:
    co = model.cooccurrence if co is None else co
    pos, e, h, j, rank = _links(rows, y, hist, co.window) if links is None else links
    if len(pos) == 0:
        return
    n_rows = model._items.rows
    co._pop[:n_rows] += np.bincount(rows[pos], weights=y[pos], minlength=n_rows)
    if len(e) == 0:
        return
    amount = y[pos][e] * co._decay[rank]
    merge_links(model, np.concatenate([h, j]), np.concatenate([j, h]),
                np.concatenate([amount, amount]), co)


def _learn_recent(model: Hybrid, rows: np.ndarray, y: np.ndarray, times: np.ndarray,
                  hist: HistoryMatrix, links: Links | None = None) -> None:
    """Recent co-occurrence: the clock moved to the batch's last event, then the same
    links, each increment grown to the anchor's units (``RecentCoOccurrence._learn_row``).
    ``links``: the co-occurrence's (:func:`_links`), reused when the windows agree and
    every positive event's grown increment is still positive (the same events)."""
    recent = model.recent
    pos = y > 0
    if not pos.any():
        return
    recent.advance(float(times[pos].max()))
    grown = np.where(pos, y * recent.growth(np.where(pos, times, times[pos].min())), y)
    if links is not None and (recent.window != model.cooccurrence.window
                              or not (grown[links[0]] > 0).all()):
        links = None
    _learn_cooccurrence(model, rows, grown, hist, recent, links)


def merge_links(model: Hybrid, src: np.ndarray, dst: np.ndarray, amt: np.ndarray,
                co: CoOccurrence | None = None) -> None:
    """Add ``amt`` to the co-occurrence links ``src -> dst`` (repeats summed) and keep each
    source's ``max_neighbours`` strongest, in one pass; used by batched learning and by
    the model sync between workers (``streams.model_sync``). ``co``: the link table
    (the hybrid's co-occurrence by default)."""
    co = model.cooccurrence if co is None else co
    n_rows = model._items.rows
    width = co.max_neighbours
    touched = np.bincount(src, minlength=n_rows) > 0
    sources = np.flatnonzero(touched)
    # Every link, the old ones first and then the new in order, as a cell of a (sources x
    # titles) table: (index of its source) * n_rows + destination.
    cur_nbr = co._nbr[sources].ravel()
    held = np.flatnonzero(cur_nbr >= 0)
    cells = np.concatenate([held // width * n_rows + cur_nbr[held],
                            (np.cumsum(touched) - 1)[src] * n_rows + dst])
    amounts = np.concatenate([co._w[sources].ravel()[held], amt])
    # The distinct links in (source, destination) order with their summed weights: with the
    # table itself (a bincount and a scan) while it is small next to the links, as for a
    # batch's (a sort of 17,000 links cost 2.3x the table of 312,000 cells); else by
    # sorting the links (the model sync's merges on a large catalogue).
    n_cells = len(sources) * n_rows
    if n_cells <= min(DENSE_MERGE_CELLS, DENSE_MERGE_CELLS_PER_LINK * len(cells)):
        totals = np.bincount(cells, weights=amounts, minlength=n_cells)
        linked = np.zeros(n_cells, dtype=bool)
        linked[cells] = True
        keys = np.flatnonzero(linked)
        weights = totals[keys]
    else:
        keys, inverse = np.unique(cells, return_inverse=True)
        weights = np.bincount(inverse, weights=amounts, minlength=len(keys))
    k_src, k_dst = np.divmod(keys, n_rows)
    # A source's links are one run, in destination order, and its slot is the link's place
    # in the run. Only sources with more links than slots need theirs ordered by weight
    # (strongest first; ties: lower destination first); sorting every link by weight (a
    # lexsort of them all) was two thirds of a merge's time.
    sizes = np.bincount(k_src, minlength=len(sources))
    place = np.arange(len(keys)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    rank_k = place
    full = np.flatnonzero(np.repeat(sizes > width, sizes))
    if len(full):
        rank_k = place.copy()
        rank_k[full[np.lexsort((-weights[full], k_src[full]))]] = place[full]
    keep = rank_k < width
    nbr = np.full((len(sources), width), -1, dtype=co._nbr.dtype)
    w = np.zeros((len(sources), width), dtype=co._w.dtype)
    nbr[k_src[keep], rank_k[keep]] = k_dst[keep]
    w[k_src[keep], rank_k[keep]] = weights[keep]
    co._nbr[sources] = nbr
    co._w[sources] = w


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
    touched = np.flatnonzero(np.bincount(r, minlength=n_rows))  # np.unique(r), no sort
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
