"""The product layer of the worker: rows, artwork, search, notifications and cache hints.

One object, :class:`ProductLayer`, held by the worker runtime next to the model. The
events path calls it at three points (all in ``streams.batch`` and
``streams.pipeline``), each a thin hook:

* :meth:`ProductLayer.observe` for every applied event: teaches the artwork and row
  bandits (impressions and clicks), the resume model, per-country trending and the
  cache-hint forecaster; matches searches; notes series watchers;
* :meth:`ProductLayer.adjust_profile` and :meth:`ProductLayer.encode` for every
  user ranked: searches become weak positives in the profile, then the message gets
  its ``rows`` and every item its ``artwork_id`` and is encoded (pages built for the
  whole batch beforehand by :meth:`ProductLayer.prepare_pages`, with ``streams.pages``,
  their rows already JSON; :meth:`ProductLayer.decorate` gives the same as dicts);
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import redis
import redis.asyncio

from models.artwork import ArtworkBandit
from models.base import UserProfile
from models.homepage import ROW_PRIORS, CountryTrending, ResumeModel, RowBandit
from streamrec import metrics
from streamrec.exceptions import StateStoreUnavailable
from streamrec.settings import Settings
from streams.cache_hints import UNKNOWN_COUNTRY, CacheHints, hour_start
from streams.notifications import AUDIENCE_CAP, Notifier, NotifyOutcome, audience_key
from streams.pages import (
    HISTORY_USED,
    ArtworkTable,
    ContextTable,
    JsonPieces,
    assemble_pages,
    choose_artwork,
    describe_rows,
    encode_titles,
    fill_rows,
    gather,
    order_rows,
    page_contexts,
    row_affinity,
    trending_titles,
    user_tokens,
)
from streams.rows import CONTINUE_WATCHING, PLAYBACK_TYPES, row_type, update_in_progress
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
# How often the catalogue copy in Redis is checked for titles another worker's catalogue
# partitions brought (faust splits the catalog topic between workers), seconds. Only
# without a catalogue reader (the per-record path): a worker whose reader follows every
# catalogue partition has every title already.
CATALOG_REFRESH_S = 30.0
# Titles read per HMGET when catching up with the catalogue copy.
CATALOG_CHUNK = 1000
# Every this many checks (5 minutes), compare every key even if the count is unchanged.
CATALOG_FULL_EVERY = 10


# The event-time clock in Redis (insights: the latest event and its hour) may lag the
# batches' by up to this much, seconds of event time: a batch with nothing else to write
# then skips its flush round trip (most one-event batches: ~0.6 ms of a 5 ms batch). It is
# written at once when its hour changes, and with any other aggregate.
CLOCK_STEP_S = 60.0


# Everything a batch writes besides per-user state, in one call (one round trip):
# ARGV = audience ttl, audience cap, plays ttl, demand cap, clock key, clock ts ("" for
# none: see CLOCK_STEP_S), then the counts of three kinds of (key, member, value) triples,
# then the triples: series watchers (ZADD GT: a user's latest watch; each audience trimmed
# to the cap, its TTL refreshed), plays of ended hours (ZINCRBY; TTL), unmatched queries
# (ZINCRBY; the top ``demand cap`` kept).
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


def insight_key(app_id: str, kind: str, *parts: str) -> str:
    return ":".join(("sr:ins", app_id, kind, *parts))


def insight_country(country: str | None) -> str:
    """The country part of the insight keys written for an event: the code in upper case,
    so ``gb``, ``Gb`` and ``GB`` count as one country (``UNKNOWN_COUNTRY`` without one, or
    for ``*``, which names every country in these keys and would be counted twice)."""
    return country.upper() if country and country != ALL else UNKNOWN_COUNTRY


def insight_scopes(country: str | None) -> list[str]:
    """The country parts of the keys holding ``country``'s insights, in any case: what
    :func:`insight_country` writes, then the lower-case code and ``country`` as given,
    under which a worker older than :func:`insight_country` wrote the events' spelling
    (search demand is kept without a time limit). ``None``: every country (``ALL``)."""
    if not country or country == ALL:
        return [ALL]
    return list(dict.fromkeys((insight_country(country), country.lower(), country)))


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
    # contexts and affinities are computed there, all at once. One tuple per event (one
    # append instead of one per field): (user, device, artwork, clicked) and (row type,
    # row, user, clicked, the row bandit's context arguments as at the event).
    art_seen: list[tuple[str, str | None, str, bool]] = field(default_factory=list)
    rows_seen: list[tuple[str, str, str, bool, tuple[str | None, int, int, bool]]] = field(
        default_factory=list)
    trending: dict[str, list[str]] = field(default_factory=dict)
    newest: list[str] | None = None
    # Pages built by prepare_pages, handed out by decorate: user -> (rows message as
    # JSON, title -> artwork, titles their searches added).
    pages: dict[str, tuple[bytes, dict[str, str | None], Any]] = field(default_factory=dict)
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
        # Artwork context rows of catalogue titles (streams.pages.page_contexts), built on
        # first use; any catalogue change clears them.
        self._contexts = ContextTable()
        self.titles.on_add.append(self._contexts.clear)
        # Every catalogue title's artwork and its rows in the bandit (streams.pages.
        # choose_artwork), likewise.
        self._artwork_table = ArtworkTable()
        self.titles.on_add.append(self._artwork_table.clear)
        # The JSON of row items and heads (of their strings alone: never stale).
        self._json_pieces = JsonPieces()
        self._batch = _BatchState()
        self._messages: list[tuple[str, bytes, bytes]] = []
        self._client: Any = None
        # Plays per (country, hour) of event time, written to Redis once the hour is over
        # (a few commands an hour instead of hundreds a batch).
        self._open_plays: dict[tuple[str, int], dict[str, int]] = {}
        self._latest_hour = 0
        self._next_refresh = time.monotonic() + CATALOG_REFRESH_S
        self._refreshes = 0
        # Set by the worker when its catalogue reader follows every catalogue partition
        # (streams.catalog_reader): then the copy in Redis, which the catalogue agent
        # writes later and more slowly, has nothing this index lacks.
        self.follows_catalog_topic = False
        # Titles added or removed here since the last refresh began: the copy in Redis may
        # not have them yet (the agent applies a record, then writes it), and a refresh
        # must not undo them.
        self._changed_here: set[str] = set()
        self.notifier: Notifier | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._flush = client.register_script(FLUSH_LUA)
        self.notifier = Notifier(client, self.settings.notify_window_s,
                                 self.settings.notify_max_per_day)

    async def restore(self, titles: Iterable[dict[str, Any]]) -> None:
        """Learned state from the last checkpoint, and ``titles``, every title of the
        catalogue copy in Redis as the worker read it at start-up (titles the catalogue
        agent already added are simply replaced)."""
        await self.load()
        for title in titles:
            self.add_title(title)
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
        self._changed_here.add(title["title_id"])

    def remove_title(self, title_id: str) -> None:
        """The catalogue removed ``title_id``: out of the rows, trending and the cache
        hints, and kept out (``TitleIndex.removed``) however many events still name it."""
        self.titles.withdraw(title_id)
        self.models.trending.forget(title_id)  # (also a stub title, never indexed)
        self.models.hints.forget(title_id)
        self._changed_here.add(title_id)

    def forget_removed(self, title_ids: Iterable[str]) -> None:
        """Titles the catalogue removed before this worker started (the model checkpoint
        remembers them; the catalogue copy in Redis has only the titles still in it)."""
        for title_id in title_ids:
            if title_id not in self.titles:
                self.remove_title(title_id)

    def _forget_title(self, info: Any) -> None:
        self._contexts.clear()
        self._artwork_table.clear()
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
    def observe(self, event: dict[str, Any], y: float, stored: StoredProfile) -> None:
        """Learn from one applied event (``y``: its implicit feedback)."""
        started = time.perf_counter()
        batch = self._batch
        kind = event["type"]
        ts = event["ts"]
        if ts > batch.clock:
            batch.clock = ts
        title = event.get("title_id")
        country = event.get("country") or stored.profile.country
        # Impressions and clicks first: over half of all events.
        if kind == "impression" or kind == "click":
            if title is not None:
                self._observe_display(event, kind == "click", stored)
        elif kind == "search":
            self._observe_search(event, country)
        elif kind in PLAYBACK_TYPES and title is not None:
            self._observe_playback(event, kind, title, country, ts, stored)
        if y > 0 and title is not None and country and title not in self.titles.removed:
            self.models.trending.learn_one(country, title, y, ts)
        batch.seconds += time.perf_counter() - started

    def _observe_playback(self, event: dict[str, Any], kind: str, title: str,
                          country: str | None, ts: float, stored: StoredProfile) -> None:
        batch, uid = self._batch, event["user_id"]
        progress = batch.progress.get(uid)
        if progress is None:  # the user's in-progress titles, as this batch changes them
            progress = batch.progress[uid] = dict(stored.in_progress)
        if kind in ("play", "resume") and title in progress and len(progress) > 1:
            self._learn_resume(title, progress, ts)
        update_in_progress(progress, event)
        info = self.titles.get(title)
        if info is not None and info.series_id is not None:
            key = (info.series_id, uid)
            batch.watchers[key] = max(ts, batch.watchers.get(key, 0.0))
        if kind == "play":
            # A removed title's plays are not counted (it is not to be cached), but the
            # play still moves the hints' clock.
            for message in self.models.hints.observe(
                    country, title, ts, count=title not in self.titles.removed):
                self._messages.append(("cache_hints", *message))
            hour = hour_start(ts)
            plays = self._open_plays.setdefault((insight_country(country), hour), {})
            plays[title] = plays.get(title, 0) + 1
            if hour > self._latest_hour:
                self._latest_hour = hour

    def _observe_search(self, event: dict[str, Any], country: str | None) -> None:
        batch = self._batch
        batch.searches += 1
        if not self.search.match(event["query"], 1):
            batch.searches_unmatched += 1
            key = (insight_country(country), normalise(event["query"]))
            batch.unmatched[key] = batch.unmatched.get(key, 0) + 1

    def _observe_display(self, event: dict[str, Any], clicked: bool,
                         stored: StoredProfile) -> None:
        # Only noted here; contexts and affinities are computed per batch (_learn_displays).
        batch = self._batch
        uid, profile = event["user_id"], stored.profile
        if uid not in batch.history:
            batch.history[uid] = profile.history[:HISTORY_USED]
        device = event.get("device") or profile.device
        artwork = event.get("artwork_id")
        if artwork:
            batch.art_seen.append((uid, device, artwork, clicked))
        row = event.get("row")
        if row:
            kind = row_type(row)
            if kind not in ROW_PRIORS:
                return
            counter = batch.row_clicks if clicked else batch.row_impressions
            counter[kind] = counter.get(kind, 0) + 1
            # The context's arguments, not the vector: a batch has a few distinct ones.
            batch.rows_seen.append((kind, row, uid, clicked, (
                device, int(event["ts"] // 3600) % 24, stored.events_applied,
                bool(batch.progress.get(uid, stored.in_progress)))))

    def _learn_displays(self) -> None:
        """Teach the batch's impressions and clicks to the bandits, as one minibatch each."""
        batch, models = self._batch, self.models
        if batch.art_seen:
            users, devices, artworks, clicked = zip(*batch.art_seen, strict=True)
            slot: dict[tuple[str, str | None], int] = {}
            which = [slot.setdefault(pair, len(slot))
                     for pair in zip(users, devices, strict=True)]
            contexts = self._art_contexts(list(slot), {})
            models.artwork.learn_many(users, artworks, clicked, contexts[which])
            batch.art_seen = []
        if batch.rows_seen:
            kinds, row_ids, row_users, row_clicked, arguments = zip(*batch.rows_seen,
                                                                     strict=True)
            history, titles = batch.history, self.titles
            affinity = [row_affinity(row, uid, history[uid], titles, batch)
                        for row, uid in zip(row_ids, row_users, strict=True)]
            # Each distinct context built once, then one row per event.
            places: dict[tuple[str | None, int, int, bool], int] = {}
            which = [places.setdefault(args, len(places)) for args in arguments]
            context = models.rows.context
            distinct = np.stack([context(*args) for args in places])
            models.rows.learn_many(kinds, distinct[which], row_clicked, affinity)
            batch.rows_seen = []

    def _art_contexts(self, pairs: Sequence[tuple[str, str | None]],
                      histories: Mapping[str, Sequence[tuple[str, float]]]) -> np.ndarray:
        """The artwork bandit's contexts of (user, device) pairs, one matrix. A user's
        history: as at their first display event of the batch, else ``histories``."""
        seen, cache, titles = self._batch.history, self._batch.tokens, self.titles
        tokens = [user_tokens(uid, seen[uid] if uid in seen else histories.get(uid, ()),
                              titles, cache) for uid, _ in pairs]
        return self.models.artwork.contexts([device for _, device in pairs], tokens)

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
        if self._batch.art_seen or self._batch.rows_seen:
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
        return trending_titles(country, ts, self._batch.trending, self.models.trending,
                               self.global_trending)

    def prepare_pages(self, requests: Sequence[tuple[str, StoredProfile, Sequence[Any],
                                                   dict[str, Any], str]]) -> None:
        """Build the pages of many users at once: ``(user_id, stored, recs, event,
        row_policy)`` each, ``recs`` their ranked list (``(title_id, score, reason)``
        tuples or objects with ``title_id`` and ``reason``). :meth:`decorate` then hands
        each message its page.

        The work is ``streams.pages``' (flat arrays for the whole batch: rows filled slot
        by slot, ordered with one posterior sample, artwork from one matrix product);
        this method hands it the models, the catalogue and the batch's caches (trending
        per country, new releases, affinities, what the batch's events changed)."""
        started = time.perf_counter()
        if self._batch.art_seen or self._batch.rows_seen:
            self._learn_displays()
        settings, models, titles, batch = self.settings, self.models, self.titles, self._batch
        if batch.newest is None:
            batch.newest = titles.newest(settings.row_items + 5)
        gathered = gather(requests, newest=batch.newest, resume=models.resume, rows=models.rows,
                          titles=titles, trending=self._trending, progress=batch.progress,
                          searched=batch.search_added, seen_history=batch.history)
        codes = encode_titles(gathered, titles)
        filled = fill_rows(gathered, codes, settings.row_items, settings.row_duplicates)
        rows = describe_rows(gathered, filled, titles, batch)
        shown = order_rows(rows, models.rows, [request[4] for request in requests],
                           gathered.row_contexts)
        contexts = page_contexts(self._contexts, models.artwork, titles, gathered.uids,
                                 gathered.devices, gathered.histories)
        art = choose_artwork(models.artwork, gathered.uids, codes, filled, contexts,
                             self._artwork_table)
        batch.pages.update(assemble_pages(gathered, codes, filled, rows, shown, art,
                                          batch.search_added, self._json_pieces))
        batch.seconds += time.perf_counter() - started

    def decorate(self, message: dict[str, Any], stored: StoredProfile,
                 recs: Sequence[Any], event: dict[str, Any], row_policy: str = "learned"
                 ) -> None:
        """Add ``rows`` to ``message`` and an ``artwork_id`` to each of its items.

        The page comes from :meth:`prepare_pages` (the events path builds every user's
        at once); a user without one gets it built now, from the message's items.
        ``row_policy`` (an A/B variant's, ``streams.experiments``) orders the rows:
        ``learned`` by the row bandit, ``greedy`` by the bandit without exploration,
        ``fixed`` in the rows' specificity order."""
        rows = self._decorate_items(message, stored, recs, event, row_policy)
        message["rows"] = orjson.loads(rows)

    def encode(self, message: dict[str, Any], stored: StoredProfile, recs: Sequence[Any],
               event: dict[str, Any], row_policy: str = "learned") -> bytes:
        """:meth:`decorate`, then ``orjson.dumps(message)``: the same bytes, with the rows
        (already JSON) spliced in rather than decoded and encoded again (the events
        path's way; ``message`` is left with its items decorated, without ``rows``)."""
        rows = self._decorate_items(message, stored, recs, event, row_policy)
        started = time.perf_counter()
        encoded = orjson.dumps({**message, "rows": orjson.Fragment(rows)})
        self._batch.seconds += time.perf_counter() - started
        return encoded

    def _decorate_items(self, message: dict[str, Any], stored: StoredProfile,
                        recs: Sequence[Any], event: dict[str, Any], row_policy: str) -> bytes:
        """Every item's artwork (and the reason of an in-progress title or a searched-for
        source); the rows' JSON. The reasons are those the page's rows were built from
        (``streams.pages.gather``, ``fill_rows``): a title in progress and not completed
        says ``continue_watching``, and is in that row or in none unless duplicates are
        allowed (``streams.rows``)."""
        uid = message["user_id"]
        page = self._batch.pages.pop(uid, None)
        if page is None:
            self.prepare_pages([(uid, stored, message["items"], event, row_policy)])
            page = self._batch.pages.pop(uid)
        started = time.perf_counter()
        rows, artwork_of, searched = page
        progress = self._batch.progress.get(uid, stored.in_progress)
        completed = stored.profile.completed
        for item in message["items"]:
            title = item["title_id"]
            if title in progress and title not in completed:
                item["reason"] = CONTINUE_WATCHING
            elif searched:
                reason = item["reason"]
                if reason.startswith("because_you_watched:") and reason[20:] in searched:
                    item["reason"] = "search"
            item["artwork_id"] = artwork_of.get(title)
        self._batch.seconds += time.perf_counter() - started
        return rows

    # -- once per batch --------------------------------------------------------------------------
    def take_messages(self) -> list[tuple[str, bytes, bytes]]:
        """Messages to produce: ``(topics attribute, key, value)`` (cache hints)."""
        messages, self._messages = self._messages, []
        if messages:
            metrics.CACHE_HINTS_PUBLISHED.inc(len(messages))
        return messages

    # The latest clock written by flush (a class default until the first write).
    _clock_written = 0.0

    def flush_args(self) -> tuple[list[tuple[str, int]], list[Any]]:
        """``FLUSH_LUA``'s ARGV for this batch, and the (country, hour) pairs of plays whose
        hour is over (written now, then forgotten here). The clock is left out ("") when
        it is all there would be to write and it is within ``CLOCK_STEP_S`` and the same
        hour of the last one written."""
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
        clock, written = batch.clock, self._clock_written
        if clock <= written or not (
                audience or plays or demand or clock - written >= CLOCK_STEP_S
                or hour_start(clock) != hour_start(written)):
            clock = 0.0
        args = [self.settings.notify_window_s, AUDIENCE_CAP, PLAYS_TTL_S, DEMAND_CAP,
                insight_key(app, "clock"), clock or "",
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
                if args[5] != "":
                    self._clock_written = args[5]
            for key in closed:
                del self._open_plays[key]
        self.end_batch()
        if (self._client is not None and not self.follows_catalog_topic
                and time.monotonic() >= self._next_refresh):
            self._next_refresh = time.monotonic() + CATALOG_REFRESH_S
            self._refreshes += 1
            await self.refresh_catalog(full=self._refreshes % CATALOG_FULL_EVERY == 0)

    async def refresh_catalog(self, full: bool = False) -> int:
        """Catch up with the catalogue copy in Redis: titles added or removed through
        another worker's catalogue partitions. Cheap when the count is unchanged (one
        HLEN), unless ``full``: then every key is compared (an addition and a removal
        in one interval keep the count). Returns the number of titles added or removed;
        Redis errors are logged, not raised (the next check retries). Titles this worker
        added or removed since the previous refresh began are left as they are: the copy
        in Redis may not show them yet."""
        from streams.checkpoint import catalog_key

        key = catalog_key(self.settings.app_id)
        titles = self.titles
        recent, self._changed_here = self._changed_here, set()
        try:
            stored = await self._client.hlen(key)
            if not full and (stored == len(titles) or stored > len(titles) == titles.capacity):
                return 0
            present = {k.decode() for k in await self._client.hkeys(key)}
            missing = [t for t in present if t not in titles and t not in recent]
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
            self._changed_here |= recent
            return 0
        recent |= self._changed_here  # (applied while this refresh waited on Redis)
        for title_id in [t for t in titles.by_id if t not in present and t not in recent]:
            self.remove_title(title_id)
            self._changed_here.discard(title_id)
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
