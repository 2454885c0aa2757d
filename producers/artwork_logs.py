"""Artwork logs collected under uniformly random artwork, with a known truth.

What the replay method (Li et al., 2011) needs to estimate an artwork policy's
click-through rate offline: ``impression`` events whose ``artwork_id`` was drawn
uniformly at random among the title's ``artwork_ids``, each followed by a ``click`` when
the user clicked. Because the simulator knows every user's hidden artwork preference
(``World.artwork_preference``), it also knows the true click probability of *any*
artwork, so an estimate can be checked against the truth (:func:`click_probability`).

The click model is the session simulator's for a row's first slot: liking the title
matters most (``affinity ** 1.2``), and the artwork the user is drawn to lifts the click
chance ``PREFERRED_APPEAL / OTHER_APPEAL`` (about 2.3) times over the others.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator
from typing import Any

from producers.world import World

# Appeal of the artwork the user is drawn to, and of any other (producers.sessions).
PREFERRED_APPEAL = 1.6
OTHER_APPEAL = 0.7
CLICK_SCALE = 1.5
MAX_CLICK_PROBABILITY = 0.95
# Event time of the first impression: 2024-01-01T00:00:00Z, as the session simulator.
START_TS = 1_704_067_200.0
# Seconds between impressions (event time) and from an impression to its click.
IMPRESSION_GAP_S = 2.0
CLICK_DELAY_S = 1.0
# The row these impressions are said to come from.
ROW = "artwork_test"


def click_probability(world: World, user_id: str, title_id: str, artwork_id: str) -> float:
    """The hidden truth: the chance ``user_id`` clicks ``title_id`` shown as ``artwork_id``.

    Examples
    --------
    >>> from producers.world import generate_world
    >>> world = generate_world(5, 10, seed=3)
    >>> best = world.artwork_preference("u0", "t0")
    >>> other = next(a for a in world.titles[0]["artwork_ids"] if a != best)
    >>> click_probability(world, "u0", "t0", best) > click_probability(world, "u0", "t0", other)
    True
    """
    affinity = world.affinity(user_id, title_id)
    preferred = world.artwork_preference(user_id, title_id)
    appeal = PREFERRED_APPEAL if artwork_id == preferred else OTHER_APPEAL
    return min(MAX_CLICK_PROBABILITY, CLICK_SCALE * affinity ** 1.2 * appeal)


def generate_artwork_logs(world: World, n_impressions: int, seed: int = 0,
                          start_ts: float = START_TS) -> Iterator[dict[str, Any]]:
    """``n_impressions`` impressions with uniformly random artwork, and their clicks.

    Users are drawn by their activity, titles by popularity (titles with one artwork
    are skipped: there is nothing to choose). Each impression is an ``impression``
    event; a click, drawn from :func:`click_probability`, follows it as a ``click`` event
    with the same ``row`` and ``artwork_id``. Same seed, same logs.

    Examples
    --------
    >>> from producers.world import generate_world
    >>> world = generate_world(20, 30, seed=1)
    >>> events = list(generate_artwork_logs(world, 50, seed=1))
    >>> sum(e["type"] == "impression" for e in events)
    50
    >>> {e["type"] for e in events} <= {"impression", "click"}
    True
    """
    if isinstance(n_impressions, bool) or not isinstance(n_impressions, int) \
            or n_impressions <= 0:
        raise ValueError(f"n_impressions must be a positive whole number, got {n_impressions!r}")
    rng = random.Random(seed)
    users = world.users
    user_cum = list(itertools.accumulate(u.activity for u in users))
    choosable = [i for i, t in enumerate(world.titles) if len(t["artwork_ids"]) > 1]
    if not choosable:
        raise ValueError("no title in this world has more than one artwork")
    title_cum = list(itertools.accumulate(float(world.popularity[i]) for i in choosable))
    ts = start_ts
    for n in range(n_impressions):
        user = users[min(bisect.bisect(user_cum, rng.random() * user_cum[-1]), len(users) - 1)]
        pick = min(bisect.bisect(title_cum, rng.random() * title_cum[-1]), len(choosable) - 1)
        title = world.titles[choosable[pick]]
        artwork = rng.choice(title["artwork_ids"])
        device = user.devices[0] if len(user.devices) == 1 or rng.random() < 0.75 \
            else user.devices[1]
        ts += rng.uniform(0.5, 2.0 * IMPRESSION_GAP_S)
        base = {"user_id": user.user_id, "title_id": title["title_id"], "row": ROW,
                "artwork_id": artwork, "device": device, "country": user.country}
        yield {"event_id": f"art{seed}-{n}", "type": "impression", "ts": round(ts, 3), **base}
        if rng.random() < click_probability(world, user.user_id, title["title_id"], artwork):
            yield {"event_id": f"art{seed}-{n}c", "type": "click",
                   "ts": round(ts + CLICK_DELAY_S, 3), **base}
