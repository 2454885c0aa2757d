"""The product layer inside the pure events core (learn_and_rank), without Kafka or Redis."""

from __future__ import annotations

import orjson
import pytest

from models.artwork import ArtworkBandit
from models.base import UserProfile
from models.hybrid import Hybrid
from streamrec.settings import Settings
from streams.batch import learn_and_rank
from streams.product import ProductLayer
from streams.state import StoredProfile

T0 = 1_709_316_000.0
GENRES = ["Drama", "Comedy", "Horror", "Documentary"]


def catalogue() -> list[dict]:
    titles = [{"title_id": f"t{i}", "name": f"Film {i}", "type": "title_added", "ts": T0 + i,
               "genres": [GENRES[i % 4]], "cast": [f"Actor {i % 5}"],
               "artwork_ids": [f"t{i}-a", f"t{i}-b", f"t{i}-c"]} for i in range(40)]
    titles.append({"title_id": "llama", "name": "The Galactic Llama", "type": "title_added",
                   "ts": T0, "genres": ["Horror"], "cast": ["Zoë Ödegaard"],
                   "artwork_ids": ["llama-1", "llama-2"]})
    return titles


def setup(**overrides) -> tuple[Hybrid, ProductLayer]:
    model = Hybrid(seed=1, exploration=0.0)
    product = ProductLayer(Settings(**overrides), lambda n, ts: model.trending.top(n, ts))
    for title in catalogue():
        model.add_title(title)
        product.add_title(title)
    return model, product


def event(n: int, user: str, kind: str, **fields) -> dict:
    return {"event_id": f"{user}-{n}", "type": kind, "user_id": user, "ts": T0 + 60 * n,
            "device": "tv", "country": "SE", **fields}


def run(model, product, events, profiles=None):
    profiles = profiles if profiles is not None else {}
    stored = {}
    for e in events:
        uid = e["user_id"]
        if uid not in stored:
            profile = profiles.setdefault(uid, UserProfile(uid))
            stored[uid] = StoredProfile(profile, {}, 0, {})
    ranked = learn_and_rank(events, [True] * len(events), stored, model, top_n=10,
                            history_cap=200, model_version="v", product=product)
    product.take_messages()
    product.end_batch()
    return {orjson.loads(v)["user_id"]: orjson.loads(v) for _, v in ranked.recommendations}


def warm_up(model, product):
    # Others watch horror titles together, and dramas together: two clusters to go on.
    events = []
    for u in range(10):
        for k, title in enumerate(["t2", "t6", "t10", "llama", "t14"]):
            events.append(event(k, f"horror{u}", "complete", title_id=title,
                                position_s=100.0, duration_s=100.0))
        for k, title in enumerate(["t0", "t4", "t8", "t12", "t16", "t20"]):
            events.append(event(k, f"drama{u}", "complete", title_id=title,
                                position_s=100.0, duration_s=100.0))
    run(model, product, events)


def test_every_message_gets_rows_and_artwork():
    model, product = setup()
    warm_up(model, product)
    messages = run(model, product, [
        event(1, "u1", "play", title_id="t1", duration_s=3000.0),
        event(2, "u1", "pause", title_id="t1", position_s=1200.0, duration_s=3000.0),
        event(3, "u1", "complete", title_id="t2", position_s=3000.0, duration_s=3000.0),
    ])
    message = messages["u1"]
    rows = {row["id"]: row for row in message["rows"]}
    assert rows["continue_watching"]["items"] == [
        {"title_id": "t1", "resume_s": 1200.0, "artwork_id": rows["continue_watching"]
         ["items"][0]["artwork_id"]}]
    for item in message["items"] + [i for row in message["rows"] for i in row["items"]]:
        assert item["artwork_id"] in {f"{item['title_id']}-{s}" for s in "abc"} | {
            "llama-1", "llama-2"}
    in_rows = [i["title_id"] for row in message["rows"] for i in row["items"]]
    assert len(in_rows) == len(set(in_rows)) and "t2" not in in_rows


def test_a_search_shifts_the_list_toward_what_matched():
    model, product = setup()
    warm_up(model, product)
    before = run(model, product, [event(1, "u2", "play", title_id="t0", duration_s=100.0)])
    profile = UserProfile("u2", history=[("t0", 0.3)], search_terms=["galactik lama"])
    after = run(model, product, [event(2, "u2", "search", query="galactik lama")],
                {"u2": profile})
    horror = {"t2", "t6", "t10", "t14", "llama"}

    def horror_share(message):  # the horror titles' share of the list's total score
        scores = {i["title_id"]: max(i["score"], 0.0) for i in message["items"]}
        return sum(v for t, v in scores.items() if t in horror) / sum(scores.values())

    assert horror_share(after["u2"]) > 1.5 * horror_share(before["u2"]) + 0.01
    reasons = {i["reason"] for i in after["u2"]["items"]}
    assert "because_you_watched:llama" not in reasons  # searched, not watched


