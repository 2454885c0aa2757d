"""Recent co-occurrence: links and likes fade with event time, exactly and without overflow."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from models.base import UserProfile
from models.cooccurrence import CoOccurrence
from models.recent import REBASE_HALF_LIVES, RecentCoOccurrence

YEAR = 365.0 * 24 * 3600


def watch(model, user: str, titles: list[str], ts: float) -> None:
    """``user`` likes ``titles`` in order at ``ts``."""
    history: list[tuple[str, float]] = []
    for title in titles:
        model.learn_one(user, title, 1.0, UserProfile(user, history=list(history)), ts)
        history.insert(0, (title, 1.0))


def test_what_people_watch_lately_next_to_a_title_comes_first():
    # Years ago three viewers of "a" went on to "old"; this year one went on to "new".
    recent, alltime = RecentCoOccurrence(half_life_s=YEAR), CoOccurrence()
    for model in (recent, alltime):
        for k in range(3):
            watch(model, f"u{k}", ["a", "old"], ts=0.0)
        watch(model, "u9", ["a", "new"], ts=5 * YEAR)
    viewer = UserProfile("v", history=[("a", 1.0)])
    assert alltime.rank("v", ["old", "new"], viewer) == ["old", "new"]
    assert recent.rank("v", ["old", "new"], viewer) == ["new", "old"]


def test_counts_halve_every_half_life_and_survive_rebasing():
    model = RecentCoOccurrence(half_life_s=10.0)
    watch(model, "u1", ["a"], ts=0.0)
    watch(model, "u2", ["b"], ts=10.0)
    assert model.counts(model.item_rows(["a", "b"])) == pytest.approx([0.5, 1.0])
    # 40 half-lives later the stored counts have been rebased: the values at the clock are
    # still exact, and nothing overflowed.
    watch(model, "u3", ["c"], ts=400.0)
    assert model._anchor == 400.0 and 40 > REBASE_HALF_LIVES
    counts = model.counts(model.item_rows(["a", "b", "c"]))
    assert counts == pytest.approx([2.0 ** -40, 2.0 ** -39, 1.0])
    assert np.isfinite(model._w).all() and np.isfinite(model._pop).all()


def test_a_timestamp_centuries_ahead_fades_the_past_without_overflow():
    model = RecentCoOccurrence(half_life_s=YEAR)
    watch(model, "u1", ["a", "b"], ts=1e9)
    watch(model, "u2", ["a", "c"], ts=1e9 + 5000 * YEAR)
    viewer = UserProfile("v", history=[("a", 1.0)])
    scores = model.score_many("v", ["b", "c"], viewer)
    assert np.isfinite(scores).all() and scores[1] > scores[0] == 0.0


def test_state_survives_pickling():
    model = RecentCoOccurrence(half_life_s=YEAR)
    watch(model, "u1", ["a", "b"], ts=1e9)
    copy = pickle.loads(pickle.dumps(model))
    viewer = UserProfile("v", history=[("a", 1.0)])
    assert copy.score_many("v", ["b"], viewer) == pytest.approx(
        model.score_many("v", ["b"], viewer))
    assert copy._clock == model._clock == 1e9


def test_bad_half_life_is_refused():
    with pytest.raises(ValueError, match="half_life_s"):
        RecentCoOccurrence(half_life_s=0.0)


def test_a_hybrid_saved_before_recent_cooccurrence_is_not_loaded():
    # A checkpoint of the five-feature layout would leave the blend a column short.
    from models.hybrid import STATE_FORMAT, Hybrid

    state = Hybrid(seed=1).__dict__.copy()
    state["_format"] = STATE_FORMAT - 1
    with pytest.raises(ValueError, match="learn afresh"):
        Hybrid.__new__(Hybrid).__setstate__(state)
