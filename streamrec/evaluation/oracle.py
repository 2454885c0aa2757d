"""The simulator's hidden truth as a ranker: how close the models get to knowing the users.

On a stream from ``streamrec simulate``, every user has a hidden affinity for every title
(:meth:`producers.world.World.affinity`). :class:`Oracle` ranks by it, which no model
that only sees events can do; its recall@k is the reference the models are compared to.
"""

from __future__ import annotations

import numpy as np

from models.base import Recommender, RowProfile


def parse_world(text: str) -> tuple[int, int, int]:
    """``"USERS,TITLES,SEED"`` (what ``streamrec simulate`` was given) as integers."""
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--oracle takes USERS,TITLES,SEED as given to streamrec simulate "
                         f"(e.g. 1000,2000,0), got {text!r}")
    users, titles, seed = (int(p) for p in parts)
    if users <= 0 or titles <= 0:
        raise ValueError("--oracle: USERS and TITLES must be positive")
    return users, titles, seed


class Oracle(Recommender):
    """Ranks titles by the simulated world's hidden affinity of the user for them.

    The world is a pure function of its parameters, so the oracle rebuilds the very world
    that produced the stream. Users or titles the world does not have score 0. With
    ``exposure``, the score is ``affinity ** 1.2 * popularity``: the simulator shows
    titles in proportion to their (hidden) popularity and a shown title is clicked with a
    chance growing as ``affinity ** 1.2``, so this is close to how the next title is
    actually drawn, where affinity alone is only what the user would like.

    Parameters
    ----------
    n_users, n_titles, seed
        The parameters ``streamrec simulate`` was run with.
    exposure
        Weigh the affinity by the world's popularity (see above).
    capacity
        Most titles held.

    Examples
    --------
    >>> from models.base import UserProfile
    >>> from producers.world import generate_world
    >>> world = generate_world(20, 30, seed=4)
    >>> oracle = Oracle(20, 30, seed=4)
    >>> for t in ("t0", "t1", "t2"):
    ...     oracle.learn_one("u3", t, 1.0)
    >>> best = max(("t0", "t1", "t2"), key=lambda t: world.affinity("u3", t))
    >>> oracle.rank("u3", ["t0", "t1", "t2"], UserProfile("u3"))[0] == best
    True
    """

    def __init__(self, n_users: int, n_titles: int, seed: int = 0, exposure: bool = False,
                 capacity: int = 200_000) -> None:
        from producers.world import generate_world

        self.n_users = n_users
        self.n_titles = n_titles
        self.seed = seed
        self.exposure = exposure
        self.capacity = capacity
        self._init_items(capacity)
        self._world = generate_world(n_users, n_titles, seed)
        self._title_of_row = np.full(0, -1, dtype=np.int64)

    def _ensure_rows(self) -> None:
        mapped = len(self._title_of_row)
        if mapped < self._items.rows:
            new = [self._title_index(self._items.ids[r]) for r in range(mapped, self._items.rows)]
            self._title_of_row = np.concatenate((self._title_of_row,
                                                 np.array(new, dtype=np.int64)))

    def _title_index(self, title_id: str | None) -> int:
        try:
            return self._world.title_index(title_id) if title_id is not None else -1
        except KeyError:
            return -1

    def _reset_row(self, row: int) -> None:
        # The evaluator sizes capacity above the stream's titles, so rows are not
        # recycled there; should one be, the title it held is forgotten.
        if row < len(self._title_of_row):
            self._title_of_row[row] = -1

    def _learn_row(self, row, y, profile, ts):
        """The truth needs no learning."""

    def score_rows(self, rows, profile=None, ts=None):
        titles = self._title_of_row[rows]
        scores = np.zeros(len(rows))
        try:
            user = self._world.user_index(profile.user_id) if profile is not None else -1
        except KeyError:
            user = -1
        known = titles >= 0
        if user >= 0 and known.any():
            scores[known] = self._world.affinities(user, titles[known])
            if self.exposure:
                scores[known] = scores[known] ** 1.2 * self._world.popularity[titles[known]]
        return scores

    def _score_rows(self, rows: np.ndarray, profile: RowProfile, ts: float | None) -> np.ndarray:
        raise NotImplementedError("the oracle needs the user's id: use score_rows")
