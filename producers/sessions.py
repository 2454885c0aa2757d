"""Viewing sessions drawn from a :class:`~producers.world.World`'s hidden tastes.

A session: the user opens the app (at times that follow their preferred hour of day),
then either continues something in progress, searches, or browses rows of titles
(``impression`` per title shown, with the artwork shown, and a ``click`` on the one
chosen: likelier for titles the user likes and for artwork they are drawn to). Then they
watch: ``play`` -> (``pause`` -> ``resume``)* -> ``seek``? -> ``stop`` at a watch ratio
that grows with their hidden affinity, or ``complete``; sometimes a ``rate``; episodes
often autoplay the next one. Titles are chosen by affinity among candidates sampled by
popularity, so hits get more traffic and every user still has their own taste.

Events come out in event-time order (so per-user order holds by construction); ids are
``sim<seed>-<n>`` in emission order, deterministic for a seed.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
import time
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import numpy as np

from producers.invalid_records import invalid_record
from producers.world import GENRES, World

# Default event clock start; a fixed date keeps output byte-identical for a seed.
DEFAULT_START_TS = 1_704_067_200.0  # 2024-01-01T00:00:00Z
# Sessions a user of average activity starts per day.
SESSIONS_PER_USER_PER_DAY = 1.5
# Spread of session start hours around a user's preferred hour, hours.
HOUR_SPREAD_H = 2.5
# Titles shown in one row of the home screen.
ROW_LENGTH = 4
# In-progress titles remembered per user for "continue watching"; bounds memory.
IN_PROGRESS_CAP = 5
# Made-up titles people search for that the catalogue does not have.
_MISSING_TITLES = (
    "Galactic Llama Returns", "Nightbus to Lisbon", "The Accountant's Garden",
    "Robot Chef 3", "Moonlight Over Kyoto", "Operation Teacup",
)

SessionGen = Generator[dict[str, Any], None, float]


def generate_events(
    world: World,
    n_events: int,
    seed: int = 0,
    start_ts: float | None = None,
    realtime: bool = False,
    invalid_fraction: float = 0.0,
) -> Iterator[dict[str, Any] | bytes]:
    """Yield ``n_events`` viewer events (dicts) for ``world``, in event-time order.

    Parameters
    ----------
    world
        From :func:`producers.world.generate_world`.
    n_events
        Records to yield in all, invalid ones included.
    seed
        Same seed, same world: same events, byte for byte (unless ``realtime``).
    start_ts
        Event time of the first session, epoch seconds (default 2024-01-01T00:00Z).
    realtime
        Stamp ``ts`` with the wall clock when each event is yielded instead of the
        synthetic session clock (for measuring event-to-recommendation latency).
    invalid_fraction
        Share of records, in ``[0, 1)``, that are deliberately invalid and yielded as raw
        ``bytes`` (malformed JSON, missing field, wrong type, unknown type, negative
        position, NaN literal, ...). The valid events are the same for any fraction.

    Examples
    --------
    >>> from producers.world import generate_world
    >>> world = generate_world(30, 40, seed=3)
    >>> events = list(generate_events(world, 200, seed=3))
    >>> len(events), len({e["event_id"] for e in events})
    (200, 200)
    >>> all(a["ts"] <= b["ts"] for a, b in zip(events, events[1:]))
    True
    """
    if isinstance(n_events, bool) or not isinstance(n_events, int) or n_events < 0:
        raise ValueError(f"n_events must be a whole number >= 0, got {n_events!r}")
    if not 0.0 <= invalid_fraction < 1.0:
        raise ValueError(f"invalid_fraction must be within [0, 1), got {invalid_fraction!r}")
    simulation = _Simulation(world, seed, DEFAULT_START_TS if start_ts is None else start_ts)
    valid = simulation.events()
    # A separate stream of random numbers decides what is invalid, so the valid events
    # do not depend on the fraction.
    bad_rng = random.Random(seed * 1_000_003 + 17)
    bad_count = 0
    for _ in range(n_events):
        if invalid_fraction and bad_rng.random() < invalid_fraction:
            ts = time.time() if realtime else simulation.last_ts
            yield invalid_record(bad_rng, world, f"sim{seed}-bad-{bad_count}", ts)
            bad_count += 1
            continue
        event = next(valid)
        if realtime:
            event["ts"] = time.time()
        yield event


class _Simulation:
    """Session arrivals and interleaving; each session is a generator of its events."""

    def __init__(self, world: World, seed: int, start_ts: float) -> None:
        self.world = world
        self.seed = seed
        self.rng = random.Random(seed)
        self.last_ts = start_ts
        self._next_arrival = start_ts
        self._active: set[int] = set()
        # user index -> {title index: position_s}, insertion-ordered, most recent last.
        self._in_progress: dict[int, dict[int, float]] = {}
        self._bucket_users, self._bucket_cum, self._hour_cum, hour_totals = _hour_tables(world)
        mean_total = sum(hour_totals) / 24.0
        base_rate = len(world.users) * SESSIONS_PER_USER_PER_DAY / 86400.0  # sessions/s
        self._rate_by_hour = [base_rate * total / mean_total for total in hour_totals]

    def events(self) -> Iterator[dict[str, Any]]:
        heap: list[tuple[float, int, dict[str, Any], int, SessionGen]] = []
        order = itertools.count()
        ids = itertools.count()
        prefix = f"sim{self.seed}-"
        while True:
            while not heap or self._next_arrival <= heap[0][0]:
                started = self._start_session(self._next_arrival)
                if started is not None:
                    user, session, first = started
                    heapq.heappush(heap, (first["ts"], next(order), first, user, session))
                hour = int(self._next_arrival % 86400.0 // 3600.0)
                self._next_arrival += self.rng.expovariate(self._rate_by_hour[hour])
            ts, _, event, user, session = heapq.heappop(heap)
            following = next(session, None)
            if following is None:
                self._active.discard(user)
            else:
                heapq.heappush(heap, (following["ts"], next(order), following, user, session))
            event["event_id"] = prefix + str(next(ids))
            self.last_ts = ts
            yield event

    def _start_session(
        self, ts: float
    ) -> tuple[int, SessionGen, dict[str, Any]] | None:
        hour = int(ts % 86400.0 // 3600.0)
        for _ in range(5):  # the user drawn may be mid-session already; try a few others
            bucket = _draw(self.rng, self._hour_cum[hour])
            user = int(self._bucket_users[bucket][_draw(self.rng, self._bucket_cum[bucket])])
            if user not in self._active:
                session = self._session(user, ts)
                first = next(session, None)
                if first is None:
                    return None
                self._active.add(user)
                return user, session, first
        return None

    # -- one session -------------------------------------------------------------------

    def _session(self, user: int, t: float) -> SessionGen:
        rng, sim_user = self.rng, self.world.users[user]
        devices = sim_user.devices
        device = devices[1] if len(devices) > 1 and rng.random() < 0.25 else devices[0]
        emit = _Emitter(sim_user.user_id, device, sim_user.country)
        progress = self._in_progress.get(user)
        start = 0.0
        choice = rng.random()
        if progress and choice < 0.3:
            title, start = list(progress.items())[-1]
            t, clicked = yield from self._show_row(emit, user, t, "continue_watching", [title])
            title = clicked if clicked is not None else -1
        elif choice < 0.45:
            t, title = yield from self._search(emit, user, t)
        else:
            title = -1
            for _ in range(2):  # look at up to two rows
                row, candidates = self._row_candidates(user)
                t, clicked = yield from self._show_row(emit, user, t, row, candidates)
                if clicked is not None:
                    title = clicked
                    break
        while title >= 0:
            t, completed = yield from self._watch(emit, user, title, t, start)
            start = 0.0
            title = self._next_title(user, title, completed)
            t += rng.uniform(5.0, 30.0)
            if title >= 0 and self.world.titles[title].get("series_id") is None:
                t, clicked = yield from self._show_row(emit, user, t, "top_picks", [title])
                title = clicked if clicked is not None else -1
        return t

    def _next_title(self, user: int, title: int, completed: bool) -> int:
        """Autoplay the next episode, or carry on with another pick, or stop (-1)."""
        rng, info = self.rng, self.world.titles[title]
        series = info.get("series_id")
        if series is not None and completed and rng.random() < 0.6:
            episodes = self.world.series_episodes[series]
            position = episodes.index(title)
            if position + 1 < len(episodes):
                return episodes[position + 1]
        if rng.random() < 0.2:
            return self._pick_by_affinity(user, self._popular(20))
        return -1

    def _row_candidates(self, user: int) -> tuple[str, list[int]]:
        rng, world = self.rng, self.world
        kind = rng.random()
        if kind < 0.35:
            return "trending", self._popular(ROW_LENGTH)
        if kind < 0.7:
            # The incumbent recommender is decent: the best few of a popular sample.
            pool = self._popular(4 * ROW_LENGTH)
            scores = world.affinities(user, np.array(pool)) + self._noise(len(pool), 0.15)
            return "top_picks", [pool[i] for i in np.argsort(-scores)[:ROW_LENGTH]]
        preference = world.users.genre_preference[user]
        genre = GENRES[_draw(rng, list(itertools.accumulate(preference.tolist())))]
        members = world.titles_by_genre[genre] or list(range(len(world.titles)))
        picks = list(dict.fromkeys(rng.choices(members, k=ROW_LENGTH)))
        return f"genre:{genre}", picks

    def _show_row(
        self, emit: _Emitter, user: int, t: float, row: str, titles: list[int]
    ) -> Generator[dict[str, Any], None, tuple[float, int | None]]:
        """Impressions for ``titles`` in ``row``, then maybe a click on one of them."""
        rng, world = self.rng, self.world
        affinity = world.affinities(user, np.array(titles))
        shown: list[int] = []
        for title in titles:
            slot = rng.randrange(len(world.titles[title]["artwork_ids"]))
            shown.append(slot)
            t += rng.uniform(0.05, 0.5)
            yield emit.impression(t, world.titles[title], row, slot)
        for position, title in enumerate(titles):
            preferred = world.preferred_artwork_slot(user, title)
            # Liking the title matters most; the right artwork lifts clicks by ~2x.
            appeal = 1.6 if shown[position] == preferred else 0.7
            chance = min(0.95, 1.5 * float(affinity[position]) ** 1.2 * appeal * 0.85**position)
            if row == "continue_watching":
                chance = 0.85
            if rng.random() < chance:
                t += rng.uniform(1.0, 8.0)
                yield emit.click(t, world.titles[title], row, shown[position])
                return t, title
        return t, None

    def _search(
        self, emit: _Emitter, user: int, t: float
    ) -> Generator[dict[str, Any], None, tuple[float, int]]:
        rng, world = self.rng, self.world
        kind = rng.random()
        if kind < 0.08:
            t += rng.uniform(2.0, 10.0)
            yield emit.search(t, rng.choice(_MISSING_TITLES))
            return t, -1
        if kind < 0.3:
            genre = GENRES[int(np.argmax(world.users.genre_preference[user]))]
            pool = world.titles_by_genre[genre] or self._popular(20)
            title = self._pick_by_affinity(user, rng.sample(pool, min(len(pool), 20)))
            query = genre.lower()
        else:
            title = self._pick_by_affinity(user, self._popular(20))
            info = world.titles[title]
            if kind < 0.75:
                name = info["name"]
                if info.get("series_id") is not None:  # "<series> S2E5": search the series
                    name = name.rsplit(" S", 1)[0]
                query = name.lower().removeprefix("the ")
            else:
                query = rng.choice(info["cast"])
        if rng.random() < 0.12:
            query = _typo(rng, query)
        t += rng.uniform(2.0, 10.0)
        yield emit.search(t, query)
        if rng.random() < 0.15:  # found nothing they wanted
            return t, -1
        t, clicked = yield from self._show_row(emit, user, t + 1.0, "search", [title])
        return t, clicked if clicked is not None else -1

    def _watch(
        self, emit: _Emitter, user: int, title: int, t: float, start: float
    ) -> Generator[dict[str, Any], None, tuple[float, bool]]:
        rng, world = self.rng, self.world
        info = world.titles[title]
        duration = info["duration_s"]
        affinity = float(world.affinities(user, np.array([title]))[0])
        completed = rng.random() < 0.85 * affinity**2
        if completed:
            end = duration
        else:
            # Beta centred on the affinity: liked titles are watched much further.
            share = rng.betavariate(0.5 + 4.0 * affinity, 0.5 + 4.0 * (1.0 - affinity))
            end = min(duration - 1.0, start + share * (duration - start))
        end = max(end, min(start + 5.0, duration))
        t += rng.uniform(1.0, 4.0)
        yield emit.playback("play", t, info, start)
        position = start
        stops = [(rng.uniform(position, end), "pause") for _ in range(_count(rng, 0.35, 4))]
        if rng.random() < 0.15:
            stops.append((rng.uniform(position, end), "seek"))
        for point, action in sorted(stops):
            if point < position:  # a backward seek moved us; this point has passed
                continue
            t += point - position
            position = point
            if action == "seek":
                jump = rng.uniform(30.0, 300.0) if rng.random() < 0.7 else -rng.uniform(10, 60)
                position = min(max(0.0, point + jump), end)
                yield emit.playback("seek", t, info, position)
            else:
                yield emit.playback("pause", t, info, position)
                t += min(rng.expovariate(1 / 120.0), 1800.0)
                yield emit.playback("resume", t, info, position)
        t += max(end - position, 0.0)
        progress = self._in_progress.setdefault(user, {})
        progress.pop(title, None)
        if completed:
            yield emit.playback("complete", t, info, duration)
        else:
            yield emit.playback("stop", t, info, end)
            progress[title] = round(end, 1)
            while len(progress) > IN_PROGRESS_CAP:
                del progress[next(iter(progress))]
        if rng.random() < 0.15:
            rating = min(5, max(1, round(1.0 + 4.0 * affinity + rng.gauss(0.0, 0.7))))
            t += rng.uniform(5.0, 60.0)
            yield emit.rate(t, info, rating)
        return t, completed

    # -- helpers -----------------------------------------------------------------------

    def _popular(self, k: int) -> list[int]:
        """Up to ``k`` distinct title indices sampled by popularity."""
        cum = self.world.popularity_cumulative
        picks = self.rng.choices(range(len(cum)), cum_weights=cum, k=k)
        return list(dict.fromkeys(picks))

    def _pick_by_affinity(self, user: int, pool: list[int]) -> int:
        """The user's pick from ``pool``: softmax of affinity, so mostly but not always
        the best (temperature 0.1 on a 0..1 scale)."""
        affinity = self.world.affinities(user, np.array(pool))
        weights = np.exp((affinity - affinity.max()) / 0.1)
        cum = list(itertools.accumulate(weights.tolist()))
        return pool[_draw(self.rng, cum)]

    def _noise(self, n: int, scale: float) -> np.ndarray:
        return np.array([self.rng.gauss(0.0, scale) for _ in range(n)])


class _Emitter:
    """Builds event dicts with the user's context; keeps a stable field order."""

    __slots__ = ("user_id", "device", "country")

    def __init__(self, user_id: str, device: str, country: str) -> None:
        self.user_id, self.device, self.country = user_id, device, country

    def _event(self, kind: str, t: float, **fields: Any) -> dict[str, Any]:
        event = {"event_id": "", "type": kind, "user_id": self.user_id, "ts": round(t, 3)}
        event.update(fields)
        event["device"] = self.device
        event["country"] = self.country
        return event

    def playback(self, kind: str, t: float, info: dict[str, Any], position: float) -> dict:
        return self._event(kind, t, title_id=info["title_id"], position_s=round(position, 1),
                           duration_s=info["duration_s"])

    def impression(self, t: float, info: dict[str, Any], row: str, slot: int) -> dict:
        return self._event("impression", t, title_id=info["title_id"], row=row,
                           artwork_id=info["artwork_ids"][slot])

    def click(self, t: float, info: dict[str, Any], row: str, slot: int) -> dict:
        return self._event("click", t, title_id=info["title_id"], row=row,
                           artwork_id=info["artwork_ids"][slot])

    def search(self, t: float, query: str) -> dict:
        return self._event("search", t, query=query)

    def rate(self, t: float, info: dict[str, Any], rating: int) -> dict:
        return self._event("rate", t, title_id=info["title_id"], rating=rating)


