"""Homepage rows: the page a recommendation message describes, built by pure functions.

Every recommendation message carries ``"rows": [{"id", "title", "items": [{"title_id",
"artwork_id", "resume_s"?}]}]``. The rows, and where their titles come from:

=============================  =============================================================
``continue_watching``          the user's in-progress titles, with the position to resume
                               from (``resume_s``), likeliest to be resumed first
                               (:class:`models.homepage.ResumeModel`)
``because_you_watched:<id>``   the ranked titles whose reason is that title, named after it
``genre:<genre>``              the ranked titles whose reason is that genre
``trending``                   what is trending in the user's country
                               (:class:`models.homepage.CountryTrending`), else everywhere
``new_releases``               the newest titles in the catalogue
``top_picks``                  the rest of the ranked list, in rank order
=============================  =============================================================

Each title is placed in at most one row (unless duplicates are allowed): the most
specific row that has it wins (in the order of the table), and a series shows at most
one episode per row. The order of the rows is the row bandit's
(:class:`models.homepage.RowBandit`); empty rows are left out.

An in-progress title is shown in the continue watching row or nowhere (unless duplicates
are allowed): its item in the ranked list says ``continue_watching`` whatever the ranking
gave, so it claims no because/genre row, and the in-progress titles the row has no room
for (the least likely to be resumed) are left out of the other rows too.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streams.profile import COMPLETION_RATIO
from streams.titles import TitleIndex

PLAYBACK_TYPES = frozenset({"play", "pause", "resume", "seek", "stop", "complete"})
PARTIAL_DONE = frozenset({"stop", "pause", "seek"})
# The continue watching row's id, and the reason of a listed title the user has started
# and not finished (``streams.product``): what brings it to the list is their own viewing.
# Such a title is in that row or in no row, never in another with that reason: a consumer
# who reads continue_watching looks for it (and its resume_s) there, and the reason does
# not depend on how many titles the row holds (STREAMREC_ROW_ITEMS). Giving the reason
# only to the titles the row shows would list the others as fresh picks (a because/genre
# row, no resume position) while the user is halfway through them; those left out are
# the least likely to be resumed (the row is in resume order).
CONTINUE_WATCHING = "continue_watching"
# Sources / genres given their own row, at most.
MAX_BECAUSE_ROWS = 2
MAX_GENRE_ROWS = 2
# Titles of the history that feed the affinity tokens (most recent first).
AFFINITY_HISTORY = 20
# Specificity: a title that two rows want goes to the earlier type here.
ASSIGN_ORDER = ("continue_watching", "because_you_watched", "genre", "new_releases",
                "trending", "top_picks")


def row_type(row_id: str) -> str:
    """``genre:Drama`` -> ``genre``; ``because_you_watched:t1`` -> ``because_you_watched``.

    Examples
    --------
    >>> row_type("genre:Drama"), row_type("trending")
    ('genre', 'trending')
    """
    return row_id.split(":", 1)[0]


def update_in_progress(in_progress: dict[str, tuple[float, float, float]],
                       event: Mapping[str, Any]) -> None:
    """Apply one applied event to ``title -> (position, duration, ts)``, in place.

    The same rule as the events path's Lua script (``streams.state``): a completion (or
    a stop, pause or seek within ``COMPLETION_RATIO`` of the end) removes the title; any
    other playback event with a position records it as the resume point.

    Examples
    --------
    >>> p = {}
    >>> update_in_progress(p, {"type": "pause", "title_id": "a", "ts": 5.0,
    ...                        "position_s": 1200.0, "duration_s": 3000.0})
    >>> p
    {'a': (1200.0, 3000.0, 5.0)}
    >>> update_in_progress(p, {"type": "complete", "title_id": "a", "ts": 9.0,
    ...                        "position_s": 3000.0})
    >>> p
    {}
    """
    kind = event["type"]
    if kind not in PLAYBACK_TYPES:
        return
    title = event["title_id"]
    position = event.get("position_s") or 0.0
    duration = event.get("duration_s") or 0.0
    if kind == "complete" or (kind in PARTIAL_DONE and duration > 0
                              and position >= COMPLETION_RATIO * duration):
        in_progress.pop(title, None)
    elif position > 0:
        in_progress[title] = (position, duration, event["ts"])


def affinity_tokens(history: Sequence[tuple[str, float]], titles: TitleIndex,
                    limit: int = AFFINITY_HISTORY) -> dict[str, float]:
    """The user's genre (``g:``) and cast (``c:``) affinities from their recent titles.

    Examples
    --------
    >>> index = TitleIndex()
    >>> index.add({"title_id": "a", "genres": ["Drama"], "cast": ["Ava Moreau"]})
    >>> affinity_tokens([("a", 2.0), ("zz", 1.0)], index)
    {'g:drama': 2.0, 'c:ava moreau': 1.0}
    """
    out: dict[str, float] = {}
    get = titles.by_id.get
    for title, weight in history[:limit]:
        info = get(title)
        if info is None or weight == 0:
            continue
        for key, factor in info.tokens:
            out[key] = out.get(key, 0.0) + factor * weight
    return out


@dataclass(slots=True)
class RowInputs:
    """Everything one user's page is made from (all already computed, no I/O)."""

    recs: Sequence[tuple[str, str]]  # (title_id, reason) in rank order
    in_progress: Mapping[str, tuple[float, float, float]]
    resume_order: Sequence[str]  # in-progress titles, likeliest to be resumed first
    completed: Iterable[str]
    trending: Sequence[str]
    new_releases: Sequence[str]
    country: str | None = None


