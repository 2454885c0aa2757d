"""Homepage pages for a whole batch of users at once: the product layer's page building.

:meth:`streams.product.ProductLayer.prepare_pages` calls these in order, once per batch:

1. :func:`gather` flattens every user's inputs (ranked list, in-progress titles in resume
   order, trending of their country, new releases) into lists in user order;
2. :func:`encode_titles` gives every title of the batch an integer code and a group (its
   series, or itself);
3. :func:`fill_rows` turns the candidates into row slots and fills them for all users at
   once (:func:`streams.rows.fill_slots`, the choice :func:`streams.rows.row_titles`
   makes for one user);
4. :func:`describe_rows` names every row and scores its affinity, :func:`order_rows`
   orders each user's rows with one posterior sample of the row bandit;
5. :func:`page_contexts` and :func:`choose_artwork` pick one artwork per (user, title)
   pair with one matrix product;
6. :func:`assemble_pages` cuts the result into each user's rows message.

Why on flat arrays: a batch holds hundreds of users with a few dozen candidates each;
per-user Python loops over rows and titles cost more than the ranking itself. What is
the same for every user (trending per country, new releases, a title's artwork list) is
computed once. A user's page never depends on who else is in the batch (tested: a batch
of pages equals each user's page built alone), and the random draws are those of the
one-user calls, in the same order.

Everything here is a function of its arguments; the per-batch caches (trending lists,
affinity tokens) and the per-process tables kept between batches (artwork contexts,
titles' artwork and bandit rows, the JSON of row items and heads) are passed in. Small
batches (a paced worker's handful of events) are dominated by the fixed cost of each
array operation, hence those tables: what does not change between batches is not
rebuilt for every batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, repeat
from typing import Any, Protocol

import numpy as np
from orjson import dumps

from models.artwork import ArtworkBandit
from models.base import grow
from models.homepage import CountryTrending, ResumeModel, RowBandit
from streams.rows import (
    AFFINITY_HISTORY,
    MAX_BECAUSE_ROWS,
    MAX_GENRE_ROWS,
    N_SLOTS,
    SLOT_BECAUSE,
    SLOT_CONTINUE,
    SLOT_GENRE,
    SLOT_NEW,
    SLOT_TOP,
    SLOT_TRENDING,
    SLOT_TYPES,
    affinity_tokens,
    fill_slots,
    first_occurrences,
)
from streams.titles import TitleIndex

# Most titles in the artwork context table (page_contexts; n_context floats each, 256 B
# by default): cleared and rebuilt beyond it, so a huge catalogue costs at most ~5 MB.
VECTORS_CAP = 20_000
# Most row items and row heads whose JSON is kept (JsonPieces; ~100 B each): a few
# artworks per catalogue title, a few rows per title or genre.
JSON_PIECES_CAP = 50_000
# Titles asked of the trending models per row (more than a row shows: some are filtered).
TRENDING_FETCH = 20
# Recent titles a user's artwork context and row affinities look at (what the state
# script returns of a profile, streams.state.PROFILE_HISTORY).
HISTORY_USED = 50
# len("because_you_watched:") and len("genre:"): a reason's argument starts there.
_BECAUSE = len("because_you_watched:")
_GENRE = len("genre:")

History = Sequence[tuple[str, float]]
Progress = Mapping[str, tuple[float, float, float]]
# (user_id, stored profile, ranked list, event, row policy): one user's page request.
Request = tuple[str, Any, Sequence[Any], Mapping[str, Any], str]
# (rows message as JSON, title -> artwork, titles their searches added): what decorate
# hands out.
Page = tuple[bytes, dict[str, str | None], Any]


class AffinityCaches(Protocol):
    """Per-batch, per-user caches of row affinities (``streams.product._BatchState``):
    each user's tokens, summed positive genre weights and history weights, computed
    once per batch however many rows and displays ask."""

    tokens: dict[str, dict[str, float]]
    genre_total: dict[str, float]
    history_weight: dict[str, dict[str, float]]


# -- per-user affinities (pages and the bandits' learning share them) ------------------------
def user_tokens(uid: str, history: History, titles: TitleIndex,
                cache: dict[str, dict[str, float]]) -> dict[str, float]:
    """A user's affinity tokens (:func:`streams.rows.affinity_tokens`), computed once per
    batch: the first caller's ``history`` wins, so learning and pages agree."""
    tokens = cache.get(uid)
    if tokens is None:
        tokens = cache[uid] = affinity_tokens(history, titles)
    return tokens


def row_affinity(row_id: str, uid: str, history: History, titles: TitleIndex,
                 caches: AffinityCaches) -> float:
    """How close a row is to the user's taste, in [0, 1] (the row bandit's last feature):
    a genre row, the genre's share of their positive genre weight; a "because you
    watched" row, how much they liked its source (weight 3 and above count as fully);
    other rows 0. ``history``: their recent titles, at most ``HISTORY_USED``."""
    kind, _, arg = row_id.partition(":")
    if kind == "genre" and arg:
        tokens = user_tokens(uid, history, titles, caches.tokens)
        total = caches.genre_total.get(uid)
        if total is None:
            total = caches.genre_total[uid] = sum(
                w for k, w in tokens.items() if k.startswith("g:") and w > 0)
        return max(0.0, tokens.get("g:" + arg.lower(), 0.0)) / total if total else 0.0
    if kind == "because_you_watched" and arg:
        weights = caches.history_weight.get(uid)
        if weights is None:
            weights = caches.history_weight[uid] = dict(history[:HISTORY_USED])
        return max(0.0, min(weights.get(arg, 0.0), 3.0)) / 3.0
    return 0.0


