"""Serving and measuring experiments inside one batch (pure: no Kafka, no Redis)."""

from __future__ import annotations

import orjson

from models.base import UserProfile
from models.hybrid import Hybrid
from streams.batch import learn_and_rank
from streams.experiment_batch import MEASURES, SERVED, SERVED_BY, VIEWINGS, VIEWINGS_CAP
from streams.experiments import parse
from streams.rows import update_in_progress
from streams.state import StoredProfile
from streams.variants import hybrid_view, popularity_list
from tests.experiment_toml import DEFAULT, RANDOM, two_arms

TS = 1_714_521_600.0
CONFIG = parse("""
[[experiment]]
name = "ab"
[[experiment.variant]]
name = "control"
share = 0.34
model = "default"
[[experiment.variant]]
name = "random"
share = 0.33
model = "random"
[[experiment.variant]]
name = "popular"
share = 0.33
model = "popularity"

[[experiment]]
name = "later"
start = 2030-01-01T00:00:00Z
[[experiment.variant]]
name = "x"
share = 0.5
model = { exploration = 0.5 }
[[experiment.variant]]
name = "y"
share = 0.5
model = "default"
""")
(AB, LATER) = CONFIG.experiments


def trained_model() -> Hybrid:
    model = Hybrid(seed=3)
    for i in range(60):
        model.add_title({"title_id": f"t{i}", "genres": [("Drama", "Comedy", "Action")[i % 3]]})
    for k in range(600):  # popularity falls with the title number
        title = f"t{(k * k) % 17}"
        model.learn_one(f"w{k % 40}", title, 1.0, UserProfile(f"w{k % 40}"), ts=TS + k)
    return model


def stored(uid: str, served: list[str] | None = None, completed: set[str] | None = None
           ) -> StoredProfile:
    profile = UserProfile(uid, history=[("t1", 1.0)], completed=completed or set())
    return StoredProfile(profile, {}, 0, {SERVED: served} if served is not None else {})


def user_in(variant: str) -> str:
    return next(u for u in (f"u{i}" for i in range(1000)) if AB.assign(u).name == variant)


def run(events, profiles, model=None, applied=None, experiments=CONFIG):
    return learn_and_rank(events, applied or [True] * len(events), profiles,
                          model or trained_model(), top_n=10, history_cap=200,
                          model_version="v", experiments=experiments)


def event(uid: str, kind: str, title: str | None = "t2", n: int = 0, **fields) -> dict:
    out = {"event_id": f"{uid}-{kind}-{n}", "type": kind, "user_id": uid, "ts": TS + n}
    if title is not None:
        out["title_id"] = title
    return {**out, **fields}


def messages(ranked) -> dict[str, dict]:
    return {k.decode(): orjson.loads(v) for k, v in ranked.recommendations}


def test_messages_name_the_users_experiment_and_variant() -> None:
    users = [f"u{i}" for i in range(30)]
    ranked = run([event(u, "play") for u in users], {u: stored(u) for u in users})
    for uid, message in messages(ranked).items():
        assert message["experiment"] == "ab"
        assert message["variant"] == AB.assign(uid).name
        assert message["experiments"] == {"ab": AB.assign(uid).name}  # "later" not started
        assert len(message["items"]) == 10
    assert {m["variant"] for m in messages(ranked).values()} == {"control", "random", "popular"}


def test_without_experiments_messages_are_unchanged() -> None:
    ranked = run([event("u1", "play")], {"u1": stored("u1")}, experiments=None)
    assert "experiment" not in messages(ranked)["u1"]
    assert ranked.experiments is None


