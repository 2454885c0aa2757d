"""Small online learners behind the homepage rows: row order, resume order, local trends.

* :class:`RowBandit`: which rows to show first, a contextual Thompson-sampling bandit
  over row types, learned from ``impression``/``click`` events that carry the row id;
* :class:`ResumeModel`: how likely a user is to resume each in-progress title, learned
  from which of them they actually resume;
* :class:`CountryTrending`: time-decayed popularity per country, bounded.

River style: hyperparameters in the constructor, learned state private, no I/O.
"""

from __future__ import annotations

import bisect
import copy
import heapq
import inspect
import math
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


class _Params:
    """``clone`` and ``repr`` from the constructor's parameters (river's convention)."""

    def _get_params(self) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def clone(self) -> Any:
        return type(self)(**copy.deepcopy(self._get_params()))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({params})"


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


# Row types and their prior logits: the order a user with no evidence yet sees.
ROW_PRIORS = {
    "continue_watching": 1.0,
    "top_picks": 0.6,
    "because_you_watched": 0.4,
    "trending": 0.2,
    "genre": 0.0,
    "new_releases": -0.2,
}


class RowBandit(_Params):
    """Thompson sampling over row types with a logistic model per type (Chapelle & Li, 2011).

    A row's click probability is ``sigmoid(w_type . x + v * a)``: ``x`` is the user's
    context (hashed tokens such as the device, the hour of day, how established the
    user is, whether they have something in progress; see :meth:`context`), ``a`` the
    row's own affinity for the user (their affinity to a genre row's genre, or to a
    "because you watched" row's source title), ``v`` shared by all types. Each weight
    has a Gaussian posterior with diagonal precision, updated online by the Laplace
    approximation; :meth:`order` samples the weights (scaled by ``exploration``) and
    sorts rows by the sampled score, so rows with little evidence still get tried near
    the top. Impressions are failures, clicks successes.

    Parameters
    ----------
    n_context
        Hashed context features (including the bias).
    prior_precision
        Precision of every weight's prior (smaller: the priors give way sooner).
    exploration
        Scale of the posterior samples; 0 orders by the posterior mean.
    max_types
        Most row types tracked (unknown types beyond it share the last slot).
    seed
        Seeds the sampler.

    Examples
    --------
    >>> bandit = RowBandit(exploration=0.0)
    >>> x = bandit.context(device="tv")
    >>> for _ in range(200):
    ...     bandit.learn_one("new_releases", x, True)
    ...     bandit.learn_one("top_picks", x, False)
    >>> rows = [("top_picks", 0.0), ("new_releases", 0.0)]
    >>> [rows[i][0] for i in bandit.order(rows, x)]
    ['new_releases', 'top_picks']
    """

    def __init__(self, n_context: int = 16, prior_precision: float = 1.0,
                 exploration: float = 0.5, max_types: int = 16, seed: int = 42) -> None:
        if n_context < 2 or max_types < 1 or prior_precision <= 0 or exploration < 0:
            raise ValueError("n_context >= 2, max_types >= 1, prior_precision > 0, "
                             "exploration >= 0")
        self.n_context = n_context
        self.prior_precision = prior_precision
        self.exploration = exploration
        self.max_types = max_types
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        dims = n_context + 1  # the context, then the row's own affinity
        self._types: dict[str, int] = {}
        self._mean = np.zeros((max_types, dims))
        self._precision = np.full((max_types, dims), prior_precision)
        for name, prior in ROW_PRIORS.items():
            self._mean[self._type(name), 0] = prior
        self.impressions = 0
        self.clicks = 0

    def _type(self, name: str) -> int:
        slot = self._types.get(name)
        if slot is None:
            slot = min(len(self._types), self.max_types - 1)
            if len(self._types) < self.max_types:
                self._types[name] = slot
        return slot

    def context(self, device: str | None = None, hour: int | None = None,
                events: int = 0, in_progress: bool = False) -> np.ndarray:
        """The context vector: a bias and hashed tokens, each 1.

        A few hundred distinct vectors exist (devices x 6 parts of the day x 4 levels of
        experience x in progress or not), so they are memoised; the array returned is
        shared: read-only."""
        key = (device, None if hour is None else hour // 4,
               min(3, int(math.log10(events + 1))), bool(in_progress))
        memo = self.__dict__.setdefault("_contexts", {})
        x = memo.get(key)
        if x is not None:
            return x
        x = np.zeros(self.n_context)
        x[0] = 1.0
        n = self.n_context - 1
        tokens = [f"m:{key[2]}"]
        if device:
            tokens.append("d:" + device)
        if hour is not None:
            tokens.append(f"h:{key[1]}")
        if in_progress:
            tokens.append("p:1")
        for token in tokens:
            x[1 + zlib.crc32(token.encode()) % n] = 1.0
        x.flags.writeable = False
        if len(memo) >= 4096:  # bounded: device names come from clients
            memo.clear()
        memo[key] = x
        return x

    def learn_one(self, row_type: str, context: np.ndarray, clicked: bool,
                  affinity: float = 0.0) -> None:
        slot = self._type(row_type)
        x = np.append(context, affinity)
        mean, precision = self._mean[slot], self._precision[slot]
        p = _sigmoid(float(mean @ x))
        precision += p * (1.0 - p) * x * x
        mean += (float(clicked) - p) * x / precision
        self.impressions += 1
        self.clicks += bool(clicked)

    def learn_many(self, row_types: Sequence[str], contexts: np.ndarray,
                   clicked: Sequence[bool], affinities: Sequence[float]) -> None:
        """:meth:`learn_one` for a batch: one Laplace step per row type."""
        if not len(row_types):
            return
        x = np.column_stack((contexts, np.asarray(affinities, dtype=np.float64)))
        y = np.asarray(clicked, dtype=np.float64)
        slot_list = list(map(self._type, row_types))
        distinct = sorted(set(slot_list))
        slots = np.asarray(slot_list, dtype=np.int64) if len(distinct) > 1 else None
        for slot in distinct:
            if slots is None:  # one type (a small batch's usual case): every row
                xs, ys = x, y
            else:
                pick = slots == slot
                xs, ys = x[pick], y[pick]
            mean, precision = self._mean[slot], self._precision[slot]
            p = 1.0 / (1.0 + np.exp(-np.clip(xs @ mean, -30.0, 30.0)))
            precision += (p * (1.0 - p)) @ (xs * xs)
            mean += ((ys - p) @ xs) / precision
        self.impressions += len(y)
        self.clicks += int(y.sum())

    def order(self, rows: Sequence[tuple[str, float]], context: np.ndarray,
              explore: bool = True) -> list[int]:
        """Indices of ``rows`` (``(type, affinity)`` pairs), best first."""
        if not rows:
            return []
        types, affinity = zip(*rows, strict=True)
        return self.order_flat(self.type_slots(types), np.array(affinity, dtype=np.float64),
                               np.array([len(rows)]), context[None, :], [explore]).tolist()

    def type_slots(self, names: Sequence[str]) -> np.ndarray:
        """The slots of row types (what :meth:`order_flat` takes)."""
        return np.fromiter(map(self._type, names), dtype=np.int64, count=len(names))

    def order_flat(self, slots: np.ndarray, affinity: np.ndarray, counts: np.ndarray,
                   contexts: np.ndarray, explore: Sequence[bool]) -> np.ndarray:
        """:meth:`order` for many users at once, on flat arrays: every user's rows one
        after the other (``counts[u]`` rows of type slot ``slots[i]`` (:meth:`type_slots`)
        for user ``u``, ``contexts`` a row per user); one posterior sample for all their
        rows (the same random numbers, in the same order, as :meth:`order` user after
        user), then one sort. Returns the rows' indices, each user's best first."""
        total = len(slots)
        if not total:
            return np.zeros(0, dtype=np.int64)
        alone = len(counts) == 1  # one user's rows (a paced worker's usual batch)
        user = np.zeros(total, dtype=np.int64) if alone else np.repeat(np.arange(len(counts)),
                                                                       counts)
        weights = self._mean[slots]
        if self.exploration > 0 and all(explore):  # every row sampled: no mask
            noise = self._rng.standard_normal(weights.shape)
            weights += self.exploration * noise / np.sqrt(self._precision[slots])
        elif self.exploration > 0:
            sampled = np.repeat(np.asarray(explore, dtype=bool), counts)
            if sampled.any():
                noise = self._rng.standard_normal((int(sampled.sum()), weights.shape[1]))
                weights[sampled] += (self.exploration * noise
                                     / np.sqrt(self._precision[slots[sampled]]))
        scores = (np.einsum("ij,ij->i", weights[:, :-1], contexts[user])
                  + weights[:, -1] * affinity)
        # Best first within each user; stable, so ties keep the rows' order (as order()).
        if alone:
            return np.argsort(-scores, kind="stable")
        return np.lexsort((-scores, user))


