"""One item model for many workers: learned deltas shared through a log in Redis.

Why: with the ``events`` partitions split between workers, each worker's models learn
only from its own users' events. Left alone, their item tables (co-occurrence links,
factorisation vectors, trending counts, bandit counts, even the catalogue, since faust
splits the ``catalog`` partitions too) drift apart, and a user's list would depend on
which worker happened to own the partition.

The design: every worker learns on its own events as before (nothing waits on Redis on
the hot path), and every ``model_sync_interval_s`` it

1. computes its **delta**: what its item-side state gained since the last sync, keyed by
   title id (item-table rows differ between workers);
2. appends it to the Redis stream ``sr:model:<app_id>:log`` (``XADD``);
3. reads every entry appended since its last read (``XRANGE``) and adds the *other*
   workers' deltas to its own model;
4. takes a new base snapshot, so what it received is never sent back.

Every piece of item-side state is a sum of per-event contributions, so adding deltas
commutes and every worker converges to the model one worker would learn from all
events: trending (decayed sums, added at their event time), bandit successes and
failures, co-occurrence link weights and popularity (added, then each title keeps its
strongest ``max_neighbours``, as learning does), recent co-occurrence (``models.recent``:
the same, in the units of the sender's anchor time, rescaled to the receiver's),
factorisation vectors and biases (summed SGD steps: local SGD with periodic averaging of
updates, the classic parameter-server scheme), and catalogue entries (added or removed).
The blend's weights are the exception: 42 numbers that every worker estimates from the
same kind of events, so two workers' steps from the same start point the same way and
their sum went about twice as far as one worker would (in a test of 40,000 simulated
events, the merged model's recall@10 fell 5-14% below one worker's, almost all of it from
the blend). So one worker learns them for all, the owner of events partition 0
(:attr:`ModelSync.shares_blend`); the others use their own steps between syncs and then
take the learner's (:func:`revert_blend`). New titles start from a deterministic
vector derived from the title id (:func:`seed_rows`), so two workers meeting a title at
the same time start it identically and the summed steps keep them identical. What
differs between workers at any moment is only the last interval's learning, not yet
exchanged.

Checkpoints are taken right after a sync, when the model equals "everything in the log
up to entry L": the checkpoint stores L (and the global version, and the event offsets
it has learned up to); a restarted worker loads it and replays the entries after L, so
it resumes with what every worker learned, including after a kill -9 (losing at most the
last ``model_sync_interval_s`` of its own learning; per-user state is never lost, that
is Redis's job). The log is trimmed to what the latest checkpoint does not cover plus a
margin, and capped at ``LOG_MAX_ENTRIES``.

Deltas are encoded with ``numpy.savez`` (``allow_pickle=False``) and orjson: what one
worker writes is never unpickled by another.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import orjson
import redis
import redis.asyncio

from models.batched import merge_links
from models.hybrid import Hybrid
from streamrec import metrics
from streamrec.exceptions import StateStoreUnavailable

logger = logging.getLogger(__name__)

# Hard cap on the log's length, entries: bounds Redis memory if checkpoints stop. At one
# entry per worker per 5 s, 500 entries are ~5 minutes of 8 workers (an entry is ~1-2 MB
# for a 2,500-title catalogue at 1,000 events/s: mostly co-occurrence link increments).
LOG_MAX_ENTRIES = 500
# Entries kept before the latest checkpoint's position, milliseconds: room for a worker
# that is a little behind in reading (it reads every model_sync_interval_s).
LOG_MARGIN_MS = 30_000
# Entries read per XRANGE call.
READ_COUNT = 200

# Log entries as XRANGE returns them to this client: (entry id, fields), all bytes (replies
# are not decoded, and XRANGE has no nil entries). redis-py's annotation covers any client
# and any stream command, hence the cast where they are read.
LogEntries = list[tuple[bytes, dict[bytes, bytes]]]
# Event types whose title the models learn (as streams.batch.learn_and_rank decides).
_UNLEARNED_TYPES = frozenset({"search", "impression"})


def log_key(app_id: str) -> str:
    return f"sr:model:{app_id}:log"


# -- deterministic start for new titles ---------------------------------------------------------
def _title_seed(seed: int, title_id: str) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process.
    return np.random.default_rng([seed, zlib.crc32(title_id.encode())])


def initial_vectors(model: Hybrid, title_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The factorisation's starting (x, y) for ``title_id``, the same in every worker."""
    mf = model.mf
    rng = _title_seed(mf.seed, title_id)
    shape = (2, mf.n_factors)
    x, y = rng.normal(0.0, mf.init_scale, shape).astype(np.float32)
    return x, y