def test_each_variant_ranks_its_own_way_on_the_shared_model() -> None:
    model = trained_model()
    control, rand, popular = user_in("control"), user_in("random"), user_in("popular")
    profiles = {u: stored(u, completed={"t0"}) for u in (control, rand, popular)}
    snapshot = model.blend_weights
    ranked = run([event(u, "search", None, query="x") for u in profiles], profiles, model)
    lists = {u: [i["title_id"] for i in m["items"]] for u, m in messages(ranked).items()}
    # Control gets the hybrid's list (exploration slots are Thompson samples: random).
    hybrid = model.recommend(profiles[control].profile, n=10, ts=TS)
    served = messages(ranked)[control]["items"]
    assert [i["title_id"] for i in served if i["reason"] != "explore"] == [
        r.title_id for r in hybrid if r.reason != "explore"]
    assert lists[popular] == [r.title_id for r in popularity_list(
        model, profiles[popular].profile, 10, TS)]
    assert lists[popular][0] != "t0" and "t0" not in lists[popular]  # completed
    assert all(i["reason"] == "trending" for i in messages(ranked)[popular]["items"])
    assert "t0" not in lists[rand] and len(set(lists[rand])) == 10
    assert model.blend_weights == snapshot  # ranking never changes the learned state
    # Random lists are reproducible for the same user and event, and differ across events.
    again = run([event(rand, "search", None, query="x")], {rand: stored(rand, completed={"t0"})},
                model)
    assert [i["title_id"] for i in messages(again)[rand]["items"]] == lists[rand]
    other = run([event(rand, "search", None, n=7, query="x")],
                {rand: stored(rand, completed={"t0"})}, model)
    assert [i["title_id"] for i in messages(other)[rand]["items"]] != lists[rand]


def test_override_view_shares_components_and_leaves_the_model_alone() -> None:
    model = trained_model()
    view = hybrid_view(model, {"exploration": 0.5, "weights": {"mf": 0.0}, "max_per_genre": 2})
    assert view.trending is model.trending and view.mf is model.mf
    assert (view.exploration, view.max_per_genre, view.blend_weights["mf"]) == (0.5, 2, 0.0)
    assert model.exploration == 0.05 and model.blend_weights["mf"] > 0
    profile = UserProfile("v", history=[("t1", 1.0)])
    explored = [r for r in view.recommend(profile, n=10, ts=TS) if r.reason == "explore"]
    assert len(explored) == 5  # half the slots, against 1 in the default


def test_the_first_experiment_that_changes_the_model_decides() -> None:
    config = parse(two_arms("aa") + two_arms("ab", ("control", DEFAULT), ("weak", RANDOM)))
    aa, ab = config.experiments
    users = [f"u{i}" for i in range(40)]
    ranked = run([event(u, "play") for u in users], {u: stored(u) for u in users},
                 experiments=config)
    for uid, message in messages(ranked).items():
        weak = ab.assign(uid).name == "weak"
        assert message["experiment"] == ("ab" if weak else "aa")
        assert message["experiments"] == {"aa": aa.assign(uid).name, "ab": ab.assign(uid).name}


def test_from_its_end_an_experiment_neither_serves_nor_counts() -> None:
    ended = two_arms("ab", ("control", DEFAULT), ("weak", RANDOM)).replace(
        'name = "ab"\n', 'name = "ab"\nend = 2024-05-01T00:01:00Z\n')  # TS + 60
    config = parse(ended + two_arms("aa"))
    ab, aa = config.experiments
    uid = next(u for u in (f"u{i}" for i in range(100)) if ab.assign(u).name == "weak")
    before = run([event(uid, "search", None, 59, query="x")], {uid: stored(uid)},
                 experiments=config)
    assert messages(before)[uid]["experiment"] == "ab"
    assert messages(before)[uid]["experiments"] == {"ab": "weak", "aa": aa.assign(uid).name}
    served = orjson.loads(before.last_lists[uid])[SERVED]
    # At its end: the user's list is what a user outside "ab" gets, and "ab" counts nothing,
    # not even what happens to the list its arm served before.
    events = [event(uid, "click", served[0], 60, row="r", artwork_id="a"),
              event(uid, "play", served[0], 61)]
    def profile(lists: bytes = before.last_lists[uid]) -> StoredProfile:
        return StoredProfile(stored(uid).profile, {}, 0, orjson.loads(lists))

    after = run(events, {uid: profile()}, experiments=config)
    message = messages(after)[uid]
    assert (message["experiment"], message["experiments"]) == ("aa", {"aa": aa.assign(uid).name})
    assert after.experiments is not None
    assert [arm for arm in after.experiments.users] == [("aa", aa.assign(uid).name)]
    assert after.experiments.lists == {("aa", aa.assign(uid).name): 1}
    outside = run(events, {uid: profile(b"{}")}, experiments=None)
    assert [i["title_id"] for i in message["items"] if i["reason"] != "explore"] == [
        i["title_id"] for i in messages(outside)[uid]["items"] if i["reason"] != "explore"]
    alone = run(events, {uid: profile()}, experiments=parse(ended))
    assert "experiment" not in messages(alone)[uid]
    assert alone.experiments is not None
    assert (alone.experiments.users, alone.experiments.lists) == ({}, {})
    # Still written: how far event time has gone tells the report that "ab" has ended.
    assert alone.experiments.latest_ts == TS + 61