def test_a_listed_title_in_progress_says_continue_watching():
    # Two horror titles that co-occur for everyone, both started: each would otherwise be
    # listed "because you watched" the other, which the user is halfway through.
    model, product = setup()
    warm_up(model, product)
    halfway = [e for k, title in enumerate(("t2", "t6")) for e in (
        event(2 * k, "u9", "play", title_id=title, duration_s=3000.0),
        event(2 * k + 1, "u9", "stop", title_id=title, position_s=1500.0, duration_s=3000.0))]
    messages = run(model, product, halfway)
    reasons = {i["title_id"]: i["reason"] for i in messages["u9"]["items"]}
    assert reasons["t2"] == reasons["t6"] == "continue_watching"
    assert any(r.startswith("because_you_watched:") for t, r in reasons.items()
               if t not in ("t2", "t6"))

def test_searches_with_no_match_are_counted_as_demand():
    _, product = setup()
    model = Hybrid(seed=1)
    run(model, product, [event(1, "u3", "search", query="Robot Chef 3"),
                         event(2, "u4", "search", query="robot chef 3"),
                         event(3, "u5", "search", query="odegaard")])
    batch = product._batch  # end_batch ran: a fresh batch, counts went to metrics
    assert batch.searches == 0
    from streamrec import metrics

    assert metrics.SEARCH_UNMATCHED._value.get() >= 2


def test_a_country_spelled_star_is_not_counted_twice_in_every_country_s_demand():
    # "*" names every country in the insight keys: an event saying country "*" must count
    # once there (as a country not known), not once as itself and once for everywhere.
    model, product = setup()
    events = [event(1, "u3", "search", query="Robot Chef 3", country="*"),
              event(2, "u4", "search", query="Robot Chef 3", country="se")]
    stored = {e["user_id"]: StoredProfile(UserProfile(e["user_id"]), {}, 0, {}) for e in events}
    learn_and_rank(events, [True] * len(events), stored, model, top_n=10, history_cap=200,
                   model_version="v", product=product)
    _, args = product.flush_args()
    audience, plays, demand = args[6:9]
    flat = args[9 + 3 * (audience + plays):]
    counts: dict[str, int] = {}
    for key, _query, n in zip(flat[::3], flat[1::3], flat[2::3], strict=True):
        counts[key.rsplit(":", 1)[1]] = counts.get(key.rsplit(":", 1)[1], 0) + n
    assert counts == {"*": 2, "unknown": 1, "SE": 1}


def test_row_policies_and_duplicates():
    model, product = setup(row_duplicates=True, row_items=3)
    warm_up(model, product)
    events = [event(1, "u6", "complete", title_id="t2", position_s=1.0, duration_s=1.0)]
    messages = run(model, product, events)
    rows = messages["u6"]["rows"]
    assert all(len(row["items"]) <= 3 for row in rows)
    fixed_model, fixed = setup()
    warm_up(fixed_model, fixed)
    stored = {"u6": StoredProfile(UserProfile("u6", history=[("t2", 2.0)]), {}, 0, {})}
    message = {"user_id": "u6", "items": [{"title_id": "t6", "score": 1.0,
                                            "reason": "because_you_watched:t2"},
                                           {"title_id": "t3", "score": 0.5, "reason": "trending"}]}
    fixed.decorate(message, stored["u6"], [], events[0], row_policy="fixed")
    order = [row["id"].split(":")[0] for row in message["rows"]]
    assert order == sorted(order, key=["continue_watching", "because_you_watched", "genre",
                                       "new_releases", "trending", "top_picks"].index)


@pytest.mark.parametrize("kind", ["impression", "click"])
def test_displays_teach_the_bandits(kind):
    model, product = setup()
    run(model, product, [event(1, "u7", kind, title_id="t3", row="trending",
                               artwork_id="t3-b")])
    assert product.models.rows.impressions == 1
    assert product.models.rows.clicks == (kind == "click")
    assert product.models.artwork.size()["artworks"] == 1


