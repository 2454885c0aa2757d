"""The product features' learners and pure functions: artwork, rows, resume, trends, search."""

from __future__ import annotations

import doctest
import pickle

import pytest

import consumers.insights
import streams.cache_hints
import streams.notifications
import streams.rows
import streams.search
import streams.titles
from models.artwork import ArtworkBandit
from models.forecast import SeasonalForecaster, hour_of_week
from models.homepage import CountryTrending, ResumeModel, RowBandit
from streamrec.exceptions import ConfigError
from streamrec.settings import Settings
from streams.cache_hints import CacheHints, evaluate_cache_hints
from streams.notifications import notification, notification_id
from streams.rows import (
    RowInputs,
    affinity_tokens,
    candidate_rows,
    fill_rows,
    row_type,
    update_in_progress,
)
from streams.search import SearchIndex, edit_distance, normalise
from streams.titles import TitleIndex


@pytest.mark.parametrize("module", [streams.titles, streams.search, streams.rows,
                                    streams.cache_hints, streams.notifications,
                                    consumers.insights])
def test_docstring_examples_run(module):
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failures == 0


# -- artwork ------------------------------------------------------------------------------------
def test_artwork_bandit_learns_each_users_preference():
    bandit = ArtworkBandit(exploration=0.0, seed=3)
    # Two users, opposite tastes, over many titles with a "close" and a "wide" image.
    for i in range(400):
        title = f"t{i % 40}"
        for user, liked in (("u1", "close"), ("u2", "wide")):
            for kind in ("close", "wide"):
                bandit.learn_one(user, f"{title}-{kind}", kind == liked)
    arts = ["t7-wide", "t7-close"]
    assert bandit.choose("u1", arts) == "t7-close"
    assert bandit.choose("u2", arts) == "t7-wide"


def test_artwork_bandit_contract():
    bandit = ArtworkBandit(seed=1, user_capacity=2, artwork_capacity=3)
    x = bandit.context("tv", {"g:drama": 1.0, "c:ava moreau": 0.5})
    for user in ("a", "b", "c"):
        for art in ("p", "q", "r", "s"):
            bandit.learn_one(user, art, art == "p", x)
    assert bandit.size() == {"artworks": 3, "users": 2}  # bounded, least recently used out
    copy = pickle.loads(pickle.dumps(bandit))
    assert copy.choose("c", ["q", "r"], x, explore=False) == bandit.choose(
        "c", ["q", "r"], x, explore=False)
    fresh = bandit.clone()
    assert fresh.size() == {"artworks": 0, "users": 0} and repr(fresh) == repr(bandit)
    assert fresh.choose("new-user", []) is None
    assert fresh.choose("new-user", ["only"]) == "only"
    with pytest.raises(ValueError):
        ArtworkBandit(exploration=2.0)


def test_artwork_bandit_is_deterministic_under_a_seed():
    def run():
        bandit = ArtworkBandit(seed=5, exploration=0.3)
        picks = []
        for _ in range(200):
            pick = bandit.choose("u", ["a", "b", "c"])
            bandit.learn_one("u", pick, pick == "b")
            picks.append(pick)
        return picks

    assert run() == run()


# -- rows ---------------------------------------------------------------------------------------
def test_row_bandit_orders_rows_by_what_users_click():
    bandit = RowBandit(exploration=0.0, seed=1)
    x = bandit.context(device="tv", hour=20, events=50, in_progress=False)
    rows = [("top_picks", 0.0), ("new_releases", 0.0), ("trending", 0.0)]
    before = [rows[i][0] for i in bandit.order(rows, x)]
    assert before[0] == "top_picks"  # the prior
    for _ in range(300):
        bandit.learn_one("new_releases", x, True)
        bandit.learn_one("top_picks", x, False)
        bandit.learn_one("trending", x, False)
    assert [rows[i][0] for i in bandit.order(rows, x)][0] == "new_releases"


def test_row_bandit_personalises_by_context():
    bandit = RowBandit(exploration=0.0, seed=1)
    tv = bandit.context(device="tv")
    mobile = bandit.context(device="mobile")
    for _ in range(400):
        bandit.learn_one("trending", tv, True)
        bandit.learn_one("top_picks", tv, False)
        bandit.learn_one("trending", mobile, False)
        bandit.learn_one("top_picks", mobile, True)
    rows = [("top_picks", 0.0), ("trending", 0.0)]
    assert rows[bandit.order(rows, tv)[0]][0] == "trending"
    assert rows[bandit.order(rows, mobile)[0]][0] == "top_picks"


