"""One contract, every model: what the worker, the checkpoints and the evaluator rely on."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from models.base import UserProfile
from models.registry import MODELS, create

GENRES = ["Drama", "Comedy", "Action", "Horror"]
TITLES = [f"t{i}" for i in range(30)]


def feed(model, seed: int = 0) -> dict[str, UserProfile]:
    """A small stream: catalogue, then users favouring a slice of it, some abandonments."""
    rng = random.Random(seed)
    for i, title in enumerate(TITLES):
        model.add_title({"title_id": title, "genres": [GENRES[i % 4]], "cast": [f"c{i % 7}"]})
    profiles: dict[str, UserProfile] = {}
    for k in range(400):
        user = f"u{rng.randrange(12)}"
        title = TITLES[(int(user[1:]) * 3 + int(rng.expovariate(0.3))) % len(TITLES)]
        y = rng.choice([2.0, 1.0, 0.3, -1.0])
        profile = profiles.setdefault(user, UserProfile(user))
        model.learn_one(user, title, y, profile, 1_700_000_000.0 + 60 * k)
        weight = y + dict(profile.history).get(title, 0.0)
        profile.history = [(title, weight)] + [(t, w) for t, w in profile.history if t != title]
    return profiles


QUERY_TS = 1_700_030_000.0


def scores(model, profile: UserProfile, items=TITLES) -> np.ndarray:
    return model.score_many(profile.user_id, items, profile, QUERY_TS)


@pytest.fixture(params=sorted(MODELS))
def name(request) -> str:
    return request.param


def test_clone_is_unfitted_with_the_same_hyperparameters(name):
    model = create(name, seed=7)
    feed(model)
    twin = model.clone()
    assert type(twin) is type(model) and repr(twin) == repr(model)
    assert twin.size()["titles"] == 0
    assert model.size()["titles"] == len(TITLES)


def test_pickle_round_trip_gives_identical_scores(name):
    model = create(name, seed=7)
    profiles = feed(model)
    copy = pickle.loads(pickle.dumps(model))
    for profile in list(profiles.values())[:4]:
        # Random draws continue from the same state in both, so even samplers agree.
        np.testing.assert_array_equal(scores(copy, profile), scores(model, profile))
    copy.learn_one("u0", "t1", 1.0, profiles["u0"], QUERY_TS)  # the copy still learns


def test_unseen_user_and_unseen_item_get_finite_scores(name):
    model = create(name, seed=7)
    feed(model)
    items = [*TITLES, "never-seen"]
    for profile in (UserProfile("brand-new"),
                    UserProfile("odd", history=[("never-seen", 1.0), ("t3", -1.0)])):
        got = scores(model, profile, items)
        assert got.shape == (len(items),) and np.isfinite(got).all()
    assert model.predict_one("brand-new", "never-seen") == 0.0


def test_deterministic_under_a_seed(name):
    a, b = create(name, seed=11), create(name, seed=11)
    pa, pb = feed(a), feed(b)
    for user in sorted(pa)[:4]:
        np.testing.assert_array_equal(scores(a, pa[user]), scores(b, pb[user]))


def test_rank_returns_a_permutation_of_its_input(name):
    model = create(name, seed=7)
    profiles = feed(model)
    items = ["t5", "never-seen", "t0", "t17", "t29", "t5b"]
    for profile in (profiles["u3"], UserProfile("brand-new")):
        ranked = model.rank(profile.user_id, items, profile, QUERY_TS)
        assert sorted(ranked) == sorted(items)
    assert model.rank("u", [], None) == []


def test_learning_changes_what_the_model_ranks_first_for_personal_models():
    # Not every model personalises (popularity, random); those that do must move toward
    # the titles a user's neighbours went on to watch.
    for name in ("cooccurrence", "mf", "streamrec"):
        model = create(name, seed=3)
        for _ in range(40):
            for user in ("a1", "a2", "a3"):
                model.learn_one(user, "x", 2.0, UserProfile(user))
                model.learn_one(user, "y", 2.0, UserProfile(user, history=[("x", 2.0)]))
            model.learn_one("b", "z", 2.0, UserProfile("b"))
        ranked = model.rank("new", ["z", "y"], UserProfile("new", history=[("x", 2.0)]))
        assert ranked[0] == "y", name
