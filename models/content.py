"""Content-based filtering: genres, cast and director of what the user liked."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from models.base import WEIGHT_CLIP, HistoryMatrix, Recommender, RowProfile, grow

# base -> base ** arange(n) for the longest n asked so far (a handful of bases: the
# models' decay hyperparameters).
_POWER_TABLES: dict[float, np.ndarray] = {}


def _powers(base: float, n: int) -> np.ndarray:
    """``base ** np.arange(n)`` (the values of ``base ** positions`` for integer
    positions), from a table; callers only read it."""
    table = _POWER_TABLES.get(base)
    if table is None or len(table) < n:
        table = _POWER_TABLES[base] = base ** np.arange(max(n, 64))
        table.flags.writeable = False
    return table[:n]


def _bucket(token: str, n_features: int) -> int:
    # crc32, not hash(): Python's str hash is salted per process, and the feature space
    # must be identical across workers and restarts.
    return zlib.crc32(token.encode()) % n_features


class ContentModel(Recommender):
    """Cosine similarity between a title's metadata and the user's liked titles' metadata.

    Each title's genres, cast, director, decade (from ``year``) and series are hashed into
    ``n_features`` buckets (genres weighted ``genre_weight``, the decade ``year_weight``,
    the series ``series_weight``, the rest 1), L2-normalised: a new episode is close to
    the ones its viewers watched before anybody has watched it. A user's vector is the
    weighted sum of their positive history's vectors, minus ``negative_weight`` times the
    abandoned ones, each decayed by ``history_recency`` per position (most recent first):
    what someone watched last says most about what they want next. Nothing is learned
    from events beyond the catalogue, so a brand-new title is scored as soon as it is
    added: this is the cold-start path for new titles.

    Parameters
    ----------
    n_features
        Hashed feature dimensions.
    genre_weight
        Weight of a genre token relative to a cast or director token.
    negative_weight
        How much abandoned titles push the user's vector away.
    year_weight, series_weight
        Weights of the decade and series tokens.
    history_recency
        Per-position decay of a history title's weight, in (0, 1].
    capacity
        Most titles held.

    Examples
    --------
    >>> from models.base import UserProfile
    >>> m = ContentModel()
    >>> m.add_title({"title_id": "a", "genres": ["Horror"]})
    >>> m.add_title({"title_id": "b", "genres": ["Horror"]})
    >>> m.add_title({"title_id": "c", "genres": ["Comedy"]})
    >>> m.rank("u", ["c", "b"], UserProfile("u", history=[("a", 1.0)]))
    ['b', 'c']
    >>> for t, series in [("s1e1", "s1"), ("s1e2", "s1"), ("other", None)]:
    ...     m.add_title({"title_id": t, "genres": ["Drama"], "series_id": series})
    >>> m.rank("u", ["other", "s1e2"], UserProfile("u", history=[("s1e1", 2.0)]))
    ['s1e2', 'other']
    """

    def __init__(self, n_features: int = 128, genre_weight: float = 2.0,
                 negative_weight: float = 0.5, history_recency: float = 0.8,
                 year_weight: float = 1.0, series_weight: float = 2.0,
                 capacity: int = 200_000) -> None:
        if not 0 < history_recency <= 1:
            raise ValueError(f"history_recency must be in (0, 1], got {history_recency}")
        self.n_features = n_features
        self.genre_weight = genre_weight
        self.negative_weight = negative_weight
        self.history_recency = history_recency
        self.year_weight = year_weight
        self.series_weight = series_weight
        self.capacity = capacity
        self._init_items(capacity)
        self._f = np.zeros((0, n_features), dtype=np.float32)
        # The same vectors as (rows, width) nonzero features and their values (0-padded):
        # a title has ~10 of the n_features, and scoring a pool per user gathers those alone.
        self._nz_index = np.zeros((0, 1), dtype=np.int32)
        self._nz_value = np.zeros((0, 1), dtype=np.float32)
        self._genres: dict[int, list[str]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_nz_index" not in state:  # pickled before the sparse copy existed
            self._nz_index = np.zeros((len(self._f), 1), dtype=np.int32)
            self._nz_value = np.zeros((len(self._f), 1), dtype=np.float32)
            for row in np.nonzero(self._f.any(axis=1))[0].tolist():
                self._set_nonzero(row)

    def _ensure_rows(self) -> None:
        self._f = grow(self._f, self._items.rows)
        self._nz_index = grow(self._nz_index, self._items.rows)
        self._nz_value = grow(self._nz_value, self._items.rows)

    def _reset_row(self, row: int) -> None:
        if row < len(self._f):
            self._f[row] = 0.0
            self._nz_index[row] = 0
            self._nz_value[row] = 0.0
        self._genres.pop(row, None)

    def _set_nonzero(self, row: int) -> None:
        """Copy row ``row`` of the vectors into the sparse form (widening it if needed)."""
        features = np.flatnonzero(self._f[row])
        width = self._nz_index.shape[1]
        if len(features) > width:
            extra = len(features) - width
            self._nz_index = np.pad(self._nz_index, ((0, 0), (0, extra)))
            self._nz_value = np.pad(self._nz_value, ((0, 0), (0, extra)))
        self._nz_index[row] = 0
        self._nz_value[row] = 0.0
        self._nz_index[row, : len(features)] = features
        self._nz_value[row, : len(features)] = self._f[row, features]

    def add_title(self, title: dict[str, Any]) -> None:
        row = self._items.add(title["title_id"])
        self._ensure_rows()
        vec = np.zeros(self.n_features, dtype=np.float32)
        genres = list(title.get("genres") or [])
        for g in genres:
            vec[_bucket("g:" + g.lower(), self.n_features)] += self.genre_weight
        for c in title.get("cast") or []:
            vec[_bucket("c:" + c.lower(), self.n_features)] += 1.0
        if title.get("director"):
            vec[_bucket("d:" + str(title["director"]).lower(), self.n_features)] += 1.0
        if title.get("year"):
            vec[_bucket(f"y:{int(title['year']) // 10}", self.n_features)] += self.year_weight
        if title.get("series_id"):
            vec[_bucket("s:" + str(title["series_id"]), self.n_features)] += self.series_weight
        norm = float(np.linalg.norm(vec))
        self._f[row] = vec / norm if norm else vec
        self._set_nonzero(row)
        self._genres[row] = genres

    def genres_of_row(self, row: int) -> list[str]:
        return self._genres.get(row, [])

    def _learn_row(self, row, y, profile, ts):
        """Content similarity needs no training; the catalogue is its knowledge."""

    def user_vectors(self, hist: HistoryMatrix) -> np.ndarray:
        """Unit-length user vectors (users, features) of every user of ``hist``."""
        w = np.where(hist.weights > 0, np.minimum(hist.weights, WEIGHT_CLIP),
                     self.negative_weight * np.maximum(hist.weights, -WEIGHT_CLIP))
        known = hist.rows >= 0
        if known.all():
            # Every entry known (one user's history always is): positions 0, 1, 2...,
            # their decay from a table, no masking (the same values, fewer numpy calls).
            w = (w * _powers(self.history_recency, w.shape[1])).astype(np.float32)
        else:
            position = np.maximum(np.cumsum(known, axis=1) - 1, 0)
            w = np.where(known, w * self.history_recency ** position, 0.0).astype(np.float32)
        vec = np.einsum("ql,qlf->qf", w, self._f[hist.clipped])
        # np.linalg.norm(vec, axis=1, keepdims=True)'s arithmetic without its Python
        # overhead (~10 us, a seventh of this method for one user).
        norm = np.sqrt(np.add.reduce(vec * vec, axis=1, keepdims=True))
        return vec / np.where(norm > 0, norm, 1.0)

    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        return self.scores(self.user_vectors(profile.matrix()), rows)[0]

    def scores(self, users: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Scores (users, titles) of ``rows`` (titles, or (users, titles) per user)."""
        if rows.ndim == 1:
            return (users @ self._f[rows].T).astype(np.float64)
        # Per user, only its titles' nonzero features (a tenth of the dense gather).
        # Indices into users.ravel(): one flat take (cheaper than 3-array fancy indexing).
        flat = self._nz_index[rows]                                   # (users, titles, width)
        if len(users) > 1:  # (one user's offset is 0)
            flat += (np.arange(len(users), dtype=np.int32) * users.shape[1])[:, None, None]
        picked = users.ravel()[flat]
        return np.einsum("qck,qck->qc", picked, self._nz_value[rows]).astype(np.float64)

    def size(self):
        return {"titles": len(self._items), "described": len(self._genres)}
