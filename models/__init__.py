"""Online recommendation models: pure, river-style, no I/O.

``Trending``, ``CoOccurrence``, ``ImplicitMF``, ``ContentModel``, ``ThompsonExplorer``
and the ``Hybrid`` that blends them share the :class:`~models.base.Recommender` contract.
"""

from models.base import ItemTable, Recommender, UserProfile
from models.content import ContentModel
from models.cooccurrence import CoOccurrence
from models.explore import ThompsonExplorer
from models.hybrid import Hybrid, Recommendation
from models.mf import ImplicitMF
from models.trending import Trending

__all__ = [
    "ContentModel", "CoOccurrence", "Hybrid", "ImplicitMF", "ItemTable", "Recommendation",
    "Recommender", "ThompsonExplorer", "Trending", "UserProfile",
]