def trending_titles(country: str | None, ts: float, cache: dict[str, list[str]],
                    model: CountryTrending,
                    global_trending: Callable[[int, float], Sequence[tuple[str, float]]] | None
                    ) -> list[str]:
    """The trending row's candidates for a country, once per batch (``cache``): the
    country's trend, else (no country, or nothing trending there yet) the global one."""
    key = country or ""
    cached = cache.get(key)
    if cached is None:
        cached = model.top(country, TRENDING_FETCH, ts) if country else []
        if not cached and global_trending is not None:
            cached = [t for t, _ in global_trending(TRENDING_FETCH, ts)]
        cache[key] = cached
    return cached


def rec_pairs(recs: Sequence[Any]) -> list[tuple[str, str]]:
    """``(title_id, reason)`` of a ranked list: the batched ranking's ``(title_id, score,
    reason)`` tuples, message items (dicts), or ``Recommendation`` objects."""
    if not recs:
        return []
    first = recs[0]
    if isinstance(first, tuple):
        return [(t, r) for t, _, r in recs]
    if isinstance(first, dict):
        return [(item["title_id"], item["reason"]) for item in recs]
    return [(r.title_id, r.reason) for r in recs]


# -- 1. gather ------------------------------------------------------------------------------
@dataclass
class Gathered:
    """Every user's page inputs, flattened in user order (``*_counts[u]`` entries each)."""

    uids: list[str]
    histories: dict[str, History]
    rec_titles: list[str]
    rec_reasons: list[str]
    rec_counts: list[int]
    resume_titles: list[str]
    resume_counts: list[int]
    progresses: list[Progress]
    # Country -> index into trend_lists (first come first), and each user's index.
    countries: dict[str | None, int]
    trend_lists: list[list[str]]
    user_country: list[int]
    row_contexts: list[Any]
    devices: list[str | None]
    newest: Sequence[str]
    # (user, title) of new releases and trending titles the user completed.
    excluded: list[tuple[int, str]]


