"""The batched entry points give the lists and the learning of the one-at-a-time API."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

import models.batched
from models.base import HistoryMatrix, ItemTable, UserProfile
from models.batched import MIRRORED, fingerprint, learn_many, mirrors, rank_many, recommend_many
from models.cooccurrence import CoOccurrence
from models.hybrid import Hybrid

# The equality checks below compare the batched path with the one-at-a-time one; when the
# models changed, the batched path is off (every call goes one at a time) and the first
# test says what to do.
needs_mirror = pytest.mark.skipif(not (mirrors("rank") and mirrors("learn")),
                                  reason="models changed: see test_batched_paths_mirror...")

GENRES = ["Drama", "Comedy", "Action", "Horror", "Documentary", "Romance"]


def catalogue(n: int) -> list[dict]:
    rng = random.Random(4)
    return [{"title_id": f"t{i}", "genres": rng.sample(GENRES, rng.randint(1, 2)),
             "cast": [f"c{rng.randrange(30)}"], "director": f"d{rng.randrange(10)}"}
            for i in range(n)]


def stream(n_users: int, n_titles: int, n_events: int, seed: int):
    """(user, title, feedback, ts) with users favouring a slice of the catalogue."""
    rng = random.Random(seed)
    for k in range(n_events):
        user = rng.randrange(n_users)
        title = (user * 7 + int(rng.expovariate(0.2))) % n_titles
        y = rng.choice([0.3, 0.8, 2.0, 1.2, -1.0, 0.2])
        yield f"u{user}", f"t{title}", y, 1_700_000_000.0 + k


def trained(batched: bool, exploration: float = 0.0, n_titles: int = 120, batch: int = 200,
            ) -> tuple[Hybrid, dict[str, UserProfile]]:
    model = Hybrid(seed=3, exploration=exploration)
    for title in catalogue(n_titles):
        model.add_title(title)
    profiles: dict[str, UserProfile] = {}
    pending: list[tuple] = []
    for user, title, y, ts in stream(60, n_titles, 3000, seed=9):
        profile = profiles.setdefault(user, UserProfile(user))
        if batched:
            pending.append((title, y, ts, list(profile.history[:50])))
            if len(pending) == batch:
                learn_many(model, *zip(*pending, strict=True))
                pending = []
        else:
            model.learn_one(user, title, y, profile, ts)
        weight = y + dict(profile.history).get(title, 0.0)
        profile.history = [(title, weight)] + [(t, w) for t, w in profile.history if t != title]
        if y >= 2.0:
            profile.completed.add(title)
    if pending:
        learn_many(model, *zip(*pending, strict=True))
    return model, profiles


def as_tuples(recs) -> list[tuple[str, str]]:
    return [(r.title_id, r.reason) for r in recs]


def test_batched_paths_mirror_the_models_code():
    """models/batched.py re-implements the models' scoring and learning for many users at
    once. If this fails, a model's code changed: update models/batched.py to match (the
    equality tests below then show whether it does) and its FINGERPRINTS to the values
    printed here. Until then the worker batches one call at a time: correct, slower."""
    for kind in ("rank", "learn"):
        assert mirrors(kind), (
            f"the batched {kind} path mirrors {', '.join(MIRRORED[kind])}; "
            f"their fingerprint is now {fingerprint(kind)!r}")


@needs_mirror
def test_lists_are_those_of_recommend_for_the_same_model_state():
    model, profiles = trained(batched=False)
    users = sorted(profiles)
    ts = [1_700_003_000.0] * len(users)
    expected = [as_tuples(model.recommend(profiles[u], n=20, ts=1_700_003_000.0)) for u in users]
    got = [as_tuples(r) for r in recommend_many(model, [profiles[u] for u in users], 20, ts)]
    assert got == expected
    scores = rank_many(model, [profiles[u] for u in users[:5]], 20, ts[:5])[0]
    reference = model.recommend(profiles[users[0]], n=20, ts=ts[0])
    assert [s for _, s, _ in scores] == pytest.approx([r.score for r in reference], abs=1e-6)
    # Small batches (a Python walk for diversity) give the same lists.
    for start in range(0, 20, 4):
        group = users[start:start + 4]
        got = [as_tuples(r) for r in recommend_many(model, [profiles[u] for u in group], 20,
                                                      ts[:len(group)])]
        assert got == expected[start:start + 4]


@needs_mirror
def test_exploration_slot_is_placed_like_recommend_and_never_a_completed_title():
    model, profiles = trained(batched=False, exploration=0.1)
    users = sorted(profiles)
    # Two liked titles: a share 0.1 * (1 - log 3 / log 51) of 20 slots, 1.44: one or two.
    short = [UserProfile(u, history=[(t, w) for t, w in profiles[u].history if w > 0][:2],
                         completed=profiles[u].completed) for u in users]
    lists = recommend_many(model, short, 20, [1_700_003_000.0] * 60)
    counts = []
    for profile, recs in zip(short, lists, strict=True):
        at = [i for i, r in enumerate(recs) if r.reason == "explore"]
        assert at in ([9], [6, 13])  # spread through the list as Hybrid._explore_slots does
        counts.append(len(at))
        titles = [r.title_id for r in recs]
        assert len(titles) == 20 == len(set(titles))
        assert not set(titles) & profile.completed
    assert 1.2 < np.mean(counts) < 1.7
    # A long-time viewer's list is all blend: exploration fades as the history grows.
    full = [UserProfile(f"fan{k}", history=[(f"t{(k + i) % 120}", 1.0) for i in range(50)])
            for k in range(8)]
    for recs in recommend_many(model, full, 20, [1_700_003_000.0] * len(full)):
        assert "explore" not in [r.reason for r in recs]


def test_cold_users_get_non_personal_lists_without_completed_titles():
    model, _ = trained(batched=False, exploration=0.05)
    cold = UserProfile("new", completed={"t1", "t2"})
    for recs in (recommend_many(model, [cold, cold], 20, [1_700_003_000.0] * 2)[0],
                 model.recommend(cold, n=20, ts=1_700_003_000.0)):
        reasons = [r.reason for r in recs]
        assert len(recs) == 20
        assert not any(r.startswith("because_you_watched") for r in reasons)
        assert reasons.count("explore") == 2  # twice a known user's share: 2 of 20 slots
        assert not {r.title_id for r in recs} & {"t1", "t2"}


def test_large_catalogues_fall_back_to_recommend():
    model, profiles = trained(batched=False)
    model.max_candidates = 50  # fewer than the 120 titles: candidates are pre-selected
    (recs,) = recommend_many(model, [profiles["u1"]], 10, [1_700_003_000.0])
    assert len(recs) == 10


@needs_mirror
def test_trending_and_bandit_learn_exactly_what_learn_one_learns():
    sequential, _ = trained(batched=False)
    batched, _ = trained(batched=True)
    rows = np.arange(sequential._items.rows)
    now = 1_700_003_000.0
    assert np.allclose(batched.trending.score_rows(rows, None, now),
                       sequential.trending.score_rows(rows, None, now))
    assert np.allclose(batched.explorer.exposure(rows), sequential.explorer.exposure(rows))
    assert batched._positives_seen == sequential._positives_seen
    # Recent co-occurrence: the same faded counts at the same clock.
    assert batched.recent._clock == sequential.recent._clock
    assert np.allclose(batched.recent.counts(rows), sequential.recent.counts(rows))


@needs_mirror
def test_batched_learning_recovers_what_users_like():
    # Each user watches a slice starting at user * 7 (see `stream`): their neighbours in
    # that slice should dominate their lists, as they do with one-at-a-time learning.
    hits = {True: 0, False: 0}
    for batched in (True, False):
        model, profiles = trained(batched=batched)
        for user, profile in profiles.items():
            start = int(user[1:]) * 7
            liked = {f"t{(start + k) % 120}" for k in range(15)}
            recs = model.recommend(profile, n=10, ts=1_700_003_000.0)
            hits[batched] += sum(r.title_id in liked for r in recs)
    assert hits[True] >= 0.8 * hits[False]
    assert hits[True] > 60 * 10 * 15 / 120  # far above picking at random


@needs_mirror
def test_co_occurrence_links_both_ways_with_recency_decay():
    model = Hybrid(seed=1, cooccurrence=CoOccurrence(recency=0.8))
    for title in ("a", "b", "c", "x"):
        model.add_title({"title_id": title, "genres": ["Drama"]})
    events = [("a", 1.0, 1.0, []), ("b", 1.0, 2.0, [("a", 1.0)]),
              ("c", 2.0, 3.0, [("b", 1.0), ("x", -1.0), ("a", 1.0)]),
              ("x", -1.0, 4.0, [])]  # four events: the batch path, not one at a time
    learn_many(model, *zip(*events, strict=True))
    co, ids = model.cooccurrence, model._items.ids
    links = {(ids[r], ids[n]): round(float(co._w[r, k]), 9)
             for r in range(model._items.rows) for k, n in enumerate(co._nbr[r]) if n >= 0}
    # c's positive history is b then a (x was disliked): weights 2.0 and 2.0 * 0.8.
    assert links == {("a", "b"): 1.0, ("b", "a"): 1.0, ("b", "c"): 2.0, ("c", "b"): 2.0,
                     ("a", "c"): pytest.approx(1.6), ("c", "a"): pytest.approx(1.6)}


@needs_mirror
def test_link_merges_by_table_and_by_sorting_learn_the_same_links(monkeypatch):
    # merge_links sums a batch's links in a dense table when it is small enough, and
    # sorts them otherwise (a large catalogue): the links learned must not depend on it.
    by_table, _ = trained(batched=True)
    monkeypatch.setattr(models.batched, "DENSE_MERGE_CELLS", 0)
    by_sorting, _ = trained(batched=True)
    for table in ("cooccurrence", "recent"):
        a, b = getattr(by_table, table), getattr(by_sorting, table)
        assert np.array_equal(a._nbr, b._nbr) and np.array_equal(a._w, b._w)
    assert (by_table.cooccurrence._nbr >= 0).sum() > 1000  # many links were merged


@needs_mirror
def test_blend_learns_a_batch_from_the_models_as_they_were_before_it():
    # Each blend step asks which title of the user's pool they went on to watch, so the
    # pool must be scored as it was before the event. Were the batch's co-occurrence links
    # learned first, every watched title would co-occur with its own watcher's history:
    # the blend would learn to trust co-occurrence ever more, filling lists with what
    # users are already watching at the expense of titles new to them (README,
    # "Learning before ranking").
    model, profiles = trained(batched=True)
    batch = []
    for user, title, y, ts in stream(60, 120, 200, seed=21):
        batch.append((title, y, ts + 10_000.0, list(profiles[user].history[:50])))
        profiles[user].history.insert(0, (title, y))
    titles, ys, ts, histories = zip(*batch, strict=True)
    expected = pickle.loads(pickle.dumps(model))
    positive = np.array([y > 0 for y in ys])
    expected.learn_blend(expected._items.rows_of(titles)[positive],
                         HistoryMatrix.from_histories(expected._items.index, histories
                                                      ).take(np.nonzero(positive)[0]),
                         np.array(ts)[positive])
    assert not np.allclose(expected._w, model._w)  # the batch does teach the blend
    learn_many(model, titles, ys, ts, histories)
    assert np.allclose(model._w, expected._w)


def test_a_batch_of_known_titles_is_used_as_one_at_a_time():
    # learn_many marks a batch's titles used in one pass (ItemTable.add_known); which title
    # is evicted next (the least recently used) must not change.
    one_at_a_time, at_once = ItemTable(4), ItemTable(4)
    for table in (one_at_a_time, at_once):
        for title in "abcd":
            table.add(title)
    batch = ["c", "a", "c", "b"]
    assert [one_at_a_time.add(t) for t in batch] == at_once.add_known(batch).tolist()
    one_at_a_time.add("e")
    at_once.add("e")
    assert "d" not in one_at_a_time and "d" not in at_once  # d was the least recent
    assert one_at_a_time.index == at_once.index
    assert np.array_equal(one_at_a_time.last_used, at_once.last_used)


def test_argument_lengths_must_match():
    model = Hybrid()
    with pytest.raises(ValueError, match="same length"):
        learn_many(model, ["a"], [1.0], [], [[]])
    with pytest.raises(ValueError, match="same length"):
        rank_many(model, [UserProfile("u")], 5, [])
