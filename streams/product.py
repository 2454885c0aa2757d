"""The product layer of the worker: rows, artwork, search, notifications and cache hints.

One object, :class:`ProductLayer`, held by the worker runtime next to the model. The
events path calls it at three points (all in ``streams.batch`` and
``streams.pipeline``), each a thin hook:

* :meth:`ProductLayer.observe` for every applied event: teaches the artwork and row
  bandits (impressions and clicks), the resume model, per-country trending and the
  cache-hint forecaster; matches searches; notes series watchers;
* :meth:`ProductLayer.adjust_profile` and :meth:`ProductLayer.decorate` for every
  user ranked: searches become weak positives in the profile, then the message gets
  its ``rows`` and every item its ``artwork_id``;
* :meth:`ProductLayer.flush` once per batch, before offsets are committed: one
  Lua call to Redis (series audiences, search demand, and the plays per country of
  each hour of event time that has ended)
  and the batch's metrics; :meth:`ProductLayer.take_messages` hands over the cache hints.

The catalogue agent calls :meth:`ProductLayer.add_title` / :meth:`remove_title`, and
:meth:`on_catalog` for notifications. Only applied (not duplicate) events are observed,
so a replayed batch never counts twice; the aggregates written by :meth:`flush` are
at-most-once if the worker dies between the state write and this call.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import orjson
import redis
import redis.asyncio

from models.artwork import ArtworkBandit
from models.base import UserProfile, grow
from models.homepage import ROW_PRIORS, CountryTrending, ResumeModel, RowBandit
from streamrec import metrics
from streamrec.exceptions import StateStoreUnavailable
from streamrec.settings import Settings
from streams.cache_hints import UNKNOWN_COUNTRY, CacheHints, hour_start
from streams.notifications import AUDIENCE_CAP, Notifier, NotifyOutcome, audience_key
from streams.rows import (
    AFFINITY_HISTORY,
    MAX_BECAUSE_ROWS,
    MAX_GENRE_ROWS,
    N_SLOTS,
    PLAYBACK_TYPES,
    SLOT_BECAUSE,
    SLOT_CONTINUE,
    SLOT_GENRE,
    SLOT_NEW,
    SLOT_TOP,
    SLOT_TRENDING,
    SLOT_TYPES,
    affinity_tokens,
    fill_slots,
    row_type,
    update_in_progress,
)
from streams.search import SearchIndex, normalise
from streams.state import StoredProfile
from streams.titles import TitleIndex

logger = logging.getLogger(__name__)

# Weak positive weight a search gives its best match (a play is 0.3, a completion 2.0);
# older queries count less (x SEARCH_RECENCY per query), lesser matches in proportion.
SEARCH_WEIGHT = 0.3
SEARCH_RECENCY = 0.7
SEARCH_QUERIES_USED = 5
SEARCH_MATCHES_USED = 3
# Most distinct unmatched queries kept per country for insights.
DEMAND_CAP = 1000
# Plays per country and hour are kept this long for "fastest rising" (two days + 1 h, s).
PLAYS_TTL_S = 49 * 3600
# Insight keys' marker for "all countries".
ALL = "*"
# Most titles in the artwork context table (_page_contexts; n_context floats each, 256 B
# by default): cleared and rebuilt beyond it, so a huge catalogue costs at most ~5 MB.
VECTORS_CAP = 20_000
# Titles asked of the trending models per row (more than a row shows: some are filtered).
TRENDING_FETCH = 20
# Recent titles a user's artwork context and row affinities look at (what the state
# script returns of a profile, streams.state.PROFILE_HISTORY).
HISTORY_USED = 50
# How often the catalogue copy in Redis is checked for titles another worker's catalogue
# partitions brought (faust splits the catalog topic between workers), seconds.
CATALOG_REFRESH_S = 30.0
# Titles read per HMGET when catching up with the catalogue copy.
CATALOG_CHUNK = 1000
# Every this many checks (5 minutes), compare every key even if the count is unchanged.
CATALOG_FULL_EVERY = 10


# Everything a batch writes besides per-user state, in one call (one round trip):
# ARGV = audience ttl, audience cap, plays ttl, demand cap, clock key, clock ts ("" for
# none), then the counts of three kinds of (key, member, value) triples, then the triples:
# series watchers (ZADD GT: a user's latest watch; each audience trimmed to the cap, its
# TTL refreshed), plays of ended hours (ZINCRBY; TTL), unmatched queries (ZINCRBY; the
# top ``demand cap`` kept).
FLUSH_LUA = """
local aud_ttl, aud_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local plays_ttl, demand_cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local n_aud, n_plays, n_unmatched = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local i = 10
local keys = {}
for _ = 1, n_aud do
  redis.call('ZADD', ARGV[i], 'GT', ARGV[i + 2], ARGV[i + 1])
  keys[ARGV[i]] = true
  i = i + 3
end
for key, _ in pairs(keys) do
  redis.call('ZREMRANGEBYRANK', key, 0, -(aud_cap + 1))
  redis.call('EXPIRE', key, aud_ttl)
end
keys = {}
for _ = 1, n_plays do
  redis.call('ZINCRBY', ARGV[i], ARGV[i + 2], ARGV[i + 1])
  keys[ARGV[i]] = true
  i = i + 3
end
for key, _ in pairs(keys) do redis.call('EXPIRE', key, plays_ttl) end
keys = {}
for _ = 1, n_unmatched do
  redis.call('ZINCRBY', ARGV[i], ARGV[i + 2], ARGV[i + 1])
  keys[ARGV[i]] = true
  i = i + 3