def test_resume_model_learns_what_users_go_back_to():
    model = ResumeModel(learning_rate=0.2)
    now = 100 * 3600.0
    # This user always resumes what they barely started, never what is nearly done.
    barely = model.features(300.0, 6000.0, now - 3600, now)
    nearly = model.features(5000.0, 6000.0, now - 3600, now)
    progress = {"barely": (300.0, 6000.0, now - 3600), "nearly": (5000.0, 6000.0, now - 3600)}
    assert model.rank(progress, now)[0] == "nearly"
    for _ in range(100):
        model.learn_one(barely, [nearly])
    assert model.rank(progress, now)[0] == "barely"


def test_country_trending_is_per_country_and_bounded():
    model = CountryTrending(half_life_s=3600, titles_per_country=4, max_countries=2)
    for i in range(10):
        model.learn_one("SE", f"t{i}", 1.0 + i, ts=0.0)
    model.learn_one("US", "us-hit", 5.0, ts=0.0)
    assert model.top("SE", 2, ts=0.0) == ["t9", "t8"]
    assert model.top("US", 5, ts=0.0) == ["us-hit"]
    assert model.size()["entries"] <= 4 * 1.25 + 1
    model.learn_one("DE", "de-hit", 1.0, ts=0.0)  # a third country drops the least active
    assert model.top("SE", 1, ts=0.0) == [] and model.size()["countries"] == 2


def test_country_trending_ranks_by_decayed_score_at_the_query_time():
    # A steady title against a burst that fades (half-life 1 h): the burst leads right
    # after it, the steady one leads three hours later; a query older than some plays
    # counts those plays undecayed (at 5 h: steady 1.97, burst 1.5).
    model = CountryTrending(half_life_s=3600)
    for hour in range(6):
        model.learn_one("SE", "steady", 1.0, ts=hour * 3600.0)
    model.learn_one("SE", "burst", 6.0, ts=3 * 3600.0)
    assert model.top("SE", 2, ts=3 * 3600.0) == ["burst", "steady"]
    assert model.top("SE", 2, ts=8 * 3600.0) == ["steady", "burst"]
    model.learn_one("SE", "late", 10.0, ts=10 * 3600.0)
    assert model.top("SE", 3, ts=5 * 3600.0) == ["late", "steady", "burst"]


def test_country_trending_before_some_plays_is_the_exact_ranking():
    # A query older than some plays walks the kept strongest entries first (sorting the
    # whole table only past them): the titles are those of the exact decayed scores,
    # plays after the query counting undecayed, ties by stored order.
    import random

    rng = random.Random(7)
    model = CountryTrending(half_life_s=1800, titles_per_country=300)
    ts = 0.0
    for _ in range(3000):
        ts += rng.random() * 20
        model.learn_one("SE", f"t{int(rng.paretovariate(1.1)) % 400}", rng.random() * 3, ts)
        if rng.random() < 0.05:
            query = ts - rng.choice([5.0, 600.0, 20000.0])
            n = rng.choice([1, 5, 20, CountryTrending.TOP_KEPT, 80])
            table = model._scores["SE"]

            scale = 1.0 / model.half_life_s
            ranked = sorted(table.values(), reverse=True)
            exact = [key - max(last * scale, query * scale) for key, _, last, _ in ranked]
            expected = sorted(range(len(ranked)), key=lambda i: (-exact[i], i))[:n]
            assert model.top("SE", n, query) == [ranked[i][3] for i in expected]


@pytest.mark.parametrize("dense", [True, False])
def test_first_occurrences_is_np_unique_in_order_of_appearance(dense, monkeypatch):
    import numpy as np

    if not dense:
        monkeypatch.setattr(streams.rows, "DENSE_FIRST_CELLS", 0)
    rng = np.random.default_rng(3)
    for size, cells in [(0, 1), (1, 1), (50, 10), (300, 5000), (2000, 900)]:
        keys = rng.integers(0, cells, size)
        at, number = streams.rows.first_occurrences(keys, cells)
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        assert at.tolist() == sorted(first.tolist())
        assert keys[at][number].tolist() == keys.tolist()
        assert number.tolist() == np.argsort(np.argsort(first))[inverse.reshape(-1)].tolist()