@dataclass(slots=True)
class Row:
    id: str
    type: str
    title: str
    items: list[dict[str, Any]]
    affinity: float = 0.0


def candidate_rows(inputs: RowInputs, titles: TitleIndex,
                   genre_affinity: Callable[[str], float] | None = None,
                   title_affinity: Callable[[str], float] | None = None,
                   ) -> list[tuple[Row, list[str]]]:
    """Every row the user could get, with its candidate titles (before de-duplication),
    in ``ASSIGN_ORDER``. A ranked title in progress counts as reason ``continue_watching``
    (its item's, see the module docstring): it claims no because/genre row."""
    completed = inputs.completed
    if not isinstance(completed, (set, frozenset)):
        completed = set(completed)
    rows: list[tuple[Row, list[str]]] = []
    resume: list[str] = []
    if inputs.resume_order:
        in_progress = inputs.in_progress
        removed = titles.removed  # (titles the catalogue removed cannot be resumed)
        resume = [t for t in inputs.resume_order
                  if t in in_progress and t not in completed and t not in removed]
        if resume:
            rows.append((Row(CONTINUE_WATCHING, CONTINUE_WATCHING, "Continue watching",
                             []), resume))
    resuming = set(resume)
    because: dict[str, list[str]] = {}
    genres: dict[str, list[str]] = {}
    picks: list[str] = []
    for title, reason in inputs.recs:
        picks.append(title)
        if title in resuming:
            continue
        if reason.startswith("because_you_watched:"):
            arg = reason[20:]
            if arg and (arg in because or len(because) < MAX_BECAUSE_ROWS):
                because.setdefault(arg, []).append(title)
        elif reason.startswith("genre:"):
            arg = reason[6:]
            if arg and (arg in genres or len(genres) < MAX_GENRE_ROWS):
                genres.setdefault(arg, []).append(title)
    get = titles.by_id.get
    for source, members in because.items():
        info = get(source)
        name = info.name if info is not None else source
        affinity = title_affinity(source) if title_affinity else 0.0
        rows.append((Row(f"because_you_watched:{source}", "because_you_watched",
                         f"Because you watched {name}", [], affinity), members))
    for genre, members in genres.items():
        affinity = genre_affinity(genre) if genre_affinity else 0.0
        rows.append((Row(f"genre:{genre}", "genre", genre, [], affinity), members))
    # Completed titles are left out of these two when the rows are filled (fill_rows).
    if inputs.new_releases:
        rows.append((Row("new_releases", "new_releases", "New releases", []),
                     list(inputs.new_releases)))
    if inputs.trending:
        where = f"Trending in {inputs.country}" if inputs.country else "Trending now"
        rows.append((Row("trending", "trending", where, []), list(inputs.trending)))
    if picks:
        rows.append((Row("top_picks", "top_picks", "Top picks for you", []), picks))
    if completed:
        rows = [(row, [t for t in members if t not in completed])
                if row.type in ("new_releases", "trending") else (row, members)
                for row, members in rows]
    return rows


