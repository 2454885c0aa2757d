"""The simulated world: a catalogue, and viewers with hidden tastes.

Everything here is a pure function of ``(n_users, n_titles, seed)``. The hidden tastes
are the ground truth the simulator draws behaviour from and that ``evaluate`` may use as
an oracle; nothing in the streaming pipeline ever sees them.

A user's hidden affinity for a title (a probability-like number in ``(0, 1)``) is

``sigmoid(-2 + 8 * genre_match + 0.6 * taste + 0.7 * quirk)``

* ``genre_match``: the user's genre preferences (a sparse Dirichlet draw over
  :data:`GENRES`, summing to 1) dotted with the title's genres (each of its 1..3 genres
  weighs ``1/len(genres)``); 0 for an unloved genre, up to ~1 for a user devoted to it;
* ``taste``: a dot product of 8-dimensional latent vectors, roughly standard normal;
  tastes that genres do not explain (pacing, tone, era);
* ``quirk``: a deterministic per-(user, title) term in ``[-1, 1)`` from a hash, so two
  users with the same genre tastes still differ title by title.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from streamrec.exceptions import ConfigError

GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary", "Drama",
    "Family", "Fantasy", "History", "Horror", "Music", "Mystery", "Romance",
    "Science Fiction", "Thriller", "War", "Western",
)
# How often each genre is tagged, relative; dramas and comedies dominate real catalogues.
_GENRE_FREQUENCY = (6, 3, 2, 7, 4, 2, 9, 2, 2, 1, 3, 1, 2, 3, 2, 5, 1, 1)
DEVICES: tuple[str, ...] = ("tv", "mobile", "web", "tablet", "console")
_DEVICE_FREQUENCY = (45, 25, 15, 10, 5)
COUNTRIES: tuple[str, ...] = (
    "US", "GB", "DE", "FR", "BR", "IN", "JP", "ES", "CA", "MX", "IT", "NL", "SE", "PL",
    "AU", "KR",
)
_COUNTRY_FREQUENCY = (30, 8, 7, 6, 8, 10, 5, 4, 4, 4, 3, 2, 2, 2, 3, 2)
# Visual styles of artwork; each user leans towards some (the artwork bandit's target).
ARTWORK_STYLES: tuple[str, ...] = ("character", "action", "scenery", "text", "dark", "bright")

# Catalogue events are dated a year before the default event clock starts (2024-01-01).
CATALOG_TS = 1_672_531_200.0  # 2023-01-01T00:00:00Z
# Memory a world takes, bytes (tracemalloc, rounded up): per viewer, SimUsers' arrays
# (284 with the sessions' hour tables: tastes 8 x 8, genres 18 x 8, styles 6 x 8, ...);
# per title, its catalogue dict (~1,790: names, cast, artwork ids); and the interpreter
# with numpy loaded (~55 MB peak RSS). See memory_needed.
BYTES_PER_USER = 290
BYTES_PER_TITLE = 1_800
BASE_BYTES = 64 * 2**20
# Latent taste dimensions; enough for tastes genres miss, few enough to stay cheap.
_TASTE_DIMS = 8
# Chance that the next catalogue entry starts a series rather than a movie. A series has
# about 11 episodes, so this makes roughly a quarter of all titles episodes.
_SERIES_START_CHANCE = 0.03

_ADJECTIVES = (
    "Silent", "Broken", "Golden", "Last", "Hidden", "Crimson", "Distant", "Wild", "Frozen",
    "Lost", "Burning", "Midnight", "Electric", "Quiet", "Savage", "Paper", "Iron", "Velvet",
    "Hollow", "Bright", "Secret", "Endless", "Little", "Northern", "Fallen", "Lucky",
)
_NOUNS = (
    "Harbor", "Kingdom", "Promise", "Garden", "River", "Signal", "Empire", "Stranger",
    "Summer", "Horizon", "Machine", "Witness", "Island", "Heart", "Frontier", "Storm",
    "Circus", "Mirror", "Orchard", "Engine", "Letter", "Station", "Country", "Dream",
    "Shadow", "Voyage", "Detective", "Winter", "Legacy", "Canyon",
)
_FIRST_NAMES = (
    "Ava", "Noah", "Mia", "Liam", "Zoe", "Omar", "Lena", "Ravi", "Sofia", "Kenji", "Ines",
    "Mateo", "Chloe", "Tariq", "Hana", "Diego", "Nora", "Felix", "Amara", "Jonas", "Priya",
    "Luca", "Maya", "Theo", "Yara", "Emil", "Leila", "Oscar", "Freya", "Malik",
)
_LAST_NAMES = (
    "Moreau", "Okafor", "Lindqvist", "Tanaka", "Alvarez", "Novak", "Haddad", "Kowalski",
    "Reyes", "Schmidt", "Osei", "Fitzgerald", "Ivanova", "Costa", "Nakamura", "Byrne",
    "Mensah", "Rossi", "Larsen", "Dubois", "Kaur", "Petrov", "Santos", "Weber", "Ahmed",
)


@dataclass(eq=False)
class SimUser:
    """One simulated viewer. Everything but ``user_id``, ``devices`` and ``country`` is
    hidden from the pipeline: it only ever sees the behaviour these tastes produce."""

    user_id: str
    index: int
    genre_preference: np.ndarray  # shape (len(GENRES),), sums to 1
    devices: tuple[str, ...]  # the first is the usual one
    country: str
    preferred_hour: int  # UTC hour of day the user most likes to watch
    activity: float  # relative number of sessions; heavy users have several times more
    artwork_style_preference: np.ndarray  # shape (len(ARTWORK_STYLES),), sums to 1

    def favourite_genres(self, n: int = 3) -> list[str]:
        order = np.argsort(-self.genre_preference)[:n]
        return [GENRES[i] for i in order]


# A viewer without a second device (SimUsers.devices).
_NO_DEVICE = -1


class SimUsers(Sequence[SimUser]):
    """The viewers of a :class:`World`, ``users[i]`` the one with ``index`` i.

    Held as arrays, one row per viewer (about 270 bytes each); ``users[i]`` builds its
    :class:`SimUser` when asked. A :class:`SimUser` object per viewer took about 900
    bytes (a million viewers: 1 GB). ``devices`` holds indices into :data:`DEVICES`
    (:data:`_NO_DEVICE` when there is no second device), ``countries`` into
    :data:`COUNTRIES`.
    """

    def __init__(self, genre_preference: np.ndarray, artwork_style_preference: np.ndarray,
                 devices: np.ndarray, countries: np.ndarray, preferred_hour: np.ndarray,
                 activity: np.ndarray) -> None:
        self.genre_preference = genre_preference
        self.artwork_style_preference = artwork_style_preference
        self.devices = devices
        self.countries = countries
        self.preferred_hour = preferred_hour
        self.activity = activity

    def __len__(self) -> int:
        return len(self.activity)

    @overload
    def __getitem__(self, index: int) -> SimUser: ...

    @overload
    def __getitem__(self, index: slice) -> list[SimUser]: ...

    def __getitem__(self, index: int | slice) -> SimUser | list[SimUser]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        i = range(len(self))[index]  # IndexError out of range, as a list's
        return SimUser(
            user_id=f"u{i}",
            index=i,
            genre_preference=self.genre_preference[i],
            devices=tuple(DEVICES[d] for d in self.devices[i].tolist() if d != _NO_DEVICE),
            country=COUNTRIES[self.countries[i]],
            preferred_hour=int(self.preferred_hour[i]),
            activity=float(self.activity[i]),
            artwork_style_preference=self.artwork_style_preference[i],
        )

    def __iter__(self) -> Iterator[SimUser]:
        return (self[i] for i in range(len(self)))

    def index_of(self, user_id: str) -> int:
        """``i`` for ``"u<i>"`` (as written by ``SimUser``), else :class:`KeyError`."""
        digits = user_id[1:]
        if user_id[:1] == "u" and digits.isascii() and digits.isdecimal():
            i = int(digits)
            if i < len(self) and digits == str(i):
                return i
        raise KeyError(user_id)

    def __repr__(self) -> str:
        return f"SimUsers({len(self):,} viewers)"


@dataclass(eq=False)
class World:
    """A catalogue and its viewers, with the hidden truth about who likes what.

    Build it with :func:`generate_world`. ``titles`` are ``catalog`` events (valid under
    :func:`streamrec.schema.validate_catalog`); ``users`` carry hidden tastes.
    """

    seed: int
    titles: list[dict[str, Any]]
    users: SimUsers
    _title_genres: np.ndarray = field(repr=False)
    _title_taste: np.ndarray = field(repr=False)
    _user_genres: np.ndarray = field(repr=False)
    _user_taste: np.ndarray = field(repr=False)
    popularity: np.ndarray = field(repr=False)  # sampling weights, sum to 1
    _artwork_styles: list[tuple[int, ...]] = field(repr=False)
    _title_index: dict[str, int] = field(repr=False)
    # Per title and artwork slot, a small fixed offset: breaks ties between a user's
    # leaning towards styles, so the preferred artwork is not always the same style.
    _artwork_jitter: list[tuple[float, ...]] = field(repr=False)

    def __post_init__(self) -> None:
        cumulative = list(itertools.accumulate(self.popularity.tolist()))
        self.popularity_cumulative: list[float] = cumulative
        self.titles_by_genre: dict[str, list[int]] = {g: [] for g in GENRES}
        self.series_episodes: dict[str, list[int]] = {}
        for i, title in enumerate(self.titles):
            for genre in title["genres"]:
                self.titles_by_genre[genre].append(i)
            if title.get("series_id"):
                self.series_episodes.setdefault(title["series_id"], []).append(i)
        self._quirk_salt = (self.seed * 0x9E3779B97F4A7C15 + 1) % 2**64

    def user_index(self, user_id: str) -> int:
        try:
            return self.users.index_of(user_id)
        except KeyError:
            raise KeyError(f"no simulated user {user_id!r}") from None

    def title_index(self, title_id: str) -> int:
        try:
            return self._title_index[title_id]
        except KeyError:
            raise KeyError(f"no simulated title {title_id!r}") from None

    def affinity(self, user_id: str, title_id: str) -> float:
        """The hidden truth: how much ``user_id`` likes ``title_id``, in ``(0, 1)``.

        Examples
        --------
        >>> world = generate_world(50, 80, seed=1)
        >>> a = world.affinity("u0", "t0")
        >>> 0.0 < a < 1.0 and a == world.affinity("u0", "t0")
        True
        """
        titles = np.array([self.title_index(title_id)], dtype=np.int64)
        return float(self.affinities(self.user_index(user_id), titles)[0])

    def affinities(self, user: int, titles: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`affinity` of user index ``user`` for title indices ``titles``."""
        genre_match = self._title_genres[titles] @ self._user_genres[user]
        taste = self._title_taste[titles] @ self._user_taste[user]
        logit = -2.0 + 8.0 * genre_match + 0.6 * taste + 0.7 * self._quirk(user, titles)
        return 1.0 / (1.0 + np.exp(-logit))

    def artwork_preference(self, user_id: str, title_id: str) -> str:
        """The artwork of ``title_id`` that ``user_id`` is most drawn to (hidden).

        The style the user leans to most among the title's artworks wins; a small
        per-(user, title) term breaks near-ties so it is not the same style everywhere.
        """
        user, title = self.user_index(user_id), self.title_index(title_id)
        return self.titles[title]["artwork_ids"][self.preferred_artwork_slot(user, title)]

    def preferred_artwork_slot(self, user: int, title: int) -> int:
        styles = self._artwork_styles[title]
        leaning = self.users.artwork_style_preference[user]
        jitter = self._artwork_jitter[title]
        scores = [leaning[style] + jitter[k] for k, style in enumerate(styles)]
        return scores.index(max(scores))

    def _quirk(self, user: int, titles: np.ndarray) -> np.ndarray:
        """Deterministic pseudo-random term in [-1, 1) per (user, title): splitmix64.

        Plain Python for the few titles a session looks at (numpy's per-call overhead
        would dominate), numpy for many; both compute the same bits.
        """
        salt = (user * 0xC2B2AE3D27D4EB4F + self._quirk_salt) & _MASK64
        if len(titles) <= 64:
            return np.array([_splitmix(((t * 0x100000001B3) & _MASK64) ^ salt) / 2.0**52 - 1.0
                             for t in titles.tolist()])
        x = titles.astype(np.uint64) * np.uint64(0x100000001B3)
        x ^= np.uint64(salt)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        return (x >> np.uint64(11)).astype(np.float64) / 2.0**52 - 1.0