def test_country_trending_loads_checkpoints_of_the_earlier_layout():
    model = CountryTrending(half_life_s=3600)
    state = {**model.__dict__, "_scores": {"SE": {"a": [1.0, 0.0], "b": [1.0, 3600.0]}}}
    del state["_latest"]
    restored = CountryTrending.__new__(CountryTrending)
    restored.__setstate__(state)
    assert restored.top("SE", 5, ts=3600.0) == ["b", "a"]
    restored.learn_one("SE", "a", 3.0, ts=7200.0)
    assert restored.top("SE", 1, ts=7200.0) == ["a"]


def _titles() -> TitleIndex:
    index = TitleIndex()
    index.add({"title_id": "s1e1", "name": "Harbor S1E1", "kind": "episode",
               "series_id": "s1", "genres": ["Drama"], "artwork_ids": ["a1", "a2"], "ts": 1.0})
    index.add({"title_id": "s1e2", "name": "Harbor S1E2", "kind": "episode",
               "series_id": "s1", "genres": ["Drama"], "artwork_ids": ["b1"], "ts": 2.0})
    for i in range(8):
        index.add({"title_id": f"m{i}", "name": f"Movie {i}", "genres": ["Comedy"],
                   "ts": 10.0 + i})
    return index


def test_continue_watching_first_with_resume_position_and_each_title_once():
    titles = _titles()
    progress = {"m3": (1200.0, 3000.0, 50.0), "m1": (100.0, 3000.0, 10.0)}
    inputs = RowInputs(
        recs=[("m3", "because_you_watched:s1e1"), ("m2", "because_you_watched:s1e1"),
              ("m4", "genre:Comedy"), ("m5", "similar_users")],
        in_progress=progress, resume_order=["m3", "m1"], completed={"s1e1"},
        trending=["m2", "m6", "m0", "s1e1"], new_releases=["m7", "m6"], country="SE")
    rows = fill_rows(candidate_rows(inputs, titles), titles, progress, max_items=10)
    by_id = {r.id: r for r in rows}
    assert [i["title_id"] for i in by_id["continue_watching"].items] == ["m3", "m1"]
    assert by_id["continue_watching"].items[0]["resume_s"] == 1200.0
    assert by_id["because_you_watched:s1e1"].title == "Because you watched Harbor S1E1"
    assert [i["title_id"] for i in by_id["because_you_watched:s1e1"].items] == ["m2"]
    assert by_id["trending"].title == "Trending in SE"
    shown = [i["title_id"] for r in rows for i in r.items]
    assert len(shown) == len(set(shown)), "a title appeared in two rows"
    assert "s1e1" not in shown  # completed
    assert {r.type for r in rows} >= {"genre", "new_releases", "top_picks"}

    again = fill_rows(candidate_rows(inputs, titles), titles, progress, max_items=10,
                      allow_duplicates=True)
    assert "m3" in [i["title_id"] for r in again if r.id == "top_picks" for i in r.items]


def test_in_progress_follows_the_state_scripts_rule():
    progress: dict = {}
    update_in_progress(progress, {"type": "play", "title_id": "a", "ts": 1.0,
                                  "position_s": 0.0})
    assert progress == {}  # a play from the start records no resume point
    update_in_progress(progress, {"type": "pause", "title_id": "a", "ts": 2.0,
                                  "position_s": 1200.0, "duration_s": 3000.0})
    assert progress == {"a": (1200.0, 3000.0, 2.0)}
    update_in_progress(progress, {"type": "stop", "title_id": "a", "ts": 3.0,
                                  "position_s": 2900.0, "duration_s": 3000.0})
    assert progress == {}  # within 95% of the end: finished


def test_affinity_tokens_and_row_types():
    titles = _titles()
    tokens = affinity_tokens([("m1", 1.0), ("s1e1", 2.0)], titles)
    assert tokens == {"g:comedy": 1.0, "g:drama": 2.0}
    assert row_type("because_you_watched:t1") == "because_you_watched"