_ASSIGN_RANK = {name: i for i, name in enumerate(ASSIGN_ORDER)}


def _assign_rank(candidate: tuple[Row, list[str]]) -> int:
    return _ASSIGN_RANK.get(candidate[0].type, len(_ASSIGN_RANK))


def fill_rows(candidates: list[tuple[Row, list[str]]], titles: TitleIndex,
              in_progress: Mapping[str, tuple[float, float, float]], max_items: int = 10,
              allow_duplicates: bool = False) -> list[Row]:
    """Give each row its items: most specific row first, each title once (by default),
    one episode per series per row, at most ``max_items`` per row; drops empty rows.
    Without duplicates, continue watching's titles past ``max_items`` are in no row."""
    out = []
    for row, members in row_titles(candidates, titles, max_items, allow_duplicates):
        if row.type == CONTINUE_WATCHING:
            row.items.extend({"title_id": t, "resume_s": round(in_progress[t][0], 1)}
                             for t in members)
        else:
            row.items.extend({"title_id": t} for t in members)
        out.append(row)
    return out


def row_titles(candidates: list[tuple[Row, list[str]]], titles: TitleIndex,
               max_items: int = 10, allow_duplicates: bool = False
               ) -> list[tuple[Row, list[str]]]:
    """:func:`fill_rows`' choice of titles, without building the items: ``(row, titles)``
    for every row that gets any, in the candidates' order."""
    taken: set[str] = set()
    series_of = titles.series.get  # episodes only: most titles are not in it
    chosen: dict[int, list[str]] = {}
    ranks = [_assign_rank(c) for c in candidates]
    ordered = (enumerate(candidates) if ranks == sorted(ranks)
               else sorted(enumerate(candidates), key=lambda ic: _assign_rank(ic[1])))
    for i, (row, members) in ordered:
        picked: list[str] = []
        count = 0
        series_seen: set[str] | None = None if row.type == "continue_watching" else set()
        for title in members:
            if not allow_duplicates and title in taken:
                continue
            if series_seen is not None:
                series = series_of(title)
                if series is not None:
                    if series in series_seen:
                        continue
                    series_seen.add(series)
            picked.append(title)
            taken.add(title)
            count += 1
            if count >= max_items:
                break
        if row.type == CONTINUE_WATCHING:
            # Every in-progress title is taken, shown or not: its item says
            # continue_watching, so it is in this row or in none (the module docstring).
            taken.update(members)
        if picked:
            chosen[i] = picked
    return [(row, chosen[i]) for i, (row, _) in enumerate(candidates) if i in chosen]


