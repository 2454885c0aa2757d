"""The hybrid ranker: a learned blend of every model, with exploration and diversity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.base import ItemTable, Recommender, RowProfile, UserProfile, top_k
from models.content import ContentModel
from models.cooccurrence import CoOccurrence
from models.explore import ThompsonExplorer
from models.mf import ImplicitMF
from models.trending import Trending

# The blended components, in feature order.
COMPONENTS = ("trending", "cooccurrence", "mf", "content")
REASON_OF = {"trending": "trending", "mf": "similar_users"}


@dataclass(frozen=True, slots=True)
class Recommendation:
    title_id: str
    score: float
    reason: str


class Hybrid(Recommender):
    """Blend of trending, co-occurrence, matrix factorisation and content scores.

    Each component's scores over the candidate list are min-max scaled to [0, 1] and
    blended with non-negative weights. The weights are learned online from what users go
    on to watch: every ``blend_every``-th positive event, the title actually watched is
    scored against ``blend_negatives`` random titles and the weights take a pairwise
    logistic (BPR) step toward whatever ranked it higher. ``exploration`` is the share of
    list slots (rounded down, at least one when > 0) given to Thompson samples from the
    explorer; users with no positive history are ranked by the explorer blended with
    trending. Lists are diversified so that at most ``max_per_genre`` of the top 10 share
    a genre, and never contain a title the user completed.

    Parameters
    ----------
    trending, cooccurrence, mf, content, explorer
        The component models (defaults are created when ``None``).
    weights
        Initial blend weights, by component name.
    blend_learning_rate
        Step size of the blend's pairwise updates.
    blend_every, blend_negatives
        How often (in positive events) and against how many negatives the blend learns.
    exploration
        Share of slots filled by exploration, 0..1.
    max_per_genre
        Most titles of one genre among the top 10.
    max_candidates
        When more titles are known, candidates are pre-selected from trending, the user's
        co-occurrence neighbours and new titles.
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
        weights: dict[str, float] | None = None,
        blend_learning_rate: float = 0.05,
        blend_every: int = 4,
        blend_negatives: int = 20,
        exploration: float = 0.05,
        max_per_genre: int = 5,
        max_candidates: int = 2000,
        seed: int = 42,
        capacity: int = 200_000,
    ) -> None:
        if not 0.0 <= exploration <= 1.0:
            raise ValueError(f"exploration must be within 0..1, got {exploration}")
        if blend_every <= 0 or blend_negatives <= 0 or max_per_genre <= 0:
            raise ValueError("blend_every, blend_negatives and max_per_genre must be positive")
        self.trending = trending if trending is not None else Trending(capacity=capacity)
        self.cooccurrence = (cooccurrence if cooccurrence is not None
                             else CoOccurrence(capacity=capacity))
        self.mf = mf if mf is not None else ImplicitMF(seed=seed, capacity=capacity)
        self.content = content if content is not None else ContentModel(capacity=capacity)
        self.explorer = (explorer if explorer is not None
                         else ThompsonExplorer(seed=seed, capacity=capacity))
        self.weights = weights
        self.blend_learning_rate = blend_learning_rate
        self.blend_every = blend_every
        self.blend_negatives = blend_negatives
        self.exploration = exploration
        self.max_per_genre = max_per_genre
        self.max_candidates = max_candidates
        self.seed = seed
        self.capacity = capacity
        self._items = ItemTable(capacity)
        for model in self._components_and_explorer():
            model.use_item_table(self._items)
        initial = {"trending": 0.2, "cooccurrence": 1.0, "mf": 0.5, "content": 0.3}
        initial.update(weights or {})
        self._w = np.array([initial[name] for name in COMPONENTS], dtype=np.float64)
        self._rng = np.random.default_rng(seed)
        self._positives_seen = 0

    def clone(self) -> Hybrid:
        params = self._get_params()
        for name in ("trending", "cooccurrence", "mf", "content", "explorer"):
            params[name] = params[name].clone()
        return type(self)(**params)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Components re-register with the shared table themselves when unpickled.
        self.__dict__.update(state)

    def _components_and_explorer(self) -> list[Recommender]:
        return [self.trending, self.cooccurrence, self.mf, self.content, self.explorer]

    @property
    def blend_weights(self) -> dict[str, float]:
        return {name: float(w) for name, w in zip(COMPONENTS, self._w, strict=True)}

    # -- learning ------------------------------------------------------------------------------
    def _ensure_rows(self) -> None:
        for model in self._components_and_explorer():
            model._ensure_rows()

    def add_title(self, title: dict[str, Any]) -> None:
        self.content.add_title(title)  # adds the row to the shared table too
        self._ensure_rows()

    def _learn_row(self, row, y, profile, ts):
        if y > 0:
            self._positives_seen += 1
            if self._positives_seen % self.blend_every == 0 and self._items.rows > 2:
                self._learn_blend(row, profile, ts)
        for model in self._components_and_explorer():
            model._learn_row(row, y, profile, ts)

    def _features(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        """(len(rows), len(COMPONENTS)) matrix of min-max scaled component scores."""
        raw = np.column_stack([
            self.trending._score_rows(rows, profile, ts),
            self.cooccurrence._score_rows(rows, profile, ts),
            self.mf._score_rows(rows, profile, ts),
            self.content._score_rows(rows, profile, ts),
        ])
        low, high = raw.min(axis=0), raw.max(axis=0)
        span = high - low
        return np.where(span > 1e-12, (raw - low) / np.where(span > 1e-12, span, 1.0), 0.0)

    def _learn_blend(self, row: int, profile: RowProfile, ts: float | None) -> None:
        negatives = self._rng.integers(0, self._items.rows, size=self.blend_negatives)
        negatives = negatives[negatives != row]
        if len(negatives) == 0:
            return
        feats = self._features(np.concatenate(([row], negatives)), profile, ts)
        diffs = feats[0] - feats[1:]
        margins = diffs @ self._w
        grads = (1.0 / (1.0 + np.exp(np.clip(margins, -30, 30))))[:, None] * diffs
        self._w = np.maximum(self._w + self.blend_learning_rate * grads.mean(axis=0), 0.0)

    # -- scoring -------------------------------------------------------------------------------
    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        if not (profile.weights > 0).any():
            return self._cold_scores(rows, profile, ts)
        return self._features(rows, profile, ts) @ self._w

    def _cold_scores(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        trend = self.trending._score_rows(rows, profile, ts)
        top = trend.max() if len(trend) else 0.0
        trend = trend / top if top > 0 else trend
        return 0.7 * trend + 0.3 * self.explorer._score_rows(rows, profile, ts)

    def candidate_rows(self, profile: RowProfile, ts: float | None) -> np.ndarray:
        """Rows worth scoring for this user (every known title when there are few)."""
        known = np.fromiter(self._items.index.values(), dtype=np.int64, count=len(self._items))
        if len(known) <= self.max_candidates:
            return known
        trend = self.trending._score_rows(known, profile, ts)
        picked = [known[top_k(trend, self.max_candidates // 2)]]
        nbr = self.cooccurrence._nbr[profile.rows[profile.weights > 0]].ravel()
        picked.append(nbr[nbr >= 0])
        picked.append(self._rng.choice(known, size=self.max_candidates // 4, replace=False))
        return np.unique(np.concatenate(picked))

    def recommend(
        self, profile: UserProfile, n: int = 20, ts: float | None = None,
        candidates: Sequence[str] | None = None,
    ) -> list[Recommendation]:
        """The user's top ``n``: blended, diversified, explored, completed titles removed."""
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
        scores, picks, contributions, cold = self._rank(rows, row_profile, n, ts)
        return [
            Recommendation(
                self._items.ids[rows[i]] or "", float(scores[i]),
                reason or self._reason(int(rows[i]), i, contributions, row_profile, cold),
            )
            for i, reason in picks
        ]

    def list_rows(self, rows: np.ndarray, profile: UserProfile, n: int, ts: float | None = None
                  ) -> tuple[np.ndarray, list[int]]:
        """What :meth:`recommend` does for candidate ``rows`` (see :meth:`item_rows`):
        the blended score of every row, and the positions in ``rows`` of the ``n`` titles
        listed, in list order (diversified, with exploration slots)."""
        if len(rows) == 0:
            return np.zeros(0), []
        scores, picks, _, _ = self._rank(rows, RowProfile.build(self._items, profile), n, ts)
        return scores, [i for i, _ in picks]

    def _rank(self, rows: np.ndarray, row_profile: RowProfile, n: int, ts: float | None):
        cold = not (row_profile.weights > 0).any()
        if cold:
            scores = self._cold_scores(rows, row_profile, ts)
            contributions = None
        else:
            feats = self._features(rows, row_profile, ts)
            contributions = feats * self._w
            scores = contributions.sum(axis=1)
        order = top_k(scores, min(len(rows), 3 * n))
        chosen = self._diversify(rows, order, n)
        picks = [(int(i), "") for i in chosen]
        n_explore = int(self.exploration * n) if not cold else 0
        if self.exploration > 0 and not cold:
            n_explore = max(n_explore, 1)
        if n_explore and len(rows) > len(picks) - n_explore:
            picks = self._explore_slots(rows, picks, n_explore, row_profile, ts)
        return scores, picks[:n], contributions, cold

    def _diversify(self, rows: np.ndarray, order: np.ndarray, n: int) -> list[int]:
        """Greedy: no genre more than ``max_per_genre`` times in the first 10 slots."""
        counts: dict[str, int] = {}
        chosen: list[int] = []
        deferred: list[int] = []
        for i in order:
            genres = self.content.genres_of_row(int(rows[i]))
            if len(chosen) < 10 and any(counts.get(g, 0) >= self.max_per_genre for g in genres):
                deferred.append(int(i))
                continue
            if len(chosen) < 10:
                for g in genres:
                    counts[g] = counts.get(g, 0) + 1
            chosen.append(int(i))
            if len(chosen) >= n:
                break
        return (chosen + deferred)[:n]

    def _explore_slots(self, rows, picks, n_explore, profile, ts):
        taken = {i for i, _ in picks}
        pool = np.array([i for i in range(len(rows)) if i not in taken], dtype=np.int64)
        if len(pool) == 0:
            return picks
        samples = self.explorer._score_rows(rows[pool], profile, ts)
        # Favour titles with little evidence: that is what exploration is for.
        samples = samples / (1.0 + self.explorer.exposure(rows[pool]) / 10.0)
        explored = [(int(pool[j]), "explore") for j in top_k(samples, n_explore)]
        keep = len(picks) - len(explored) if len(picks) >= len(explored) else 0
        head = picks[:keep]
        # Exploration slots are spread through the list, not parked at the bottom.
        step = max(1, len(head) // (len(explored) + 1))
        for k, slot in enumerate(explored):
            head.insert(min(len(head), (k + 1) * step + k), slot)
        return head

    def _reason(self, row: int, i: int, contributions: np.ndarray | None,
                profile: RowProfile, cold: bool) -> str:
        if cold or contributions is None:
            return "trending"
        component = COMPONENTS[int(np.argmax(contributions[i]))]
        if component == "cooccurrence":
            source = self.cooccurrence.explain(row, profile)
            if source is not None:
                return f"because_you_watched:{self._items.ids[source]}"
            return "similar_users"
        if component == "content":
            genres = self.content.genres_of_row(row)
            return f"genre:{genres[0]}" if genres else "similar_users"
        return REASON_OF[component]

    def size(self) -> dict[str, int]:
        return {"titles": len(self._items),
                "links": self.cooccurrence.size().get("links", 0)}