def gather(requests: Sequence[Request], *, newest: Sequence[str], resume: ResumeModel,
           rows: RowBandit, titles: TitleIndex, trending: Callable[[str | None, float],
                                                                   list[str]],
           progress: Mapping[str, Progress], searched: Mapping[str, set[str]],
           seen_history: Mapping[str, History]) -> Gathered:
    """Flatten the batch's requests into lists, user after user.

    A user's history, progress and reasons are as the batch's events left them:
    ``seen_history`` (their history at their first display event of the batch, what the
    bandits learned from) else the profile's; ``progress`` (in-progress titles updated
    by the batch's playback events) else the stored ones; a "because you watched" reason
    whose source was only searched for (``searched``) becomes ``search``. ``trending``
    gives a country's trending titles (asked once per country)."""
    series_of = titles.series.get
    removed = titles.removed
    out = Gathered([], {}, [], [], [], [], [], [], {}, [], [], [], [], newest, [])
    histories, rec_titles, rec_reasons = out.histories, out.rec_titles, out.rec_reasons
    resume_titles, countries, trend_lists = out.resume_titles, out.countries, out.trend_lists
    excluded = out.excluded
    for u, (uid, stored, recs, event, _) in enumerate(requests):
        out.uids.append(uid)
        profile = stored.profile
        ts = event["ts"]
        histories[uid] = (seen_history[uid] if uid in seen_history
                          else profile.history[:HISTORY_USED])
        if recs and isinstance(recs[0], tuple):
            names, _, reasons = zip(*recs, strict=True)
        else:
            pairs = rec_pairs(recs)
            names = tuple(t for t, _ in pairs)
            reasons = tuple(r for _, r in pairs)
        added = searched.get(uid)
        if added:
            reasons = tuple("search" if r.startswith("because_you_watched:")
                            and r[_BECAUSE:] in added else r for r in reasons)
        rec_titles += names
        rec_reasons += reasons
        out.rec_counts.append(len(names))
        completed = profile.completed
        if not isinstance(completed, (set, frozenset)):
            completed = set(completed)
        user_progress = progress.get(uid, stored.in_progress)
        out.progresses.append(user_progress)
        if user_progress:
            episodes = [t for t in user_progress if series_of(t) is not None]
            # A title the catalogue removed cannot be resumed: not in the row.
            ranked = [t for t in resume.rank(user_progress, ts, episodes)
                      if t not in completed and t not in removed]
            resume_titles += ranked
            out.resume_counts.append(len(ranked))
        else:
            out.resume_counts.append(0)
        country = profile.country
        where = countries.get(country)
        if where is None:
            where = countries[country] = len(trend_lists)
            trend_lists.append(trending(country, ts))
        out.user_country.append(where)
        if completed:
            for title in completed.intersection(newest):
                excluded.append((u, title))
            for title in completed.intersection(trend_lists[where]):
                excluded.append((u, title))
        out.row_contexts.append(rows.context(
            profile.device, int(ts // 3600) % 24, stored.events_applied, bool(user_progress)))
        out.devices.append(profile.device)
    return out


# -- 2. title codes -------------------------------------------------------------------------
@dataclass
class TitleCodes:
    """Every title of the batch as an integer code, and what rows and artwork need of it."""

    code: dict[str, int]
    titles: list[str]  # code -> title id
    infos: list[Any]  # code -> catalogue entry (None: not in the catalogue)
    # code -> group: what a row shows once (an episode's series, else the title itself).
    group_of: np.ndarray
    n_series: int
    n_groups: int

    def of(self, names: Sequence[str]) -> np.ndarray:
        return np.fromiter(map(self.code.__getitem__, names), dtype=np.int64,
                           count=len(names))


def encode_titles(gathered: Gathered, titles: TitleIndex) -> TitleCodes:
    """Codes for every title a page of the batch may show, in first-seen order: ranked
    lists, resume lists, new releases, trending lists. Episodes of a series share a
    group (a row shows one of them); every other title is a group of its own, numbered
    after the series (continue watching uses those for episodes too)."""
    seen = dict.fromkeys(gathered.rec_titles)
    seen.update(dict.fromkeys(gathered.resume_titles))
    seen.update(dict.fromkeys(gathered.newest))
    for trend in gathered.trend_lists:
        seen.update(dict.fromkeys(trend))
    batch_titles = list(seen)
    n_titles = len(batch_titles)
    code = dict(zip(batch_titles, range(n_titles), strict=True))
    series_of = titles.series.get
    series_code: dict[str, int] = {}
    series = [series_code.setdefault(s, len(series_code)) if (s := series_of(t)) is not None
              else -1 for t in batch_titles]
    if series_code:
        group_of = np.array(series, dtype=np.int64)
        episode = group_of >= 0
        group_of[~episode] = len(series_code) + np.flatnonzero(~episode)
    else:  # no episodes: every title is a group of its own
        group_of = np.arange(n_titles, dtype=np.int64)
    return TitleCodes(code, batch_titles, list(map(titles.by_id.get, batch_titles)),
                      group_of, len(series_code), len(series_code) + n_titles)


# -- 3. row slots ---------------------------------------------------------------------------
@dataclass
class FilledRows:
    """The batch's row candidates (flat, in ``fill_slots`` order) and which were picked."""

    rec_user: np.ndarray  # ranked list entries: user, title code
    rec_code: np.ndarray
    reasons: list[str]  # distinct reasons of the batch, in first-seen order
    # (user, slot) -> index into reasons of a because/genre row's reason, else -1.
    slot_reason: np.ndarray
    users: np.ndarray  # every candidate: user, slot, title code
    slots: np.ndarray
    cands: np.ndarray
    by_user: np.ndarray  # the picked candidates, per (user, slot) in their lists' order
    row_size: np.ndarray  # (n_users, N_SLOTS) titles picked


# Users up to which fill_rows finds row slots and trending entries in plain Python: a
# paced worker's few users cost less that way than a dozen array calls (~2 us each).
SMALL_USERS = 8


def _user_of(counts: Sequence[int]) -> np.ndarray:
    """``np.repeat(np.arange(len(counts)), counts)``, without repeat's cost for one user."""
    if len(counts) == 1:
        return np.zeros(counts[0], dtype=np.int64)
    return np.repeat(np.arange(len(counts)), counts)


def _reason_slots(rec_user: np.ndarray, rec_reason: np.ndarray, reason_kind: np.ndarray,
                  n_reasons: int, slot_reason: np.ndarray, resuming: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The because/genre slot of every ranked entry that gets one, as ``(slots,
    entries)`` sorted by slot then entry; ``slot_reason[user, slot]`` set to the slot's
    reason. A user's first ``MAX_BECAUSE_ROWS`` sources and ``MAX_GENRE_ROWS`` genres
    (by first appearance) get a slot each; the entries ``resuming`` marks (titles in
    progress) count as reasons without a row."""
    rec_kind = reason_kind[rec_reason]
    if resuming is not None:
        rec_kind[resuming] = 0
    row_slots: list[np.ndarray] = []
    row_entries: list[np.ndarray] = []
    for kind, base, cap in ((1, SLOT_BECAUSE, MAX_BECAUSE_ROWS),
                            (2, SLOT_GENRE, MAX_GENRE_ROWS)):
        at = np.flatnonzero(rec_kind == kind)
        if not len(at):
            continue
        # Each distinct (user, reason), ranked within the user by first appearance.
        first, inverse = first_occurrences(rec_user[at] * n_reasons + rec_reason[at],
                                           len(slot_reason) * n_reasons)
        who = rec_user[at][first]
        rank = np.arange(len(first)) - np.searchsorted(who, who)
        keep = rank[inverse] < cap
        slot = base + rank[inverse]
        row_slots.append(slot[keep])
        row_entries.append(at[keep])
        kept = rank < cap
        slot_reason[rec_user[at][first][kept], base + rank[kept]] = (
            rec_reason[at][first][kept])
    if not row_slots:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    slot_arr = np.concatenate(row_slots)
    entry_arr = np.concatenate(row_entries)
    by_slot = np.lexsort((entry_arr, slot_arr))
    return slot_arr[by_slot], entry_arr[by_slot]


def _reason_slots_loop(rec_user: list[int], rec_reason: list[int], reason_kind: list[int],
                       slot_reason: np.ndarray, resuming: set[int]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_reason_slots` one entry at a time (the same result), for a few users;
    ``resuming``: the entries of titles in progress."""
    slot_of: dict[tuple[int, int], int] = {}
    taken: dict[tuple[int, int], int] = {}  # (user, kind) -> slots given so far
    picked: list[tuple[int, int]] = []
    named: list[tuple[int, int, int]] = []
    for entry, (user, reason) in enumerate(zip(rec_user, rec_reason, strict=True)):
        kind = reason_kind[reason]
        if not kind or entry in resuming:
            continue
        slot = slot_of.get((user, reason))
        if slot is None:
            rank = taken.get((user, kind), 0)
            taken[(user, kind)] = rank + 1
            base, cap = ((SLOT_BECAUSE, MAX_BECAUSE_ROWS) if kind == 1
                         else (SLOT_GENRE, MAX_GENRE_ROWS))
            slot = slot_of[(user, reason)] = base + rank if rank < cap else -1
            if slot >= 0:
                named.append((user, slot, reason))
        if slot >= 0:
            picked.append((slot, entry))
    if not picked:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    for user, slot, reason in named:
        slot_reason[user, slot] = reason
    picked.sort()
    slots, entries = zip(*picked, strict=True)
    return np.array(slots, dtype=np.int64), np.array(entries, dtype=np.int64)


def _trend_entries(codes: TitleCodes, trend_lists: list[list[str]], user_country: list[int],
                   n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's country's trending list, one after the other: (user, title code)."""
    trend_len = [len(t) for t in trend_lists]
    trend_flat = codes.of([t for ts_ in trend_lists for t in ts_])
    trend_start = np.cumsum(trend_len) - trend_len
    per_user_len = np.asarray(trend_len, dtype=np.int64)[user_country]
    trend_user = np.repeat(np.arange(n_users), per_user_len)
    trend_code = trend_flat[np.repeat(trend_start[user_country], per_user_len)
                            + np.arange(int(per_user_len.sum()))
                            - np.repeat(np.cumsum(per_user_len) - per_user_len,
                                        per_user_len)]
    return trend_user, trend_code


def fill_rows(gathered: Gathered, codes: TitleCodes, row_items: int,
              row_duplicates: bool) -> FilledRows:
    """Assign every candidate a row slot (``streams.rows.SLOT_*``) and fill the rows.

    A user's first ``MAX_BECAUSE_ROWS`` "because you watched" sources and first
    ``MAX_GENRE_ROWS`` genres, in rank order, get a slot each, from the reasons of the
    ranked titles not in progress (a title in progress says ``continue_watching``,
    ``ProductLayer.decorate``); every ranked title is also a top pick; continue
    watching, new releases (less what they completed) and trending (likewise) have a
    slot of their own. :func:`streams.rows.fill_slots` then fills all users' rows at
    once, slot after slot in ``ASSIGN_ORDER`` (a title in progress goes to continue
    watching or to no row, as :func:`streams.rows.row_titles` for one user)."""
    n_users = len(gathered.uids)
    n_titles = len(codes.titles)
    rec_code = codes.of(gathered.rec_titles)
    rec_user = _user_of(gathered.rec_counts)
    rec_reasons = gathered.rec_reasons
    reason_code = {r: i for i, r in enumerate(dict.fromkeys(rec_reasons))}
    reason_list = list(reason_code)
    # 1: because you watched <title>, 2: genre <genre>, 0: no row of its own.
    kinds = [1 if r.startswith("because_you_watched:") and len(r) > _BECAUSE
             else 2 if r.startswith("genre:") and len(r) > _GENRE else 0 for r in reason_list]
    reason_of = list(map(reason_code.__getitem__, rec_reasons))
    resume_code = codes.of(gathered.resume_titles)
    resume_user = _user_of(gathered.resume_counts)
    # The ranked entries of titles in the user's resume list: their items will say
    # continue_watching, so their ranked reasons claim no row. A (user, title) table, as
    # fill_slots' "taken": a few array calls a batch (per entry in Python: ~1 us a user).
    resuming = None
    if len(resume_code) and len(rec_code):
        listed = np.zeros(n_users * n_titles, dtype=bool)
        listed[resume_user * n_titles + resume_code] = True
        resuming = listed[rec_user * n_titles + rec_code]
    slot_reason = np.full((n_users, N_SLOTS), -1, dtype=np.int64)
    if n_users <= SMALL_USERS:
        mid_slots, mid_entries = _reason_slots_loop(
            rec_user.tolist(), reason_of, kinds, slot_reason,
            set(np.flatnonzero(resuming).tolist()) if resuming is not None else set())
    else:
        mid_slots, mid_entries = _reason_slots(
            rec_user, np.asarray(reason_of, dtype=np.int64),
            np.asarray(kinds, dtype=np.int64), len(reason_list), slot_reason, resuming)
    newest_code = codes.of(gathered.newest)
    new_user = _user_of([len(gathered.newest)] * n_users)
    new_code = newest_code if n_users == 1 else np.tile(newest_code, n_users)
    # Each user's country's trending list, one after the other.
    trend_lists, user_country = gathered.trend_lists, gathered.user_country
    if n_users <= SMALL_USERS:
        trend_user = _user_of([len(trend_lists[c]) for c in user_country])
        trend_code = codes.of([t for c in user_country for t in trend_lists[c]])
    else:
        trend_user, trend_code = _trend_entries(codes, trend_lists, user_country, n_users)
    if gathered.excluded:
        code = codes.code
        dropped = np.zeros(n_users * n_titles, dtype=bool)
        dropped[[u * n_titles + code[t] for u, t in gathered.excluded]] = True
        keep_new = ~dropped[new_user * n_titles + new_code]
        new_user, new_code = new_user[keep_new], new_code[keep_new]
        keep_trend = ~dropped[trend_user * n_titles + trend_code]
        trend_user, trend_code = trend_user[keep_trend], trend_code[keep_trend]
    # Candidates, slot after slot (each slot's in user order, each list in its order).
    parts = (
        (SLOT_CONTINUE, resume_user, resume_code),
        (mid_slots, rec_user[mid_entries], rec_code[mid_entries]),
        (SLOT_NEW, new_user, new_code),
        (SLOT_TRENDING, trend_user, trend_code),
        (SLOT_TOP, rec_user, rec_code),
    )
    # np.full, not np.broadcast_to: the latter's Python wrapper costs ~5 us a call.
    slots = np.concatenate([s if isinstance(s, np.ndarray) else np.full(len(w), s)
                            for s, w, _ in parts])
    users = np.concatenate([w for _, w, _ in parts])
    cands = np.concatenate([c for _, _, c in parts])
    # Continue watching may show several episodes of a series: each is its own group.
    groups = np.where(slots == SLOT_CONTINUE, codes.n_series + cands, codes.group_of[cands])
    picked = np.flatnonzero(fill_slots(slots, users, cands, groups, n_titles, codes.n_groups,
                                       row_items, row_duplicates))
    by_user = picked[np.argsort(users[picked] * N_SLOTS + slots[picked], kind="stable")]
    row_key = users[by_user] * N_SLOTS + slots[by_user]
    row_size = np.bincount(row_key, minlength=n_users * N_SLOTS).reshape(n_users, N_SLOTS)
    return FilledRows(rec_user, rec_code, reason_list, slot_reason, users, slots, cands,
                      by_user, row_size)


# -- 4. rows: names, affinities, order ------------------------------------------------------
@dataclass
class PageRows:
    """The non-empty rows of the batch, user after user, each user's in ``ASSIGN_ORDER``."""

    user: np.ndarray
    slot: np.ndarray
    meta: np.ndarray  # index into names
    names: list[tuple[str, str]]  # (row id, row title)
    affinity: np.ndarray


def describe_rows(gathered: Gathered, filled: FilledRows, titles: TitleIndex,
                  caches: AffinityCaches) -> PageRows:
    """Every non-empty row's id, title and affinity (:func:`row_affinity`). Ids and
    titles are built once per slot, country or reason, not per user."""
    row_user, row_slot = np.nonzero(filled.row_size)
    row_reason = filled.slot_reason[row_user, row_slot]
    reason_list = filled.reasons
    n_countries = len(gathered.trend_lists)
    # Slots first (because/genre slots are named by their reason), then trending per
    # country, then reasons.
    names: list[tuple[str, str]] = [
        ("continue_watching", "Continue watching"), *[("", "")] * (SLOT_NEW - 1),
        ("new_releases", "New releases"), ("", ""), ("top_picks", "Top picks for you")]
    names += [("trending", f"Trending in {country}" if country else "Trending now")
              for country in gathered.countries]
    name_of = titles.by_id.get
    for reason in reason_list:
        if reason.startswith("because_you_watched:"):
            info = name_of(reason[_BECAUSE:])
            names.append((reason, "Because you watched "
                          + (info.name if info is not None else reason[_BECAUSE:])))
        else:
            names.append((reason, reason[_GENRE:]))
    row_meta = np.where(row_reason >= 0, N_SLOTS + n_countries + row_reason,
                        np.where(row_slot == SLOT_TRENDING,
                                 N_SLOTS + np.asarray(gathered.user_country)[row_user],
                                 row_slot))
    affinity = np.zeros(len(row_user))
    special = np.flatnonzero(row_reason >= 0)
    if len(special):
        uids, histories = gathered.uids, gathered.histories
        affinity[special] = [
            row_affinity(reason_list[r], uids[u], histories[uids[u]], titles, caches)
            for u, r in zip(row_user[special].tolist(), row_reason[special].tolist(),
                            strict=True)]
    return PageRows(row_user, row_slot, row_meta, names, affinity)


def order_rows(rows: PageRows, bandit: RowBandit, policies: Sequence[str],
               row_contexts: Sequence[Any]) -> np.ndarray:
    """The rows in the order shown: each user's by their policy (``fixed``: as built,
    ``greedy``: the bandit's mean, ``learned``: a posterior sample), one sample and one
    sort for every user (``RowBandit.order_flat``, the draws of ``order`` per user)."""
    n_users = len(policies)
    if len(rows.user) and all(policy != "fixed" for policy in policies):
        # Every user's rows are ordered by the bandit (the usual case): no masks.
        return bandit.order_flat(
            bandit.type_slots(SLOT_TYPES)[rows.slot], rows.affinity,
            np.bincount(rows.user, minlength=n_users),
            row_contexts[0][None] if n_users == 1 else np.stack(row_contexts),
            [policy != "greedy" for policy in policies])
    shown = np.arange(len(rows.user))
    learned_user = np.fromiter((policy != "fixed" for policy in policies), dtype=bool,
                               count=n_users)
    rows_of_user = np.bincount(rows.user, minlength=n_users)
    learned_rows = np.flatnonzero(learned_user[rows.user])
    if len(learned_rows):
        type_slot = bandit.type_slots(SLOT_TYPES)
        learned = np.flatnonzero(learned_user)
        ranked = bandit.order_flat(
            type_slot[rows.slot[learned_rows]], rows.affinity[learned_rows],
            rows_of_user[learned], np.stack([row_contexts[u] for u in learned.tolist()]),
            [policies[u] != "greedy" for u in learned.tolist()])
        shown[learned_rows] = learned_rows[ranked]
    return shown


# -- 5. artwork -----------------------------------------------------------------------------
class ContextTable:
    """Artwork context rows of catalogue titles (their hashed genres and cast), built on
    first use; row 0 is for titles not in the catalogue (zeros). Per process: whoever
    holds it clears it on any catalogue change (a title's tokens may have changed)."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.vectors = np.zeros((16, 0))

    def clear(self, *_: Any) -> None:
        self.rows.clear()


def page_contexts(table: ContextTable, artwork: ArtworkBandit, titles: TitleIndex,
                  uids: Sequence[str], devices: Sequence[str | None],
                  histories: Mapping[str, History]) -> np.ndarray:
    """The artwork bandit's contexts of users (one matrix): the weighted sum of their
    recent titles' rows of ``table`` (``ArtworkBandit.token_vectors``), their device;
    what ``ArtworkBandit.contexts`` builds from each user's summed tokens (up to
    rounding), without a per-user dict of tokens."""
    if table.vectors.shape[1] != artwork.n_context or len(table.rows) >= VECTORS_CAP:
        table.clear()
        table.vectors = np.zeros((16, artwork.n_context))
    names: list[str] = []
    weights: list[float] = []
    counts: list[int] = []
    for uid in uids:
        recent = histories[uid][:AFFINITY_HISTORY]
        if recent:
            titles_u, weights_u = zip(*recent, strict=True)
            names += titles_u
            weights += weights_u
        counts.append(len(recent))
    index = table.rows
    rows = np.fromiter(map(index.get, names, repeat(0)), dtype=np.int64, count=len(names))
    if not rows.all():  # titles not in the table yet (row 0: unknown titles, zeros)
        info_of = titles.by_id.get
        new = [(t, info) for t in dict.fromkeys(
                   names[i] for i in np.flatnonzero(rows == 0).tolist())
               if t not in index and (info := info_of(t)) is not None]
        if new:
            held = len(index) + 1
            table.vectors = grow(table.vectors, held + len(new))
            table.vectors[held:held + len(new)] = artwork.token_vectors(
                [info.tokens for _, info in new])
            index.update(zip((t for t, _ in new), range(held, held + len(new)), strict=True))
            rows = np.fromiter(map(index.get, names, repeat(0)), dtype=np.int64,
                               count=len(names))
    weighted = table.vectors[rows] * np.asarray(weights, dtype=np.float64)[:, None]
    ends = list(accumulate(counts))
    if counts and all(counts):  # every user has a history (the usual case): no scatter
        sums = np.add.reduceat(weighted, np.asarray([0, *ends[:-1]], dtype=np.int64),
                               axis=0)
    else:
        sums = np.zeros((len(uids), artwork.n_context))
        nonempty = [u for u, n in enumerate(counts) if n]
        if nonempty:
            starts = np.asarray([ends[u] - counts[u] for u in nonempty], dtype=np.int64)
            sums[nonempty] = np.add.reduceat(weighted, starts, axis=0)
    return artwork.contexts_from_sums(sums, devices)


@dataclass
class ArtworkPicks:
    """The artwork of every entry: ranked list entries first, then the rows' picks
    (``FilledRows.by_user`` order); ``table[code, pick]`` is the artwork id."""

    pick: np.ndarray  # per entry, a column of table (-1, the last column: no artwork)
    table: np.ndarray  # (title code, position) -> artwork id; last column None
    width: int  # columns of table less one


class ArtworkTable:
    """Every title's artwork ids and their rows in the artwork bandit, one row per title,
    kept between batches (building them was most of a small batch's artwork choice).
    Row 0: no artwork (titles not in the catalogue). Per process: whoever holds it clears
    it on any catalogue change; it clears itself when the bandit has taken an artwork's
    row away (:attr:`~models.artwork.ArtworkBandit.rows_version`), and catches up with
    the artwork the bandit has learned since (``learned_since``)."""

    def __init__(self) -> None:
        self.bandit: Any = None
        self.version = -1
        self.clear()

    def clear(self, *_: Any) -> None:
        self.rows: dict[str, int] = {}
        # Rows in use (row 0 is "no artwork"); the arrays have room for more.
        self.used = 1
        self.ids = np.full((1, 1), None, dtype=object)  # last column always None
        self.bandit_rows = np.full((1, 0), -2, dtype=np.int64)
        # Artwork not learned yet -> where it is in bandit_rows (row, column).
        self.unlearned: dict[str, list[tuple[int, int]]] = {}
        self.mark = self.bandit.rows_added if self.bandit is not None else 0

    def lookup(self, artwork: ArtworkBandit, codes: TitleCodes) -> np.ndarray:
        """The table rows of the batch's titles (new titles added)."""
        if (artwork is not self.bandit or artwork.rows_version != self.version
                or len(self.rows) >= VECTORS_CAP):
            self.bandit, self.version = artwork, artwork.rows_version
            self.clear()
        learned = artwork.learned_since(self.mark)
        if learned is None:
            self.clear()
        elif learned and self.unlearned:
            where = [cell for a in learned for cell in self.unlearned.pop(a, ())]
            if where:
                rows, columns = zip(*where, strict=True)
                self.bandit_rows[rows, columns] = artwork.rows_of(
                    self.ids[rows, columns].tolist())
        self.mark = artwork.rows_added
        index = self.rows
        at = np.fromiter(map(index.get, codes.titles, repeat(-1)), dtype=np.int64,
                         count=len(codes.titles))
        if (at < 0).any():
            new = []
            for title, info, row in zip(codes.titles, codes.infos, at.tolist(), strict=True):
                if row < 0:
                    if info is not None and info.artwork_ids:
                        new.append((title, info.artwork_ids))
                    else:  # none: row 0 (the table is cleared when the catalogue changes)
                        index[title] = 0
            if new:
                self._add(artwork, new)
            at = np.fromiter(map(index.get, codes.titles, repeat(0)), dtype=np.int64,
                             count=len(codes.titles))
        return at

    def _add(self, artwork: ArtworkBandit, new: Sequence[tuple[str, Sequence[str]]]) -> None:
        """Rows for titles, their artwork and its rows in the bandit. The arrays grow by
        doubling: titles trickle in a few per batch until the catalogue is covered."""
        held = self.used
        width = max(self.ids.shape[1] - 1, *(len(arts) for _, arts in new))
        need = held + len(new)
        if need > len(self.ids) or width > self.ids.shape[1] - 1:
            size = max(need, 2 * len(self.ids)) if need > len(self.ids) else len(self.ids)
            ids = np.full((size, width + 1), None, dtype=object)
            ids[:held, :self.ids.shape[1] - 1] = self.ids[:held, :-1]
            bandit_rows = np.full((size, width), -2, dtype=np.int64)
            bandit_rows[:held, :self.bandit_rows.shape[1]] = self.bandit_rows[:held]
            self.ids, self.bandit_rows = ids, bandit_rows
        for i, (title, arts) in enumerate(new, held):
            self.ids[i, :len(arts)] = arts
            self.rows[title] = i
        added = artwork.artwork_rows([arts for _, arts in new], width)
        self.bandit_rows[held:need] = added
        self.used = need
        rows, columns = np.nonzero(added == -1)
        ids = self.ids
        for row, column in zip((rows + held).tolist(), columns.tolist(), strict=True):
            self.unlearned.setdefault(ids[row, column], []).append((row, column))


def choose_artwork(artwork: ArtworkBandit, uids: Sequence[str], codes: TitleCodes,
                   filled: FilledRows, contexts: np.ndarray,
                   table: ArtworkTable | None = None) -> ArtworkPicks:
    """One artwork per (user, title) of the batch, all chosen in one call
    (``ArtworkBandit.choose_table``): a title in a user's ranked list and in one of their
    rows shows the same image. Pairs are asked per user, the ranked list's titles then
    the rows' (in ``ASSIGN_ORDER``), each once: the order of the one-user calls.
    ``table``: the titles' artwork, kept between batches (else built for this one)."""
    n_titles = len(codes.titles)
    pair_user = np.concatenate((filled.rec_user, filled.users[filled.by_user]))
    pair_code = np.concatenate((filled.rec_code, filled.cands[filled.by_user]))
    if table is None:
        table = ArtworkTable()
    at = table.lookup(artwork, codes)
    if len(uids) == 1:  # one user: the pairs are in order already, keyed by title alone
        first, pair_of = first_occurrences(pair_code, n_titles)
        picks = artwork.choose_table(uids, table.bandit_rows[at], pair_user[first],
                                     pair_code[first], contexts)
        return ArtworkPicks(picks[pair_of], table.ids[at], table.ids.shape[1] - 1)
    # The pairs user after user (stable: ranked list first), numbered as they come.
    in_order = np.argsort(pair_user, kind="stable")
    first, pair_of = first_occurrences((pair_user * n_titles + pair_code)[in_order],
                                       len(uids) * n_titles)
    chosen_pairs = in_order[first]
    picks = artwork.choose_table(uids, table.bandit_rows[at], pair_user[chosen_pairs],
                                 pair_code[chosen_pairs], contexts)
    entry_pick = np.empty(len(pair_user), dtype=np.int64)
    entry_pick[in_order] = picks[pair_of]
    # (title, position) -> artwork id; the extra last column (None) is "no artwork".
    return ArtworkPicks(entry_pick, table.ids[at], table.ids.shape[1] - 1)


# -- 6. assemble ----------------------------------------------------------------------------
class JsonPieces:
    """The JSON of row items and row heads, kept between batches (the same titles,
    artworks and rows come back batch after batch); cleared past ``JSON_PIECES_CAP``.
    A function of the strings alone, so never stale."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str | None], bytes] = {}
        self.heads: dict[tuple[str, str], bytes] = {}

    def item(self, title: str, artwork: str | None) -> bytes:
        key = (title, artwork)
        encoded = self.items.get(key)
        if encoded is None:
            if len(self.items) >= JSON_PIECES_CAP:
                self.items.clear()
            encoded = self.items[key] = dumps({"title_id": title, "artwork_id": artwork})
        return encoded

    def head(self, row_id: str, row_title: str) -> bytes:
        """A row's JSON up to its items: ``{"id":...,"title":...,"items":[``."""
        key = (row_id, row_title)
        encoded = self.heads.get(key)
        if encoded is None:
            if len(self.heads) >= JSON_PIECES_CAP:
                self.heads.clear()
            encoded = self.heads[key] = (dumps({"id": row_id, "title": row_title})[:-1]
                                         + b',"items":[')
        return encoded


def assemble_pages(gathered: Gathered, codes: TitleCodes, filled: FilledRows,
                   rows: PageRows, shown: np.ndarray, art: ArtworkPicks,
                   searched: Mapping[str, set[str]], pieces: JsonPieces | None = None
                   ) -> dict[str, Page]:
    """Each user's page: their rows message (rows in ``shown`` order) as JSON, their
    ranked titles' artwork, and the titles their searches added (``decorate`` renames
    those reasons).

    The rows message is built as bytes, what ``orjson.dumps`` makes of the list of row
    dicts: each distinct item (title, artwork) and each row's id and title are encoded
    once (``pieces``, kept between batches) and joined per user. Bytes are not tracked by
    the garbage collector; the tens of thousands of small dicts and lists a batch's pages
    used to be were a good part of the product stage's time (collections triggered by
    them)."""
    if pieces is None:
        pieces = JsonPieces()
    width, table, entry_pick = art.width, art.table, art.pick
    n_recs = len(filled.rec_code)
    rec_art = table[filled.rec_code, entry_pick[:n_recs]].tolist()
    # Items: each (title, artwork) shown in the batch encoded once; continue watching's
    # carry the user's resume_s and are encoded per user.
    item_key = filled.cands[filled.by_user] * (width + 1) + entry_pick[n_recs:] % (width + 1)
    batch_titles = codes.titles
    first, inverse = first_occurrences(item_key, len(batch_titles) * (width + 1))
    item_keys = item_key[first]
    item_of: list[int] = inverse.tolist()
    item_code, item_pick = np.divmod(item_keys, width + 1)
    item_pairs = list(zip(map(batch_titles.__getitem__, item_code.tolist()),
                          table[item_code, item_pick].tolist(), strict=True))
    known = pieces.items.get
    item_json = [known(pair) or pieces.item(*pair) for pair in item_pairs]
    items = list(map(item_json.__getitem__, item_of))
    heads = [pieces.head(row_id, row_title) for row_id, row_title in rows.names]
    # Every row, in the order shown: its items are a slice of ``items``.
    sizes = filled.row_size[rows.user, rows.slot]
    ends = np.cumsum(sizes).tolist()
    starts = [end - size for end, size in zip(ends, sizes.tolist(), strict=True)]
    progresses = gathered.progresses
    messages: list[list[bytes]] = [[] for _ in gathered.uids]
    join = b",".join
    for k, u, slot, m in zip(shown.tolist(), rows.user[shown].tolist(),
                             rows.slot[shown].tolist(), rows.meta[shown].tolist(),
                             strict=True):
        if slot == SLOT_CONTINUE:
            progress = progresses[u]
            row_items = join([dumps({"title_id": title, "resume_s": round(progress[title][0], 1),
                                     "artwork_id": artwork})
                              for title, artwork in map(item_pairs.__getitem__,
                                                        item_of[starts[k]:ends[k]])])
        else:
            row_items = join(items[starts[k]:ends[k]])
        messages[u].append(heads[m] + row_items + b"]}")
    pages: dict[str, Page] = {}
    r0 = 0
    rec_titles, rec_counts = gathered.rec_titles, gathered.rec_counts
    for u, uid in enumerate(gathered.uids):
        n = rec_counts[u]
        pages[uid] = (b"[" + join(messages[u]) + b"]",
                      dict(zip(rec_titles[r0:r0 + n], rec_art[r0:r0 + n], strict=True)),
                      searched.get(uid, ()))
        r0 += n
    return pages
