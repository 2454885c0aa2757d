"""Which event a user's list is made for: ``event_id`` / ``event_ts`` name the latest event
of the user that the list reflects, also when a batch holds duplicates (a redelivery after
a crash, a producer's retry), so a consumer never sees a user's ``event_ts`` go back."""

from __future__ import annotations

import orjson

from models.base import UserProfile
from models.hybrid import Hybrid
from streams.batch import learn_and_rank
from streams.state import StoredProfile, event_digest

TS = 1_714_521_600.0


def event(uid: str, n: int, title: str = "a") -> dict:
    return {"event_id": f"{uid}-{n}", "type": "play", "user_id": uid, "title_id": title,
            "ts": TS + n}


def labels(events: list[dict], applied: list[bool], latest: dict[str, str | None]
           ) -> dict[str, tuple[str, float]]:
    """user -> (event_id, event_ts) of the lists one batch emits; ``latest``: the event
    each user's stored state reflects last (what the state script returns)."""
    model = Hybrid(seed=0)
    for title in "abc":
        model.add_title({"title_id": title, "genres": ["Drama"]})
    profiles = {uid: StoredProfile(UserProfile(uid), {}, 1, {},
                                   last_event_digest=None if eid is None else event_digest(eid))
                for uid, eid in latest.items()}
    ranked = learn_and_rank(events, applied, profiles, model, top_n=3, history_cap=200,
                            model_version="v")
    out = {}
    for _, value in ranked.recommendations:
        message = orjson.loads(value)
        out[message["user_id"]] = (message["event_id"], message["event_ts"])
    return out


def test_a_late_duplicate_of_an_old_event_makes_no_list_labelled_with_it():
    # u1's state went on to u1-5; a producer's retry of u1-1 arrives afterwards.
    assert labels([event("u1", 1)], [False], {"u1": "u1-5"}) == {}


def test_a_redelivered_batch_is_labelled_with_the_event_applied_last():
    # After a crash the batch comes again, all duplicates: the list is the one the state
    # reflects, labelled with the last event applied, wherever it is in the batch.
    batch = [event("u1", 1), event("u1", 2), event("u1", 3)]
    assert labels(batch, [False] * 3, {"u1": "u1-3"}) == {"u1": ("u1-3", TS + 3)}
    # Redelivered in smaller pieces: only the piece holding the latest event gets a list.
    assert labels(batch[:2], [False] * 2, {"u1": "u1-3"}) == {}
    # A retried copy of an older event after the latest one changes nothing.
    late_copy = [event("u1", 3), event("u1", 1)]
    assert labels(late_copy, [False] * 2, {"u1": "u1-3"}) == {"u1": ("u1-3", TS + 3)}


def test_a_duplicate_after_new_events_does_not_relabel_the_list():
    batch = [event("u1", 7), event("u1", 2)]  # u1-2: a retry of an event applied long ago
    assert labels(batch, [True, False], {"u1": "u1-6"}) == {"u1": ("u1-7", TS + 7)}


def test_users_are_labelled_each_by_their_own_events():
    batch = [event("u1", 1), event("u2", 2), event("u1", 3), event("u3", 4)]
    got = labels(batch, [False, False, True, False], {"u1": "u1-1", "u2": "u2-2", "u3": "u3-9"})
    assert got == {"u1": ("u1-3", TS + 3), "u2": ("u2-2", TS + 2)}
