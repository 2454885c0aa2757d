"""Ranking metrics of the prequential protocol, one tested event at a time.

Each tested event yields the rank of the title the user actually went on to watch among
the candidates, with ties counted *against* the model: the rank is one plus the number of
other candidates scoring at least as high. A model that gives every candidate the same
score therefore ranks the true title last, not first.
"""

from __future__ import annotations

import math

import numpy as np


def rank_of_true(scores: np.ndarray, true_pos: int) -> int:
    """1-based rank of ``scores[true_pos]``; ties and NaN count against it.

    Examples
    --------
    >>> rank_of_true(np.array([0.1, 0.5, 0.9]), 1)
    2
    >>> rank_of_true(np.array([0.5, 0.5, 0.5]), 0)  # a tie is a loss
    3
    """
    s = scores[true_pos]
    if np.isnan(s):
        return len(scores)
    return int(np.count_nonzero(scores >= s) + np.count_nonzero(np.isnan(scores)))


def top_items(candidates: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best-scoring candidates (best first), leaving out those a model cannot
    score (``-inf``: titles it has never heard of)."""
    if len(scores) > k:
        part = np.argpartition(-scores, k)[:k]
        order = part[np.argsort(-scores[part], kind="stable")]
    else:
        order = np.argsort(-scores, kind="stable")
    order = order[np.isfinite(scores[order])]
    return candidates[order]


class Scoreboard:
    """Running recall@k, NDCG@k, MRR, coverage and novelty of one model.

    Parameters
    ----------
    k
        List length.

    Examples
    --------
    >>> board = Scoreboard(k=2)
    >>> board.add(rank=1, listed=np.array([3, 4]), novelty=1.0)
    >>> board.add(rank=3, listed=np.array([4, 5]), novelty=2.0)
    >>> s = board.summary(titles_seen=10)
    >>> s["recall@2"], s["mrr"], s["coverage"], s["novelty"]
    (0.5, 0.666667, 0.3, 1.5)
    >>> board.add(rank=2, listed=np.array([4]), novelty=0.0, listable=False)
    >>> board.hits[-1]  # ranked 2nd of 2 and k = 2, but it could not be on the list
    False
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.hits: list[bool] = []
        self._rr = 0.0
        self._dcg = 0.0
        self._listed: set[int] = set()
        self._novelty = 0.0

    def add(self, rank: int, listed: np.ndarray, novelty: float, listable: bool = True) -> None:
        """One tested event: the true title's rank, the top-k shown, their mean novelty.

        ``listable`` is False when the model could not have listed the true title (its
        first appearance in the stream, or a title the model cannot score): a miss for
        recall and NDCG whatever its rank, even when all the candidates fit in k. MRR
        still takes ``1 / rank`` over the whole ranking, where such a title comes last.
        """
        hit = listable and rank <= self.k
        self.hits.append(hit)
        self._rr += 1.0 / rank
        if hit:
            self._dcg += 1.0 / math.log2(rank + 1)
        self._listed.update(listed.tolist())
        self._novelty += novelty

    def summary(self, titles_seen: int) -> dict[str, float]:
        n = max(len(self.hits), 1)
        k = self.k
        return {
            f"recall@{k}": round(sum(self.hits) / n, 6),
            f"ndcg@{k}": round(self._dcg / n, 6),
            "mrr": round(self._rr / n, 6),
            "coverage": round(len(self._listed) / max(titles_seen, 1), 6),
            "novelty": round(self._novelty / n, 6),
        }


def self_information(listed: np.ndarray, engaged_users: np.ndarray, users: int) -> float:
    """Mean ``log2((users + 1) / (engaged_users[i] + 1))`` over the listed titles: how
    surprising the list is, in bits (popular titles carry little; Zhou et al., 2010)."""
    if len(listed) == 0:
        return 0.0
    return float(np.mean(np.log2((users + 1.0) / (engaged_users[listed] + 1.0))))


def rolling_mean(hits: list[bool], window: int) -> np.ndarray:
    """Mean of the last ``window`` values at every position (shorter at the start).

    Examples
    --------
    >>> rolling_mean([True, False, True, True], 2).tolist()
    [1.0, 0.5, 0.5, 1.0]
    """
    values = np.asarray(hits, dtype=np.float64)
    if len(values) == 0:
        return values
    sums = np.cumsum(values)
    lagged = np.zeros(len(values))
    lagged[window:] = sums[:-window] if len(values) > window else 0.0
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums - lagged) / counts
