"""What every streamrec model shares: the estimator contract, the item table, user profiles.

Models are river-style: the constructor takes hyperparameters only and stores them under
the same names (so :meth:`Recommender.clone` and ``repr`` work), learned state is private,
and there is no I/O. Users are *not* stored in the models: a user is described by a
:class:`UserProfile` (recent titles with their implicit-feedback weights, completed titles,
context), which the worker reads from Redis and the evaluator keeps in memory. That keeps
model memory bounded by the catalogue, not the audience, and lets any worker serve any user.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any

import numpy as np


@dataclass
class UserProfile:
    """What a model may know about a user when scoring or learning.

    ``history`` is most recent first: ``(title_id, weight)`` where weight is the
    accumulated implicit feedback (see ``streams.signals``); negative means disliked.
    """

    user_id: str
    history: list[tuple[str, float]] = field(default_factory=list)
    completed: set[str] = field(default_factory=set)
    device: str | None = None
    country: str | None = None
    hour: int | None = None
    search_terms: list[str] = field(default_factory=list)

    @property
    def positives(self) -> list[tuple[str, float]]:
        return [(t, w) for t, w in self.history if w > 0]


def empty_profile(user_id: str) -> UserProfile:
    return UserProfile(user_id=user_id)


class ItemTable:
    """Maps title ids to rows of numpy arrays, with a capacity and least-recently-used eviction.

    Models keep per-title vectors in arrays indexed by the row, so scoring many candidates
    is one fancy-indexing operation instead of a Python loop.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.index: dict[str, int] = {}
        self.ids: list[str | None] = []
        self._free: list[int] = []
        self._clock = 0
        self.last_used = np.zeros(0, dtype=np.int64)
        self._known: np.ndarray | None = None  # cache of known_rows(), None when stale
        # Models sharing this table register here to reset a row when its title is evicted.
        self.on_recycle: list[Callable[[int], None]] = []

    def __getstate__(self) -> dict[str, Any]:
        # Callbacks are bound methods of the owners; the owners re-register on unpickle.
        state = self.__dict__.copy()
        state["on_recycle"] = []
        return state

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, item: str) -> bool:
        return item in self.index

    @property
    def rows(self) -> int:
        """Rows allocated (arrays of the owning model have at least this many)."""
        return len(self.ids)

    def get(self, item: str) -> int | None:
        return self.index.get(item)

    def known_rows(self) -> np.ndarray:
        """Rows holding a title, in the index's order (cached until a title comes or goes;
        callers must not modify it)."""
        known = self.__dict__.get("_known")
        if known is None or len(known) != len(self.index):
            known = np.fromiter(self.index.values(), dtype=np.int64, count=len(self.index))
            self._known = known
        return known

    def rows_of(self, items: Sequence[str]) -> np.ndarray:
        """Row per item, -1 for unknown ones."""
        index = self.index
        return np.fromiter((index.get(i, -1) for i in items), dtype=np.int64, count=len(items))

    def add(self, item: str) -> int:
        """Row for ``item``, allocating one (and evicting the least recently used) if needed."""
        self._clock += 1
        row = self.index.get(item)
        if row is not None:
            self.last_used[row] = self._clock
            return row
        if self._free:
            row = self._free.pop()
        elif len(self.ids) < self.capacity:
            row = len(self.ids)
            self.ids.append(None)
            if row >= len(self.last_used):
                grown = np.zeros(max(16, 2 * len(self.last_used)), dtype=np.int64)
                grown[: len(self.last_used)] = self.last_used
                self.last_used = grown
        else:
            row = int(np.argmin(self.last_used[: len(self.ids)]))
            evicted = self.ids[row]
            if evicted is not None:
                del self.index[evicted]
            for reset in self.on_recycle:
                reset(row)
        self.ids[row] = item
        self.index[item] = row
        self.last_used[row] = self._clock
        self._known = None
        return row

    def add_known(self, items: Sequence[str]) -> np.ndarray:
        """Rows of ``items``, every one already in the table, used in that order: what
        :meth:`add` of each in turn does, in one pass (a batch learns hundreds)."""
        rows = np.fromiter(map(self.index.__getitem__, items), dtype=np.int64, count=len(items))
        clocks = np.arange(self._clock + 1, self._clock + len(items) + 1, dtype=np.int64)
        np.maximum.at(self.last_used, rows, clocks)  # a repeated title keeps its last use
        self._clock += len(items)
        return rows

    def remove(self, item: str) -> int | None:
        row = self.index.pop(item, None)
        if row is not None:
            for reset in self.on_recycle:
                reset(row)
            self.ids[row] = None
            self.last_used[row] = 0
            self._free.append(row)
            self._known = None
        return row


