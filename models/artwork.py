"""Artwork personalisation: which of a title's images to show a given user.

A contextual bandit over each title's ``artwork_ids``, learned from ``impression`` and
``click`` events that carry the ``artwork_id`` shown. No I/O; the worker and
``streamrec evaluate-artwork`` drive it.
"""

from __future__ import annotations

import copy
import inspect
import math
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from models.base import grow

# Artwork ids newly given a learned row that are remembered (ArtworkBandit.learned_since):
# callers catch up every batch, a few dozen ids at most.
ADDED_LOG = 4096


def _bucket(token: str, n_features: int) -> int:
    # crc32, not hash(): the feature space must be the same in every process.
    return zlib.crc32(token.encode()) % n_features


class ArtworkBandit:
    """A factorisation bandit: P(click | user, artwork) = sigmoid(b_a + q_a . r_u).

    Each artwork ``a`` has a bias ``b_a`` (how clickable it is for everyone) and a
    latent vector ``q_a`` (what kind of image it is, learned). A user is represented by
    ``r_u = p_u + W x_u``: ``x_u`` is the context (the user's genre and cast affinities
    and device, hashed into ``n_context`` features by :meth:`context`), ``W`` a learned
    projection shared by every user (so a brand-new user with a known taste is served
    like users with that taste), and ``p_u`` a per-user correction learned from that
    user's own clicks (users who prefer close-ups, say, whatever their genres). Every
    observation takes one logistic SGD step on ``b_a``, ``q_a``, ``p_u`` and ``W``.

    :meth:`choose` takes the artwork with the highest predicted click probability; with
    probability ``exploration`` it picks uniformly instead (so every image keeps being
    measured), and artworks never seen score as the average unseen image (0), which
    makes a new title's images get tried.

    Memory is bounded: at most ``artwork_capacity`` artworks and ``user_capacity``
    users are held; the least recently used are evicted. A user costs one row of a
    preallocated matrix (``n_factors`` floats) and one dict entry, about 150 bytes, not
    a numpy object per user: the worker holds up to ``user_capacity`` of them.

    :meth:`choose_pairs` and :meth:`learn_many` are the worker's batched paths (one
    matrix product for every (user, title) of a batch); :meth:`choose` and
    :meth:`learn_one` the one-at-a-time API, with the same maths.

    Parameters
    ----------
    n_factors
        Latent dimensions of ``q_a`` and ``r_u``.
    n_context
        Hashed context features.
    learning_rate, l2
        SGD step size and L2 penalty.
    context_learning_rate
        Step size of the shared context projection ``W``: smaller, because every
        user's clicks move it, and a noisy ``W`` moves every user at once.
    exploration
        Share of choices made uniformly at random, 0..1.
    init_scale
        Standard deviation of initial latent vectors.
    artwork_capacity, user_capacity
        Most artworks and users held.
    seed
        Seeds initialisation and exploration (deterministic under a seed).

    Examples
    --------
    >>> m = ArtworkBandit(exploration=0.0, seed=1)
    >>> for _ in range(300):
    ...     m.learn_one("u1", "t1-close", True)
    ...     m.learn_one("u1", "t1-wide", False)
    >>> m.choose("u1", ["t1-wide", "t1-close"])
    't1-close'
    """

    def __init__(
        self,
        n_factors: int = 6,
        n_context: int = 32,
        learning_rate: float = 0.1,
        context_learning_rate: float = 0.003,
        l2: float = 0.003,
        exploration: float = 0.05,
        init_scale: float = 0.1,
        artwork_capacity: int = 400_000,
        user_capacity: int = 100_000,
        seed: int = 42,
    ) -> None:
        if n_factors <= 0 or n_context <= 0:
            raise ValueError("n_factors and n_context must be positive")
        if not 0.0 <= exploration <= 1.0:
            raise ValueError(f"exploration must be within 0..1, got {exploration}")
        if learning_rate <= 0 or context_learning_rate < 0 or l2 < 0:
            raise ValueError("learning rates must be positive and l2 >= 0")
        if artwork_capacity <= 0 or user_capacity <= 0:
            raise ValueError("capacities must be positive")
        self.n_factors = n_factors
        self.n_context = n_context
        self.learning_rate = learning_rate
        self.context_learning_rate = context_learning_rate
        self.l2 = l2
        self.exploration = exploration
        self.init_scale = init_scale
        self.artwork_capacity = artwork_capacity
        self.user_capacity = user_capacity
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        # artwork id -> row of _q / _b, least recently used first.
        self._rows: OrderedDict[str, int] = OrderedDict()
        self._free: list[int] = []
        self._q = np.zeros((0, n_factors))
        self._b = np.zeros(0)
        # user id -> row of _p; _used[row] is the tick of the row's last learning step
        # (the least recently used are evicted in bulk when full: see _user_rows).
        self._user_rows: dict[str, int] = {}
        self._row_users: list[str | None] = []
        self._free_users: list[int] = []
        self._p = np.zeros((0, n_factors))
        self._used = np.zeros(0, dtype=np.int64)
        self._tick = 0
        self._w = np.zeros((n_factors, n_context))
        self._buckets: dict[str, int] = {}
        # Bumped whenever an artwork id loses its row of _q (forgotten, or evicted and
        # the row given to another): callers that keep rows from artwork_rows between
        # calls know when they are wrong. The artwork ids given a row, in order (the
        # latest ADDED_LOG to 2 x ADDED_LOG of them; not pickled): they catch up with
        # what was learned since (learned_since).
        self._rows_version = 0
        self._added: list[str] = []
        self._added_before = 0  # ids dropped from the front of _added

    # -- the river-style contract ----------------------------------------------------------------
    def _get_params(self) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def clone(self) -> ArtworkBandit:
        """A fresh, unfitted bandit with the same hyperparameters."""
        return type(self)(**copy.deepcopy(self._get_params()))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({params})"

    def size(self) -> dict[str, int]:
        return {"artworks": len(self._rows), "users": len(self._user_rows)}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_added"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checkpoints written before the user table was a matrix held one vector per user.
        users = state.pop("_users", None)
        self.__dict__.update(state)
        self.__dict__.setdefault("_rows_version", 0)
        self._added, self._added_before = [], 0
        if users is not None:
            ids = list(users)
            self._user_rows = {u: i for i, u in enumerate(ids)}
            self._row_users = list(ids)
            self._free_users = []
            self._p = (np.stack(list(users.values())) if ids
                       else np.zeros((0, self.n_factors)))
            self._used = np.arange(len(ids), dtype=np.int64)
            self._tick = len(ids)

    # -- context ---------------------------------------------------------------------------------
    def context(self, device: str | None = None,
                affinities: Mapping[str, float] | None = None) -> np.ndarray:
        """The context vector ``x_u``: a bias, the device, and ``affinities``.

        ``affinities`` maps tokens such as ``"g:drama"`` (a genre) or ``"c:ava moreau"``
        (a cast member) to the user's affinity; the vector is L2-normalised apart from
        the bias, so heavy and light users are on one scale.

        Examples
        --------
        >>> x = ArtworkBandit(n_context=8).context("tv", {"g:drama": 2.0})
        >>> x.shape, float(x[0])
        ((8,), 1.0)
        """
        return self.contexts([device], [affinities or {}])[0]

    def contexts(self, devices: Sequence[str | None],
                 affinities: Sequence[Mapping[str, float]]) -> np.ndarray:
        """:meth:`context` for many users at once: one row per (device, affinities)."""
        n_users = len(devices)
        buckets = self._buckets
        if len(buckets) > 100_000:  # bounded: the token vocabulary is the catalogue's
            buckets.clear()
        n = self.n_context - 1
        users: list[int] = []
        index: list[int] = []
        weights: list[float] = []
        for u, (device, tokens) in enumerate(zip(devices, affinities, strict=True)):
            items = list(tokens.items())
            if device:
                items.append(("d:" + device, 1.0))
            for token, weight in items:
                i = buckets.get(token)
                if i is None:
                    i = buckets[token] = 1 + _bucket(token, n)
                index.append(i)
                weights.append(weight)
            users.extend([u] * len(items))
        x = np.zeros((n_users, self.n_context))
        if index:
            np.add.at(x, (np.asarray(users), np.asarray(index)), np.asarray(weights))
        norm = np.sqrt(np.einsum("ij,ij->i", x[:, 1:], x[:, 1:]))
        x[:, 1:] /= np.where(norm > 0, norm, 1.0)[:, None]
        x[:, 0] = 1.0
        return x

    def _bucket_of(self, token: str) -> int:
        buckets = self._buckets
        i = buckets.get(token)
        if i is None:
            if len(buckets) > 100_000:  # bounded: the token vocabulary is the catalogue's
                buckets.clear()
            i = buckets[token] = 1 + _bucket(token, self.n_context - 1)
        return i

    def token_vectors(self, token_lists: Sequence[Sequence[tuple[str, float]]]) -> np.ndarray:
        """Each list of ``(token, weight)`` hashed into a row of ``n_context`` columns
        (column 0, the bias, left 0), not normalised: a title's genres and cast, say.
        Weighted sums of such rows, given to :meth:`contexts_from_sums`, are the
        contexts :meth:`contexts` builds from the summed tokens (up to rounding).

        Examples
        --------
        >>> m = ArtworkBandit(n_context=8)
        >>> rows = m.token_vectors([[("g:drama", 1.0)], [("g:drama", 1.0), ("c:ava", 0.5)]])
        >>> x = m.contexts_from_sums([2.0 * rows[0] + rows[1]], ["tv"])
        >>> bool(np.allclose(x[0], m.context("tv", {"g:drama": 3.0, "c:ava": 0.5})))
        True
        """
        out = np.zeros((len(token_lists), self.n_context))
        for row, tokens in enumerate(token_lists):
            for token, weight in tokens:
                out[row, self._bucket_of(token)] += weight
        return out

    def contexts_from_sums(self, sums: np.ndarray, devices: Sequence[str | None]) -> np.ndarray:
        """Contexts (one row per user) from summed :meth:`token_vectors` and the users'
        devices: the device's token added, L2-normalised apart from the bias, bias 1."""
        x = np.array(sums, dtype=np.float64)
        with_device = [(u, self._bucket_of("d:" + d)) for u, d in enumerate(devices) if d]
        if len(with_device) == 1:  # one user (a paced worker's usual batch): no fancy index
            x[with_device[0]] += 1.0
        elif with_device:
            who, where = zip(*with_device, strict=True)
            x[list(who), list(where)] += 1.0
        x[:, 0] = 0.0
        norm = np.sqrt(np.einsum("ij,ij->i", x[:, 1:], x[:, 1:]))
        x[:, 1:] /= np.where(norm > 0, norm, 1.0)[:, None]
        x[:, 0] = 1.0
        return x

    # -- users ---------------------------------------------------------------------------------
    def _user_rows_of(self, user_ids: Sequence[str], create: bool) -> np.ndarray:
        """Rows of ``_p`` for ``user_ids`` (-1 for unknown users unless ``create``).
        Created users get a random initial vector; a full table first evicts the least
        recently used eighth (in bulk: one partial sort per eviction, not per user)."""
        get = self._user_rows.get
        rows = np.fromiter(map(get, user_ids, repeat(-1)), dtype=np.int64,
                           count=len(user_ids))
        if not create:
            return rows
        self._tick += 1
        self._used[rows[rows >= 0]] = self._tick  # not evicted to make room for the others
        missing = list(dict.fromkeys(u for u, r in zip(user_ids, rows.tolist(), strict=True)
                                     if r < 0))
        if missing and len(set(user_ids)) > self.user_capacity:
            raise ValueError(f"more distinct users in one call than user_capacity "
                             f"({self.user_capacity})")
        if missing:
            new_rows = self._allocate_users(len(missing))
            vectors = self._rng.normal(0.0, self.init_scale, (len(missing), self.n_factors))
            self._p[new_rows] = vectors
            for user, row in zip(missing, new_rows.tolist(), strict=True):
                self._user_rows[user] = row
                self._row_users[row] = user
            rows = np.fromiter(map(self._user_rows.__getitem__, user_ids), dtype=np.int64,
                               count=len(user_ids))
        self._used[rows] = self._tick
        return rows

    def _allocate_users(self, n: int) -> np.ndarray:
        out: list[int] = []
        while len(out) < n:
            if self._free_users:
                out.append(self._free_users.pop())
                continue
            held = len(self._row_users)
            if held < self.user_capacity:
                take = min(n - len(out), self.user_capacity - held)
                self._p = grow(self._p, held + take)
                self._used = grow(self._used, held + take)
                self._row_users.extend([None] * take)
                out.extend(range(held, held + take))
                continue
            # Full: evict the least recently used (at least what is needed).
            held_rows = np.fromiter(self._user_rows.values(), dtype=np.int64,
                                    count=len(self._user_rows))
            used = self._used[held_rows]
            # Users of the current call (this tick) stay; the oldest eighth goes.
            evictable = int((used < self._tick).sum())
            evict = min(max(n - len(out), self.user_capacity // 8, 1), evictable)
            oldest = held_rows[np.argpartition(used, evict - 1)[:evict]]
            for row in oldest.tolist():
                user = self._row_users[row]
                if user is not None:
                    del self._user_rows[user]
                    self._row_users[row] = None
                self._free_users.append(row)
        return np.asarray(out, dtype=np.int64)

    def _representations(self, user_ids: Sequence[str], contexts: np.ndarray | None
                         ) -> np.ndarray:
        """``r_u = p_u + W x_u`` for each user (``p_u`` is 0 for users never seen)."""
        if len(user_ids) == 1:  # one user (a paced worker's usual batch): no masks
            row = self._user_rows.get(user_ids[0])
            p = self._p[row] if row is not None else np.zeros(self.n_factors)
            return p[None].copy() if contexts is None else p + contexts @ self._w.T
        rows = self._user_rows_of(user_ids, create=False)
        r = np.zeros((len(user_ids), self.n_factors))
        known = rows >= 0
        if known.any():
            r[known] = self._p[rows[known]]
        if contexts is not None:
            r += contexts @ self._w.T
        return r

    # -- choosing --------------------------------------------------------------------------------
    def scores(self, user_id: str, artwork_ids: Sequence[str],
               context: np.ndarray | None = None) -> np.ndarray:
        """Predicted click logits of ``artwork_ids`` for the user (unseen artworks 0)."""
        r = self._representations([user_id], None if context is None else context[None])[0]
        idx = np.fromiter(map(self._rows.get, artwork_ids, repeat(-1)), dtype=np.int64,
                          count=len(artwork_ids))
        out = np.zeros(len(artwork_ids))
        known = idx >= 0
        if known.any():
            rows = idx[known]
            out[known] = self._b[rows] + self._q[rows] @ r
        return out

    def choose(self, user_id: str, artwork_ids: Sequence[str],
               context: np.ndarray | None = None, explore: bool = True) -> str | None:
        """The artwork to show this user (None when the title has none)."""
        return self.choose_many(user_id, [artwork_ids], context, explore)[0]

    def choose_many(self, user_id: str, artwork_lists: Sequence[Sequence[str]],
                    context: np.ndarray | None = None, explore: bool = True
                    ) -> list[str | None]:
        """:meth:`choose` for many titles at once: one matrix product for all of them."""
        n = len(artwork_lists)
        picks = self.choose_pairs([user_id], artwork_lists, np.zeros(n, dtype=np.int64),
                                  np.arange(n), None if context is None else context[None],
                                  explore)
        return [arts[k] if k >= 0 else None
                for arts, k in zip(artwork_lists, picks.tolist(), strict=True)]

    def choose_pairs(self, user_ids: Sequence[str], artwork_lists: Sequence[Sequence[str]],
                     pair_users: np.ndarray, pair_lists: np.ndarray,
                     contexts: np.ndarray | None = None, explore: bool = True
                     ) -> np.ndarray:
        """:meth:`choose` for many (user, title) pairs of many users at once.

        ``artwork_lists`` are the titles' artworks (each title once); pair ``i`` asks
        for user ``user_ids[pair_users[i]]`` (context ``contexts[pair_users[i]]``) and
        title ``artwork_lists[pair_lists[i]]``. Returns, per pair, the position of the
        chosen artwork in its list (-1 for a title without artwork): the arg-max of
        the predicted logits, or with probability ``exploration`` a uniform pick.
        Every pair's scores come out of one matrix product."""
        return self.choose_table(user_ids, self.artwork_rows(artwork_lists), pair_users,
                                 pair_lists, contexts, explore)

    @property
    def rows_version(self) -> int:
        """Changes whenever an artwork loses its learned row: rows from
        :meth:`artwork_rows` stay valid until then, except that artwork not learned yet
        (-1) may have been learned since."""
        return self._rows_version

    @property
    def rows_added(self) -> int:
        """How many artworks have been given a learned row: a mark for
        :meth:`learned_since`."""
        return self._added_before + len(self._added)

    def learned_since(self, mark: int) -> list[str] | None:
        """The artwork ids given a learned row since :attr:`rows_added` was ``mark``
        (None: too long ago, no longer remembered)."""
        if mark < self._added_before:
            return None
        return self._added[mark - self._added_before:]

    def rows_of(self, artwork_ids: Sequence[str]) -> np.ndarray:
        """Each artwork's learned row (-1: never seen), as :meth:`artwork_rows` has it."""
        return np.fromiter(map(self._rows.get, artwork_ids, repeat(-1)), dtype=np.int64,
                           count=len(artwork_ids))

    def artwork_rows(self, artwork_lists: Sequence[Sequence[str]], width: int = 0
                     ) -> np.ndarray:
        """``(list, position) -> `` the artwork's learned row (-1: never seen, -2: past
        the end of the list), at least ``width`` columns: what :meth:`choose_table`
        takes (see :attr:`rows_version` for how long it stays right)."""
        counts = np.fromiter(map(len, artwork_lists), dtype=np.int64,
                             count=len(artwork_lists))
        width = max(width, int(counts.max(initial=0)))
        flat = [a for arts in artwork_lists for a in arts]
        table = np.full((len(artwork_lists), width), -2, dtype=np.int64)
        table[np.arange(width) < counts[:, None]] = np.fromiter(
            map(self._rows.get, flat, repeat(-1)), dtype=np.int64, count=len(flat))
        return table

    def choose_table(self, user_ids: Sequence[str], table: np.ndarray, pair_users: np.ndarray,
                     pair_lists: np.ndarray, contexts: np.ndarray | None = None,
                     explore: bool = True) -> np.ndarray:
        """:meth:`choose_pairs` on the lists' :meth:`artwork_rows` (``table``), which a
        caller may keep between calls: the same picks, the same random draws."""
        n_pairs = len(pair_lists)
        if n_pairs == 0 or not (table > -2).any():
            return np.full(n_pairs, -1, dtype=np.int64)
        rows = table[pair_lists]
        real = rows > -2
        # Unseen artworks score as the average unseen image (0), past the list's end -inf.
        scores = np.where(real, 0.0, -np.inf)
        pair, column = (rows >= 0).nonzero()  # known artworks, in row-major order
        if len(pair):
            r = self._representations(user_ids, contexts)
            art = rows[pair, column]
            scores[pair, column] = self._b[art] + np.einsum("ij,ij->i", self._q[art],
                                                             r[pair_users[pair]])
        rng = self._rng
        pair_counts = real.sum(axis=1)  # (count_nonzero's Python wrapper costs more)
        # A little noise breaks ties between unseen artworks without favouring the first.
        scores[real] += rng.uniform(0.0, 1e-6, int(pair_counts.sum()))
        picks = scores.argmax(axis=1)
        eps = self.exploration if explore else 0.0
        if eps > 0:
            draws = rng.random(n_pairs)
            uniform = (draws < eps) & (pair_counts > 1)
            if uniform.any():  # (a few pairs in a hundred: one user's page often has none)
                picks[uniform] = (draws[uniform] / eps * pair_counts[uniform]).astype(np.int64)
        picks[pair_counts == 0] = -1
        return picks

    # -- learning --------------------------------------------------------------------------------
    def _artwork_row(self, artwork_id: str) -> int:
        row = self._rows.get(artwork_id)
        if row is not None:
            self._rows.move_to_end(artwork_id)
            return row
        if self._free:
            row = self._free.pop()
        elif len(self._rows) < self.artwork_capacity:
            row = len(self._rows)
            self._q = grow(self._q, row + 1)
            self._b = grow(self._b, row + 1)
        else:
            _, row = self._rows.popitem(last=False)
            self._rows_version += 1
        self._q[row] = self._rng.normal(0.0, self.init_scale, self.n_factors)
        self._b[row] = 0.0
        self._rows[artwork_id] = row
        self._added.append(artwork_id)
        if len(self._added) >= 2 * ADDED_LOG:
            del self._added[:ADDED_LOG]
            self._added_before += ADDED_LOG
        return row

    def learn_one(self, user_id: str, artwork_id: str, clicked: bool | float,
                  context: np.ndarray | None = None) -> None:
        """The user was shown ``artwork_id`` and clicked it (1) or not (0)."""
        row = self._artwork_row(artwork_id)
        user_row = int(self._user_rows_of([user_id], create=True)[0])  # may grow _p
        p_u = self._p[user_row]  # a view: updated in place below
        r = p_u if context is None else p_u + self._w @ context
        q = self._q[row]
        z = self._b[row] + float(q @ r)
        error = float(clicked) - 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
        lr, l2 = self.learning_rate, self.l2
        self._b[row] += lr * error
        step_q = lr * (error * r - l2 * q)
        p_u += lr * (error * q - l2 * p_u)
        if context is not None:
            lr_w = self.context_learning_rate
            self._w += lr_w * (error * np.outer(q, context) - l2 * self._w)
        self._q[row] = q + step_q

    def learn_many(self, user_ids: Sequence[str], artwork_ids: Sequence[str],
                   clicked: Sequence[bool | float], contexts: np.ndarray | None = None
                   ) -> None:
        """:meth:`learn_one` for a batch as one minibatch step (the worker's hot path).

        Every observation's error is computed with the parameters as they are before the
        batch; the updates are then summed (an artwork or user seen twice gets both).
        ``contexts`` has one row per observation.
        """
        n = len(artwork_ids)
        if n == 0:
            return
        row_list = list(map(self._artwork_row, artwork_ids))
        rows = np.array(row_list, dtype=np.int64)
        who = self._user_rows_of(user_ids, create=True)
        p = self._p[who]
        r = p if contexts is None else p + contexts @ self._w.T
        q = self._q[rows]
        z = self._b[rows] + np.einsum("ij,ij->i", q, r)
        y = np.asarray(clicked, dtype=np.float64)
        error = y - 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
        lr, l2 = self.learning_rate, self.l2
        if len(set(row_list)) == n:  # no artwork twice: plain fancy updates, same sums
            self._b[rows] += lr * error
            self._q[rows] += lr * (error[:, None] * r - l2 * q)
        else:
            np.add.at(self._b, rows, lr * error)
            np.add.at(self._q, rows, lr * (error[:, None] * r - l2 * q))
        if n == 1 or len(set(user_ids)) == n:  # likewise for users
            self._p[who] += lr * (error[:, None] * q - l2 * p)
        else:
            np.add.at(self._p, who, lr * (error[:, None] * q - l2 * p))
        if contexts is not None and self.context_learning_rate:
            grad = (error[:, None] * q).T @ contexts
            self._w += self.context_learning_rate * (grad - l2 * n * self._w)

    def forget_artwork(self, artwork_id: str) -> None:
        """A title left the catalogue: free its artworks' rows."""
        row = self._rows.pop(artwork_id, None)
        if row is not None:
            self._free.append(row)
            self._rows_version += 1
