"""A title the catalogue removed stays out of what streamrec emits: lists, rows (continue
watching and trending included) and cache hints, however many events still name it (a
stale client playing it, a resume point), until the catalogue adds it back."""

from __future__ import annotations

import pickle

import orjson

from models.base import UserProfile
from models.hybrid import Hybrid
from streams.model_sync import add_titles
from streams.state import StoredProfile
from tests.unit.test_product_layer import T0, event, run, setup, warm_up


def remove(model: Hybrid, product, title_id: str) -> None:
    """What the worker does with a ``title_removed`` record (WorkerRuntime.apply_catalog_title)."""
    model.remove_title(title_id)
    product.remove_title(title_id)


def shown(message: dict) -> set[str]:
    return ({i["title_id"] for i in message["items"]}
            | {i["title_id"] for row in message["rows"] for i in row["items"]})


def test_events_naming_a_removed_title_do_not_bring_it_back():
    model, product = setup()
    warm_up(model, product)
    first = run(model, product, [event(1, f"fan{u}", "play", title_id="t2") for u in range(6)])
    assert any("llama" in shown(m) for m in first.values())
    remove(model, product, "llama")
    # Stale clients keep playing it, to the end, in the user's country: what used to
    # re-learn it (a stub title), re-trend it and re-count it for the cache hints.
    stale = [e for u in range(20) for e in (
        event(2, f"stale{u}", "play", title_id="llama", duration_s=100.0),
        event(3, f"stale{u}", "complete", title_id="llama", position_s=100.0,
              duration_s=100.0))]
    messages = run(model, product, stale)
    messages |= run(model, product, [event(4 + u, f"fan{u}", "play", title_id="t6")
                                     for u in range(6)])
    assert all("llama" not in shown(m) for m in messages.values())
    assert "llama" not in model._items
    assert "llama" not in product.models.trending.top("SE", 50, T0 + 3600)


def test_continue_watching_leaves_out_a_removed_title():
    model, product = setup()
    warm_up(model, product)
    progress = {"t1": (1200.0, 3000.0, T0), "t3": (600.0, 3000.0, T0 + 10)}
    remove(model, product, "t1")
    stored = {"u1": StoredProfile(UserProfile("u1", country="SE"), progress, 3, {})}
    from streams.batch import learn_and_rank

    ranked = learn_and_rank([event(5, "u1", "impression", title_id="t5")], [True], stored,
                            model, top_n=10, history_cap=200, model_version="v",
                            product=product)
    message = orjson.loads(ranked.recommendations[0][1])
    rows = {row["id"]: row for row in message["rows"]}
    assert [i["title_id"] for i in rows["continue_watching"]["items"]] == ["t3"]
    assert "t1" not in shown(message)


def test_cache_hints_leave_out_a_removed_title():
    model, product = setup()
    hour = T0 - T0 % 3600
    plays = [dict(event(k, f"v{k}", "play", title_id="llama" if k % 2 else "t3"),
                  ts=hour + 3600 * h + k) for h in range(3) for k in range(10)]
    run(model, product, plays)
    hints = product.models.hints
    assert "llama" in {t for t, _ in hints.forecasts(hour + 3 * 3600)["SE"]}
    remove(model, product, "llama")
    later = [dict(event(k, f"v{k}", "play", title_id="llama"), ts=hour + 3 * 3600 + k)
             for k in range(10)]
    later.append(dict(event(20, "v20", "play", title_id="t3"), ts=hour + 4 * 3600))
    stored = {e["user_id"]: StoredProfile(UserProfile(e["user_id"]), {}, 0, {}) for e in later}
    from streams.batch import learn_and_rank

    learn_and_rank(later, [True] * len(later), stored, model, top_n=5, history_cap=200,
                   model_version="v", product=product)
    messages = [orjson.loads(v) for topic, _, v in product.take_messages()
                if topic == "cache_hints"]
    assert [m["hour"] for m in messages] == [hour + 3 * 3600, hour + 4 * 3600]
    assert all(t["title_id"] != "llama" for m in messages for t in m["titles"])


def test_a_title_added_back_is_learned_and_listed_again():
    model, product = setup()
    remove(model, product, "llama")
    assert "llama" in model.removed_titles and "llama" in product.titles.removed
    add_titles(model, ["llama"])  # another worker's delta naming it: no row either
    assert "llama" not in model._items
    llama = {"title_id": "llama", "name": "The Galactic Llama", "type": "title_added",
             "ts": T0, "genres": ["Horror"], "artwork_ids": ["llama-1"]}
    model.add_title(llama)
    product.add_title(llama)
    assert "llama" not in model.removed_titles and "llama" not in product.titles.removed
    assert "llama" in model._items


def test_removed_titles_survive_a_checkpoint_and_older_checkpoints_load():
    model = Hybrid(seed=0)
    model.add_title({"title_id": "a", "genres": ["Drama"]})
    model.remove_title("a")
    assert "a" in pickle.loads(pickle.dumps(model)).removed_titles
    del model._removed  # as pickled before removed titles were remembered
    assert "a" not in pickle.loads(pickle.dumps(model)).removed_titles
