"""Ranking a user's list the way their experiment variant says, on the one shared model.

Every variant learns from every event: there is one :class:`~models.hybrid.Hybrid` per
worker. A variant only changes how lists are *ranked*:

* ``default``: the hybrid as it is;
* ``popularity``: trending order (the hybrid's own trending component);
* ``random``: titles drawn uniformly at random from every title the model knows, seeded
  by ``(user_id, event_id)`` so a list can be reproduced;
* overrides: a shallow view of the hybrid with other ranking hyperparameters
  (``exploration``, ``max_per_genre``, ``max_candidates``) and/or fixed blend ``weights``
  in place of the learned blend. The view shares every component (no learned state is
  copied) and is made once per batch, after the batch's learning.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import Any

import numpy as np

from models.base import UserProfile
from models.batched import rank_many
from models.hybrid import COMPONENTS, Hybrid, Recommendation
from streams.experiments import Variant


def hybrid_view(model: Hybrid, overrides: Mapping[str, Any]) -> Hybrid:
    """A ranking-only view of ``model`` with ``overrides``; never call ``learn_one`` on it.

    Examples
    --------
    >>> h = Hybrid(seed=1)
    >>> view = hybrid_view(h, {"exploration": 0.3, "weights": {"mf": 0.0}})
    >>> view.exploration, view.trending is h.trending, view.blend_weights["mf"]
    (0.3, True, 0.0)
    """
    view = copy.copy(model)  # shallow: components, item table and RNG are shared
    for key in ("exploration", "max_per_genre", "max_candidates"):
        if key in overrides:
            setattr(view, key, overrides[key])
    if "weights" in overrides:
        learned = model.blend_weights
        fixed = {**learned, **overrides["weights"]}
        view._w = np.array([fixed[name] for name in COMPONENTS], dtype=np.float64)
    return view


def popularity_list(model: Hybrid, profile: UserProfile, n: int, ts: float,
                    ranked: Sequence[tuple[str, float]] | None = None
                    ) -> list[Recommendation]:
    """The ``n`` most trending titles the user has not completed.

    ``ranked`` is every title in trending order (``model.trending.top``), computed once
    per batch: the order does not depend on ``ts`` (every title decays by the same factor).
    """
    done = profile.completed
    if ranked is None:
        ranked = model.trending.top(n + len(done), ts)
    out: list[Recommendation] = []
    for title, score in ranked:
        if title not in done:
            out.append(Recommendation(title, round(score, 6), "trending"))
            if len(out) == n:
                break
    return out


def random_list(known: np.ndarray, ids: list[str | None], profile: UserProfile, n: int,
                seed_text: str) -> list[Recommendation]:
    """``n`` titles drawn uniformly from the ``known`` rows, minus completed titles."""
    if len(known) == 0:
        return []
    seed = int.from_bytes(blake2b(seed_text.encode(), digest_size=8).digest(), "big")
    rng = np.random.default_rng(seed)
    done = profile.completed
    take = min(len(known), n + len(done))
    picks = known[rng.choice(len(known), size=take, replace=False)]
    titles = [ids[row] for row in picks]
    return [Recommendation(t, 0.0, "explore") for t in titles if t and t not in done][:n]


class VariantRanker:
    """Ranks lists for any variant during one batch (views and title arrays made lazily)."""

    def __init__(self, model: Hybrid) -> None:
        self.model = model
        self._views: dict[int, Hybrid] = {}
        self._known: np.ndarray | None = None
        self._trending: list[tuple[str, float]] | None = None

    def recommend_many(self, variant: Variant | None, profiles: Sequence[UserProfile], n: int,
                       ts: Sequence[float], event_ids: Sequence[str]
                       ) -> list[list[Recommendation]]:
        """Lists for several users of one variant; the hybrid and its views rank them all
        in one vectorised call (``models.batched.rank_many``, identical lists)."""
        preset = "default" if variant is None else variant.preset
        if preset in ("default", "overrides"):
            model = self.model if variant is None else self._view(variant)
            return [[Recommendation(*r) for r in ranked]
                    for ranked in rank_many(model, profiles, n, ts)]
        return [self.recommend(variant, p, n, t, e)
                for p, t, e in zip(profiles, ts, event_ids, strict=True)]

    def _view(self, variant: Variant) -> Hybrid:
        overrides = variant.ranking_overrides
        if not overrides:  # e.g. only the row policy differs
            return self.model
        view = self._views.get(id(variant))
        if view is None:
            view = self._views[id(variant)] = hybrid_view(self.model, overrides)
        return view

    def recommend(self, variant: Variant | None, profile: UserProfile, n: int, ts: float,
                  event_id: str) -> list[Recommendation]:
        model = self.model
        if variant is None or variant.preset == "default":
            return model.recommend(profile, n=n, ts=ts)
        preset = variant.preset
        if preset == "popularity":
            if self._trending is None:
                self._trending = model.trending.top(len(model._items), ts)
            return popularity_list(model, profile, n, ts, self._trending)
        if preset == "random":
            if self._known is None:
                items = model._items
                self._known = np.fromiter(items.index.values(), dtype=np.int64,
                                          count=len(items))
            return random_list(self._known, model._items.ids, profile, n,
                               f"{profile.user_id}\x1f{event_id}")
        return self._view(variant).recommend(profile, n=n, ts=ts)