def test_a_batch_of_pages_is_what_each_user_gets_alone():
    # The events path builds every user's page in one call (prepare_pages); a user's page
    # must not depend on who else is in the batch: same rows, order and artwork.
    model, product = setup()
    product.models.artwork = ArtworkBandit(exploration=0.0, seed=3)
    warm_up(model, product)
    # Every artwork shown and some clicked: no two artworks of a title score the same, so
    # no choice is left to the random tie-break.
    arts = [(t["title_id"], a) for t in catalogue() for a in t["artwork_ids"]]
    run(model, product, [event(k, f"viewer{k % 7}", "click" if k % 3 == 0 else "impression",
                               title_id=t, artwork_id=a, row="trending")
                         for k, (t, a) in enumerate(arts)])
    # ... and the batch's users have tastes of their own: p<i> clicks every title's
    # image i % 3, so a page with another user's artwork would show.
    for _ in range(3):
        run(model, product, [event(k, f"p{i}", "click" if a.endswith("abc"[i % 3]) else
                                   "impression", title_id=t, artwork_id=a)
                             for i in range(12) for k, (t, a) in enumerate(arts[:123])])
    titles = [t["title_id"] for t in catalogue()]
    requests = []
    for i in range(12):
        history = [(titles[(i + 3 * k) % 41], 1.0 + k % 3) for k in range(6)]
        profile = UserProfile(f"p{i}", history=history, completed={titles[(i + 7) % 41]},
                              device=["tv", "mobile", None][i % 3],
                              country=["SE", "US", None][i % 3])
        progress = {titles[(i + 11) % 41]: (600.0 + i, 3000.0, T0 - 3600 * i)} if i % 2 else {}
        stored = StoredProfile(profile, progress, 5 * i, {})
        reasons = ["because_you_watched:" + history[0][0], "genre:Drama", "trending",
                   "similar_users"]
        recs = [(titles[(5 * i + k) % 41], 1.0 - k / 20, reasons[k % 4]) for k in range(10)]
        requests.append((profile.user_id, stored, recs, event(100 + i, profile.user_id, "play"),
                         "greedy"))

    def message(uid, recs):
        return {"user_id": uid, "items": [{"title_id": t, "score": s, "reason": r}
                                          for t, s, r in recs]}

    product.prepare_pages(requests)
    together = {}
    for uid, stored, recs, evt, policy in requests:
        together[uid] = message(uid, recs)
        product.decorate(together[uid], stored, recs, evt, row_policy=policy)
    for uid, stored, recs, evt, policy in requests:
        alone = message(uid, recs)
        product.decorate(alone, stored, recs, evt, row_policy=policy)  # no prepared page
        assert alone == together[uid]
        assert alone["rows"] and all(i["artwork_id"] for r in alone["rows"] for i in r["items"])
    assert any(r["id"] == "continue_watching" for m in together.values() for r in m["rows"])


@pytest.mark.parametrize("small", [False, True])
@pytest.mark.parametrize("duplicates", [False, True])
def test_batch_rows_are_the_per_user_reference_rows(duplicates, small, monkeypatch):
    # prepare_pages fills every user's rows at once on integer codes (rows.fill_slots);
    # rows.candidate_rows + row_titles is the one-user reference: same rows, same titles.
    # Small batches take plain-Python paths (streams.pages.SMALL_*): made to here.
    import random

    import streams.pages
    import streams.rows

    if small:
        monkeypatch.setattr(streams.pages, "SMALL_USERS", 1000)
    else:  # np.unique for distinct keys, as in a batch too large for a dense table
        monkeypatch.setattr(streams.rows, "DENSE_FIRST_CELLS", 0)

    from streams.rows import RowInputs, candidate_rows, row_titles

    model, product = setup(row_items=4, row_duplicates=duplicates)
    for s in range(3):  # series: one episode per row
        for e in range(4):
            product.add_title({"title_id": f"s{s}e{e}", "name": f"S{s}E{e}", "ts": T0 + 99,
                               "kind": "episode", "series_id": f"s{s}",
                               "genres": [GENRES[s]], "artwork_ids": [f"s{s}e{e}-a"]})
    warm_up(model, product)
    rng = random.Random(5)
    ids = [t["title_id"] for t in catalogue()] + [f"s{s}e{e}" for s in range(3)
                                                  for e in range(4)] + ["unknown"]
    reasons = ["because_you_watched:t1", "because_you_watched:t2", "because_you_watched:t3",
               "because_you_watched:", "genre:Drama", "genre:Horror", "genre:Comedy",
               "trending", "similar_users", "genre:"]
    requests = []
    for i in range(40):
        recs = [(t, 1.0, rng.choice(reasons)) for t in rng.sample(ids, rng.randint(0, 14))]
        completed = set(rng.sample(ids, rng.randint(0, 20)))
        progress = {t: (100.0 + k, 3000.0, T0 - 60 * k)
                    for k, t in enumerate(rng.sample(ids, rng.randint(0, 6)))}
        profile = UserProfile(f"r{i}", completed=completed,
                              country=rng.choice(["SE", "US", None]))
        requests.append((f"r{i}", StoredProfile(profile, progress, i, {}), recs,
                         event(200 + i, f"r{i}", "play"), "fixed"))
    product.prepare_pages(requests)
    settings, titles = product.settings, product.titles
    for uid, stored, recs, evt, _ in requests:
        progress = stored.in_progress
        episodes = [t for t in progress if titles.series_of(t) is not None]
        inputs = RowInputs(
            recs=[(t, r) for t, _, r in recs], in_progress=progress,
            resume_order=product.models.resume.rank(progress, evt["ts"], episodes),
            completed=stored.profile.completed,
            trending=product._trending(stored.profile.country, evt["ts"]),
            new_releases=titles.newest(settings.row_items + 5),
            country=stored.profile.country)
        expected = [(row.id, row.title, members) for row, members in row_titles(
            candidate_rows(inputs, titles), titles, settings.row_items, duplicates)]
        rows = orjson.loads(product._batch.pages.pop(uid)[0])
        assert [(r["id"], r["title"], [i["title_id"] for i in r["items"]])
                for r in rows] == expected
        for row in rows:
            for item in row["items"]:
                assert ("resume_s" in item) == (row["id"] == "continue_watching")


