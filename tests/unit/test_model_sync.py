"""Item-model sharing between workers (streams.model_sync), without Redis.

Two "workers" learn disjoint halves of one stream; after exchanging deltas both must
hold the same item model, close to the one a single worker learns from everything.
"""

from __future__ import annotations

import io
import random

import numpy as np
import orjson
import pytest

from models.batched import learn_many
from models.hybrid import Hybrid
from models.recent import YEAR_S, RecentCoOccurrence
from streams.model_sync import (
    Delta,
    add_titles,
    apply,
    diff,
    initial_vectors,
    revert_blend,
    snapshot,
)

GENRES = ["Drama", "Comedy", "Action", "Horror"]


def catalogue(n: int) -> list[dict]:
    return [{"title_id": f"t{i}", "genres": [GENRES[i % 4]]} for i in range(n)]


def stream(n_events: int, n_users: int, n_titles: int, seed: int) -> list[tuple]:
    """(user, title, feedback, ts, history-before) with tastes by genre."""
    rng = random.Random(seed)
    taste = {u: rng.randrange(4) for u in range(n_users)}
    history: dict[int, list[tuple[str, float]]] = {u: [] for u in range(n_users)}
    out = []
    for n in range(n_events):
        user = rng.randrange(n_users)
        pool = [i for i in range(n_titles) if i % 4 == taste[user]] if rng.random() < 0.8 \
            else list(range(n_titles))
        title = f"t{rng.choice(pool)}"
        y = 1.0 if rng.random() < 0.85 else -0.5
        out.append((user, title, y, 1.7e9 + n, list(history[user])))
        history[user].insert(0, (title, y))
        del history[user][50:]
    return out


def learn(model: Hybrid, events: list[tuple]) -> None:
    for start in range(0, len(events), 100):
        chunk = events[start:start + 100]
        add_titles(model, [e[1] for e in chunk])
        learn_many(model, [e[1] for e in chunk], [e[2] for e in chunk],
                   [e[3] for e in chunk], [e[4] for e in chunk])


def new_worker(titles: list[dict], recent_half_life_s: float = YEAR_S) -> Hybrid:
    model = Hybrid(seed=3, exploration=0.0,
                   recent=RecentCoOccurrence(half_life_s=recent_half_life_s))
    for title in titles:
        model.add_title(title)
    add_titles(model, [])  # nothing new
    from streams.model_sync import seed_rows

    seed_rows(model, [t["title_id"] for t in titles])
    return model


def item_state(model: Hybrid, titles: list[str]) -> dict[str, np.ndarray]:
    rows = model._items.rows_of(titles)
    assert (rows >= 0).all()
    return {
        "mf_x": model.mf._x[rows], "mf_y": model.mf._y[rows], "mf_b": model.mf._b[rows],
        "ex_a": model.explorer._a[rows], "ex_b": model.explorer._b[rows],
        "pop": model.cooccurrence._pop[rows],
        "trend": model.trending._score_rows(rows, _empty(model), 1.7e9 + 10_000),
    }


def _empty(model: Hybrid):
    from models.base import RowProfile

    return RowProfile.build(model._items, None)


def links(model: Hybrid, title: str, table: str = "cooccurrence") -> dict[str, float]:
    """``title``'s links (recent ones as counts at the model's clock)."""
    row = model._items.index[title]
    co = getattr(model, table)
    scale = co._scale() if table == "recent" else 1.0
    return {model._items.ids[n]: w / scale
            for n, w in zip(co._nbr[row], co._w[row], strict=True) if n >= 0}


def exchange(a: Hybrid, base_a, b: Hybrid, base_b) -> None:
    da, db = diff(a, base_a, "a"), diff(b, base_b, "b")
    apply(a, Delta.decode(db.encode()))  # through the wire format
    apply(b, Delta.decode(da.encode()))


def test_new_titles_start_the_same_in_every_worker():
    # Same configuration (seed), different order of arrival and different rows.
    a, b = Hybrid(seed=1), Hybrid(seed=1)
    add_titles(b, ["other"])
    add_titles(a, ["x", "y"])
    add_titles(b, ["y", "z", "x"])
    for title in ("x", "y"):
        ra, rb = a._items.index[title], b._items.index[title]
        assert np.array_equal(a.mf._x[ra], b.mf._x[rb])
        assert np.array_equal(a.mf._y[ra], b.mf._y[rb])
    x0, _ = initial_vectors(a, "x")
    assert np.array_equal(x0, a.mf._x[a._items.index["x"]])


