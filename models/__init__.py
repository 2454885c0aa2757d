"""Online recommendation models: pure, river-style, no I/O.

``Trending``, ``CoOccurrence``, ``ImplicitMF``, ``ContentModel``, ``ThompsonExplorer``,
the ``Hybrid`` that blends them and the ``Popularity`` and ``RandomRanker`` baselines share
the :class:`~models.base.Recommender` contract; ``models.registry`` names them all.
"""

from models.base import ItemTable, Recommender, UserProfile
from models.baselines import Popularity, RandomRanker
from models.content import ContentModel
from models.cooccurrence import CoOccurrence
from models.explore import ThompsonExplorer
from models.hybrid import Hybrid, Recommendation
from models.mf import ImplicitMF
from models.trending import Trending

__all__ = [
    "ContentModel", "CoOccurrence", "Hybrid", "ImplicitMF", "ItemTable", "Popularity",
    "RandomRanker", "Recommendation", "Recommender", "ThompsonExplorer", "Trending",
    "UserProfile",
]