# -- search -------------------------------------------------------------------------------------
@pytest.fixture
def search() -> SearchIndex:
    titles = TitleIndex()
    index = SearchIndex(titles)
    titles.add({"title_id": "amelie", "name": "Amélie", "genres": ["Romance", "Comedy"],
                "cast": ["Audrey Tautou"], "director": "Jean-Pierre Jeunet"})
    titles.add({"title_id": "heat", "name": "Heat", "genres": ["Crime"],
                "cast": ["Al Pacino", "Robert De Niro"], "director": "Michael Mann"})
    titles.add({"title_id": "harbor", "name": "The Silent Harbor", "genres": ["Drama"]})
    return index


@pytest.mark.parametrize(("query", "expected"), [
    ("AMELIE", "amelie"),          # case and accents
    ("amlie", "amelie"),           # a dropped letter
    ("silent harbour", "harbor"),  # a typo in one word, stop words ignored
    ("de niro", "heat"),           # cast
    ("jeunet", "amelie"),          # director
    ("crime", "heat"),             # genre
    ("harb", "harbor"),            # a prefix, still typing
])
def test_search_is_tolerant_of_case_accents_and_typos(search, query, expected):
    assert search.match(query)[0][0] == expected


def test_search_without_a_match_and_after_removal(search):
    assert search.match("galactic llama returns") == []
    assert search.match("heat silent") == []  # every word must match one title
    search.titles.remove("heat")
    assert search.match("pacino") == []
    assert normalise("Ça  va?") == "ca va"
    assert edit_distance("kitten", "sitting", 3) == 3



def test_search_finds_a_title_added_after_its_words_were_searched(search, monkeypatch):
    # Words are remembered with the titles they match: a catalogue change must forget them.
    assert search.match("pacino")[0][0] == "heat"
    search.titles.add({"title_id": "serpico", "name": "Serpico", "genres": ["Crime"],
                       "cast": ["Al Pacino"]})
    assert {t for t, _ in search.match("pacino")} == {"heat", "serpico"}
    assert {t for t, _ in search.match("al pacino crime")} == {"heat", "serpico"}
    # Bounded by (word, title) entries as well as words; results do not depend on it.
    monkeypatch.setattr(streams.search, "WORD_CACHE_ENTRIES", 2)
    assert search.match("crime")[0][0] in {"heat", "serpico"}
    assert search.match("amelie")[0][0] == "amelie"
    assert search._word_entries <= 2

# -- cache hints --------------------------------------------------------------------------------
def test_forecaster_uses_hour_of_week_seasonality():
    f = SeasonalForecaster(season_alpha=0.5)
    for h in range(24 * 14):  # two weeks: busy evenings, quiet nights
        hour = h * 3600.0
        f.learn_hour("SE", hour, {"a": 30 if 18 <= h % 24 <= 22 else 3})
    evening = f.expected_volume("SE", (24 * 14 + 20) * 3600.0)
    night = f.expected_volume("SE", (24 * 14 + 4) * 3600.0)
    assert evening > 4 * night
    assert hour_of_week(0.0) == 72  # the epoch was a Thursday


def test_cache_hints_publish_once_per_closed_hour():
    hints = CacheHints(top=2)
    assert hints.observe("SE", "a", 10.0) == []
    hints.observe("SE", "a", 20.0)
    hints.observe("US", "b", 30.0)
    messages = hints.observe("SE", "c", 3 * 3600.0 + 1)  # skips an empty hour
    import orjson

    values = {orjson.loads(v)["country"]: orjson.loads(v) for _, v in messages}
    assert set(values) == {"SE", "US"}
    assert values["SE"]["hour"] == 3 * 3600
    assert values["SE"]["titles"][0]["title_id"] == "a"
    assert values["SE"]["titles"][0]["expected_plays"] > 0


def test_evaluate_cache_hints_beats_persistence_when_a_title_cycles():
    # Title "night" is played only at night and "day" only by day; the forecaster's
    # time-of-day profile sees the switch coming, last hour's top does not.
    events = []
    for h in range(24 * 6):
        title = "night" if h % 24 < 6 else "day"
        for i in range(30):
            events.append({"type": "play", "country": "SE", "title_id": title,
                           "ts": h * 3600.0 + i})
            events.append({"type": "play", "country": "SE", "title_id": f"x{i % 3}",
                           "ts": h * 3600.0 + i + 0.5})
    result = evaluate_cache_hints(events, k=1, min_plays=10)
    assert result["hours"] == 24 * 6 - 1
    assert result["recall"] > result["baseline_recall"]