def rows_message(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The ``rows`` field of a recommendation message."""
    return [{"id": r.id, "title": r.title, "items": r.items} for r in rows]


# The rows' slots in a page built by fill_slots, in ASSIGN_ORDER: one each, except the
# because-you-watched and genre rows (MAX_BECAUSE_ROWS, MAX_GENRE_ROWS of them).
SLOT_CONTINUE = 0
SLOT_BECAUSE = 1
SLOT_GENRE = SLOT_BECAUSE + MAX_BECAUSE_ROWS
SLOT_NEW = SLOT_GENRE + MAX_GENRE_ROWS
SLOT_TRENDING = SLOT_NEW + 1
SLOT_TOP = SLOT_TRENDING + 1
N_SLOTS = SLOT_TOP + 1
SLOT_TYPES = ("continue_watching", *["because_you_watched"] * MAX_BECAUSE_ROWS,
              *["genre"] * MAX_GENRE_ROWS, "new_releases", "trending", "top_picks")


def first_occurrences(keys: np.ndarray, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """The entries holding each distinct key of ``keys`` (ints in ``[0, n_cells)``) for
    the first time, in order, and each entry's number among those distinct keys: what
    np.unique's ``return_index`` and ``return_inverse`` give once renumbered in order
    of first appearance. Through a dense table of first entries when it is small enough
    (``DENSE_FIRST_CELLS``): a few users' pages cost ~3x less that way than np.unique's
    sort, and a Python dict ~10x more.

    Examples
    --------
    >>> at, number = first_occurrences(np.array([4, 2, 4, 0, 2]), n_cells=5)
    >>> at.tolist(), number.tolist()
    ([0, 1, 3], [0, 1, 0, 2, 1])
    """
    if len(keys) <= FIRST_BY_DICT:
        return _first_occurrences_dict(keys.tolist())
    entries = np.arange(len(keys))
    if n_cells > min(DENSE_FIRST_CELLS, max(4096, DENSE_CELLS_PER_KEY * len(keys))):
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        order = np.argsort(first)
        rank = np.empty(len(first), dtype=np.int64)
        rank[order] = np.arange(len(first))
        return first[order], rank[inverse.reshape(-1)]
    table = np.full(n_cells, len(keys), dtype=np.int64)
    np.minimum.at(table, keys, entries)
    at = np.flatnonzero(table[keys] == entries)
    table[keys[at]] = np.arange(len(at))  # (only the distinct keys' cells are read back)
    return at, table[keys]


# first_occurrences' dense table: at most this many cells (8 bytes each: 8 MiB), and at
# most this many per key (filling a cell costs ~1 ns, sorting a key ~50 ns).
DENSE_FIRST_CELLS = 1 << 20
DENSE_CELLS_PER_KEY = 64
# Keys up to which first_occurrences numbers them with a dict: one user's page asks for
# a few dozen. Measured: the dict costs ~3 us + ~0.2 us a key, the dense table ~16 us
# (its ~7 array calls) up to a few hundred keys; even at ~65 keys.
FIRST_BY_DICT = 48


def _first_occurrences_dict(keys: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`first_occurrences` of a few keys, in Python."""
    number_of: dict[int, int] = {}
    at: list[int] = []
    numbers: list[int] = []
    for entry, key in enumerate(keys):
        number = number_of.get(key)
        if number is None:
            number = number_of[key] = len(at)
            at.append(entry)
        numbers.append(number)
    return np.array(at, dtype=np.int64), np.array(numbers, dtype=np.int64)


def fill_slots(slots: np.ndarray, users: np.ndarray, titles: np.ndarray, groups: np.ndarray,
               n_titles: int, n_groups: int, max_items: int = 10,
               allow_duplicates: bool = False) -> np.ndarray:
    """:func:`row_titles` for many users at once, on integer codes: which candidates
    are picked (a boolean mask).

    Candidate ``i`` is title ``titles[i]`` (``0 <= code < n_titles``) in row slot
    ``slots[i]`` (the ``SLOT_*`` constants, in ``ASSIGN_ORDER``) of user ``users[i]``;
    the candidates are sorted by slot, then user, then their place in the row's list.
    ``groups[i]`` is what may appear once per row: the title's series for an episode
    (outside continue watching), else something unique to the title. The rows are
    filled slot by slot, as :func:`row_titles` fills one user's: a title taken by an
    earlier row is skipped (unless ``allow_duplicates``), then the first title of each
    group, then the first ``max_items``. Every candidate of ``SLOT_CONTINUE`` is taken,
    picked or not (an in-progress title past ``max_items`` is in no other row). One pass
    of array operations per slot, whatever the number of users.

    Examples
    --------
    >>> pick = fill_slots(np.array([SLOT_BECAUSE, SLOT_BECAUSE, SLOT_TOP, SLOT_TOP]),
    ...                   np.zeros(4, dtype=np.int64), np.array([0, 1, 0, 2]),
    ...                   np.array([0, 0, 0, 2]), n_titles=3, n_groups=3)
    >>> pick.tolist()  # 1 is an episode of 0's series; 0 went to the earlier row
    [True, False, False, True]
    """
    if len(slots) <= SMALL_FILL:
        return _fill_slots_loop(slots, users, titles, groups, max_items, allow_duplicates)
    chosen = np.zeros(len(slots), dtype=bool)
    taken = None if allow_duplicates else np.zeros(
        (int(users.max()) + 1) * n_titles, dtype=bool)
    bounds = np.searchsorted(slots, np.arange(int(slots.max()) + 2)).tolist()
    # Where continue watching's candidates start (-1: none; it is the first slot).
    continue_at = 0 if slots[0] == SLOT_CONTINUE else -1
    n_cells = (int(users.max()) + 1) * n_groups
    for a, b in zip(bounds, bounds[1:], strict=False):
        if a == b:
            continue
        who = users[a:b]
        keys = who * n_titles + titles[a:b]
        if taken is None:
            left = np.arange(b - a)
        else:
            left = np.flatnonzero(~taken[keys])
        # The first candidate of each (user, group).
        left = left[first_occurrences(who[left] * n_groups + groups[a:b][left], n_cells)[0]]
        # At most max_items per user: a candidate's place among its user's survivors.
        who_left = who[left]
        left = left[np.arange(len(left)) - np.searchsorted(who_left, who_left) < max_items]
        chosen[a + left] = True
        if taken is not None:
            taken[keys if a == continue_at else keys[left]] = True
    return chosen


# Candidates up to which fill_slots walks them one by one in Python: a few users' pages
# (a paced worker's batches of a handful of events, ~100 candidates a user) cost less
# that way than the fixed ~100 us of the array pass; past ~450 the array pass is cheaper.
SMALL_FILL = 400


def _fill_slots_loop(slots: np.ndarray, users: np.ndarray, titles: np.ndarray,
                     groups: np.ndarray, max_items: int, allow_duplicates: bool
                     ) -> np.ndarray:
    """:func:`fill_slots` one candidate at a time (the same mask): in each slot, a
    title already taken for the user is skipped, then a group already seen in the
    slot's row, then candidates past ``max_items``; continue watching takes all its
    candidates."""
    # Candidates come in runs of one (slot, user): a user's taken titles are a set of
    # their own, a run's groups and count are reset when it starts (no tuple keys).
    chosen = [False] * len(slots)
    taken_of: dict[int, set[int]] = {}
    taken: set[int] = set()
    seen: set[int] = set()
    count = 0
    run_slot = run_user = -1
    slot_list, user_list, title_list = slots.tolist(), users.tolist(), titles.tolist()
    if not allow_duplicates:  # continue watching (the first slot) takes all it is given
        n_continue = bisect_right(slot_list, SLOT_CONTINUE)
        for user, title in zip(user_list[:n_continue], title_list, strict=False):
            taken_of.setdefault(user, set()).add(title)
    for i, (slot, user, title, group) in enumerate(zip(slot_list, user_list, title_list,
                                                        groups.tolist(), strict=True)):
        if user != run_user or slot != run_slot:
            run_slot, run_user = slot, user
            seen = set()
            count = 0
            user_taken = taken_of.get(user)
            if user_taken is None:
                user_taken = taken_of[user] = set()
            taken = user_taken
        if count >= max_items:  # the rest of the run cannot be picked
            continue
        if not allow_duplicates and title in taken and slot != SLOT_CONTINUE:
            continue
        if group in seen:
            continue
        seen.add(group)
        count += 1
        chosen[i] = True
        taken.add(title)
    return np.array(chosen, dtype=bool)
