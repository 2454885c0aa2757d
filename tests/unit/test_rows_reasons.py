"""Rows and item reasons agree: what a consumer of a recommendation message sees.

A listed title the user has started says ``continue_watching`` (``ProductLayer.decorate``).
Its page is built from those reasons: such a title claims no "because you watched" or
genre row (the other titles get those rows), and it is in the continue watching row or in
no row (the row holds ``STREAMREC_ROW_ITEMS``; the least likely to be resumed are left
out). The events path builds pages for a whole batch on flat arrays (``streams.pages``),
a lone user's through plain-Python shortcuts, and ``streams.rows.candidate_rows`` +
``row_titles`` is the one-user reference: all three are checked.
"""

from __future__ import annotations

from typing import Any

import pytest

from models.base import UserProfile
from streamrec.settings import Settings
from streams.product import ProductLayer
from streams.rows import RowInputs, candidate_rows, row_titles
from streams.state import StoredProfile

T0 = 1_709_316_000.0
GENRES = ["Drama", "Comedy", "Horror", "Documentary"]


def product_layer(**settings: Any) -> ProductLayer:
    product = ProductLayer(Settings(**settings))
    for i in range(40):
        product.add_title({"title_id": f"t{i}", "name": f"Film {i}", "ts": T0 + i,
                           "genres": [GENRES[i % 4]], "artwork_ids": [f"t{i}-a"]})
    return product


def request(uid: str, recs: list[tuple[str, str]],
            progress: dict[str, tuple[float, float, float]]) -> tuple:
    stored = StoredProfile(UserProfile(uid, country="SE"), progress, 3, {})
    ranked = [(t, round(1.0 - k / 50, 6), r) for k, (t, r) in enumerate(recs)]
    return (uid, stored, ranked, {"event_id": f"{uid}-e", "ts": T0 + 3600.0}, "fixed")


def fillers(n: int) -> list[tuple]:
    """Other users of a batch, some with titles in progress: enough candidates for the
    array passes (``streams.pages.SMALL_USERS``, ``streams.rows.SMALL_FILL``)."""
    out = []
    for i in range(n):
        recs = [(f"t{(3 * i + k) % 30}", f"genre:{GENRES[(i + k) % 4]}" if k % 3
                 else f"because_you_watched:t{30 + k % 5}") for k in range(12)]
        progress = {f"t{(3 * i + 1) % 30}": (300.0, 3000.0, T0 - 60.0)} if i % 2 else {}
        out.append(request(f"f{i}", recs, progress))
    return out


def pages(product: ProductLayer, requests: list[tuple], batch: bool) -> dict[str, dict]:
    """Each user's message as emitted: prepared for the whole batch, or built alone."""
    if batch:
        product.prepare_pages(requests)
    out = {}
    for uid, stored, recs, event, policy in requests:
        message = {"user_id": uid, "items": [{"title_id": t, "score": s, "reason": r}
                                             for t, s, r in recs]}
        product.decorate(message, stored, recs, event, row_policy=policy)
        out[uid] = message
    return out


def reference_rows(product: ProductLayer, req: tuple) -> list[tuple[str, list[str]]]:
    """The one-user reference (streams.rows) of a request's rows: (row id, titles)."""
    _, stored, recs, event, _ = req
    settings, titles = product.settings, product.titles
    inputs = RowInputs(
        recs=[(t, r) for t, _, r in recs], in_progress=stored.in_progress,
        resume_order=product.models.resume.rank(stored.in_progress, event["ts"]),
        completed=stored.profile.completed,
        trending=product._trending(stored.profile.country, event["ts"]),
        new_releases=titles.newest(settings.row_items + 5), country=stored.profile.country)
    return [(row.id, members) for row, members in row_titles(
        candidate_rows(inputs, titles), titles, settings.row_items, settings.row_duplicates)]


def rows_of(message: dict) -> dict[str, list[str]]:
    return {row["id"]: [i["title_id"] for i in row["items"]] for row in message["rows"]}


def rows_holding(message: dict, title: str) -> list[str]:
    return [row["id"] for row in message["rows"]
            if any(i["title_id"] == title for i in row["items"])]


# The user is halfway through t0 and t1, which the ranking lists first for a genre and a
# source of their own; the other titles support two genres and two sources besides.
STARTED = {"t0": (600.0, 3000.0, T0 - 60.0), "t1": (900.0, 3000.0, T0 - 120.0)}
RANKED = [("t0", "genre:Horror"), ("t1", "because_you_watched:t20"),
          ("t2", "genre:Drama"), ("t3", "because_you_watched:t21"),
          ("t4", "genre:Comedy"), ("t5", "because_you_watched:t22"),
          ("t6", "genre:Drama"), ("t7", "similar_users")]
# Five titles in progress (t39, the newest title, not in the ranked list) for a row of
# three.
MANY_STARTED = {t: (300.0 + 100 * k, 3000.0, T0 - 600.0 * k)
                for k, t in enumerate(["t0", "t1", "t2", "t3", "t39"])}
