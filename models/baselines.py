"""Reference rankers every streamrec model must beat: all-time popularity, random, and
river's incremental matrix factorisation (the literature's streaming MF)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.base import Recommender, RowProfile, UserProfile, grow


class Popularity(Recommender):
    """All-time count of positive events per title: the literature's streaming baseline.

    No decay and no personalisation: every user gets the titles most often engaged with
    so far. This is the list a product team gets for free, and under test-then-train
    evaluation it is a hard one to beat (Kitazawa, CHIIR 2017).

    Parameters
    ----------
    capacity
        Most titles held.

    Examples
    --------
    >>> m = Popularity()
    >>> for item in ["a", "b", "b", "c", "b", "c"]:
    ...     m.learn_one("u", item, 1.0)
    >>> m.rank("v", ["a", "b", "c", "new"])
    ['b', 'c', 'a', 'new']
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._init_items(capacity)
        self._count = np.zeros(0)

    def _ensure_rows(self) -> None:
        self._count = grow(self._count, self._items.rows)

    def _reset_row(self, row: int) -> None:
        if row < len(self._count):
            self._count[row] = 0.0

    def _learn_row(self, row, y, profile, ts):
        if y > 0:
            self._count[row] += 1.0

    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        return self._count[rows]


class RandomRanker(Recommender):
    """Uniformly random scores: the floor any model must clear.

    Parameters
    ----------
    seed
        Seeds the scores (deterministic under a seed).
    capacity
        Most titles held.

    Examples
    --------
    >>> a, b = RandomRanker(seed=3), RandomRanker(seed=3)
    >>> items = ["a", "b", "c", "d"]
    >>> for m in (a, b):
    ...     for item in items:
    ...         m.learn_one("u", item, 1.0)
    >>> a.rank("u", items) == b.rank("u", items)
    True
    >>> sorted(a.rank("u", items)) == items
    True
    """

    def __init__(self, seed: int = 42, capacity: int = 200_000) -> None:
        self.seed = seed
        self.capacity = capacity
        self._init_items(capacity)
        self._rng = np.random.default_rng(seed)

    def _learn_row(self, row, y, profile, ts):
        """Nothing to learn."""

    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        return self._rng.random(len(rows))


class RiverMF(Recommender):
    """river's incremental matrix factorisation (``river.reco``), for comparison only.

    The literature's streaming matrix factorisation: every positive event is one SGD step
    on ``(user, title) -> 1``, every negative one on ``-> 0``, and titles are ranked by
    the predicted value, one ``predict_one`` call per candidate. Under test-then-train on
    positive-only MovieLens streams this loses to popularity by a wide margin (Kitazawa,
    CHIIR 2017): ``streamrec evaluate --models river-funkmf,river-biasedmf,popularity``
    shows it on the same protocol as the product. Evaluation only, never served: river
    keeps a factor vector per user in process memory (one per user ever seen), where the
    worker's models are bounded by the catalogue and read users from Redis.

    Parameters
    ----------
    kind
        ``"funk"`` (``river.reco.FunkMF``: a dot product) or ``"biased"``
        (``river.reco.BiasedMF``: global mean, user and title biases, and the dot product).
    n_factors
        Latent factors per user and title.
    learning_rate
        SGD step size of every update.
    l2
        L2 regularisation of the factors (and biases).
    seed
        Seeds the factors' initialisation.
    capacity
        Most titles held.

    Examples
    --------
    >>> m = RiverMF(seed=1)
    >>> for _ in range(30):
    ...     for user in ["a", "b", "c"]:
    ...         m.learn_one(user, "x", 1.0)
    ...         m.learn_one(user, "y", 1.0)
    >>> m.learn_one("d", "x", 1.0)
    >>> m.rank("d", ["z", "y"])
    ['y', 'z']
    """

    KINDS = ("funk", "biased")

    def __init__(self, kind: str = "funk", n_factors: int = 10, learning_rate: float = 0.05,
                 l2: float = 0.0, seed: int = 42, capacity: int = 200_000) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        from river import optim, reco  # only the evaluator needs river's models

        self.kind = kind
        self.n_factors = n_factors
        self.learning_rate = learning_rate
        self.l2 = l2
        self.seed = seed
        self.capacity = capacity
        self._init_items(capacity)
        latents = optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed)
        self._river: reco.FunkMF | reco.BiasedMF
        if kind == "funk":
            self._river = reco.FunkMF(n_factors=n_factors, optimizer=optim.SGD(learning_rate),
                                      l2=l2, initializer=latents, seed=seed)
        else:
            self._river = reco.BiasedMF(
                n_factors=n_factors, bias_optimizer=optim.SGD(learning_rate),
                latent_optimizer=optim.SGD(learning_rate), l2_bias=l2, l2_latent=l2,
                latent_initializer=latents, seed=seed)

    def learn_one(self, user: str, item: str, y: float, profile: UserProfile | None = None,
                  ts: float | None = None) -> None:
        super().learn_one(user, item, y, profile, ts)  # the title table (rows, eviction)
        if y != 0.0:
            self._river.learn_one(user, item, 1.0 if y > 0 else 0.0)

    def _learn_row(self, row, y, profile, ts):
        """river learns in :meth:`learn_one`, which knows the user."""

    def score_many(self, user: str, items: Sequence[str], profile: UserProfile | None = None,
                   ts: float | None = None) -> np.ndarray:
        # river's scores depend on the user id, which a profile need not be given for.
        return super().score_many(user, items, profile or UserProfile(user), ts)

    def score_rows(self, rows: np.ndarray, profile: UserProfile | None = None,
                   ts: float | None = None) -> np.ndarray:
        scores = np.zeros(len(rows))
        user = profile.user_id if profile is not None else None
        # river creates factors for whatever it is asked about: ask only about users and
        # titles it learned, the rest score 0 (nothing known).
        if user is None or user not in self._river.u_latents:
            return scores
        learned, ids, predict = self._river.i_latents, self._items.ids, self._river.predict_one
        for i, row in enumerate(rows.tolist()):
            title = ids[row]
            if title in learned:
                scores[i] = predict(user, title)
        return scores
