"""How one event changes a user's profile: the pure function behind per-user state.

The worker keeps profiles in Redis (``streams.state``, whose Lua script applies the same
rules) and replays a batch's events on the profiles it read, so models learn each event
with the profile as it was just before that event. The offline evaluator keeps profiles
in memory and calls the same function, so the two learn identically.
"""

from __future__ import annotations

from typing import Any

from models.base import UserProfile
from streams.signals import feedback, hour_of_day

# A playback position at or beyond this share of the duration counts as finished.
COMPLETION_RATIO = 0.95
# Most completed titles remembered per user (they are excluded from recommendations).
COMPLETED_CAP = 1000
# Most recent search queries remembered per user.
SEARCH_CAP = 20


# The event types is_completion can be true of.
_MAY_COMPLETE = frozenset({"complete", "stop", "pause", "seek"})


def is_completion(event: dict[str, Any]) -> bool:
    if event["type"] == "complete":
        return True
    duration = event.get("duration_s")
    return bool(
        event["type"] in ("stop", "pause", "seek")
        and duration
        and event.get("position_s", 0.0) >= COMPLETION_RATIO * duration
    )


def event_feedback(profile: UserProfile, event: dict[str, Any]) -> float:
    """What the models learn from ``event`` given the user's ``profile`` just before it.

    ``streams.signals.feedback`` with the re-watch bonus for a play of a completed title;
    0 for events that are not about a title (searches, impressions). The worker and the
    offline evaluator both learn ``model.learn_one(...)`` from this when it is not 0.

    Examples
    --------
    >>> p = UserProfile("u1", completed={"a"})
    >>> event_feedback(p, {"type": "play", "title_id": "a"})
    1.8
    >>> event_feedback(p, {"type": "impression", "title_id": "b"})
    0.0
    """
    title = event.get("title_id")
    kind = event["type"]
    if title is None or kind in ("search", "impression"):
        return 0.0
    return feedback(event, rewatch=kind == "play" and title in profile.completed)


def apply_event(
    profile: UserProfile, event: dict[str, Any], y: float, history_cap: int = 200
) -> UserProfile:
    """Fold one validated event with feedback ``y`` into ``profile`` (in place) and return it.

    Examples
    --------
    >>> p = UserProfile("u1")
    >>> p = apply_event(p, {"type": "play", "title_id": "a", "ts": 0.0}, 0.3)
    >>> p = apply_event(p, {"type": "complete", "title_id": "a", "ts": 60.0}, 2.0)
    >>> p.history, sorted(p.completed)
    ([('a', 2.3)], ['a'])
    """
    get = event.get
    kind = event["type"]
    profile.hour = hour_of_day(event["ts"])
    device = get("device")
    if device:
        profile.device = device
    country = get("country")
    if country:
        profile.country = country
    if kind == "search":
        profile.search_terms.insert(0, event["query"])
        del profile.search_terms[SEARCH_CAP:]
        return profile
    title = get("title_id")
    if title is None or kind == "impression":
        return profile
    history = profile.history
    if history and history[0][0] == title:
        # The usual case (play, pause, stop of one title): the latest title again.
        history[0] = (title, round(y + history[0][1], 6))
    else:
        weight = y
        for i, entry in enumerate(history):
            if entry[0] == title:
                weight += entry[1]
                del history[i]
                break
        history.insert(0, (title, round(weight, 6)))
    del history[history_cap:]
    if kind in _MAY_COMPLETE and is_completion(event):
        profile.completed.add(title)
        if len(profile.completed) > COMPLETED_CAP:
            # Sets are unordered; drop an arbitrary old one rather than grow without bound.
            profile.completed.pop()
    return profile