MANY_RANKED = [("t0", "genre:Drama"), ("t1", "genre:Comedy"), ("t2", "genre:Horror"),
               ("t3", "because_you_watched:t20"), ("t4", "genre:Drama"),
               ("t5", "genre:Comedy"), ("t6", "because_you_watched:t21"),
               ("t7", "trending")]


@pytest.mark.parametrize("batch", [False, True], ids=["alone", "batch"])
@pytest.mark.parametrize("duplicates", [False, True], ids=["unique", "duplicates"])
def test_titles_in_progress_leave_the_genre_and_because_rows_to_the_others(batch,
                                                                           duplicates):
    product = product_layer(row_duplicates=duplicates)
    requests = [request("u1", RANKED, STARTED), *(fillers(30) if batch else [])]
    message = pages(product, requests, batch)["u1"]
    rows = rows_of(message)
    reasons = {i["title_id"]: i["reason"] for i in message["items"]}

    assert reasons["t0"] == reasons["t1"] == "continue_watching"
    assert sorted(rows["continue_watching"]) == ["t0", "t1"]
    # Every genre and source the other titles are listed for has its row (at most two of
    # each kind), none is named after an in-progress title's ranked reason.
    assert sorted(r for r in rows if r.startswith(("genre:", "because_you_watched:"))) == [
        "because_you_watched:t21", "because_you_watched:t22", "genre:Comedy", "genre:Drama"]
    assert rows["genre:Drama"] == ["t2", "t6"] and rows["genre:Comedy"] == ["t4"]
    # An item listed for a genre or a source is in that row.
    for title, reason in reasons.items():
        if reason.startswith(("genre:", "because_you_watched:")):
            assert reason in rows_holding(message, title), (title, reason)
    assert [(r["id"], [i["title_id"] for i in r["items"]]) for r in message["rows"]] == (
        reference_rows(product, requests[0]))


@pytest.mark.parametrize("batch", [False, True], ids=["alone", "batch"])
def test_titles_in_progress_the_row_has_no_room_for_are_in_no_row(batch):
    # Five titles in progress, a row of three: the two least likely to be resumed are
    # listed (continue_watching) but shown nowhere, not in a genre row, new releases or
    # top picks.
    product = product_layer(row_items=3)
    requests = [request("u2", MANY_RANKED, MANY_STARTED), *(fillers(30) if batch else [])]
    message = pages(product, requests, batch)["u2"]
    rows = rows_of(message)

    resume_order = product.models.resume.rank(MANY_STARTED, T0 + 3600.0)
    assert rows["continue_watching"] == resume_order[:3]
    for title in resume_order[3:]:
        assert rows_holding(message, title) == [], title
    for item in message["items"]:
        held = rows_holding(message, item["title_id"])
        if item["reason"] == "continue_watching":
            assert held in ([], ["continue_watching"]), item
        else:
            assert "continue_watching" not in held and len(held) == 1, item
    assert sorted(r for r in rows if r.startswith(("genre:", "because_you_watched:"))) == [
        "because_you_watched:t21", "genre:Comedy", "genre:Drama"]
    assert [(r["id"], [i["title_id"] for i in r["items"]]) for r in message["rows"]] == (
        reference_rows(product, requests[0]))


@pytest.mark.parametrize("duplicates", [False, True], ids=["unique", "duplicates"])
def test_a_batch_of_pages_with_titles_in_progress_is_what_each_user_gets_alone(duplicates):
    product = product_layer(row_items=3, row_duplicates=duplicates)
    requests = [request("u1", RANKED, STARTED), request("u2", MANY_RANKED, MANY_STARTED),
                *fillers(30)]
    together = pages(product, requests, batch=True)
    alone = pages(product, requests, batch=False)
    assert together == alone
    for req in requests:  # and the one-user reference's rows
        assert [(r["id"], [i["title_id"] for i in r["items"]])
                for r in together[req[0]]["rows"]] == reference_rows(product, req)
    if not duplicates:
        for message in together.values():
            for item in message["items"]:
                if item["reason"] == "continue_watching":
                    assert rows_holding(message, item["title_id"]) in (
                        [], ["continue_watching"]), (message["user_id"], item)


def test_a_completed_title_started_again_keeps_its_reason_and_its_row():
    # Rewatching: in progress again, but completed, so never in continue watching (an A/B
    # variant's list or a hand-built message may still list it): its item keeps the
    # ranked reason, and the row of that reason shows it.
    product = product_layer()
    uid, stored, recs, event, policy = request("u3", RANKED, STARTED)
    stored.profile.completed.add("t0")
    message = pages(product, [(uid, stored, recs, event, policy)], batch=False)[uid]
    reasons = {i["title_id"]: i["reason"] for i in message["items"]}
    assert (reasons["t0"], reasons["t1"]) == ("genre:Horror", "continue_watching")
    assert rows_holding(message, "t0") == ["genre:Horror"]
    assert rows_of(message)["continue_watching"] == ["t1"]
