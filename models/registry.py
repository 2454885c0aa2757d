"""Every model by name: what ``streamrec evaluate --models`` (and A/B presets) pick from.

A factory takes the seed and returns a fresh, unfitted model. Add a preset by adding an
entry: ``MODELS["hybrid-no-mf"] = lambda seed: Hybrid(weights={"mf": 0.0}, seed=seed)``.
``evaluate`` runs ``DEFAULT_MODELS`` unless ``--models`` names others.
"""

from __future__ import annotations

from collections.abc import Callable

from models.base import Recommender
from models.baselines import Popularity, RandomRanker, RiverMF
from models.content import ContentModel
from models.cooccurrence import CoOccurrence
from models.explore import ThompsonExplorer
from models.hybrid import Hybrid
from models.mf import ImplicitMF
from models.trending import Trending

ModelFactory = Callable[[int], Recommender]

MODELS: dict[str, ModelFactory] = {
    # The product: the hybrid the worker serves.
    "streamrec": lambda seed: Hybrid(seed=seed),
    # Baselines.
    "popularity": lambda seed: Popularity(),
    "random": lambda seed: RandomRanker(seed=seed),
    # river's incremental matrix factorisation, the literature's streaming MF (not in the
    # defaults: one predict_one call per candidate, ~1 minute each on MovieLens).
    "river-funkmf": lambda seed: RiverMF("funk", seed=seed),
    "river-biasedmf": lambda seed: RiverMF("biased", seed=seed),
    # The hybrid's components on their own, with the hybrid's defaults.
    "trending": lambda seed: Trending(),
    "cooccurrence": lambda seed: CoOccurrence(),
    "mf": lambda seed: ImplicitMF(seed=seed),
    "content": lambda seed: ContentModel(),
    "explorer": lambda seed: ThompsonExplorer(seed=seed),
    # The hybrid's ranking alone: no exploration slots, no genre cap (what the product's
    # list constraints cost).
    "streamrec-unconstrained": lambda seed: Hybrid(exploration=0.0, max_per_genre=10,
                                                   seed=seed),
}
DEFAULT_MODELS = ("streamrec", "popularity", "random", "trending", "cooccurrence", "mf",
                  "content", "explorer")


def create(name: str, seed: int = 42) -> Recommender:
    """A fresh model registered under ``name``; ``KeyError`` naming the known ones if none.

    Examples
    --------
    >>> create("popularity")
    Popularity(capacity=200000)
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
    return factory(seed)