class ResumeModel(_Params):
    """How likely a user is to resume each in-progress title: a pairwise logistic model.

    Features of an in-progress title: how long ago it was last watched
    (``log1p(hours)``), the share watched and its square (people finish what they are
    nearly through, and rarely go back to what they barely started), and whether it is
    a series episode. Initial weights give "recent and far along first"; when a user
    resumes one of several in-progress titles, the weights take a pairwise logistic
    step toward ranking it above the others.

    Examples
    --------
    >>> m = ResumeModel()
    >>> now = 10 * 3600.0
    >>> progress = {"old": (3000.0, 6000.0, 0.0), "fresh": (1200.0, 3000.0, now - 60)}
    >>> m.rank(progress, now)
    ['fresh', 'old']
    """

    def __init__(self, learning_rate: float = 0.05,
                 initial: Sequence[float] = (-0.6, 1.5, 0.5, 0.2)) -> None:
        if learning_rate <= 0 or len(initial) != 4:
            raise ValueError("learning_rate must be positive and initial has 4 weights")
        self.learning_rate = learning_rate
        self.initial = tuple(initial)
        self._w = list(initial)

    @staticmethod
    def features(position: float, duration: float, last_ts: float, now: float,
                 episode: bool = False) -> tuple[float, float, float, float]:
        ratio = min(1.0, position / duration) if duration > 0 else 0.5
        hours = max(0.0, now - last_ts) / 3600.0
        return (math.log1p(hours), ratio, ratio * ratio, 1.0 if episode else 0.0)

    def score(self, features: Sequence[float]) -> float:
        return sum(w * f for w, f in zip(self._w, features, strict=True))

    def rank(self, in_progress: dict[str, tuple[float, float, float]], now: float,
             episodes: Iterable[str] = ()) -> list[str]:
        """In-progress titles (``title -> (position, duration, ts)``), likeliest first."""
        w_age, w_ratio, w_ratio2, w_episode = self._w
        episode_set = set(episodes)
        log1p = math.log1p
        scored = []
        for title, (position, duration, last) in in_progress.items():
            ratio = min(1.0, position / duration) if duration > 0 else 0.5
            score = (w_age * log1p(max(0.0, now - last) / 3600.0) + w_ratio * ratio
                     + w_ratio2 * ratio * ratio + (w_episode if title in episode_set else 0.0))
            scored.append((-score, -last, title))
        scored.sort()
        return [title for _, _, title in scored]

    def learn_one(self, resumed: Sequence[float], others: Sequence[Sequence[float]]) -> None:
        """The user resumed the title with ``resumed`` features over those of ``others``."""
        w, lr = self._w, self.learning_rate
        for other in others:
            diff = [a - b for a, b in zip(resumed, other, strict=True)]
            g = 1.0 - _sigmoid(sum(wi * d for wi, d in zip(w, diff, strict=True)))
            for i, d in enumerate(diff):
                w[i] += lr * g * d

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(self._w)