def test_page_contexts_from_the_title_table_are_the_token_contexts():
    # Pages build artwork contexts from a per-title table (weighted rows summed); the
    # learning path from each user's summed tokens: the same vectors, up to rounding.
    import numpy as np

    from streams.pages import page_contexts

    _, product = setup()
    titles = [t["title_id"] for t in catalogue()] + ["not-in-catalogue"]
    histories = {f"c{i}": [(titles[(3 * i + k) % len(titles)], 0.5 + k % 3 - (k == 4))
                           for k in range(i % 25)] for i in range(30)}
    devices = [["tv", None, "mobile"][i % 3] for i in range(30)]
    for _ in range(2):  # the second time from the table built by the first
        fast = page_contexts(product._contexts, product.models.artwork, product.titles,
                             list(histories), devices, histories)
        product._batch.tokens.clear()
        slow = product._art_contexts(list(zip(histories, devices, strict=True)), histories)
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)
    product.remove_title("t3")  # a catalogue change empties the table
    assert not product._contexts.rows


@pytest.mark.parametrize("capacity", [400_000, 3])
def test_artwork_kept_between_batches_is_what_a_fresh_table_gives(capacity):
    # Pages keep every title's artwork and its bandit rows between batches
    # (streams.pages.ArtworkTable); they must pick exactly what building them anew for
    # each batch picks, also after the bandit learns artworks it had never seen, evicts
    # some (a small capacity) and after the catalogue changes.
    from streams.pages import ArtworkTable
    from streams.product import ProductModels

    def setup_with_capacity():
        model = Hybrid(seed=1, exploration=0.0)
        product = ProductLayer(Settings(), lambda n, ts: model.trending.top(n, ts),
                               ProductModels(artwork=ArtworkBandit(artwork_capacity=capacity)))
        for title in catalogue():
            model.add_title(title)
            product.add_title(title)
        return model, product

    def batches():
        yield [event(1, "a1", "play", title_id="t1"), event(2, "a2", "play", title_id="t3")]
        # t39, the newest title, is on every page; its artwork c becomes the one to show.
        yield [event(3 + k, f"c{k}", "click", title_id="t39", row="new_releases",
                     artwork_id="t39-c") for k in range(20)]
        yield "add"
        yield [event(5, "a1", "play", title_id="new"),
               event(6, "a3", "impression", title_id="new", row="new_releases",
                     artwork_id="new-x")]
        yield [event(30 + k, "a3", "impression", title_id=f"t{k}", row="trending",
                     artwork_id=f"t{k}-a") for k in range(30, 36)]
        yield [event(7, "a2", "complete", title_id="t3", position_s=1.0, duration_s=1.0)]

    kept_model, kept = setup_with_capacity()
    fresh_model, fresh = setup_with_capacity()
    for model, product in ((kept_model, kept), (fresh_model, fresh)):
        warm_up(model, product)
    kept_profiles, fresh_profiles = {}, {}
    shown = []
    for step in batches():
        if step == "add":
            title = {"title_id": "new", "name": "New", "type": "title_added", "ts": T0 + 500,
                     "genres": ["Drama"], "artwork_ids": ["new-x", "new-y"]}
            for model, product in ((kept_model, kept), (fresh_model, fresh)):
                model.add_title(title)
                product.add_title(title)
            continue
        fresh._artwork_table = ArtworkTable()
        expected = run(fresh_model, fresh, step, fresh_profiles)
        got = run(kept_model, kept, step, kept_profiles)
        for messages in (expected, got):
            for message in messages.values():
                del message["ts"]  # when it was made
        assert got == expected
        shown += [i["artwork_id"] for m in expected.values() for r in m["rows"]
                  for i in r["items"] if i["title_id"] == "t39"]
    assert len(shown) > 20
    if capacity > 3:
        assert shown.count("t39-c") > len(shown) / 2