def seed_rows(model: Hybrid, title_ids: Iterable[str]) -> None:
    """Give rows just created for ``title_ids`` their deterministic starting vectors."""
    mf = model.mf
    index = model._items.index
    for title in title_ids:
        row = index.get(title)
        if row is None:
            continue
        mf._x[row], mf._y[row] = initial_vectors(model, title)
        mf._b[row] = 0.0


def add_titles(model: Hybrid, title_ids: Iterable[str]) -> None:
    """Create rows (deterministically started) for titles the model does not know yet,
    but for titles the catalogue removed: the events path does not learn those, and a
    delta from a worker that learned one before it saw the removal must not bring it back."""
    items = model._items
    removed = model.removed_titles
    new = [t for t in dict.fromkeys(title_ids) if t not in items.index and t not in removed]
    if not new:
        return
    for title in new:
        items.add(title)
    model._ensure_rows()
    seed_rows(model, new)


# -- snapshots and deltas ------------------------------------------------------------------------
@dataclass
class Snapshot:
    """A copy of the item-side state at the last sync, with the title of every row."""

    ids: list[str | None]
    arrays: dict[str, np.ndarray]
    blend: np.ndarray
    g2: np.ndarray
    # Recent co-occurrence's anchor: the units of its stored counts (None: none yet).
    anchor: float | None = None


# (model attribute path, snapshot name): every array indexed by item-table row.
_ROW_ARRAYS = (
    ("mf._x", "mf_x"), ("mf._y", "mf_y"), ("mf._b", "mf_b"),
    ("explorer._a", "ex_a"), ("explorer._b", "ex_b"),
    ("trending._score", "tr_s"), ("trending._t", "tr_t"),
    ("cooccurrence._pop", "co_pop"), ("cooccurrence._nbr", "co_nbr"),
    ("cooccurrence._w", "co_w"), ("mf._engaged", "mf_eng"),
    ("recent._pop", "rc_pop"), ("recent._nbr", "rc_nbr"), ("recent._w", "rc_w"),
)
# (snapshot name of the neighbours, of the weights, delta prefix) of each link table.
_LINK_TABLES = (("co_nbr", "co_w", "link"), ("rc_nbr", "rc_w", "recent"))
# Everything else the models learn: the blend's weights and their Adagrad accumulators
# (Hybrid._w, Hybrid._g2), trending's clock and recent co-occurrence's clock and anchor.
# tests/unit/test_model_sync.py fails when learning changes an array that neither this
# list nor _ROW_ARRAYS names.
SHARED_STATE = tuple(path for path, _ in _ROW_ARRAYS) + (
    "_w", "_g2", "trending._now", "recent._clock", "recent._anchor")


def _get(model: Hybrid, path: str) -> np.ndarray:
    owner, name = path.split(".")
    return getattr(getattr(model, owner), name)


def snapshot(model: Hybrid) -> Snapshot:
    n = model._items.rows
    return Snapshot(
        ids=list(model._items.ids),
        arrays={name: _get(model, path)[:n].copy() for path, name in _ROW_ARRAYS},
        blend=model._w.copy(),
        g2=model._g2.copy(),
        anchor=model.recent._anchor,
    )