def test_tallies_count_what_happened_to_the_served_list() -> None:
    uid = user_in("control")
    served = [f"t{i}" for i in range(2, 22)]  # t2..t21; the top 10 are t2..t11
    events = [
        event(uid, "impression", "t2", 0, row="top_picks", artwork_id="a"),
        event(uid, "impression", "t50", 1, row="top_picks", artwork_id="a"),  # not served
        event(uid, "click", "t2", 2, row="top_picks", artwork_id="a"),  # recall test: hit
        event(uid, "play", "t2", 3, position_s=100.0, duration_s=1000.0),
        event(uid, "stop", "t2", 4, position_s=700.0, duration_s=1000.0),
        event(uid, "play", "t15", 5, position_s=0.0, duration_s=500.0),
        event(uid, "complete", "t15", 6, position_s=500.0, duration_s=500.0),
        event(uid, "play", "t40", 7, position_s=0.0),  # not served
    ]
    ranked = run(events, {uid: stored(uid, served)})
    assert ranked.experiments is not None
    deltas = dict(zip(MEASURES, ranked.experiments.users[("ab", "control")][uid], strict=True))
    assert deltas == {"recall_tests": 1, "recall_hits": 1, "impressions": 1, "clicks": 1,
                      "plays": 2, "watch_s": 600.0 + 500.0, "completions": 1}
    assert ranked.experiments.lists == {("ab", "control"): 1}
    assert orjson.loads(ranked.last_lists[uid])[SERVED] == [
        i["title_id"] for i in messages(ranked)[uid]["items"]]


def test_recall_misses_redeliveries_and_unstarted_experiments_are_not_tallied() -> None:
    uid = user_in("random")
    ranked = run([event(uid, "play", "t30", 0), event(uid, "play", "t3", 1)],
                 {uid: stored(uid, [f"t{i}" for i in range(10)])}, applied=[True, False])
    assert ranked.experiments is not None
    deltas = dict(zip(MEASURES, ranked.experiments.users[("ab", "random")][uid], strict=True))
    assert deltas["recall_tests"] == 1 and deltas["recall_hits"] == 0
    assert deltas["plays"] == 0  # t30 was not served; the t3 play was a redelivery
    assert all(arm[0] == "ab" for arm in ranked.experiments.users)  # "later" not started


def test_a_user_without_a_served_list_is_enrolled_with_zero_counts() -> None:
    uid = user_in("popular")
    ranked = run([event(uid, "search", None, query="drama")], {uid: stored(uid)})
    assert ranked.experiments is not None
    assert ranked.experiments.users[("ab", "popular")][uid] == [0.0] * len(MEASURES)