def _hour_tables(
    world: World,
) -> tuple[list[np.ndarray], list[np.ndarray], list[list[float]], list[float]]:
    """Users bucketed by preferred hour (their indices, ascending), the cumulative activity
    along each bucket, and per hour of day the cumulative weight of each bucket (activity
    x closeness of the hour to the bucket's preferred hour). Arrays, 16 bytes a user:
    lists held a Python int and float for each (about 70 bytes)."""
    users = world.users
    by_hour = np.argsort(users.preferred_hour, kind="stable")
    sizes = np.bincount(users.preferred_hour, minlength=24)
    bucket_users = np.split(by_hour, np.cumsum(sizes)[:-1])
    # cumsum adds left to right, as itertools.accumulate did: the same floats.
    bucket_cum = [np.cumsum(users.activity[members]) for members in bucket_users]
    hour_cum: list[list[float]] = []
    totals: list[float] = []
    for hour in range(24):
        weights = []
        for bucket in range(24):
            if not len(bucket_users[bucket]):
                weights.append(0.0)
                continue
            distance = min((hour - bucket) % 24, (bucket - hour) % 24)
            # A floor of 5%: people also watch at unusual hours.
            closeness = math.exp(-(distance**2) / (2 * HOUR_SPREAD_H**2)) + 0.05
            weights.append(closeness * float(bucket_cum[bucket][-1]))
        hour_cum.append(list(itertools.accumulate(weights)))
        totals.append(sum(weights))
    return bucket_users, bucket_cum, hour_cum, totals


def _draw(rng: random.Random, cumulative: Sequence[float] | np.ndarray) -> int:
    """Index drawn with probability proportional to the increments of ``cumulative``."""
    index = bisect.bisect(cumulative, rng.random() * cumulative[-1])
    return min(index, len(cumulative) - 1)


def _count(rng: random.Random, chance: float, cap: int) -> int:
    """How many times a ``chance`` event repeats in a row, at most ``cap``."""
    n = 0
    while n < cap and rng.random() < chance:
        n += 1
    return n


def _typo(rng: random.Random, text: str) -> str:
    if len(text) < 3:
        return text + text[-1:]
    i = rng.randrange(1, len(text) - 1)
    kind = rng.random()
    if kind < 0.4:
        return text[:i] + text[i + 1:]  # dropped letter
    if kind < 0.8:
        return text[:i - 1] + text[i] + text[i - 1] + text[i + 1:]  # swapped letters
    return text[:i] + text[i] + text[i:]  # doubled letter