@pytest.mark.parametrize("log", [4096, 1])
def test_artwork_table_follows_the_bandit_as_it_learns_and_evicts(log, monkeypatch):
    # log 1: the bandit remembers too few newly learned artworks for the table to catch
    # up with; it must start again.
    from types import SimpleNamespace

    import models.artwork

    monkeypatch.setattr(models.artwork, "ADDED_LOG", log)

    import numpy as np

    from streams.pages import ArtworkTable
    from streams.titles import TitleIndex

    bandit = ArtworkBandit(artwork_capacity=2 if log > 1 else 100)
    titles = TitleIndex()
    titles.add({"title_id": "a", "artwork_ids": ["a1", "a2"]})
    titles.add({"title_id": "b", "artwork_ids": ["b1"]})
    codes = SimpleNamespace(titles=["a", "b", "zz"],
                            infos=[titles.get("a"), titles.get("b"), None])
    table = ArtworkTable()

    def assert_current():
        at = table.lookup(bandit, codes)
        kept = table.bandit_rows[at]
        fresh = bandit.artwork_rows([["a1", "a2"], ["b1"], []], kept.shape[1])
        assert np.array_equal(kept, fresh)

    assert_current()
    for learned in (["a1", "a2"], ["b1"], ["a1"], ["a2", "b1"]):  # from the 2nd: evictions
        bandit.learn_many(["u"] * len(learned), learned, [True] * len(learned))
        assert_current()


def test_the_clock_alone_is_written_a_step_or_an_hour_apart(monkeypatch):
    # A one-event batch with nothing but the event-time clock to write skips its round trip
    # while the clock in Redis is less than CLOCK_STEP_S behind and in the same hour.
    import asyncio

    import streams.product

    monkeypatch.setattr(streams.product, "CLOCK_STEP_S", 60.0)
    model, product = setup()
    calls: list[list] = []

    async def record(keys, args):
        calls.append(args)

    product._client, product._flush = object(), record
    product._next_refresh = float("inf")  # no catalogue refresh (no Redis here)
    hour = T0 - T0 % 3600

    def batch(ts: float, kind: str = "impression", **fields) -> object:
        calls.clear()
        e = {"event_id": f"e{ts}-{kind}", "type": kind, "user_id": "u1", "ts": ts,
             "device": "tv", "country": "SE", "title_id": "t1", **fields}
        learn_and_rank([e], [True], {"u1": StoredProfile(UserProfile("u1"), {}, 0, {})},
                       model, top_n=5, history_cap=200, model_version="v", product=product)
        product.take_messages()
        asyncio.run(product.flush())
        return calls[0][5] if calls else None  # the clock written, if a call was made

    assert batch(hour + 10) == hour + 10  # the first one
    assert batch(hour + 30) is None  # 20 s later: skipped
    assert batch(hour + 20) is None  # older than the one written: skipped
    assert batch(hour + 70) == hour + 70  # a step after the one written
    assert batch(hour + 100, "search", query="no such film", title_id=None) == hour + 100
    assert batch(hour + 3590) == hour + 3590
    assert batch(hour + 3610) == hour + 3610  # 20 s later, but a new hour


def test_the_same_catalogue_entry_again_keeps_what_was_learned_about_the_title():
    # Every worker's catalogue reader and the catalogue agent both add each title, and a
    # replayed catalogue adds it again: none of that may reset the title's trend.
    model, product = setup()
    warm_up(model, product)
    ts = T0 + 3600
    assert "llama" in product.models.trending.top("SE", 10, ts)
    llama = next(t for t in catalogue() if t["title_id"] == "llama")
    product.add_title(dict(llama))
    assert "llama" in product.models.trending.top("SE", 10, ts)