def learn_apart(a, b, events, sync_every: int, b_shares_blend: bool = True) -> None:
    """Two workers learn a stream split by user (as partitions split it: each sees its
    own users' events only), exchanging deltas every ``sync_every`` events."""
    base_a, base_b = snapshot(a), snapshot(b)
    for step in range(0, len(events), sync_every):
        chunk = events[step:step + sync_every]
        learn(a, [e for e in chunk if e[0] % 2 == 0])
        learn(b, [e for e in chunk if e[0] % 2 == 1])
        if not b_shares_blend:  # as ModelSync does when b is not the blend's learner
            revert_blend(b, base_b)
        exchange(a, base_a, b, base_b)
        base_a, base_b = snapshot(a), snapshot(b)


def test_two_workers_converge_to_the_same_item_model():
    titles = catalogue(40)
    events = stream(4000, n_users=60, n_titles=40, seed=5)
    a, b = new_worker(titles), new_worker(titles)
    learn_apart(a, b, events, sync_every=500)

    ids = [t["title_id"] for t in titles]
    sa, sb = item_state(a, ids), item_state(b, ids)
    for name in sa:
        np.testing.assert_allclose(sa[name], sb[name], rtol=1e-4, atol=1e-5, err_msg=name)
    for title in ids[:10]:
        la, lb = links(a, title), links(b, title)
        assert la.keys() == lb.keys()
        np.testing.assert_allclose([la[k] for k in la], [lb[k] for k in la], rtol=1e-6)
    np.testing.assert_allclose(a._w, b._w)


def test_one_worker_learns_the_blend_for_all():
    # The blend's weights are one small vector every worker estimates: summing two workers'
    # steps overshoots, so only the owner of partition 0 (here a) shares its steps.
    titles = catalogue(40)
    events = stream(4000, n_users=60, n_titles=40, seed=5)
    blends = {}
    for case in ("b shares", "b keeps its steps", "b takes no steps"):
        a, b = new_worker(titles), new_worker(titles)
        if case == "b takes no steps":
            b.blend_every = 10**9
        learn_apart(a, b, events, sync_every=500, b_shares_blend=case == "b shares")
        if case != "b shares":  # one blend in both workers (up to rounding)
            np.testing.assert_allclose(a._w, b._w, rtol=1e-12, atol=1e-15)
        blends[case] = a._w
    assert not np.allclose(blends["b keeps its steps"], new_worker(titles)._w)  # a learned
    # b's local steps reach nobody: a's blend is what it would be had b taken none ...
    np.testing.assert_allclose(blends["b keeps its steps"], blends["b takes no steps"],
                               rtol=1e-12, atol=1e-15)
    # ... whereas shared, they would have.
    assert not np.allclose(blends["b shares"], blends["b takes no steps"])


# A 40 s half-life: the 3,000 s stream is 75 half-lives, so recent co-occurrence rebases
# its stored counts (moves its anchor) between syncs, at different times in each worker.
@pytest.mark.parametrize("recent_half_life_s", [YEAR_S, 40.0])
def test_shared_counts_equal_one_worker_learning_everything(recent_half_life_s):
    titles = catalogue(40)
    events = stream(3000, n_users=60, n_titles=40, seed=9)
    single = new_worker(titles, recent_half_life_s)
    learn(single, events)
    a, b = new_worker(titles, recent_half_life_s), new_worker(titles, recent_half_life_s)
    learn_apart(a, b, events, sync_every=1000)
    ids = [t["title_id"] for t in titles]
    s1, sa = item_state(single, ids), item_state(a, ids)
    # Counts are sums of per-event increments: exactly what one worker learns.
    for name in ("ex_a", "ex_b", "pop", "trend"):
        np.testing.assert_allclose(sa[name], s1[name], rtol=1e-9, err_msg=name)
    # Recent co-occurrence too, at the same clock (links travel as float32).
    assert a.recent._clock == b.recent._clock == single.recent._clock
    for model in (a, b):
        rows = model._items.rows_of(ids)
        np.testing.assert_allclose(model.recent.counts(rows),
                                   single.recent.counts(single._items.rows_of(ids)), rtol=1e-9)
        for title in ids:
            mine, one = links(model, title, "recent"), links(single, title, "recent")
            assert mine.keys() == one.keys()
            np.testing.assert_allclose([mine[k] for k in one], list(one.values()), rtol=1e-5)
    # Factorisation: summed minibatch steps, not the same steps; the same scale though.
    norm1 = np.linalg.norm(s1["mf_x"] - item_state(new_worker(titles), ids)["mf_x"])
    norma = np.linalg.norm(sa["mf_x"] - item_state(new_worker(titles), ids)["mf_x"])
    assert 0.5 < norma / norm1 < 2.0


