"""Per-user feature state in Redis: one atomic, idempotent Lua call per batch.

Key scheme (``{uid}`` is a Redis Cluster hash tag, so one user's keys share a slot); every
key expires ``state_ttl_s`` after the user's last event:

=============================  ===============================================================
``sr:u:{uid}:seen``            ZSET event_id -> ts: the last ``dedup_window`` applied event ids
``sr:u:{uid}:meta``            HASH events_applied, last_ts, device, country, ``dev:<d>`` and
                               ``hod:<hour>`` counts (device and time-of-day profile; at
                               most ``DEVICE_CAP`` devices, ``ndev`` counts them)
``sr:u:{uid}:hist``            ZSET title -> last event ts: recent titles (``history_cap``)
``sr:u:{uid}:aff``             HASH title -> accumulated implicit feedback (for hist titles)
``sr:u:{uid}:done``            ZSET title -> ts: completed titles (``COMPLETED_CAP``)
``sr:u:{uid}:prog``            HASH title -> "position|duration|ts": in progress (resume
                               point; the ``IN_PROGRESS_CAP`` most recent)
``sr:u:{uid}:q``               LIST recent search queries (``SEARCH_CAP``)
``sr:u:{uid}:last``            STRING the lists last emitted to the user (online recall)
=============================  ===============================================================

The script first reads every batch user's profile *as it was before the batch*, then
applies the events in order, skipping any whose ``event_id`` is already in ``seen`` (or
earlier in the batch), so a redelivered batch is never applied twice. Redis runs a script
atomically, so a crash leaves either all of a batch's state or none of it; the worker
commits Kafka offsets only after this call returns (state before offsets).

Cost: the batch travels as one JSON argument, and each user's writes are gathered in Lua
and issued once per user and key (one ``ZADD`` of all the user's new titles, one
``HINCRBYFLOAT`` per title, ...) rather than once per event, which about halves the Redis
CPU per event. The caps (``history_cap``, ``COMPLETED_CAP``, ``dedup_window``) are applied
once per user at the end of the batch: within one batch a list may exceed its cap, and a
title that falls off a full history and comes back in the same batch keeps its affinity.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio

from models.base import UserProfile
from streamrec.exceptions import StateStoreUnavailable
from streamrec.metrics import REDIS_ERRORS, REDIS_SECONDS
from streams.profile import COMPLETED_CAP, COMPLETION_RATIO, SEARCH_CAP
from streams.signals import REWATCH_BONUS

# How many recent titles the script returns per user: what the models look at.
PROFILE_HISTORY = 50
# Most resume points ("continue watching") kept per user, the most recent ones: a client
# starting a new title in every event must not grow a user's state without bound.
IN_PROGRESS_CAP = 50
# Most distinct devices counted per user (``dev:<d>`` in meta), for the same reason.
DEVICE_CAP = 16

APPLY_BATCH_LUA = """
local ttl = tonumber(ARGV[1])
local hist_cap = tonumber(ARGV[2])
local dedup_window = tonumber(ARGV[3])
local done_cap = tonumber(ARGV[4])
local bonus = tonumber(ARGV[5])
local done_ratio = tonumber(ARGV[6])
local profile_hist = tonumber(ARGV[7])
local search_cap = tonumber(ARGV[8])
local prog_cap = __IN_PROGRESS_CAP__
local device_cap = __DEVICE_CAP__
local users = cjson.decode(ARGV[9])
local events = cjson.decode(ARGV[10])

-- The lists the previous batch emitted (user, payload pairs), saved before any profile is
-- read so this batch's online-recall check sees them.
for i = 11, #ARGV, 2 do
  redis.call('SET', 'sr:u:{' .. ARGV[i] .. '}:last', ARGV[i + 1], 'EX', ttl)
end