end
for key, _ in pairs(keys) do redis.call('ZREMRANGEBYRANK', key, 0, -(demand_cap + 1)) end
if ARGV[6] ~= '' then redis.call('ZADD', ARGV[5], 'GT', ARGV[6], 'ts') end
return 0
"""


def _rec_pairs(recs: Sequence[Any]) -> list[tuple[str, str]]:
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


def insight_key(app_id: str, kind: str, *parts: str) -> str:
    return ":".join(("sr:ins", app_id, kind, *parts))


@dataclass
class ProductModels:
    """The learned state, pickled with checkpoints."""

    artwork: ArtworkBandit = field(default_factory=ArtworkBandit)
    rows: RowBandit = field(default_factory=RowBandit)
    resume: ResumeModel = field(default_factory=ResumeModel)
    trending: CountryTrending = field(default_factory=CountryTrending)
    hints: CacheHints = field(default_factory=CacheHints)


@dataclass
class _BatchState:
    progress: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)
    tokens: dict[str, dict[str, float]] = field(default_factory=dict)
    watchers: dict[tuple[str, str], float] = field(default_factory=dict)
    unmatched: dict[tuple[str, str], int] = field(default_factory=dict)
    clock: float = 0.0
    searches: int = 0
    searches_unmatched: int = 0
    row_impressions: dict[str, int] = field(default_factory=dict)
    row_clicks: dict[str, int] = field(default_factory=dict)
    search_added: dict[str, set[str]] = field(default_factory=dict)
    # A user's recent history as it was at their first display event of the batch: what
    # their bandit contexts and row affinities are computed from (once per batch).
    history: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    genre_total: dict[str, float] = field(default_factory=dict)
    history_weight: dict[str, dict[str, float]] = field(default_factory=dict)
    # Impressions and clicks, learned as one minibatch per batch (_learn_displays); their
    # contexts and affinities are computed there, all at once.
    art_users: list[str] = field(default_factory=list)
    art_devices: list[str | None] = field(default_factory=list)
    art_ids: list[str] = field(default_factory=list)
    art_clicked: list[bool] = field(default_factory=list)
    row_types: list[str] = field(default_factory=list)
    row_ids: list[str] = field(default_factory=list)
    row_users: list[str] = field(default_factory=list)
    row_contexts: list[Any] = field(default_factory=list)
    row_clicked: list[bool] = field(default_factory=list)
    trending: dict[str, list[str]] = field(default_factory=dict)
    newest: list[str] | None = None
    # Pages built by prepare_pages, handed out by decorate: user -> (rows message,
    # title -> artwork, titles their searches added).
    pages: dict[str, tuple[list[dict[str, Any]], dict[str, str | None], Any]] = field(
        default_factory=dict)
    seconds: float = 0.0


class ProductLayer:
    """See the module docstring. No I/O until :meth:`start`."""

    def __init__(self, settings: Settings, global_trending: Any = None,
                 models: ProductModels | None = None) -> None:
        self.settings = settings
        self.models = models if models is not None else ProductModels(
            hints=CacheHints(top=settings.cache_hints_top))
        # Callable (n, ts) -> [(title, score)]: the hybrid's global trending, the fallback
        # when a country has no local trend yet.
        self.global_trending = global_trending
        self.titles = TitleIndex(capacity=settings.model_capacity)
        self.search = SearchIndex(self.titles)
        self.titles.on_remove.append(self._forget_title)
        # Artwork context rows of catalogue titles (_page_contexts), built on first use;
        # row 0 is for titles not in the catalogue. Any catalogue change clears them.
        self._vector_rows: dict[str, int] = {}
        self._vectors = np.zeros((16, 0))
        self.titles.on_add.append(self._clear_title_vectors)
        self._batch = _BatchState()
        self._messages: list[tuple[str, bytes, bytes]] = []
        self._client: Any = None
        # Plays per (country, hour) of event time, written to Redis once the hour is over
        # (a few commands an hour instead of hundreds a batch).
        self._open_plays: dict[tuple[str, int], dict[str, int]] = {}
        self._latest_hour = 0
        self._next_refresh = time.monotonic() + CATALOG_REFRESH_S
        self._refreshes = 0
        self.notifier: Notifier | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._flush = client.register_script(FLUSH_LUA)
        self.notifier = Notifier(client, self.settings.notify_window_s,
                                 self.settings.notify_max_per_day)

    async def restore(self) -> None:
        """Learned state from the last checkpoint, and every title of the catalogue copy
        in Redis (titles the catalogue agent already added are simply replaced)."""
        from streams.checkpoint import catalog_key

        await self.load()
        try:
            raw = await self._client.hgetall(catalog_key(self.settings.app_id))
        except redis.RedisError as exc:
            raise StateStoreUnavailable(f"could not read the catalogue copy: {exc}") from exc
        for value in raw.values():
            self.add_title(orjson.loads(value))
        for kind in ROW_PRIORS:  # counters at zero, so rate() sees the first impressions
            metrics.ROW_IMPRESSIONS.labels(row_type=kind)
            metrics.ROW_CLICKS.labels(row_type=kind)
        for reason in ("seen", "duplicate", "rate_limited"):
            metrics.NOTIFICATIONS_SUPPRESSED.labels(reason=reason)
        logger.info("product features on: %d titles indexed", len(self.titles))

    def checkpoint_key(self) -> str:
        return f"sr:product:{self.settings.app_id}"

    async def load(self) -> None:
        """Restore the learned state saved by :meth:`save`, if any."""
        try:
            blob = await self._client.get(self.checkpoint_key())
        except redis.RedisError as exc:
            raise StateStoreUnavailable(f"could not read the product checkpoint: {exc}") from exc
        if blob is None:
            return
        try:
            models = pickle.loads(blob)  # noqa: S301 - our own Redis (see streams.checkpoint)
        except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint must not stop startup
            logger.error("product checkpoint unreadable (%s); starting from scratch", exc)
            return
        if isinstance(models, ProductModels):
            self.models = models
            logger.info("restored product models (%s artworks, %s row impressions)",
                        models.artwork.size()["artworks"], models.rows.impressions)

    async def save(self) -> None:
        blob = pickle.dumps(self.models, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            await self._client.set(self.checkpoint_key(), blob)
        except redis.RedisError as exc:
            metrics.REDIS_ERRORS.labels(op="product_save").inc()
            raise StateStoreUnavailable(f"could not save the product checkpoint: {exc}") from exc

    # -- catalogue -------------------------------------------------------------------------------
    def add_title(self, title: dict[str, Any]) -> None:
        self.titles.add(title)

    def remove_title(self, title_id: str) -> None:
        self.titles.remove(title_id)

    def _forget_title(self, info: Any) -> None:
        self._clear_title_vectors()
        self.models.trending.forget(info.title_id)
        for artwork in info.artwork_ids:
            self.models.artwork.forget_artwork(artwork)

    async def on_catalog(self, title: dict[str, Any]) -> NotifyOutcome:
        """Notifications for an ``episode_released`` event (nothing for other types)."""
        if title.get("type") != "episode_released" or self.notifier is None:
            return NotifyOutcome()
        outcome = await self.notifier.on_episode(title)
        if outcome.messages:
            metrics.NOTIFICATIONS_SENT.inc(len(outcome.messages))
        for reason, count in outcome.suppressed.items():
            metrics.NOTIFICATIONS_SUPPRESSED.labels(reason=reason).inc(count)
        return outcome

    # -- the events path: learning ---------------------------------------------------------------
    def _tokens(self, uid: str, profile: UserProfile) -> dict[str, float]:
        tokens = self._batch.tokens.get(uid)
        if tokens is None:
            tokens = self._batch.tokens[uid] = affinity_tokens(profile.history, self.titles)
        return tokens

    def _progress(self, uid: str, stored: StoredProfile) -> dict[str, tuple[float, float, float]]:
        progress = self._batch.progress.get(uid)
        if progress is None:
            progress = self._batch.progress[uid] = dict(stored.in_progress)
        return progress

    def observe(self, event: dict[str, Any], y: float, stored: StoredProfile) -> None:
        """Learn from one applied event (``y``: its implicit feedback)."""
        started = time.perf_counter()
        batch, models = self._batch, self.models
        kind = event["type"]
        uid = event["user_id"]
        ts = event["ts"]
        profile = stored.profile
        batch.clock = max(batch.clock, ts)
        title = event.get("title_id")
        country = event.get("country") or profile.country
        if kind == "search":
            self._observe_search(event, country)
        elif kind in ("impression", "click") and title is not None:
            self._observe_display(event, kind == "click", stored)
        elif kind in PLAYBACK_TYPES and title is not None:
            progress = self._progress(uid, stored)
            if kind in ("play", "resume") and title in progress and len(progress) > 1:
                self._learn_resume(title, progress, ts)
            update_in_progress(progress, event)
            info = self.titles.get(title)
            if info is not None and info.series_id is not None:
                key = (info.series_id, uid)
                batch.watchers[key] = max(ts, batch.watchers.get(key, 0.0))
            if kind == "play":
                for message in models.hints.observe(country, title, ts):
                    self._messages.append(("cache_hints", *message))
                hour = hour_start(ts)
                plays = self._open_plays.setdefault((country or UNKNOWN_COUNTRY, hour), {})
                plays[title] = plays.get(title, 0) + 1
                if hour > self._latest_hour:
                    self._latest_hour = hour
        if title is not None and y > 0 and country:
            models.trending.learn_one(country, title, y, ts)
        batch.seconds += time.perf_counter() - started

    def _observe_search(self, event: dict[str, Any], country: str | None) -> None:
        batch = self._batch
        batch.searches += 1
        if not self.search.match(event["query"], 1):
            batch.searches_unmatched += 1
            key = (country or UNKNOWN_COUNTRY, normalise(event["query"]))
            batch.unmatched[key] = batch.unmatched.get(key, 0) + 1

    def _observe_display(self, event: dict[str, Any], clicked: bool,
                         stored: StoredProfile) -> None:
        # Only noted here; contexts and affinities are computed per batch (_learn_displays).
        batch = self._batch
        uid, profile = event["user_id"], stored.profile
        if uid not in batch.history:
            batch.history[uid] = profile.history[:HISTORY_USED]
        device = event.get("device") or profile.device
        row = event.get("row")
        artwork = event.get("artwork_id")
        if artwork:
            batch.art_users.append(uid)
            batch.art_devices.append(device)
            batch.art_ids.append(artwork)
            batch.art_clicked.append(clicked)
        if row:
            kind = row_type(row)
            if kind not in ROW_PRIORS:
                return
            counter = batch.row_clicks if clicked else batch.row_impressions
            counter[kind] = counter.get(kind, 0) + 1
            batch.row_types.append(kind)
            batch.row_ids.append(row)
            batch.row_users.append(uid)
            batch.row_contexts.append(self.models.rows.context(
                device, int(event["ts"] // 3600) % 24, stored.events_applied,
                bool(batch.progress.get(uid, stored.in_progress))))
            batch.row_clicked.append(clicked)

    def _learn_displays(self) -> None:
        """Teach the batch's impressions and clicks to the bandits, as one minibatch each."""
        batch, models = self._batch, self.models
        if batch.art_ids:
            pairs = list(dict.fromkeys(zip(batch.art_users, batch.art_devices, strict=True)))
            slot = {pair: i for i, pair in enumerate(pairs)}
            contexts = self._art_contexts(pairs, {})
            which = [slot[pair] for pair in zip(batch.art_users, batch.art_devices,
                                                strict=True)]
            models.artwork.learn_many(batch.art_users, batch.art_ids, batch.art_clicked,
                                      contexts[which])
            batch.art_users, batch.art_devices, batch.art_ids = [], [], []
            batch.art_clicked = []
        if batch.row_types:
            history = batch.history
            affinity = [self._row_affinity(row, uid, history[uid])
                        for row, uid in zip(batch.row_ids, batch.row_users, strict=True)]
            models.rows.learn_many(batch.row_types, np.stack(batch.row_contexts),
                                   batch.row_clicked, affinity)
            batch.row_types, batch.row_ids, batch.row_users = [], [], []
            batch.row_contexts, batch.row_clicked = [], []

    def _tokens(self, uid: str, history: Sequence[tuple[str, float]]) -> dict[str, float]:
        tokens = self._batch.tokens.get(uid)
        if tokens is None:
            tokens = self._batch.tokens[uid] = affinity_tokens(history, self.titles)
        return tokens

    def _art_contexts(self, pairs: Sequence[tuple[str, str | None]],
                      histories: Mapping[str, Sequence[tuple[str, float]]]) -> np.ndarray:
        """The artwork bandit's contexts of (user, device) pairs, one matrix. A user's
        history: as at their first display event of the batch, else ``histories``."""
        seen = self._batch.history
        tokens = [self._tokens(uid, seen[uid] if uid in seen else histories.get(uid, ()))
                  for uid, _ in pairs]
        return self.models.artwork.contexts([device for _, device in pairs], tokens)

    def _row_affinity(self, row_id: str, uid: str,
                      history: Sequence[tuple[str, float]]) -> float:
        kind, _, arg = row_id.partition(":")
        if kind == "genre" and arg:
            tokens = self._tokens(uid, history)
            total = self._batch.genre_total.get(uid)
            if total is None:
                total = self._batch.genre_total[uid] = sum(
                    w for k, w in tokens.items() if k.startswith("g:") and w > 0)
            return max(0.0, tokens.get("g:" + arg.lower(), 0.0)) / total if total else 0.0
        if kind == "because_you_watched" and arg:
            weights = self._batch.history_weight.get(uid)
            if weights is None:
                weights = self._batch.history_weight[uid] = dict(history[:HISTORY_USED])
            return max(0.0, min(weights.get(arg, 0.0), 3.0)) / 3.0
        return 0.0

    def _learn_resume(self, title: str, progress: dict[str, tuple[float, float, float]],
                      ts: float) -> None:
        features = self.models.resume.features
        titles = self.titles

        def phi(t: str) -> tuple[float, float, float, float]:
            pos, dur, last = progress[t]
            info = titles.get(t)
            return features(pos, dur, last, ts, info is not None and info.series_id is not None)

        others = [phi(t) for t in progress if t != title]
        self.models.resume.learn_one(phi(title), others)

    # -- the events path: ranking ----------------------------------------------------------------
    def adjust_profile(self, profile: UserProfile) -> None:
        """Searches as weak positives: titles matching the user's recent queries join the
        history (after what they watched) with a small weight, for this ranking only."""
        if self._batch.art_ids or self._batch.row_types:
            self._learn_displays()
        if not profile.search_terms:
            return
        present = {t for t, _ in profile.history}
        added: dict[str, float] = {}
        for i, query in enumerate(profile.search_terms[:SEARCH_QUERIES_USED]):
            matches = self.search.match(query, SEARCH_MATCHES_USED)
            if not matches:
                continue
            top = matches[0][1]
            for title, score in matches:
                if title in present or title in profile.completed:
                    continue
                weight = SEARCH_WEIGHT * SEARCH_RECENCY ** i * score / top
                added[title] = max(added.get(title, 0.0), weight)
        if added:
            profile.history.extend((t, round(w, 6)) for t, w in added.items())
            self._batch.search_added[profile.user_id] = set(added)

    def _trending(self, country: str | None, ts: float) -> list[str]:
        key = country or ""
        cached = self._batch.trending.get(key)
        if cached is None:
            cached = self.models.trending.top(country, TRENDING_FETCH, ts) if country else []
            if not cached and self.global_trending is not None:
                cached = [t for t, _ in self.global_trending(TRENDING_FETCH, ts)]
            self._batch.trending[key] = cached
        return cached

    def prepare_pages(self, requests: Sequence[tuple[str, StoredProfile, Sequence[Any],
                                                   dict[str, Any], str]]) -> None:
        """Build the pages of many users at once: ``(user_id, stored, recs, event,
        row_policy)`` each, ``recs`` their ranked list (``(title_id, score, reason)``
        tuples or objects with ``title_id`` and ``reason``). :meth:`decorate` then hands
        each message its page.

        What is the same for everyone is computed once per batch (trending per country,
        new releases, row contexts per (device, hour, ...)). Every title of the batch gets
        an integer code; every user's candidate rows become flat arrays and are filled
        for all users at once, row slot by row slot (``streams.rows.fill_slots``, the
        same choice as ``row_titles`` makes for one user); the rows are ordered for all
        users with one posterior sample, and every (user, title) pair's artwork comes out
        of one matrix product (``ArtworkBandit.choose_pairs``)."""
        started = time.perf_counter()
        if self._batch.art_ids or self._batch.row_types:
            self._learn_displays()
        settings, models, titles, batch = self.settings, self.models, self.titles, self._batch
        if batch.newest is None:
            batch.newest = titles.newest(settings.row_items + 5)
        newest = batch.newest
        series_of = titles.series.get
        seen_history = batch.history
        n_users = len(requests)
        histories: dict[str, Sequence[tuple[str, float]]] = {}
        rec_titles: list[str] = []
        rec_reasons: list[str] = []
        rec_counts: list[int] = []
        resume_titles: list[str] = []
        resume_counts: list[int] = []
        progresses: list[Mapping[str, tuple[float, float, float]]] = []
        countries: dict[str | None, int] = {}
        trend_lists: list[list[str]] = []
        user_country: list[int] = []
        row_contexts: list[Any] = []
        devices: list[str | None] = []
        # (user, title) of new releases and trending titles the user completed.
        excluded: list[tuple[int, str]] = []
        for u, (uid, stored, recs, event, _) in enumerate(requests):
            profile = stored.profile
            ts = event["ts"]
            histories[uid] = (seen_history[uid] if uid in seen_history
                              else profile.history[:HISTORY_USED])
            if recs and isinstance(recs[0], tuple):
                names, _, reasons = zip(*recs, strict=True)
            else:
                pairs = _rec_pairs(recs)
                names = tuple(t for t, _ in pairs)
                reasons = tuple(r for _, r in pairs)
            searched = batch.search_added.get(uid)
            if searched:
                reasons = tuple("search" if r.startswith("because_you_watched:")
                                and r[20:] in searched else r for r in reasons)
            rec_titles += names
            rec_reasons += reasons
            rec_counts.append(len(names))
            completed = profile.completed
            if not isinstance(completed, (set, frozenset)):
                completed = set(completed)
            progress = batch.progress.get(uid, stored.in_progress)
            progresses.append(progress)
            if progress:
                episodes = [t for t in progress if series_of(t) is not None]
                resume = [t for t in models.resume.rank(progress, ts, episodes)
                          if t not in completed]
                resume_titles += resume
                resume_counts.append(len(resume))
            else:
                resume_counts.append(0)
            country = profile.country
            where = countries.get(country)
            if where is None:
                where = countries[country] = len(trend_lists)
                trend_lists.append(self._trending(country, ts))
            user_country.append(where)
            if completed:
                for title in completed.intersection(newest):
                    excluded.append((u, title))
                for title in completed.intersection(trend_lists[where]):
                    excluded.append((u, title))
            row_contexts.append(models.rows.context(
                profile.device, int(ts // 3600) % 24, stored.events_applied, bool(progress)))
            devices.append(profile.device)

        # Every title of the batch gets a code; what rows and artwork need of it, once.
        code = {t: i for i, t in enumerate(dict.fromkeys(
            [*rec_titles, *resume_titles, *newest, *(t for ts_ in trend_lists for t in ts_)]))}
        n_titles = len(code)
        batch_titles = list(code)
        infos = list(map(titles.by_id.get, batch_titles))
        series_code: dict[str, int] = {}
        group_of = np.fromiter(
            (series_code.setdefault(s, len(series_code)) if (s := series_of(t)) is not None
             else -1 for t in batch_titles), dtype=np.int64, count=n_titles)
        episode = group_of >= 0
        group_of[~episode] = len(series_code) + np.flatnonzero(~episode)
        n_groups = len(series_code) + n_titles

        def codes(names: Sequence[str]) -> np.ndarray:
            return np.fromiter(map(code.__getitem__, names), dtype=np.int64, count=len(names))

        # Candidates, slot after slot (each slot's in user order, each list in its order).
        rec_code = codes(rec_titles)
        rec_user = np.repeat(np.arange(n_users), rec_counts)
        reason_code = {r: i for i, r in enumerate(dict.fromkeys(rec_reasons))}
        reason_list = list(reason_code)
        reason_kind = np.fromiter(
            (1 if r.startswith("because_you_watched:") and len(r) > 20
             else 2 if r.startswith("genre:") and len(r) > 6 else 0 for r in reason_list),
            dtype=np.int64, count=len(reason_list))
        rec_reason = np.fromiter(map(reason_code.__getitem__, rec_reasons), dtype=np.int64,
                                 count=len(rec_reasons))
        rec_kind = reason_kind[rec_reason]
        # A user's first MAX_BECAUSE_ROWS sources and MAX_GENRE_ROWS genres, in rank order,
        # get a row each: the slot of each such (user, reason).
        slot_reason = np.full((n_users, N_SLOTS), -1, dtype=np.int64)
        row_slots: list[np.ndarray] = []
        row_entries: list[np.ndarray] = []
        for kind, base, cap in ((1, SLOT_BECAUSE, MAX_BECAUSE_ROWS),
                                (2, SLOT_GENRE, MAX_GENRE_ROWS)):
            at = np.flatnonzero(rec_kind == kind)
            if not len(at):
                continue
            _, first, inverse = np.unique(rec_user[at] * len(reason_list) + rec_reason[at],
                                          return_index=True, return_inverse=True)
            order = np.argsort(first)
            who = rec_user[at][first[order]]
            rank = np.empty(len(first), dtype=np.int64)
            rank[order] = np.arange(len(first)) - np.searchsorted(who, who)
            keep = rank[inverse.reshape(-1)] < cap
            slot = base + rank[inverse.reshape(-1)]
            row_slots.append(slot[keep])
            row_entries.append(at[keep])
            kept = rank < cap
            slot_reason[rec_user[at][first][kept], base + rank[kept]] = (
                rec_reason[at][first][kept])
        if row_slots:
            slot_arr = np.concatenate(row_slots)
            entry_arr = np.concatenate(row_entries)
            by_slot = np.lexsort((entry_arr, slot_arr))
            mid_slots, mid_entries = slot_arr[by_slot], entry_arr[by_slot]
        else:
            mid_slots = mid_entries = np.zeros(0, dtype=np.int64)
        resume_code = codes(resume_titles)
        resume_user = np.repeat(np.arange(n_users), resume_counts)
        newest_code = codes(newest)
        new_user = np.repeat(np.arange(n_users), len(newest))
        new_code = np.tile(newest_code, n_users)
        trend_len = [len(t) for t in trend_lists]
        trend_flat = codes([t for ts_ in trend_lists for t in ts_])
        trend_start = np.cumsum(trend_len) - trend_len
        per_user_len = np.asarray(trend_len, dtype=np.int64)[user_country]
        trend_user = np.repeat(np.arange(n_users), per_user_len)
        trend_code = trend_flat[np.repeat(trend_start[user_country], per_user_len)
                                + np.arange(int(per_user_len.sum()))
                                - np.repeat(np.cumsum(per_user_len) - per_user_len,
                                            per_user_len)]
        if excluded:
            dropped = np.zeros(n_users * n_titles, dtype=bool)
            dropped[[u * n_titles + code[t] for u, t in excluded]] = True
            keep_new = ~dropped[new_user * n_titles + new_code]
            new_user, new_code = new_user[keep_new], new_code[keep_new]
            keep_trend = ~dropped[trend_user * n_titles + trend_code]
            trend_user, trend_code = trend_user[keep_trend], trend_code[keep_trend]
        parts = (
            (SLOT_CONTINUE, resume_user, resume_code),
            (mid_slots, rec_user[mid_entries], rec_code[mid_entries]),
            (SLOT_NEW, new_user, new_code),
            (SLOT_TRENDING, trend_user, trend_code),
            (SLOT_TOP, rec_user, rec_code),
        )
        slots = np.concatenate([np.broadcast_to(s, len(w)) for s, w, _ in parts])
        users = np.concatenate([w for _, w, _ in parts])
        cands = np.concatenate([c for _, _, c in parts])
        groups = np.where(slots == SLOT_CONTINUE, len(series_code) + cands, group_of[cands])
        picked = np.flatnonzero(fill_slots(slots, users, cands, groups, n_titles, n_groups,
                                           settings.row_items, settings.row_duplicates))
        # The picks of each (user, slot), in their lists' order.
        by_user = picked[np.argsort(users[picked] * N_SLOTS + slots[picked], kind="stable")]
        row_key = users[by_user] * N_SLOTS + slots[by_user]
        row_size = np.bincount(row_key, minlength=n_users * N_SLOTS).reshape(n_users, N_SLOTS)

        # The rows users get (user after user, in ASSIGN_ORDER): a row's id and title
        # (the same for every row of a slot, country or reason), its affinity.
        row_user, row_slot = np.nonzero(row_size)
        row_reason = slot_reason[row_user, row_slot]
        n_countries = len(trend_lists)
        meta: list[tuple[str, str]] = [
            ("continue_watching", "Continue watching"), *[("", "")] * (SLOT_NEW - 1),
            ("new_releases", "New releases"), ("", ""), ("top_picks", "Top picks for you")]
        meta += [("trending", f"Trending in {country}" if country else "Trending now")
                 for country in countries]
        name_of = titles.by_id.get
        for reason in reason_list:
            if reason.startswith("because_you_watched:"):
                info = name_of(reason[20:])
                meta.append((reason, "Because you watched "
                             + (info.name if info is not None else reason[20:])))
            else:
                meta.append((reason, reason[6:]))
        row_meta = np.where(row_reason >= 0, N_SLOTS + n_countries + row_reason,
                            np.where(row_slot == SLOT_TRENDING,
                                     N_SLOTS + np.asarray(user_country)[row_user], row_slot))
        affinity = np.zeros(len(row_user))
        special = np.flatnonzero(row_reason >= 0)
        if len(special):
            uids = [request[0] for request in requests]
            affinity[special] = [
                self._row_affinity(reason_list[r], uids[u], histories[uids[u]])
                for u, r in zip(row_user[special].tolist(), row_reason[special].tolist(),
                                strict=True)]
        # Row order: one posterior sample and one sort for every user ("fixed": as built).
        shown = np.arange(len(row_user))
        learned_user = np.fromiter((request[4] != "fixed" for request in requests),
                                   dtype=bool, count=n_users)
        rows_of_user = np.bincount(row_user, minlength=n_users)
        learned_rows = np.flatnonzero(learned_user[row_user])
        if len(learned_rows):
            type_slot = models.rows.type_slots(SLOT_TYPES)
            learned = np.flatnonzero(learned_user)
            ranked = models.rows.order_flat(
                type_slot[row_slot[learned_rows]], affinity[learned_rows],
                rows_of_user[learned], np.stack([row_contexts[u] for u in learned.tolist()]),
                [requests[u][4] != "greedy" for u in learned.tolist()])
            shown[learned_rows] = learned_rows[ranked]

        # Artwork: one artwork per (user, title) of the batch, all chosen in one call; per
        # user, the ranked list's titles, then the rows' (in ASSIGN_ORDER), each once.
        pair_user = np.concatenate((rec_user, users[by_user]))
        pair_code = np.concatenate((rec_code, cands[by_user]))
        in_order = np.argsort(pair_user, kind="stable")
        _, first, inverse = np.unique((pair_user * n_titles + pair_code)[in_order],
                                      return_index=True, return_inverse=True)
        first_order = np.argsort(first)
        chosen_pairs = in_order[first[first_order]]
        artwork_lists = [info.artwork_ids if info is not None else () for info in infos]
        picks = models.artwork.choose_pairs(
            [request[0] for request in requests], artwork_lists, pair_user[chosen_pairs],
            pair_code[chosen_pairs], self._page_contexts(requests, devices, histories))
        # The pick of every entry (ranked list, then rows) by way of its unique pair.
        unique_pick = np.empty(len(first), dtype=np.int64)
        unique_pick[first_order] = picks
        entry_pick = np.empty(len(pair_user), dtype=np.int64)
        entry_pick[in_order] = unique_pick[inverse.reshape(-1)]
        # (title, position) -> artwork id; the extra last column (None) is "no artwork".
        width = max(map(len, artwork_lists), default=0)
        table = np.full((n_titles, width + 1), None, dtype=object)
        table[np.arange(width + 1) < np.array([len(a) for a in artwork_lists])[:, None]] = [
            a for arts in artwork_lists for a in arts]
        n_recs = len(rec_code)
        rec_art = table[rec_code, entry_pick[:n_recs]].tolist()
        # Items: one dict per (title, artwork) shown, shared by the pages of the batch
        # (read-only: orjson writes them); continue watching's carry the user's resume_s.
        item_key = cands[by_user] * (width + 1) + entry_pick[n_recs:] % (width + 1)
        item_keys, item_of = np.unique(item_key, return_inverse=True)
        item_dicts = [{"title_id": batch_titles[k // (width + 1)],
                       "artwork_id": table[k // (width + 1), k % (width + 1)]}
                      for k in item_keys.tolist()]
        items = [item_dicts[i] for i in item_of.reshape(-1).tolist()]
        # Every row, in the order shown: its items are a slice of ``items``.
        ends = np.cumsum(row_size[row_user, row_slot])
        starts = ends - row_size[row_user, row_slot]
        messages: list[list[dict[str, Any]]] = [[] for _ in range(n_users)]
        for k, u, slot, m in zip(shown.tolist(), row_user[shown].tolist(),
                                 row_slot[shown].tolist(), row_meta[shown].tolist(),
                                 strict=True):
            row_items = items[starts[k]:ends[k]]
            if slot == SLOT_CONTINUE:
                progress = progresses[u]
                row_items = [{"title_id": item["title_id"],
                              "resume_s": round(progress[item["title_id"]][0], 1),
                              "artwork_id": item["artwork_id"]} for item in row_items]
            row_id, row_title = meta[m]
            messages[u].append({"id": row_id, "title": row_title, "items": row_items})
        r0 = 0
        search_added = batch.search_added
        for u, request in enumerate(requests):
            uid = request[0]
            n = rec_counts[u]
            batch.pages[uid] = (messages[u], dict(zip(rec_titles[r0:r0 + n], rec_art[r0:r0 + n],
                                                      strict=True)), search_added.get(uid, ()))
            r0 += n
        batch.seconds += time.perf_counter() - started

    def _page_contexts(self, requests: Sequence[tuple[str, Any, Any, Any, str]],
                       devices: Sequence[str | None],
                       histories: Mapping[str, Sequence[tuple[str, float]]]) -> np.ndarray:
        """The artwork bandit's contexts of the users of ``requests`` (one matrix): the
        weighted sum of their recent titles' rows of a per-title table (the titles'
        hashed genres and cast, ``ArtworkBandit.token_vectors``), their device; what
        :meth:`_art_contexts` builds from each user's summed tokens (up to rounding)."""
        art = self.models.artwork
        if self._vectors.shape[1] != art.n_context or len(self._vector_rows) >= VECTORS_CAP:
            self._clear_title_vectors()
            self._vectors = np.zeros((16, art.n_context))
        names: list[str] = []
        weights: list[float] = []
        counts: list[int] = []
        for request in requests:
            recent = histories[request[0]][:AFFINITY_HISTORY]
            if recent:
                titles_u, weights_u = zip(*recent, strict=True)
                names += titles_u
                weights += weights_u
            counts.append(len(recent))
        index = self._vector_rows
        rows = np.fromiter(map(index.get, names, repeat(0)), dtype=np.int64, count=len(names))
        if not rows.all():  # titles not in the table yet (row 0: unknown titles, zeros)
            info_of = self.titles.by_id.get
            new = [t for t in dict.fromkeys(names[i] for i in np.flatnonzero(rows == 0).tolist())
                   if t not in index and info_of(t) is not None]
            if new:
                held = len(index) + 1
                self._vectors = grow(self._vectors, held + len(new))
                self._vectors[held:held + len(new)] = art.token_vectors(
                    [info_of(t).tokens for t in new])
                index.update(zip(new, range(held, held + len(new)), strict=True))
                rows = np.fromiter(map(index.get, names, repeat(0)), dtype=np.int64,
                                   count=len(names))
        sums = np.zeros((len(requests), art.n_context))
        nonempty = np.flatnonzero(counts)
        if len(nonempty):
            weighted = self._vectors[rows] * np.asarray(weights, dtype=np.float64)[:, None]
            starts = (np.cumsum(counts) - counts)[nonempty]
            sums[nonempty] = np.add.reduceat(weighted, starts, axis=0)
        return art.contexts_from_sums(sums, devices)

    def _clear_title_vectors(self, *_: Any) -> None:
        self._vector_rows.clear()

    def decorate(self, message: dict[str, Any], stored: StoredProfile,
                 recs: Sequence[Any], event: dict[str, Any], row_policy: str = "learned"
                 ) -> None:
        """Add ``rows`` to ``message`` and an ``artwork_id`` to each of its items.

        The page comes from :meth:`prepare_pages` (the events path builds every user's
        at once); a user without one gets it built now, from the message's items.
        ``row_policy`` (an A/B variant's, ``streams.experiments``) orders the rows:
        ``learned`` by the row bandit, ``greedy`` by the bandit without exploration,
        ``fixed`` in the rows' specificity order."""
        uid = message["user_id"]
        page = self._batch.pages.pop(uid, None)
        if page is None:
            self.prepare_pages([(uid, stored, message["items"], event, row_policy)])
            page = self._batch.pages.pop(uid)
        started = time.perf_counter()
        rows, artwork_of, searched = page
        for item in message["items"]:
            if searched:
                reason = item["reason"]
                if reason.startswith("because_you_watched:") and reason[20:] in searched:
                    item["reason"] = "search"
            item["artwork_id"] = artwork_of.get(item["title_id"])
        message["rows"] = rows
        self._batch.seconds += time.perf_counter() - started

    # -- once per batch --------------------------------------------------------------------------
    def take_messages(self) -> list[tuple[str, bytes, bytes]]:
        """Messages to produce: ``(topics attribute, key, value)`` (cache hints)."""
        messages, self._messages = self._messages, []
        if messages:
            metrics.CACHE_HINTS_PUBLISHED.inc(len(messages))
        return messages

    def flush_args(self) -> tuple[list[tuple[str, int]], list[Any]]:
        """``FLUSH_LUA``'s ARGV for this batch, and the (country, hour) pairs of plays whose
        hour is over (written now, then forgotten here)."""
        batch, app = self._batch, self.settings.app_id
        audience: list[Any] = []
        for (series, user), ts in batch.watchers.items():
            audience += (audience_key(series), user, ts)
        closed = [key for key in self._open_plays if key[1] < self._latest_hour]
        plays: list[Any] = []
        for country, hour in closed:
            for scope in (country, ALL):
                key = insight_key(app, "plays", scope, str(hour))
                for title, count in self._open_plays[(country, hour)].items():
                    plays += (key, title, count)
        demand: list[Any] = []
        for (country, query), count in batch.unmatched.items():
            for scope in (country, ALL):
                demand += (insight_key(app, "unmatched", scope), query, count)
        args = [self.settings.notify_window_s, AUDIENCE_CAP, PLAYS_TTL_S, DEMAND_CAP,
                insight_key(app, "clock"), batch.clock or "",
                len(audience) // 3, len(plays) // 3, len(demand) // 3,
                *audience, *plays, *demand]
        return closed, args

    async def flush(self) -> None:
        """Write the batch's aggregates (one Lua call), count its metrics, reset."""
        if self._client is not None:
            closed, args = self.flush_args()
            if args[5] != "" or len(args) > 9:
                started = time.perf_counter()
                try:
                    await self._flush(keys=[], args=args)
                except redis.RedisError as exc:
                    metrics.REDIS_ERRORS.labels(op="product_flush").inc()
                    raise StateStoreUnavailable(f"Redis product flush failed: {exc}") from exc
                metrics.REDIS_SECONDS.labels(op="product_flush").observe(
                    time.perf_counter() - started)
            for key in closed:
                del self._open_plays[key]
        self.end_batch()
        if self._client is not None and time.monotonic() >= self._next_refresh:
            self._next_refresh = time.monotonic() + CATALOG_REFRESH_S
            self._refreshes += 1
            await self.refresh_catalog(full=self._refreshes % CATALOG_FULL_EVERY == 0)

    async def refresh_catalog(self, full: bool = False) -> int:
        """Catch up with the catalogue copy in Redis: titles added or removed through
        another worker's catalogue partitions. Cheap when the count is unchanged (one
        HLEN), unless ``full``: then every key is compared (an addition and a removal
        in one interval keep the count). Returns the number of titles added or removed;
        Redis errors are logged, not raised (the next check retries)."""
        from streams.checkpoint import catalog_key

        key = catalog_key(self.settings.app_id)
        titles = self.titles
        try:
            stored = await self._client.hlen(key)
            if not full and (stored == len(titles) or stored > len(titles) == titles.capacity):
                return 0
            present = {k.decode() for k in await self._client.hkeys(key)}
            missing = [t for t in present if t not in titles]
            changed = 0
            for start in range(0, len(missing), CATALOG_CHUNK):
                chunk = missing[start:start + CATALOG_CHUNK]
                for value in await self._client.hmget(key, chunk):
                    if value is not None:
                        titles.add(orjson.loads(value))
                        changed += 1
        except redis.RedisError as exc:
            metrics.REDIS_ERRORS.labels(op="product_catalog").inc()
            logger.warning("catalogue refresh skipped, Redis unavailable: %s", exc)
            return 0
        for title_id in [t for t in titles.by_id if t not in present]:
            titles.remove(title_id)
            changed += 1
        if changed:
            logger.info("catalogue refresh: %d titles added or removed (now %d)", changed,
                        len(titles))
        return changed

    def end_batch(self) -> None:
        """Count the batch's metrics and start a new batch (no I/O)."""
        self._learn_displays()
        batch = self._batch
        if batch.searches:
            metrics.SEARCHES.inc(batch.searches)
        if batch.searches_unmatched:
            metrics.SEARCH_UNMATCHED.inc(batch.searches_unmatched)
        for kind, count in batch.row_impressions.items():
            metrics.ROW_IMPRESSIONS.labels(row_type=kind).inc(count)
        for kind, count in batch.row_clicks.items():
            metrics.ROW_CLICKS.labels(row_type=kind).inc(count)
        metrics.STAGE_SECONDS.labels(stage="product").observe(batch.seconds)
        self._batch = _BatchState()

    def size(self) -> dict[str, int]:
        return {"titles": len(self.titles), **self.models.artwork.size(),
                **{f"trending_{k}": v for k, v in self.models.trending.size().items()}}