@dataclass
class Delta:
    """What one worker's item side gained since its last sync, keyed by title id."""

    worker: str
    titles: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # co-occurrence link increments: source (index into ``titles``) -> destination (index
    # into ``link_titles``), weight gained
    link_src: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    link_dst: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    link_w: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    link_titles: list[str] = field(default_factory=list)
    # The same for recent co-occurrence (destinations also index ``link_titles``), in
    # the units of ``anchor`` (the sender's), with the sender's clock.
    recent_src: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    recent_dst: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    recent_w: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    anchor: float | None = None
    clock: float = 0.0
    blend: np.ndarray = field(default_factory=lambda: np.zeros(0))
    g2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    now: float = 0.0
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)

    def empty(self) -> bool:
        return (not self.titles and not self.added and not self.removed
                and not np.any(self.blend))

    def encode(self) -> bytes:
        header = orjson.dumps({
            "worker": self.worker, "titles": self.titles, "link_titles": self.link_titles,
            "now": self.now, "added": self.added, "removed": self.removed,
            "offsets": self.offsets, "anchor": self.anchor, "clock": self.clock,
        })
        buffer = io.BytesIO()
        # ignore: to mypy a **dict might name savez's allow_pickle flag; these are arrays.
        np.savez(buffer, link_src=self.link_src, link_dst=self.link_dst, link_w=self.link_w,
                 recent_src=self.recent_src, recent_dst=self.recent_dst,
                 recent_w=self.recent_w, blend=self.blend, g2=self.g2,
                 **self.arrays)  # type: ignore[arg-type]
        return len(header).to_bytes(4, "big") + header + buffer.getvalue()

    @classmethod
    def decode(cls, raw: bytes) -> Delta:
        size = int.from_bytes(raw[:4], "big")
        header = orjson.loads(raw[4:4 + size])
        with np.load(io.BytesIO(raw[4 + size:]), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        if "rc_pop" not in arrays:
            # Written before recent co-occurrence travelled (replayed after an upgrade):
            # everything else in it still applies.
            none = np.zeros(0, dtype=np.int32)
            arrays.update(rc_pop=np.zeros(len(header["titles"])), recent_src=none,
                          recent_dst=none, recent_w=none.astype(np.float32))
        return cls(
            worker=header["worker"], titles=header["titles"],
            link_titles=header["link_titles"], link_dst=arrays.pop("link_dst"),
            now=header["now"], added=header["added"], removed=header["removed"],
            offsets=header["offsets"], link_src=arrays.pop("link_src"),
            link_w=arrays.pop("link_w"), blend=arrays.pop("blend"), g2=arrays.pop("g2"),
            recent_src=arrays.pop("recent_src"), recent_dst=arrays.pop("recent_dst"),
            recent_w=arrays.pop("recent_w"), anchor=header.get("anchor"),
            clock=header.get("clock", 0.0), arrays=arrays,
        )


def _aligned_base(model: Hybrid, base: Snapshot | None) -> tuple[dict[str, np.ndarray],
                                                                  np.ndarray]:
    """The base snapshot laid over the model's current rows; rows whose title changed (or
    that are new) get a title's starting state. Returns (arrays, stable-row mask)."""
    n = model._items.rows
    ids = model._items.ids
    stable = np.zeros(n, dtype=bool)
    if base is not None:
        m = min(n, len(base.ids))
        stable[:m] = [ids[r] is not None and ids[r] == base.ids[r] for r in range(m)]
    out: dict[str, np.ndarray] = {}
    for path, name in _ROW_ARRAYS:
        current = _get(model, path)
        start = np.zeros((n, *current.shape[1:]), dtype=current.dtype)
        if name.endswith("_nbr"):
            start[:] = -1
        if base is not None:
            m = min(n, len(base.ids))
            start[:m][stable[:m]] = base.arrays[name][:m][stable[:m]]
        out[name] = start
    # Recent counts stored since the base in other units (the anchor moved: a rebase, or
    # the first event): the base's counts in today's units.
    recent = model.recent
    if (base is not None and base.anchor is not None and recent._anchor is not None
            and recent._anchor != base.anchor):
        factor = float(np.exp2((base.anchor - recent._anchor) / recent.half_life_s))
        out["rc_pop"] *= factor
        out["rc_w"] *= factor
    for r in np.nonzero(~stable)[0]:
        title = ids[r]
        if title is not None:
            out["mf_x"][r], out["mf_y"][r] = initial_vectors(model, title)
    return out, stable


def diff(model: Hybrid, base: Snapshot | None, worker: str) -> Delta:
    """What ``model`` learned since ``base`` (None: since every title's start)."""
    items = model._items
    n = items.rows
    ids = items.ids
    old, stable = _aligned_base(model, base)
    cur = {name: _get(model, path)[:n] for path, name in _ROW_ARRAYS}
    live = np.array([t is not None for t in ids[:n]], dtype=bool)

    d_x = cur["mf_x"] - old["mf_x"]
    d_y = cur["mf_y"] - old["mf_y"]
    d_b = cur["mf_b"] - old["mf_b"]
    d_a = cur["ex_a"] - old["ex_a"]
    d_eb = cur["ex_b"] - old["ex_b"]
    d_pop = cur["co_pop"] - old["co_pop"]
    d_rpop = cur["rc_pop"] - old["rc_pop"]
    d_eng = cur["mf_eng"] & ~old["mf_eng"]  # engaged only ever becomes true
    # Trending: what was added, as a value at the row's current time.
    hl = model.trending.half_life_s
    tr_v = cur["tr_s"] - old["tr_s"] * np.exp2(-np.maximum(cur["tr_t"] - old["tr_t"], 0.0) / hl)
    links_changed = {nbr: ((cur[nbr] != old[nbr]) | (cur[w] != old[w])).any(axis=1)
                     for nbr, w, _ in _LINK_TABLES}
    dirty = live & (
        d_x.any(axis=1) | d_y.any(axis=1) | (d_b != 0) | (d_a != 0) | (d_eb != 0)
        | (d_pop != 0) | (d_rpop != 0) | (tr_v != 0) | d_eng
        | links_changed["co_nbr"] | links_changed["rc_nbr"]
    )
    rows = np.nonzero(dirty)[0]
    # Without a base (before the first sync) the blend has no known starting point.
    blend = model._w - base.blend if base is not None else np.zeros_like(model._w)
    g2 = model._g2 - base.g2 if base is not None else np.zeros_like(model._g2)
    delta = Delta(worker=worker, now=float(model.trending._now), blend=blend, g2=g2,
                  anchor=model.recent._anchor, clock=float(model.recent._clock))
    if len(rows) == 0:
        return delta
    # Dirty rows are live rows: each holds a title.
    delta.titles = cast(list[str], [ids[r] for r in rows])
    delta.arrays = {
        "mf_x": d_x[rows], "mf_y": d_y[rows], "mf_b": d_b[rows], "ex_a": d_a[rows],
        "ex_b": d_eb[rows], "co_pop": d_pop[rows], "tr_v": tr_v[rows],
        "tr_t": cur["tr_t"][rows], "mf_eng": d_eng[rows], "rc_pop": d_rpop[rows],
    }
    # Links of both tables; their destinations share one list of titles.
    gains = {prefix: _link_gains(cur[nbr], cur[w], old[nbr], old[w],
                                 rows[links_changed[nbr][rows]], stable, n)
             for nbr, w, prefix in _LINK_TABLES}
    dst_rows, dst_idx = np.unique(np.concatenate([g[1] for g in gains.values()]),
                                  return_inverse=True)
    # Links to a title are cleared when it goes (CoOccurrence._reset_row): each
    # destination holds a title.
    delta.link_titles = cast(list[str], [ids[int(r)] for r in dst_rows])
    at = 0
    for prefix, (src, _, gained) in gains.items():
        # rows is sorted (np.nonzero), so a source row's index in it is a binary search.
        setattr(delta, f"{prefix}_src", np.searchsorted(rows, src).astype(np.int32))
        setattr(delta, f"{prefix}_dst", dst_idx[at:at + len(src)].astype(np.int32))
        setattr(delta, f"{prefix}_w", gained.astype(np.float32))
        at += len(src)
    return delta


def revert_blend(model: Hybrid, base: Snapshot | None) -> None:
    """Undo the blend steps ``model`` took since ``base``: a worker that is not the blend's
    learner sends none (see the module docstring)."""
    if base is not None and base.blend.shape == model._w.shape:
        model._w = base.blend.copy()
        model._g2 = base.g2.copy()


def _link_gains(nbr_all: np.ndarray, w_all: np.ndarray, base_nbr: np.ndarray,
                base_w_all: np.ndarray, src_rows: np.ndarray, stable: np.ndarray, n: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source row, destination row, weight gained) of every link of ``src_rows`` that
    gained weight since the base: each current link minus its base weight (matched by
    destination row, for destinations that kept their title)."""
    nbr, w = nbr_all[src_rows], w_all[src_rows]
    bnbr, bw = base_nbr[src_rows], base_w_all[src_rows]
    bnbr_ok = (bnbr >= 0) & stable[np.maximum(bnbr, 0)]
    # The base weight of the same (source, destination) link: keys looked up in the
    # sorted base keys (memory O(links); comparing every slot with every slot cost
    # rows x 64 x 64 floats, ~80 MB for 2,500 titles, at every sync).
    span = n + 1
    source = np.arange(len(src_rows))[:, None]
    base_keys = (source * span + bnbr)[bnbr_ok]
    order = np.argsort(base_keys, kind="stable")
    base_keys, base_vals = base_keys[order], bw[bnbr_ok][order]
    keys = source * span + np.maximum(nbr, 0)
    base_w = np.zeros_like(w)
    if len(base_keys):
        at = np.minimum(np.searchsorted(base_keys, keys), len(base_keys) - 1)
        found = base_keys[at] == keys
        base_w[found] = base_vals[at[found]]
    dw = np.where(nbr >= 0, w - base_w, 0.0)
    s_idx, slot = np.nonzero((nbr >= 0) & (dw > 0))
    return src_rows[s_idx], nbr[s_idx, slot], dw[s_idx, slot]


def apply(model: Hybrid, delta: Delta) -> None:
    """Add another worker's ``delta`` to ``model``."""
    for title in delta.added:
        new = title["title_id"] not in model._items.index
        model.add_title(title)
        if new:
            seed_rows(model, [title["title_id"]])
    for title_id in delta.removed:
        model.remove_title(title_id)
    if delta.blend.shape == model._w.shape:
        model._w = np.maximum(model._w + delta.blend, 0.0)
    if delta.g2.shape == model._g2.shape:
        model._g2 = model._g2 + delta.g2
    tr = model.trending
    tr._now = max(tr._now, delta.now)
    recent = model.recent
    recent.advance(delta.clock)  # first: it may rebase (move the anchor)
    if recent._anchor is None:
        recent._anchor = delta.anchor
    if not delta.titles:
        return
    # The sender's recent counts in this model's units.
    to_ours = (1.0 if delta.anchor is None or recent._anchor is None
               else float(np.exp2((delta.anchor - recent._anchor) / recent.half_life_s)))
    add_titles(model, list(delta.titles) + list(delta.link_titles))
    index = model._items.index
    rows = np.fromiter((index.get(t, -1) for t in delta.titles), dtype=np.int64,
                       count=len(delta.titles))
    ok = rows >= 0  # a title evicted by the very titles just added: skip it
    r, a = rows[ok], {k: v[ok] for k, v in delta.arrays.items()}
    mf, ex = model.mf, model.explorer
    # np.add.at: rows are distinct, but this stays correct even if they were not.
    np.add.at(mf._x, r, a["mf_x"])
    np.add.at(mf._y, r, a["mf_y"])
    np.add.at(mf._b, r, a["mf_b"])
    np.add.at(ex._a, r, a["ex_a"])
    np.add.at(ex._b, r, a["ex_b"])
    np.add.at(model.cooccurrence._pop, r, a["co_pop"])
    np.add.at(recent._pop, r, a["rc_pop"] * to_ours)
    if a["mf_eng"].any():
        mf.mark_engaged(r[a["mf_eng"]])
    hl = tr.half_life_s
    v, tv = a["tr_v"], a["tr_t"]
    t = tr._t[r]
    later = tv >= t
    tr._score[r] = np.where(later, tr._score[r] * np.exp2(-np.maximum(tv - t, 0.0) / hl) + v,
                            tr._score[r] + v * np.exp2(-np.maximum(t - tv, 0.0) / hl))
    tr._t[r] = np.maximum(t, tv)
    link_rows = np.fromiter((index.get(t, -1) for t in delta.link_titles), dtype=np.int64,
                            count=len(delta.link_titles))
    for table, src_idx, dst_idx, w in (
            (model.cooccurrence, delta.link_src, delta.link_dst, delta.link_w),
            (recent, delta.recent_src, delta.recent_dst, delta.recent_w * to_ours)):
        src, dst = rows[src_idx], link_rows[dst_idx]
        good = (src >= 0) & (dst >= 0) & (src != dst)
        if good.any():
            merge_links(model, src[good], dst[good], w[good].astype(np.float64), table)


# -- the worker side ------------------------------------------------------------------------------
class ModelSync:
    """Shares one worker's item-side learning with the others (see the module docstring).

    Runs inside the events pipeline's loop, between batches (:meth:`maybe_sync`), so
    nothing learns while a delta is taken or applied. No I/O in ``__init__``.

    Parameters
    ----------
    client
        Async Redis client.
    app_id
        Names the log (``sr:model:<app_id>:log``): every worker of the app shares it.
    interval_s
        Seconds between syncs; 0 keeps the log off (checkpoints still happen).
    checkpoint
        ``async (model, log_id, offsets) -> None`` saving a checkpoint.
    checkpoint_interval_s
        Seconds between checkpoints (each taken right after a sync).
    """

    def __init__(self, client: redis.asyncio.Redis, app_id: str, interval_s: float,
                 checkpoint: Callable[[Hybrid, str, dict[str, int]], Any],
                 checkpoint_interval_s: float) -> None:
        self._client = client
        self.key = log_key(app_id)
        self.interval_s = interval_s
        self.checkpoint_interval_s = checkpoint_interval_s
        self._checkpoint = checkpoint
        self.worker_id = uuid.uuid4().hex[:12]
        self.last_id = "0-0"
        self._base: Snapshot | None = None
        self._added: dict[str, dict[str, Any]] = {}
        self._removed: set[str] = set()
        self._offsets: dict[str, int] = {}
        now = time.monotonic()
        self._next_sync = now + interval_s
        self._next_checkpoint = now + checkpoint_interval_s
        self._checkpoint_requested = False
        self.syncs = 0
        self.applied_entries = 0
        # Whether this worker's blend steps go into the log (one learner for all; see the
        # module docstring). The events pipeline sets it on every assignment.
        self.shares_blend = True

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    # -- hooks for the pipeline and the catalogue agent ---------------------------------------
    def prepare(self, model: Hybrid, events: Sequence[dict[str, Any]]) -> None:
        """Before a batch is learned: rows for its new titles, started deterministically."""
        if not self.enabled:
            return
        add_titles(model, (e["title_id"] for e in events
                           if e.get("title_id") is not None and e["type"] not in _UNLEARNED_TYPES))

    def add_title(self, model: Hybrid, title: dict[str, Any], share: bool = True) -> None:
        """A catalogue title. ``share=False``: it came from this worker's catalogue reader
        (``streams.catalog_reader``), which every worker runs, so the log need not carry
        it (the catalogue agent shares it once for the group)."""
        new = title["title_id"] not in model._items.index
        model.add_title(title)
        if self.enabled:
            if new:
                seed_rows(model, [title["title_id"]])
            if share:
                self._removed.discard(title["title_id"])
                self._added[title["title_id"]] = title

    def remove_title(self, model: Hybrid, title_id: str, share: bool = True) -> None:
        model.remove_title(title_id)
        if self.enabled:
            self._added.pop(title_id, None)
            if share:
                self._removed.add(title_id)

    def note_offsets(self, offsets: dict[str, int]) -> None:
        """The events offsets the model has learned up to (``topic[partition]`` -> next)."""
        for tp, offset in offsets.items():
            if offset > self._offsets.get(tp, -1):
                self._offsets[tp] = offset

    def request_checkpoint(self) -> None:
        self._checkpoint_requested = True

    # -- start-up ------------------------------------------------------------------------------
    async def catch_up(self, model: Hybrid, after: str | None) -> int:
        """Replay every log entry after ``after`` (the checkpoint's position; None: all)."""
        self.last_id = after or "0-0"
        applied = 0
        if self.enabled:
            try:
                first = await self._range("-", 1)
            except redis.RedisError as exc:
                metrics.REDIS_ERRORS.labels(op="model_sync").inc()
                raise StateStoreUnavailable(f"could not read the model log: {exc}") from exc
            if first and after and _id_tuple(first[0][0]) > _id_tuple(after):
                logger.warning("the model log was trimmed past this checkpoint (%s); entries "
                               "between are lost to this worker", after)
            applied = await self._read_and_apply(model, skip_own=False)
        self._base = snapshot(model)
        if applied:
            logger.info("replayed %d model log entries after the checkpoint", applied)
        return applied

    # -- the periodic work ------------------------------------------------------------------
    async def maybe_sync(self, model: Hybrid) -> None:
        now = time.monotonic()
        checkpoint_due = self._checkpoint_requested or now >= self._next_checkpoint
        if not checkpoint_due and (not self.enabled or now < self._next_sync):
            return
        await self.sync(model, checkpoint=checkpoint_due)

    async def sync(self, model: Hybrid, checkpoint: bool = False) -> None:
        """Push this worker's delta, apply the others', and checkpoint if asked.

        Redis errors are logged and counted; the unsent delta stays unsent (it is part of
        the next one), so an outage delays sharing but loses nothing.
        """
        now = time.monotonic()
        self._next_sync = now + self.interval_s
        if self.enabled:
            try:
                await self._exchange(model)
            except redis.RedisError as exc:
                metrics.REDIS_ERRORS.labels(op="model_sync").inc()
                logger.warning("model sync skipped, Redis unavailable: %s", exc)
                return
        if checkpoint:
            self._checkpoint_requested = False
            self._next_checkpoint = now + self.checkpoint_interval_s
            await self._checkpoint(model, self.last_id, dict(self._offsets))
            if self.enabled:
                await self._trim()

    async def _exchange(self, model: Hybrid) -> None:
        if not self.shares_blend:
            revert_blend(model, self._base)
        delta = diff(model, self._base, self.worker_id)
        delta.added = list(self._added.values())
        delta.removed = sorted(self._removed)
        delta.offsets = dict(self._offsets)
        if not delta.empty():
            payload = delta.encode()
            await self._client.xadd(self.key, {"w": self.worker_id, "d": payload},
                                    maxlen=LOG_MAX_ENTRIES, approximate=True)
            metrics.MODEL_SYNC_BYTES.inc(len(payload))
            self._added.clear()
            self._removed.clear()
        # From here on the delta is in the log: the base must include it even if reading
        # the others' entries fails.
        self._base = snapshot(model)
        if await self._read_and_apply(model, skip_own=True):
            self._base = snapshot(model)
        self.syncs += 1
        metrics.MODEL_SYNCS.inc()

    async def _read_and_apply(self, model: Hybrid, skip_own: bool) -> int:
        """Read every entry after ``last_id``, then apply them all at once (no await in
        between, so a failed read applies nothing and moves nothing)."""
        entries: LogEntries = []
        position = self.last_id
        while True:
            page = await self._range(f"({position}", READ_COUNT)
            entries += page
            if len(page) < READ_COUNT:
                break
            position = _id_text(page[-1][0])
        applied = 0
        for entry_id, fields in entries:
            self.last_id = _id_text(entry_id)
            if skip_own and fields.get(b"w", b"").decode() == self.worker_id:
                continue
            try:
                delta = Delta.decode(fields[b"d"])
            except (KeyError, ValueError, OSError, orjson.JSONDecodeError) as exc:
                logger.error("unreadable model log entry %s skipped: %s", self.last_id, exc)
                continue
            apply(model, delta)
            self.note_offsets(delta.offsets)
            applied += 1
        self.applied_entries += applied
        return applied

    async def _range(self, start: str, count: int) -> LogEntries:
        """Up to ``count`` log entries from ``start`` (an XRANGE id, ``(`` exclusive)."""
        return cast(LogEntries, await self._client.xrange(self.key, min=start, count=count))

    async def _trim(self) -> None:
        ms = _id_tuple(self.last_id)[0] - LOG_MARGIN_MS
        if ms <= 0:
            return
        try:
            await self._client.xtrim(self.key, minid=f"{ms}-0", approximate=True)
        except redis.RedisError as exc:
            metrics.REDIS_ERRORS.labels(op="model_sync").inc()
            logger.warning("could not trim the model log: %s", exc)


def _id_text(entry_id: str | bytes) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def _id_tuple(entry_id: str | bytes) -> tuple[int, int]:
    ms, _, seq = _id_text(entry_id).partition("-")
    return int(ms), int(seq or 0)