-- Redis commands with many arguments, in chunks (Lua's unpack has a stack limit).
local CHUNK = 1000
local function call_many(cmd, key, args, extra)
  local replies = {}
  for i = 1, #args, CHUNK do
    local reply = redis.call(cmd, key, unpack(args, i, math.min(i + CHUNK - 1, #args)))
    if extra then for _, r in ipairs(reply) do replies[#replies + 1] = r end end
  end
  return replies
end

local out = {}
local done_sets = {}
for u = 1, #users do
  local p = 'sr:u:{' .. users[u] .. '}:'
  local hist = redis.call('ZREVRANGE', p .. 'hist', 0, profile_hist - 1)
  local aff = {}
  if #hist > 0 then aff = redis.call('HMGET', p .. 'aff', unpack(hist)) end
  for i = 1, #aff do if not aff[i] then aff[i] = '0' end end
  local done = redis.call('ZRANGE', p .. 'done', 0, -1)
  local done_set = {}
  for _, t in ipairs(done) do done_set[t] = true end
  done_sets[u] = done_set
  local prof = {
    h = hist, w = aff, d = done,
    p = redis.call('HGETALL', p .. 'prog'),
    m = redis.call('HMGET', p .. 'meta', 'device', 'country', 'events_applied'),
    q = redis.call('LRANGE', p .. 'q', 0, search_cap - 1),
    l = redis.call('GET', p .. 'last'),
  }
  for i = 1, 3 do if not prof.m[i] then prof.m[i] = '' end end
  if not prof.l then prof.l = '' end
  out[u + 1] = cjson.encode(prof)
end

-- Each user's events, in batch order.
local by_user = {}
for i = 1, #events do
  local u = events[i][2]
  local list = by_user[u]
  if not list then list = {}; by_user[u] = list end
  list[#list + 1] = i
end

local flags = {}
local playback = {play=true, pause=true, resume=true, seek=true, stop=true, complete=true}
local partial_done = {stop=true, pause=true, seek=true}
for u, list in pairs(by_user) do
  local p = 'sr:u:{' .. users[u] .. '}:'
  local ids = {}
  for k, i in ipairs(list) do ids[k] = events[i][1] end
  local known = call_many('ZMSCORE', p .. 'seen', ids, true)
  local fresh = {}
  local seen_args, searches, hist_args, done_args = {}, {}, {}, {}
  local hours, devices, aff_add, prog = {}, {}, {}, {}
  local applied, last_ts, device, country = 0, nil, nil, nil
  local done_set = done_sets[u]
  for k, i in ipairs(list) do
    local e = events[i]
    local eid = e[1]
    if known[k] or fresh[eid] then
      flags[i] = '0'
    else
      flags[i] = '1'
      fresh[eid] = true
      applied = applied + 1
      local typ, title, ts_text, y = e[3], e[4], e[5], e[6]
      local pos_text, dur_text = e[7], e[8]
      local ts = tonumber(ts_text)
      seen_args[#seen_args + 1] = ts_text
      seen_args[#seen_args + 1] = eid
      last_ts = ts_text
      local hour = math.floor(ts / 3600) % 24
      hours[hour] = (hours[hour] or 0) + 1
      if e[9] ~= '' then device = e[9]; devices[e[9]] = (devices[e[9]] or 0) + 1 end
      if e[10] ~= '' then country = e[10] end
      if typ == 'search' then
        searches[#searches + 1] = e[11]
      elseif typ ~= 'impression' and title ~= '' then
        if typ == 'play' and done_set[title] then y = y + bonus end
        aff_add[title] = (aff_add[title] or 0) + y
        hist_args[#hist_args + 1] = ts_text
        hist_args[#hist_args + 1] = title
        if playback[typ] then
          local pos, dur = tonumber(pos_text), tonumber(dur_text)
          if typ == 'complete' or (partial_done[typ] and dur > 0 and pos >= done_ratio * dur) then
            done_args[#done_args + 1] = ts_text
            done_args[#done_args + 1] = title
            done_set[title] = true
            prog[title] = false
          elseif pos > 0 then
            prog[title] = pos_text .. '|' .. dur_text .. '|' .. ts_text
          end
        end
      end
    end
  end
  if applied > 0 then
    call_many('ZADD', p .. 'seen', seen_args)
    local meta = p .. 'meta'
    redis.call('HINCRBY', meta, 'events_applied', applied)
    local fields = {'last_ts', last_ts}
    if device then fields[3] = 'device'; fields[4] = device end
    if country then fields[#fields + 1] = 'country'; fields[#fields + 1] = country end
    redis.call('HSET', meta, unpack(fields))
    for hour, n in pairs(hours) do redis.call('HINCRBY', meta, 'hod:' .. hour, n) end
    for d, n in pairs(devices) do
      -- A client may name a new device in every event: count at most device_cap of them.
      if redis.call('HEXISTS', meta, 'dev:' .. d) == 1 then
        redis.call('HINCRBY', meta, 'dev:' .. d, n)
      elseif redis.call('HINCRBY', meta, 'ndev', 1) <= device_cap then
        redis.call('HINCRBY', meta, 'dev:' .. d, n)
      else
        redis.call('HINCRBY', meta, 'ndev', -1)
      end
    end
    if #searches > 0 then
      call_many('LPUSH', p .. 'q', searches)
      redis.call('LTRIM', p .. 'q', 0, search_cap - 1)
    end
    if #hist_args > 0 then
      for title, y in pairs(aff_add) do redis.call('HINCRBYFLOAT', p .. 'aff', title, y) end
      call_many('ZADD', p .. 'hist', hist_args)
      local n = redis.call('ZCARD', p .. 'hist')
      if n > hist_cap then
        local old = redis.call('ZRANGE', p .. 'hist', 0, n - hist_cap - 1)
        redis.call('ZREMRANGEBYRANK', p .. 'hist', 0, n - hist_cap - 1)
        call_many('HDEL', p .. 'aff', old)
      end
    end
    local prog_set, prog_del = {}, {}
    for title, value in pairs(prog) do
      if value then
        prog_set[#prog_set + 1] = title
        prog_set[#prog_set + 1] = value
      else
        prog_del[#prog_del + 1] = title
      end
    end
    if #prog_del > 0 then call_many('HDEL', p .. 'prog', prog_del) end
    if #prog_set > 0 then call_many('HSET', p .. 'prog', prog_set) end
    if #prog_set > 0 and redis.call('HLEN', p .. 'prog') > prog_cap then
      -- Keep the prog_cap most recent resume points (values are "position|duration|ts").
      local all = redis.call('HGETALL', p .. 'prog')
      local entries = {}
      for i = 1, #all, 2 do
        entries[#entries + 1] = {all[i], tonumber(string.match(all[i + 1], '[^|]*$')) or 0}
      end
      table.sort(entries, function(a, b) return a[2] > b[2] end)
      local drop = {}
      for i = prog_cap + 1, #entries do drop[#drop + 1] = entries[i][1] end
      call_many('HDEL', p .. 'prog', drop)
    end
    if #done_args > 0 then
      call_many('ZADD', p .. 'done', done_args)
      local nd = redis.call('ZCARD', p .. 'done')
      if nd > done_cap then redis.call('ZREMRANGEBYRANK', p .. 'done', 0, nd - done_cap - 1) end
    end
    local ns = redis.call('ZCARD', p .. 'seen')
    if ns > dedup_window then
      redis.call('ZREMRANGEBYRANK', p .. 'seen', 0, ns - dedup_window - 1)
    end
    for _, k in ipairs({'seen', 'meta', 'hist', 'aff', 'done', 'prog', 'q'}) do
      redis.call('EXPIRE', p .. k, ttl)
    end
  end
end
out[1] = table.concat(flags)
return out
"""


APPLY_BATCH_LUA = APPLY_BATCH_LUA.replace("__IN_PROGRESS_CAP__", str(IN_PROGRESS_CAP)).replace(
    "__DEVICE_CAP__", str(DEVICE_CAP))

# One call for many users' "last" lists: ARGV = ttl, then (user, payload) pairs.
SAVE_LISTS_LUA = """
for i = 2, #ARGV, 2 do
  redis.call('SET', 'sr:u:{' .. ARGV[i] .. '}:last', ARGV[i + 1], 'EX', ARGV[1])
end
return #ARGV
"""


def user_key(user_id: str, kind: str) -> str:
    return f"sr:u:{{{user_id}}}:{kind}"


@dataclass
class StoredProfile:
    """A profile read from Redis, plus what the models do not need but the worker does."""

    profile: UserProfile
    in_progress: dict[str, tuple[float, float, float]]  # title -> (position, duration, ts)
    events_applied: int
    last_lists: dict[str, list[str]]


def _as_list(value: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {}; treat it as an empty list.
    return value if isinstance(value, list) else []


def parse_profile(user_id: str, raw: bytes | str) -> StoredProfile:
    data = orjson.loads(raw)
    titles = _as_list(data.get("h"))
    weights = _as_list(data.get("w"))
    history = [(t, float(w)) for t, w in zip(titles, weights, strict=False)]
    device, country, applied = (_as_list(data.get("m")) + ["", "", ""])[:3]
    prog_flat = _as_list(data.get("p"))
    in_progress: dict[str, tuple[float, float, float]] = {}
    for title, packed in zip(prog_flat[::2], prog_flat[1::2], strict=False):
        pos, dur, ts = (float(x) for x in packed.split("|"))
        in_progress[title] = (pos, dur, ts)
    last = data.get("l") or ""
    profile = UserProfile(
        user_id=user_id, history=history, completed=set(_as_list(data.get("d"))),
        device=device or None, country=country or None,
        search_terms=list(_as_list(data.get("q"))),
    )
    return StoredProfile(
        profile=profile, in_progress=in_progress,
        events_applied=int(applied) if applied else 0,
        last_lists=orjson.loads(last) if last else {},
    )


def _encode_events(events: Sequence[dict[str, Any]], feedbacks: Sequence[float],
                   user_index: dict[str, int]) -> bytes:
    """The batch as one JSON argument (one array per event; see the script for the order).

    Times, positions and durations travel as text so the stored values are exactly the
    producer's numbers (Lua would print a number with 14 significant digits).
    """
    return orjson.dumps([
        [event["event_id"], user_index[event["user_id"]], event["type"],
         event.get("title_id") or "", repr(event["ts"]), y, repr(event.get("position_s", 0.0)),
         repr(event.get("duration_s") or 0.0), event.get("device") or "",
         event.get("country") or "", event.get("query") or ""]
        for event, y in zip(events, feedbacks, strict=True)
    ])


class StateStore:
    """Async access to per-user state; one round trip per batch.

    Parameters
    ----------
    client
        A ``redis.asyncio.Redis``; connected lazily by redis-py, closed by :meth:`close`.
    """

    def __init__(self, client: redis.asyncio.Redis, ttl_s: int, history_cap: int,
                 dedup_window: int) -> None:
        self._client = client
        self.ttl_s = ttl_s
        self.history_cap = history_cap
        self.dedup_window = dedup_window
        self._script = client.register_script(APPLY_BATCH_LUA)
        self._save_lists = client.register_script(SAVE_LISTS_LUA)

    async def apply_batch(
        self, events: Sequence[dict[str, Any]], feedbacks: Sequence[float],
        last_lists: Mapping[str, bytes] | None = None,
    ) -> tuple[list[bool], dict[str, StoredProfile]]:
        """Apply valid events (in order) idempotently; returns per-event "applied" flags and
        every batch user's profile as it was *before* the batch.

        ``last_lists`` (user -> what was last emitted to them, see :meth:`save_last_lists`)
        are saved in the same call, first: the hot path sends a batch's lists with the next
        batch's state rather than in a round trip of their own.
        """
        users = list(dict.fromkeys(e["user_id"] for e in events))
        user_index = {uid: i for i, uid in enumerate(users, start=1)}
        argv = [
            self.ttl_s, self.history_cap, self.dedup_window, COMPLETED_CAP, REWATCH_BONUS,
            COMPLETION_RATIO, PROFILE_HISTORY, SEARCH_CAP, orjson.dumps(users),
            _encode_events(events, feedbacks, user_index),
        ]
        for uid, payload in (last_lists or {}).items():
            argv += (uid, payload)
        started = time.perf_counter()
        try:
            reply = await self._script(keys=[], args=argv)
        except redis.RedisError as exc:
            REDIS_ERRORS.labels(op="apply_batch").inc()
            raise StateStoreUnavailable(f"Redis apply_batch failed: {exc}") from exc
        REDIS_SECONDS.labels(op="apply_batch").observe(time.perf_counter() - started)
        flags_raw = reply[0]
        flags_text = flags_raw.decode() if isinstance(flags_raw, bytes) else flags_raw
        flags = [c == "1" for c in flags_text]
        profiles = {uid: parse_profile(uid, raw) for uid, raw in zip(users, reply[1:], strict=True)}
        return flags, profiles

    async def save_last_lists(self, lists: dict[str, bytes]) -> None:
        """Remember what was just emitted to each user (for online recall)."""
        if not lists:
            return
        started = time.perf_counter()
        argv: list[Any] = [self.ttl_s]
        for uid, payload in lists.items():
            argv += (uid, payload)
        try:
            await self._save_lists(keys=[], args=argv)
        except redis.RedisError as exc:
            REDIS_ERRORS.labels(op="save_last_lists").inc()
            raise StateStoreUnavailable(f"Redis save_last_lists failed: {exc}") from exc
        REDIS_SECONDS.labels(op="save_last_lists").observe(time.perf_counter() - started)

    async def close(self) -> None:
        await self._client.aclose()


def read_features(client: redis.Redis, user_id: str) -> dict[str, Any] | None:
    """A user's whole feature state, for ``streamrec features`` (synchronous client)."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(user_key(user_id, "meta"))
    pipe.zrevrange(user_key(user_id, "hist"), 0, -1, withscores=True)
    pipe.hgetall(user_key(user_id, "aff"))
    pipe.zrevrange(user_key(user_id, "done"), 0, -1)
    pipe.hgetall(user_key(user_id, "prog"))
    pipe.lrange(user_key(user_id, "q"), 0, -1)
    meta, hist, aff, done, prog, queries = pipe.execute()
    if not meta:
        return None
    text = {k.decode(): v.decode() for k, v in meta.items()}
    affinity = {k.decode(): float(v) for k, v in aff.items()}
    return {
        "user_id": user_id,
        "events_applied": int(text.get("events_applied", 0)),
        "last_event_ts": float(text.get("last_ts", 0) or 0),
        "device": text.get("device"),
        "country": text.get("country"),
        "devices": {k[4:]: int(v) for k, v in text.items() if k.startswith("dev:")},
        "hours": {int(k[4:]): int(v) for k, v in text.items() if k.startswith("hod:")},
        "recent_titles": [
            {"title_id": t.decode(), "last_ts": ts, "affinity": affinity.get(t.decode(), 0.0)}
            for t, ts in hist
        ],
        "completed": [t.decode() for t in done],
        "in_progress": {
            t.decode(): dict(zip(("position_s", "duration_s", "ts"),
                                 (float(x) for x in v.decode().split("|")), strict=True))
            for t, v in prog.items()
        },
        "searches": [q.decode() for q in queries],
    }