def test_catalogue_entries_travel_and_unknown_titles_appear():
    a, b = Hybrid(seed=1), Hybrid(seed=1)
    base_b = snapshot(b)
    delta = diff(a, snapshot(a), "a")
    delta.added = [{"title_id": "new", "genres": ["Drama"]}]
    apply(b, Delta.decode(delta.encode()))
    assert "new" in b._items and b.content.genres_of_row(b._items.index["new"]) == ["Drama"]
    # A title only the sender knew (a stub from events) is created on the receiver.
    add_titles(a, ["stub"])
    base_a = snapshot(a)
    learn_many(a, ["stub"], [1.0], [1.7e9], [[]])
    apply(b, Delta.decode(diff(a, base_a, "a").encode()))
    assert "stub" in b._items
    assert b.explorer._a[b._items.index["stub"]] == a.explorer._a[a._items.index["stub"]]
    del base_b


def test_no_learning_means_an_empty_delta():
    model = new_worker(catalogue(10))
    base = snapshot(model)
    assert diff(model, base, "w").empty()


@pytest.mark.parametrize("raw", [b"", b"\x00\x00\x00\x05hello", b"\x00\x00\x00\x02{}junk"])
def test_a_corrupt_delta_raises_a_value_error(raw):
    with pytest.raises((ValueError, KeyError, OSError)):
        Delta.decode(raw)


# State a worker keeps to itself: random generators, counters that pace its own learning,
# and caches derived from shared state (mf._engaged_rows follows mf._engaged).
LOCAL_STATE = {"_rng", "_positives_seen", "mf._rng", "explorer._rng", "mf._engaged_rows",
               "mf._n_engaged"}


def learned_state(model: Hybrid) -> dict[str, object]:
    out: dict[str, object] = {}
    for owner_name in ("", "trending", "cooccurrence", "mf", "content", "explorer", "recent"):
        owner = getattr(model, owner_name) if owner_name else model
        for name, value in vars(owner).items():
            if not name.startswith("_") or name == "_items":
                continue
            path = f"{owner_name}.{name}" if owner_name else name
            if isinstance(value, np.ndarray):
                out[path] = value.copy()
            elif isinstance(value, int | float):
                out[path] = value
            elif isinstance(value, np.random.Generator):
                out[path] = value.bit_generator.state
    return out


def test_everything_learning_changes_is_shared_or_deliberately_local():
    from streams.model_sync import SHARED_STATE

    model = new_worker(catalogue(400))
    learn(model, stream(300, n_users=20, n_titles=400, seed=2))  # warm: blend steps run
    before = learned_state(model)
    learn(model, stream(600, n_users=20, n_titles=400, seed=3))  # new titles engaged too
    after = learned_state(model)
    changed = set()
    for path, value in after.items():
        old = before.get(path)
        same = (np.array_equal(old, value) if isinstance(value, np.ndarray)
                and isinstance(old, np.ndarray) else old == value)
        if not same:
            changed.add(path)
    unshared = changed - set(SHARED_STATE) - LOCAL_STATE
    assert not unshared, (f"learning changes {sorted(unshared)}, which streams/model_sync.py "
                          "does not share between workers: add it there (or to LOCAL_STATE "
                          "here if each worker should keep its own)")


def test_an_entry_from_before_recent_co_occurrence_travelled_still_applies():
    titles = catalogue(10)
    a, b = new_worker(titles), new_worker(titles)
    base = snapshot(a)
    learn(a, stream(200, n_users=5, n_titles=10, seed=1))
    delta = diff(a, base, "a")
    # The previous wire format: no recent arrays, anchor or clock.
    del delta.arrays["rc_pop"]
    header = {"worker": "a", "titles": delta.titles, "link_titles": delta.link_titles,
              "now": delta.now, "added": [], "removed": [], "offsets": {}}
    buffer = io.BytesIO()
    np.savez(buffer, link_src=delta.link_src, link_dst=delta.link_dst, link_w=delta.link_w,
             blend=delta.blend, g2=delta.g2, **delta.arrays)
    raw = orjson.dumps(header)
    apply(b, Delta.decode(len(raw).to_bytes(4, "big") + raw + buffer.getvalue()))
    ids = [t["title_id"] for t in titles]
    np.testing.assert_allclose(item_state(b, ids)["pop"], item_state(a, ids)["pop"])
    assert not b.recent._pop.any()