def grow(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with at least ``rows`` rows (doubling), new rows zero."""
    if len(array) >= rows:
        return array
    new_rows = max(rows, 2 * len(array), 16)
    grown = np.zeros((new_rows, *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


# History entries per user the models look at (most recent first).
MAX_HISTORY = 50
# Most weight one title carries in a user's vectors: one binge-watched title must not
# dominate them.
WEIGHT_CLIP = 3.0


class HistoryMatrix:
    """Padded histories of many users as item-table rows, most recent first.

    ``rows`` is -1 for padding and titles the models do not know (weight 0 there);
    ``positive`` marks known titles with positive feedback; ``clipped`` is ``rows`` safe
    for fancy indexing (padding points at row 0, with weight 0). Components score many
    users at once from this (the worker's batches), and one user as a matrix of one row,
    so both paths run the same arithmetic.
    """

    __slots__ = ("rows", "weights", "positive", "clipped", "_positive_rank")
    _FIELDS = ("rows", "weights", "positive", "clipped")

    def __init__(self, rows: np.ndarray, weights: np.ndarray) -> None:
        weights = np.where(rows >= 0, weights, 0.0)
        self.rows = rows
        self.weights = weights
        self.positive = (rows >= 0) & (weights > 0)
        self.clipped = np.maximum(rows, 0)
        self._positive_rank: np.ndarray | None = None

    @classmethod
    def from_histories(cls, index: dict[str, int], histories: Sequence[Sequence[tuple[str, float]]],
                       max_history: int = MAX_HISTORY) -> HistoryMatrix:
        lengths = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))
        np.minimum(lengths, max_history, out=lengths)
        width = max(int(lengths.max(initial=0)), 1)
        rows = np.full((len(histories), width), -1, dtype=np.int64)
        weights = np.zeros((len(histories), width))
        # Built twice per batch (learning, ranking): one flat list, then C-level loops.
        entries = list(chain.from_iterable(
            h[:max_history] if len(h) > max_history else h for h in histories))
        if entries:
            titles, ws = zip(*entries, strict=True)
            filled = np.arange(width)[None, :] < lengths[:, None]
            rows[filled] = np.fromiter(map(index.get, titles, repeat(-1)), dtype=np.int64,
                                       count=len(titles))
            weights[filled] = ws
        return cls(rows, weights)

    def take(self, queries: np.ndarray) -> HistoryMatrix:
        """The histories of ``queries`` only."""
        out = HistoryMatrix.__new__(HistoryMatrix)
        for name in HistoryMatrix._FIELDS:
            setattr(out, name, getattr(self, name)[queries])
        out._positive_rank = None
        return out

    def positive_rank(self) -> np.ndarray:
        """Each entry's position among the user's positive titles (most recent is 0).
        Computed once (every component scoring these histories asks; callers only read
        it)."""
        if self._positive_rank is None:
            self._positive_rank = np.cumsum(self.positive, axis=1) - 1
        return self._positive_rank

    def positive_count(self) -> np.ndarray:
        return self.positive.sum(axis=1)


class RowProfile:
    """A :class:`UserProfile` translated to item-table rows, computed once per request."""

    __slots__ = ("rows", "weights", "completed_rows", "_matrix")

    def __init__(self, rows: np.ndarray, weights: np.ndarray, completed_rows: np.ndarray) -> None:
        self.rows = rows
        self.weights = weights
        self.completed_rows = completed_rows
        self._matrix: HistoryMatrix | None = None

    def matrix(self) -> HistoryMatrix:
        """This history as a :class:`HistoryMatrix` of one user (built once: a learned
        event needs it for the blend and for matrix factorisation; callers only read it)."""
        if self._matrix is None:
            self._matrix = HistoryMatrix(self.rows[None, :], self.weights[None, :])
        return self._matrix

    @classmethod
    def build(cls, table: ItemTable, profile: UserProfile | None,
              max_history: int = MAX_HISTORY) -> RowProfile:
        if profile is None or not profile.history:
            rows = np.zeros(0, dtype=np.int64)
            weights = np.zeros(0)
        else:
            # Built for every model on every event of an evaluation: C-level loops only.
            titles, ws = zip(*profile.history[:max_history], strict=True)
            rows = np.fromiter(map(table.index.get, titles, repeat(-1, len(titles))),
                               dtype=np.int64, count=len(titles))
            weights = np.array(ws, dtype=np.float64)
            known = rows >= 0
            rows, weights = rows[known], weights[known]
        completed = (table.rows_of(list(profile.completed)) if profile and profile.completed
                     else np.zeros(0, dtype=np.int64))
        return cls(rows, weights, completed[completed >= 0])


class Recommender:
    """Base class: the contract every streamrec model follows.

    Subclasses implement :meth:`_learn_row` and :meth:`_score_rows` on item-table rows;
    the id-based API (:meth:`learn_one`, :meth:`score_many`, :meth:`predict_one`,
    :meth:`rank`) follows from them. A :class:`~models.hybrid.Hybrid` shares one item
    table between its components (:meth:`use_item_table`), so a candidate list is turned
    into rows once and every component scores it with array operations.
    """

    _items: ItemTable

    def _init_items(self, capacity: int) -> None:
        self._items = ItemTable(capacity)
        self._items.on_recycle.append(self._reset_row)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._items.on_recycle.append(self._reset_row)

    def _get_params(self) -> dict[str, Any]:
        names = [
            p for p in inspect.signature(type(self).__init__).parameters if p != "self"
        ]
        return {name: getattr(self, name) for name in names}

    def clone(self) -> Recommender:
        """A fresh, unfitted model with the same hyperparameters."""
        return type(self)(**copy.deepcopy(self._get_params()))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({params})"

    # -- item table sharing ---------------------------------------------------------------
    def use_item_table(self, table: ItemTable) -> None:
        """Share ``table`` (owned by a hybrid) instead of this model's own."""
        self._items = table
        table.on_recycle.append(self._reset_row)

    def _reset_row(self, row: int) -> None:
        """Forget what was learned about the title that used ``row`` (it was evicted)."""

    def _ensure_rows(self) -> None:
        """Grow private arrays to the table's row count."""

    # -- row-level implementation -----------------------------------------------------------
    def _learn_row(self, row: int, y: float, profile: RowProfile, ts: float | None) -> None:
        raise NotImplementedError

    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        raise NotImplementedError

    # -- the public contract ------------------------------------------------------------------
    def learn_one(
        self, user: str, item: str, y: float, profile: UserProfile | None = None,
        ts: float | None = None,
    ) -> None:
        """Learn that ``user`` gave ``item`` implicit feedback ``y`` at event time ``ts``.

        ``profile`` is the user's state *before* this event.
        """
        row_profile = RowProfile.build(self._items, profile)
        row = self._items.add(item)
        self._ensure_rows()
        self._learn_row(row, y, row_profile, ts)

    def score_many(
        self, user: str, items: Sequence[str], profile: UserProfile | None = None,
        ts: float | None = None,
    ) -> np.ndarray:
        """Scores for ``items`` (higher is better), vectorised; unknown items score 0."""
        rows = self.item_rows(items)
        scores = np.zeros(len(rows))
        known = rows >= 0
        if known.any():
            scores[known] = self.score_rows(rows[known], profile, ts)
        return scores

    def item_rows(self, items: Sequence[str]) -> np.ndarray:
        """Item-table row of each of ``items``, -1 for titles the model does not know.

        Callers that score the same titles many times (the evaluator) look rows up once
        and call :meth:`score_rows`; a row stays the title's until it is evicted.
        """
        return self._items.rows_of(as_list(items))

    def score_rows(self, rows: np.ndarray, profile: UserProfile | None = None,
                   ts: float | None = None) -> np.ndarray:
        """Scores of known item-table ``rows`` (see :meth:`item_rows`), vectorised."""
        return self._score_rows(rows, RowProfile.build(self._items, profile), ts)

    def predict_one(
        self, user: str, item: str, profile: UserProfile | None = None, ts: float | None = None
    ) -> float:
        return float(self.score_many(user, [item], profile, ts)[0])

    def rank(
        self, user: str, items: Sequence[str], profile: UserProfile | None = None,
        ts: float | None = None,
    ) -> list[str]:
        """``items`` best first. Ties keep the input order (a stable sort)."""
        items = as_list(items)
        if not items:
            return []
        scores = self.score_many(user, items, profile, ts)
        order = np.argsort(-scores, kind="stable")
        return [items[i] for i in order]

    def add_title(self, title: dict[str, Any]) -> None:
        """A catalogue title was added or updated."""
        self._items.add(title["title_id"])
        self._ensure_rows()

    def remove_title(self, title_id: str) -> None:
        """A title left the catalogue."""
        self._items.remove(title_id)

    def size(self) -> dict[str, int]:
        """Entries held, by kind, for the ``streamrec_model_size`` metric."""
        return {"titles": len(self._items)}


def decay_factor(elapsed_s: float | np.ndarray, half_life_s: float) -> Any:
    """``2 ** (-elapsed / half_life)``, never above 1 (clocks may disagree slightly)."""
    return np.exp2(-np.maximum(elapsed_s, 0.0) / half_life_s)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first (argpartition, then a small sort)."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


# Up to this many, each row's best few are found by repeated argmax instead of a
# partition: one partition of 17 users' 1,000 draws costs ~0.24 ms, an argmax pass
# ~0.02 ms (exploration slots: one or two per list, usually).
TOP_BY_ARGMAX = 4


def top_by_argmax(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` largest ``values`` (overwritten) and where they are, best first:
    ``k`` argmax passes, for a small ``k`` several times cheaper than a partition. The
    same picks as :func:`top_k` where scores are distinct (Thompson draws are
    continuous, so only -inf, an exhausted pool, ever ties).

    >>> top, best = top_by_argmax(np.array([[0.2, 0.9, 0.5], [0.7, 0.1, 0.3]]), 2)
    >>> top.tolist(), best.tolist()
    ([[1, 2], [0, 2]], [[0.9, 0.5], [0.7, 0.3]])
    """
    rows = np.arange(len(values))
    top = np.empty((len(values), k), dtype=np.int64)
    top_values = np.empty((len(values), k))
    for j in range(k):
        best = values.argmax(axis=1)
        top[:, j] = best
        top_values[:, j] = values[rows, best]
        values[rows, best] = -np.inf
    return top, top_values


def as_list(items: Iterable[str]) -> list[str]:
    return items if isinstance(items, list) else list(items)


def remember(recent: dict[str, None], key: str, capacity: int) -> None:
    """Add ``key`` to ``recent`` (an insertion-ordered set) as its newest entry, dropping
    the oldest beyond ``capacity``: a bounded memory of, e.g., removed titles.

    Examples
    --------
    >>> recent = {}
    >>> for key in ("a", "b", "a", "c"):
    ...     remember(recent, key, 2)
    >>> list(recent)
    ['a', 'c']
    """
    recent.pop(key, None)
    recent[key] = None
    if len(recent) > capacity:
        del recent[next(iter(recent))]