_MASK64 = 2**64 - 1


def _splitmix(x: int) -> int:
    """splitmix64's finaliser, top 53 bits (so the float conversion is exact)."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> 11


def memory_needed(n_users: int, n_titles: int) -> int:
    """About how many bytes :func:`generate_world` and the sessions drawn from its world
    take (the events themselves are streamed; users in the middle of a title add a few
    hundred bytes each as the simulation goes on).

    Examples
    --------
    >>> round(memory_needed(1_000_000, 2000) / 2**20)
    344
    """
    return n_users * BYTES_PER_USER + n_titles * BYTES_PER_TITLE + BASE_BYTES


def check_world_fits(n_users: int, n_titles: int, available: int | None = None, *,
                     users_option: str = "--users", titles_option: str = "--titles",
                     copies: int = 1) -> None:
    """One line before any work when ``copies`` worlds of this size would not fit in the
    memory available (a MemoryError traceback, or the kernel's OOM killer, partway through
    otherwise); ``available`` defaults to :func:`available_memory`. The options named
    are the ones to tell the user to lower."""
    if available is None:
        available = available_memory()
    needed = copies * memory_needed(n_users, n_titles)
    if available is None or needed <= available:
        return
    where = (f"{users_option} {n_users:,} with {titles_option} {n_titles:,} need about "
             f"{needed / 2**30:,.1f} GiB of memory, and {available / 2**30:,.1f} GiB is "
             "available")
    room = available // copies - memory_needed(0, n_titles)
    if room < BYTES_PER_USER:
        raise ConfigError(f"{where}: use fewer {titles_option}")
    fit = room // BYTES_PER_USER
    fit -= fit % 10 ** max(len(str(fit)) - 2, 0)  # two significant digits, rounded down
    raise ConfigError(f"{where}: use fewer {users_option} (about {fit:,} fit)")


def available_memory() -> int | None:
    """Bytes this process may still take: the kernel's MemAvailable, or what is left of a
    cgroup (v2) memory limit if that is less; None when neither is known (not Linux)."""
    known = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                known.append(int(line.split()[1]) * 1024)  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = Path("/sys/fs/cgroup/memory.current").read_text()
            known.append(int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return min(known) if known else None


def generate_world(n_users: int, n_titles: int, seed: int = 0) -> World:
    """A catalogue of ``n_titles`` titles (movies and series episodes) and ``n_users``
    viewers with hidden tastes, all determined by ``seed``.

    Examples
    --------
    >>> from streamrec.schema import validate_catalog
    >>> world = generate_world(n_users=20, n_titles=30, seed=7)
    >>> len(world.titles), len(world.users)
    (30, 20)
    >>> all(validate_catalog(dict(t)) for t in world.titles)
    True
    """
    if isinstance(n_users, bool) or not isinstance(n_users, int) or n_users <= 0:
        raise ValueError(f"n_users must be a positive whole number, got {n_users!r}")
    if isinstance(n_titles, bool) or not isinstance(n_titles, int) or n_titles <= 0:
        raise ValueError(f"n_titles must be a positive whole number, got {n_titles!r}")
    rng = random.Random(seed)
    nrng = np.random.default_rng([seed, 0x5EED])
    titles, title_genres = _catalogue(n_titles, rng)
    # A few breakout hits and a long tail: Zipf-like weights over a random ranking.
    ranks = nrng.permutation(n_titles)
    popularity = 1.0 / (ranks + 1.0) ** 0.9
    popularity /= popularity.sum()
    artwork_styles = [
        tuple(rng.sample(range(len(ARTWORK_STYLES)), len(t["artwork_ids"]))) for t in titles
    ]
    scale = _TASTE_DIMS ** -0.25  # makes the dot product of two taste vectors ~N(0, 1)
    title_taste = nrng.normal(0.0, scale, size=(n_titles, _TASTE_DIMS))
    user_taste = nrng.normal(0.0, scale, size=(n_users, _TASTE_DIMS))
    # alpha 0.25: most users care about two to four genres, a few are omnivores.
    user_genres = nrng.dirichlet(np.full(len(GENRES), 0.25), size=n_users)
    style_leaning = nrng.dirichlet(np.full(len(ARTWORK_STYLES), 0.5), size=n_users)
    # Each viewer's draws in the order they always came (devices, country, hour,
    # activity), kept as codes in arrays (SimUsers) rather than objects.
    device_code = {device: k for k, device in enumerate(DEVICES)}
    country_code = {country: k for k, country in enumerate(COUNTRIES)}
    devices = np.full((n_users, 2), _NO_DEVICE, dtype=np.int8)
    countries = np.empty(n_users, dtype=np.uint8)
    preferred_hour = np.empty(n_users, dtype=np.uint8)
    activity = np.empty(n_users)
    for i in range(n_users):
        for k, device in enumerate(_devices(rng)):
            devices[i, k] = device_code[device]
        countries[i] = country_code[rng.choices(COUNTRIES, _COUNTRY_FREQUENCY)[0]]
        preferred_hour[i] = _preferred_hour(rng)
        activity[i] = rng.lognormvariate(0.0, 0.8)
    users = SimUsers(user_genres, style_leaning, devices, countries, preferred_hour, activity)
    return World(
        seed=seed,
        titles=titles,
        users=users,
        _title_genres=title_genres,
        _title_taste=title_taste,
        _user_genres=user_genres,
        _user_taste=user_taste,
        popularity=popularity,
        _artwork_styles=artwork_styles,
        _title_index={t["title_id"]: i for i, t in enumerate(titles)},
        _artwork_jitter=[tuple(rng.uniform(-0.05, 0.05) for _ in t["artwork_ids"])
                         for t in titles],
    )


def _catalogue(n_titles: int, rng: random.Random) -> tuple[list[dict[str, Any]], np.ndarray]:
    people = [f"{first} {last}" for first in _FIRST_NAMES for last in _LAST_NAMES]
    rng.shuffle(people)
    # A few stars appear in many titles: weights fall off with a person's rank.
    star_weights = list(itertools.accumulate(1.0 / (k + 1) ** 0.7 for k in range(len(people))))
    titles: list[dict[str, Any]] = []
    genre_rows = np.zeros((n_titles, len(GENRES)))
    series_count = 0
    while len(titles) < n_titles:
        remaining = n_titles - len(titles)
        genres = _genres(rng)
        cast = _cast(rng, people, star_weights)
        year = rng.randint(1960, 2023)
        name = _name(rng)
        if remaining >= 4 and rng.random() < _SERIES_START_CHANCE:
            series_id = f"s{series_count}"
            series_count += 1
            seasons = rng.randint(1, 3)
            per_season = rng.randint(3, 8)
            duration = float(rng.choice((22, 25, 30, 42, 45, 50, 55)) * 60)
            episodes = [(s, e) for s in range(1, seasons + 1) for e in range(1, per_season + 1)]
            for season, episode in episodes[:remaining]:
                titles.append(_title(
                    len(titles), f"{name} S{season}E{episode}", genres, cast,
                    rng.choice(people), year + season - 1, duration, rng,
                    series=(series_id, season, episode),
                ))
        else:
            duration = float(rng.randint(80, 160) * 60)
            titles.append(_title(len(titles), name, genres, cast, rng.choice(people), year,
                                 duration, rng))
    for i, title in enumerate(titles):
        for genre in title["genres"]:
            genre_rows[i, GENRES.index(genre)] = 1.0 / len(title["genres"])
    return titles, genre_rows


def _title(
    index: int, name: str, genres: list[str], cast: list[str], director: str, year: int,
    duration_s: float, rng: random.Random, series: tuple[str, int, int] | None = None,
) -> dict[str, Any]:
    title_id = f"t{index}"
    title: dict[str, Any] = {
        "event_id": f"cat-{title_id}",
        "type": "title_added",
        "ts": CATALOG_TS + index,
        "title_id": title_id,
        "name": name,
        "kind": "movie",
        "genres": genres,
        "cast": cast,
        "director": director,
        "year": year,
        "duration_s": duration_s,
        "artwork_ids": [f"art-{title_id}-{k}" for k in range(rng.choice((3, 4)))],
    }
    if series is not None:
        title["kind"] = "episode"
        title["series_id"], title["season"], title["episode"] = series
    return title


def _genres(rng: random.Random) -> list[str]:
    count = rng.choices((1, 2, 3), (3, 5, 2))[0]
    chosen: list[str] = []
    while len(chosen) < count:
        genre = rng.choices(GENRES, _GENRE_FREQUENCY)[0]
        if genre not in chosen:
            chosen.append(genre)
    return chosen


def _cast(rng: random.Random, people: list[str], star_weights: list[float]) -> list[str]:
    cast: list[str] = []
    for _ in range(rng.randint(3, 6)):
        person = people[bisect.bisect(star_weights, rng.random() * star_weights[-1])]
        if person not in cast:
            cast.append(person)
    return cast


def _name(rng: random.Random) -> str:
    pattern = rng.random()
    if pattern < 0.4:
        return f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
    if pattern < 0.7:
        return f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
    return f"The {rng.choice(_NOUNS)} of the {rng.choice(_NOUNS)}"


def _devices(rng: random.Random) -> tuple[str, ...]:
    first = rng.choices(DEVICES, _DEVICE_FREQUENCY)[0]
    if rng.random() < 0.5:
        second = rng.choices(DEVICES, _DEVICE_FREQUENCY)[0]
        if second != first:
            return (first, second)
    return (first,)


def _preferred_hour(rng: random.Random) -> int:
    # Most people watch in the evening; some at lunch, some late at night.
    slot = rng.random()
    if slot < 0.65:
        return int(rng.gauss(20.5, 1.5)) % 24
    if slot < 0.85:
        return int(rng.gauss(12.5, 1.5)) % 24
    return rng.randrange(24)


def build_world(n_users: int, n_titles: int, seed: int = 0, *, users_option: str = "--users",
                titles_option: str = "--titles") -> World:
    """:func:`generate_world` for a command: one line naming the options to lower, instead
    of a traceback or the OOM killer, when the world does not fit in memory."""
    check_world_fits(n_users, n_titles, users_option=users_option, titles_option=titles_option)
    try:
        return generate_world(n_users, n_titles, seed)
    except MemoryError as exc:  # where the memory available is not known (not Linux)
        raise ConfigError(f"{users_option} {n_users:,} with {titles_option} {n_titles:,} do "
                          f"not fit in memory ({exc}); use fewer {users_option}") from exc
