"""Online recall@k as ``learn_and_rank`` counts it: every user's first engagement in a
batch against the lists last emitted to them, and separately the engagements with titles
new to the user (not in their history or completed titles just before the event)."""

from __future__ import annotations

from models.base import UserProfile
from models.hybrid import Hybrid
from streams.batch import learn_and_rank
from streams.state import StoredProfile

TS = 1_714_521_600.0


def stored(uid: str, lists: dict[str, list[str]], history: list[str] = (),
           completed: set[str] = frozenset()) -> StoredProfile:
    profile = UserProfile(uid, history=[(t, 1.0) for t in history], completed=set(completed))
    return StoredProfile(profile, {}, 0, lists)


def event(uid: str, kind: str, title: str, n: int) -> dict:
    return {"event_id": f"{uid}-{n}", "type": kind, "user_id": uid, "title_id": title,
            "ts": TS + n}


def test_new_title_recall_counts_only_engagements_with_titles_new_to_the_user() -> None:
    model = Hybrid(seed=0)
    for title in "abcdefgh":
        model.add_title({"title_id": title, "genres": ["Drama"]})
    profiles = {
        # resumes a title in their history: a hit for streamrec, not a new title
        "back": stored("back", {"streamrec": ["a", "b"], "popularity": ["c"]}, history=["a"]),
        # starts a title they never touched: a hit for streamrec, a miss for popularity
        "new": stored("new", {"streamrec": ["b"], "popularity": ["x"]}, history=["a"]),
        # re-watches a completed title that is no longer in the history: not new
        "done": stored("done", {"streamrec": ["z"], "popularity": ["c"]}, completed={"c"}),
        # stopped "f" earlier in this batch, then plays it: in the history by then
        "seq": stored("seq", {"streamrec": ["f"], "popularity": ["f"]}),
        # starts a new title: a miss for streamrec, a hit for popularity
        "new2": stored("new2", {"streamrec": ["h"], "popularity": ["g"]}),
    }
    events = [
        event("back", "resume", "a", 0),
        event("new", "play", "b", 1),
        event("done", "play", "c", 2),
        event("seq", "stop", "f", 3),
        event("seq", "play", "f", 4),
        event("new2", "click", "g", 5),
        event("new2", "play", "a", 6),  # a user's later engagements in a batch are not tests
    ]
    ranked = learn_and_rank(events, [True] * len(events), profiles, model, top_n=10,
                            history_cap=200, model_version="v")
    # (hits, tests): every user's first engagement, as before
    assert ranked.recall == {"streamrec": [3, 5], "popularity": [3, 5]}
    # only "new" (streamrec hit) and "new2" (popularity hit)
    assert ranked.recall_new_titles == {"streamrec": [1, 2], "popularity": [1, 2]}


def test_redeliveries_are_not_tested() -> None:
    model = Hybrid(seed=0)
    profiles = {"u": stored("u", {"streamrec": ["b"], "popularity": ["b"]})}
    ranked = learn_and_rank([event("u", "play", "b", 0)], [False], profiles, model, top_n=10,
                            history_cap=200, model_version="v")
    assert ranked.recall_new_titles == {"streamrec": [0, 0], "popularity": [0, 0]}