def test_row_policy_override_orders_the_homepage_rows() -> None:
    from streamrec.settings import Settings
    from streams.product import ProductLayer
    from streams.rows import ASSIGN_ORDER, row_type

    config = parse("""
[[experiment]]
name = "rows"
[[experiment.variant]]
name = "learned"
share = 0.5
model = "default"
[[experiment.variant]]
name = "fixed"
share = 0.5
model = { rows = "fixed" }
""")
    (exp,) = config.experiments
    assert [v.row_policy for v in exp.variants] == ["learned", "fixed"]
    model = trained_model()
    layer = ProductLayer(Settings(), global_trending=model.trending.top)
    for i in range(60):
        layer.add_title({"event_id": f"c{i}", "type": "title_added", "ts": TS,
                         "title_id": f"t{i}", "name": f"Title {i}", "kind": "movie",
                         "genres": [("Drama", "Comedy", "Action")[i % 3]],
                         "artwork_ids": [f"t{i}-a"]})
    users = [f"r{i}" for i in range(40)]
    profiles = {u: StoredProfile(UserProfile(u, history=[("t1", 2.0), ("t3", 1.0)]),
                                 {"t5": (300.0, 3000.0, TS)}, 3, {}) for u in users}
    ranked = learn_and_rank([event(u, "search", None, query="x") for u in users], [True] * 40,
                            profiles, model, top_n=10, history_cap=200, model_version="v",
                            experiments=config, product=layer)
    learned_orders = []
    for uid, message in messages(ranked).items():
        ranks = [ASSIGN_ORDER.index(row_type(r["id"])) for r in message["rows"]]
        assert len(ranks) >= 3
        if exp.assign(uid).name == "fixed":
            assert ranks == sorted(ranks), message["rows"]
        else:
            learned_orders.append(ranks == sorted(ranks))
    assert learned_orders and not all(learned_orders)  # the bandit orders them otherwise


def measured(ranked, uid: str, arm: tuple[str, str] = ("ab", "control")) -> dict[str, float]:
    assert ranked.experiments is not None
    return dict(zip(MEASURES, ranked.experiments.users[arm][uid], strict=True))


def in_batches(uid: str, batches: list[list[dict]], served: list[str]) -> dict[str, float]:
    """Run ``batches`` one after another as the worker does (the stored lists and resume
    points of one are what the next reads; ``served`` stays the list shown), and add up
    the user's tallies."""
    profile = stored(uid, served)
    totals = dict.fromkeys(MEASURES, 0.0)
    model = trained_model()
    for events in batches:
        ranked = run(events, {uid: profile}, model)
        for name, value in measured(ranked, uid).items():
            totals[name] += value
        lists = {**orjson.loads(ranked.last_lists[uid]), SERVED: served}
        in_progress = dict(profile.in_progress)
        for e in events:
            update_in_progress(in_progress, e)
        profile = StoredProfile(profile.profile, in_progress, 0, lists)
    return totals


def viewing(uid: str, n0: int, *steps: tuple[str, float], title: str = "t3",
            duration: float = 4000.0) -> list[dict]:
    return [event(uid, kind, title, n0 + i, position_s=position, duration_s=duration)
            for i, (kind, position) in enumerate(steps)]


def test_a_viewing_counts_the_same_wherever_the_batches_split_it() -> None:
    uid = user_in("control")
    served = [f"t{i}" for i in range(2, 22)]
    steps = viewing(uid, 0, ("play", 0.0), ("pause", 1000.0), ("resume", 1000.0),
                    ("stop", 3000.0), ("play", 3000.0), ("pause", 3850.0),  # 96%
                    ("resume", 3850.0), ("complete", 4000.0))
    whole = in_batches(uid, [steps], served)
    assert (whole["watch_s"], whole["completions"], whole["plays"]) == (4000.0, 1.0, 2.0)
    # A worker that keeps up takes a few events at a time. Before, the stop after a
    # pause counted from the pause (2,000 s, not 3,000), and the pause at 96% and the
    # complete were two completions of one viewing.
    for cut in range(1, len(steps)):
        split = in_batches(uid, [steps[:cut], steps[cut:]], served)
        assert (split["watch_s"], split["completions"]) == (4000.0, 1.0), cut
    one_by_one = in_batches(uid, [[e] for e in steps], served)
    assert (one_by_one["watch_s"], one_by_one["completions"]) == (4000.0, 1.0)