class CountryTrending(_Params):
    """Time-decayed positive plays per title, per country, in event time; bounded.

    Parameters
    ----------
    half_life_s
        Event-time seconds after which a play counts half.
    titles_per_country
        Titles kept per country (the weakest are pruned beyond it).
    max_countries
        Countries kept (the least recently active are dropped beyond it).

    Examples
    --------
    >>> m = CountryTrending(half_life_s=3600)
    >>> m.learn_one("SE", "a", 1.0, ts=0.0)
    >>> m.learn_one("SE", "b", 1.0, ts=3600.0)
    >>> m.learn_one("US", "c", 5.0, ts=3600.0)
    >>> m.top("SE", 5, ts=3600.0)
    ['b', 'a']
    """

    def __init__(self, half_life_s: float = 6 * 3600.0, titles_per_country: int = 500,
                 max_countries: int = 300) -> None:
        if half_life_s <= 0 or titles_per_country <= 0 or max_countries <= 0:
            raise ValueError("half_life_s, titles_per_country and max_countries must be > 0")
        self.half_life_s = half_life_s
        self.titles_per_country = titles_per_country
        self.max_countries = max_countries
        # country -> {title: [rank key, score, ts, title]}; dict order = least recently
        # active first. The rank key is log2(score) + ts / half_life: a title's decayed
        # score at any later time t is 2 ** (key - t / half_life), so the order by key is
        # the order by decayed score at every t after the entry's last play, and `top`
        # sorts stored floats instead of computing a power per title.
        self._scores: dict[str, dict[str, list[Any]]] = {}
        # country -> latest play time in its table (when a query is at or after it, the
        # stored keys' order is exact).
        self._latest: dict[str, float] = {}
        # country -> its TOP_KEPT strongest entries by stored key, weakest first, kept up
        # to date by learn_one (a key only ever grows), so top() does not sort the whole
        # table for every batch; rebuilt on first use after a prune or forget.
        self._best: dict[str, list[list[Any]]] = {}

    # Entries kept in order per country for top(); larger queries sort the table.
    TOP_KEPT = 50

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_best"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checkpoints written before the rank key held [score, ts] per title.
        self.__dict__.update(state)
        self._best = {}
        if "_latest" not in state:
            self._latest = {}
            for country, table in self._scores.items():
                for title, entry in table.items():
                    table[title] = self._entry(entry[0], entry[1], title)
                self._latest[country] = max((e[2] for e in table.values()), default=0.0)

    def _entry(self, score: float, ts: float, title: str) -> list[Any]:
        return [math.log2(score) + ts / self.half_life_s, score, ts, title]

    def learn_one(self, country: str, title: str, y: float, ts: float) -> None:
        # Runs for every positive event: lookups bound to locals.
        if y <= 0:
            return
        scores = self._scores
        table = scores.pop(country, None)
        if table is None:
            table = {}
            if len(scores) >= self.max_countries:
                dropped = next(iter(scores))
                del scores[dropped]
                self._latest.pop(dropped, None)
                self._best.pop(dropped, None)
        scores[country] = table  # most recently active last
        latest = self._latest.get(country)
        if latest is None or not latest > ts:
            self._latest[country] = ts
        entry = table.get(title)
        if entry is None:
            new = table[title] = self._entry(y, ts, title)
            if len(table) > self.titles_per_country * 1.25:
                self._prune(table, ts)
                self._best.pop(country, None)
                return
        else:
            before = entry[2]
            last = before if before > ts else ts
            score = entry[1] * 2.0 ** (-max(0.0, ts - before) / self.half_life_s) + y
            new = table[title] = self._entry(score, last, title)
        best = self._best.get(country)
        if best is not None:
            # The new entry is stronger than the one it replaces: if that was among the
            # best, this one is too; otherwise it joins if it beats the weakest kept.
            if entry is not None:
                at = bisect.bisect_left(best, entry)
                if at < len(best) and best[at] is entry:
                    del best[at]
                    bisect.insort(best, new)
                    return
            if len(best) < self.TOP_KEPT or new > best[0]:
                bisect.insort(best, new)
                if len(best) > self.TOP_KEPT:
                    del best[0]

    def _prune(self, table: dict[str, list[Any]], ts: float) -> None:
        for entry in self._ranked(table, ts)[self.titles_per_country:]:
            del table[entry[3]]

    def _ranked(self, table: dict[str, list[Any]], ts: float) -> list[list[Any]]:
        """Entries by decayed score at ``ts``, strongest first (plays after ``ts`` count
        undecayed)."""
        ranked = sorted(table.values(), reverse=True)
        future = [e for e in ranked if e[2] > ts]
        if not future:
            return ranked
        # Rare (a query older than some plays): exact keys, as the decayed score says.
        scale = 1.0 / self.half_life_s
        return sorted(ranked, key=lambda e: -(e[0] - max(e[2], ts) * scale))

    def top(self, country: str, n: int, ts: float) -> list[str]:
        """The ``n`` most trending titles in ``country`` at event time ``ts``."""
        table = self._scores.get(country)
        if not table or n <= 0:
            return []
        if ts >= self._latest.get(country, ts):
            if n > self.TOP_KEPT:
                return [entry[3] for entry in heapq.nlargest(n, table.values())]
            best = self._best.get(country)
            if best is None:
                best = self._best[country] = heapq.nlargest(self.TOP_KEPT, table.values())
                best.reverse()
            return [entry[3] for entry in best[:-n - 1:-1]]
        # Some plays are later than ts (a user's last event can be older than others' in
        # the same batch): they count undecayed, i.e. below their stored key. Walk the
        # stored order until no later entry can beat the n-th best exact score so far.
        # The walk usually stops within the kept strongest entries (the stored order's
        # head): only when it runs past them is the whole table sorted.
        if n <= self.TOP_KEPT:
            best = self._best.get(country)
            if best is None:
                best = self._best[country] = heapq.nlargest(self.TOP_KEPT, table.values())
                best.reverse()
            found = self._walk(best[::-1], n, ts, to_end=len(best) == len(table))
            if found is not None:
                return found
        return self._walk(sorted(table.values(), reverse=True), n, ts, to_end=True) or []

    def _walk(self, ranked: list[list[Any]], n: int, ts: float, to_end: bool = False
              ) -> list[str] | None:
        """:meth:`top` at a ``ts`` before some plays, from entries in stored-key order:
        the titles once no later entry can beat the ``n``-th best exact score so far;
        None when ``ranked`` ran out first (unless ``to_end``: it is all there is)."""
        scale = 1.0 / self.half_life_s
        now = ts * scale
        heap: list[tuple[float, int, str]] = []
        for i, (key, _, last, title) in enumerate(ranked):
            if len(heap) >= n and heap[0][0] >= key - now:
                break
            item = (key - max(last * scale, now), -i, title)
            if len(heap) < n:
                heapq.heappush(heap, item)
            else:
                heapq.heappushpop(heap, item)
        else:
            if not to_end:
                return None
        return [title for _, _, title in sorted(heap, reverse=True)]

    def forget(self, title: str) -> None:
        for table in self._scores.values():
            table.pop(title, None)
        self._best.clear()

    def size(self) -> dict[str, int]:
        return {"countries": len(self._scores),
                "entries": sum(len(t) for t in self._scores.values())}