# -- notifications, settings --------------------------------------------------------------------
def test_notification_message_contract():
    message = notification("u1", {"title_id": "s1e2", "series_id": "s1", "name": "E2"}, 5.0)
    assert message == {"notification_id": notification_id("u1", "s1e2"), "user_id": "u1",
                       "type": "new_episode", "title_id": "s1e2", "series_id": "s1",
                       "ts": 5.0, "name": "E2"}


def test_product_settings_parse_and_validate():
    settings = Settings.from_env({"STREAMREC_ROW_DUPLICATES": "yes",
                                  "STREAMREC_PRODUCT_FEATURES": "0",
                                  "STREAMREC_ROW_ITEMS": "6"})
    assert settings.row_duplicates and not settings.product_features
    assert settings.row_items == 6
    with pytest.raises(ConfigError, match="STREAMREC_ROW_DUPLICATES"):
        Settings.from_env({"STREAMREC_ROW_DUPLICATES": "maybe"})
    with pytest.raises(ConfigError, match="STREAMREC_NOTIFY_MAX_PER_DAY"):
        Settings.from_env({"STREAMREC_NOTIFY_MAX_PER_DAY": "0"})


def test_search_cache_does_not_shorten_a_longer_answer():
    titles = TitleIndex()
    index = SearchIndex(titles)
    for i in range(30):
        titles.add({"title_id": f"n{i}", "name": f"Night Train {i}"})
    assert len(index.match("night train", 1)) == 1  # cached now
    assert len(index.match("night train", 25)) == 25
    assert index.match("night train", 3) == index.match("night train", 25)[:3]


@pytest.mark.parametrize("duplicates", [False, True])
def test_fill_slots_picks_the_same_one_by_one_as_in_array_passes(duplicates, monkeypatch):
    # fill_slots walks small inputs (a few users' pages) one candidate at a time and
    # larger ones in array passes per slot: both must pick the same titles.
    import random

    import numpy as np

    rng = random.Random(3)
    for _ in range(300):
        n_titles, n_series = rng.randint(1, 30), rng.randint(1, 4)
        group_of = [rng.randrange(n_series) if rng.random() < 0.3 else n_series + t
                    for t in range(n_titles)]
        slots, users, titles = [], [], []
        for slot in range(streams.rows.N_SLOTS):
            for user in range(rng.randint(1, 5)):
                for title in rng.sample(range(n_titles), rng.randint(0, n_titles)):
                    slots.append(slot)
                    users.append(user)
                    titles.append(title)
        slots, users, titles = (np.array(a, dtype=np.int64) for a in (slots, users, titles))
        groups = np.where(slots == streams.rows.SLOT_CONTINUE, n_series + titles,
                          np.array(group_of)[titles])
        max_items = rng.choice([1, 3, 10])
        args = (slots, users, titles, groups, n_titles, n_series + n_titles, max_items,
                duplicates)
        monkeypatch.setattr(streams.rows, "SMALL_FILL", 10**9)
        one_by_one = streams.rows.fill_slots(*args)
        monkeypatch.setattr(streams.rows, "SMALL_FILL", -1)
        assert one_by_one.tolist() == streams.rows.fill_slots(*args).tolist()


def test_country_trending_top_kept_in_order_is_the_full_sort():
    # top() answers from each country's strongest entries, kept in order as plays come
    # in, rather than sorting the table each time: the same titles in the same order.
    import heapq
    import pickle
    import random

    rng = random.Random(0)
    for _ in range(60):
        model = CountryTrending(half_life_s=rng.choice([60.0, 3600.0]),
                                titles_per_country=rng.choice([3, 10, 60]),
                                max_countries=rng.choice([1, 2, 5]))
        ts = 0.0
        for _ in range(400):
            ts += rng.random() * 100
            country, r = rng.choice("ABCDE"), rng.random()
            if r < 0.8:
                late = rng.random() * 50 if rng.random() < 0.1 else 0.0
                model.learn_one(country, f"t{rng.randrange(80)}", rng.random() * 2, ts - late)
            elif r < 0.82:
                model.forget(f"t{rng.randrange(80)}")
            elif r < 0.83:
                model = pickle.loads(pickle.dumps(model))
            else:
                n = rng.choice([1, 5, 20, 50, 70])
                table = model._scores.get(country)
                if table and ts >= model._latest[country]:
                    assert model.top(country, n, ts) == [
                        e[3] for e in heapq.nlargest(n, table.values())]