def test_a_resume_after_a_stop_and_a_rewatch_are_counted_once_each() -> None:
    uid = user_in("control")
    served = [f"t{i}" for i in range(2, 22)]
    # Stopped at 1,000, resumed without a new play: 1,000 + 1,500 s, not 1,000 + 2,500.
    resumed = viewing(uid, 0, ("play", 0.0), ("stop", 1000.0), ("resume", 1000.0),
                      ("stop", 2500.0))
    assert in_batches(uid, [resumed[:2], resumed[2:]], served)["watch_s"] == 2500.0
    assert in_batches(uid, [resumed], served)["watch_s"] == 2500.0
    # Watching a finished title again is a new viewing, and completes again.
    twice = viewing(uid, 0, ("play", 0.0), ("complete", 4000.0), ("play", 0.0),
                    ("seek", 3900.0), ("complete", 4000.0))
    totals = in_batches(uid, [twice[:2], twice[2:4], twice[4:]], served)
    assert (totals["completions"], totals["watch_s"]) == (2.0, 8000.0)


def test_viewings_remembered_per_user_are_capped() -> None:
    uid = user_in("control")
    plays = [event(uid, "play", f"t{i}", i, position_s=10.0) for i in range(VIEWINGS_CAP + 5)]
    ranked = run(plays, {uid: stored(uid)})
    flat = orjson.loads(ranked.last_lists[uid])[VIEWINGS]
    assert flat[0::3] == [f"t{i}" for i in range(5, VIEWINGS_CAP + 5)]  # the most recent
    assert flat[1::3] == [10.0] * VIEWINGS_CAP and flat[2::3] == [0] * VIEWINGS_CAP


def test_a_list_is_measured_only_by_the_arm_that_served_it() -> None:
    uid = user_in("control")
    served = [f"t{i}" for i in range(2, 22)]
    after = LATER.start_ts + 60  # "later" has started by these events
    events = [event(uid, "impression", "t2", 0, ts=after, row="r", artwork_id="a"),
              event(uid, "click", "t2", 1, ts=after + 1, row="r", artwork_id="a")]
    later_arm = ("later", LATER.assign(uid).name)
    # The list was served while the user was in "ab"'s control and "later" had not started:
    # "ab" measures it; "later" enrols the user but its arm did not serve that list.
    profile = stored(uid, served)
    profile.last_lists[SERVED_BY] = {"ab": "control"}
    ranked = run(events, {uid: profile})
    assert measured(ranked, uid)["clicks"] == 1.0
    assert measured(ranked, uid, later_arm) == dict.fromkeys(MEASURES, 0.0)
    # The next list was served in both arms: both measure what happens to it.
    lists = orjson.loads(ranked.last_lists[uid])
    assert lists[SERVED_BY] == {"ab": "control", "later": later_arm[1]}
    again = [event(uid, "click", lists[SERVED][0], 2, ts=after + 2, row="r", artwork_id="a")]
    ranked = run(again, {uid: StoredProfile(profile.profile, {}, 0, lists)})
    assert measured(ranked, uid)["clicks"] == measured(ranked, uid, later_arm)["clicks"] == 1.0


def test_a_user_moved_by_a_changed_file_is_not_measured_on_the_old_arms_list() -> None:
    uid = user_in("control")
    served = [f"t{i}" for i in range(2, 22)]
    # Served while a share (since changed) put the user in "random": before, its clicks
    # and recall hit counted for control, which never served it.
    profile = stored(uid, served)
    profile.last_lists[SERVED_BY] = {"ab": "random"}
    ranked = run([event(uid, "click", "t2", 0, row="r", artwork_id="a")], {uid: profile})
    assert measured(ranked, uid) == dict.fromkeys(MEASURES, 0.0)  # enrolled, nothing counted
    assert ("ab", "random") not in ranked.experiments.users
