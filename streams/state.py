"""Per-user feature state in Redis: one atomic, idempotent Lua call per batch.

Layout (state version 2): ONE hash per user, ``sr:u:{uid}:s2`` (``{uid}`` is a Redis
Cluster hash tag, so a user's keys share a slot; the ``s2`` suffix is the layout's version,
bumped whenever it changes so old keys are ignored and simply expire). The whole key
expires ``state_ttl_s`` after the user's last write: one ``EXPIRE`` per user per batch.

=========  ===================================================================================
``s``      the last ``dedup_window`` applied event ids, as ``DIGEST_BYTES``-byte BLAKE2b
           digests concatenated oldest first (binary; a zset of the ids cost ~5x the bytes)
``p``      the profile, one JSON object the script decodes and re-encodes once per batch:
           ``n`` events applied, ``t`` last event ts, ``dv`` device, ``c`` country,
           ``h`` recent titles, flat ``[title, affinity, ts (whole seconds), ...]`` most
           recent first (``history_cap``), ``d`` completed titles oldest first
           (``COMPLETED_CAP``), ``g`` in progress, flat ``[title, position, duration, ts,
           ...]`` most recent first (``IN_PROGRESS_CAP``); the numbers of ``h`` and ``g``
           as JSON strings (the script copies them; see ``as_text``), ``q`` searches newest first
           (``SEARCH_CAP``), ``hod`` hour-of-day -> count, ``dev`` device -> count
           (``DEVICE_CAP`` devices)
``l``      the lists last emitted to the user (online recall), JSON written by the worker
others     any JSON a caller stores per user (``user_fields``), returned like ``l``
=========  ===================================================================================

For every user of a batch the script reads the hash (``HGETALL``), returns it *as it was
before the batch* (every field but ``s``, as one JSON object; of ``s``, for a user all of
whose events in the batch are duplicates, the latest digest in hex:
``StoredProfile.last_event_digest``), applies the user's events
in order, skipping any whose event id digest is in ``s`` (or earlier in the batch), and
writes the changed fields back (``HSET``, ``EXPIRE``): three Redis calls per user, where
the key-per-list layout (version 1) made about 25. A redelivered batch is never applied
twice; Redis runs a script atomically, so a crash leaves all of a batch's state or none of
it; the worker commits Kafka offsets only after this call returns (state before offsets).

Lists keep arrival order (a title played again moves to the front, as in
``streams.profile.apply_event``) and their caps apply once per user at the end of a batch:
within one batch a list may exceed its cap, and a title that falls off a full history and
comes back in the same batch keeps its affinity. Numbers are stored with 14 significant
digits (event times to 0.1 ms, history times to the second), those of ``h`` and ``g`` as
JSON strings.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
import redis.asyncio

from models.base import UserProfile
from streamrec.exceptions import StateStoreUnavailable
from streamrec.metrics import REDIS_ERRORS, REDIS_SECONDS
from streams.profile import COMPLETED_CAP, COMPLETION_RATIO, SEARCH_CAP
from streams.signals import REWATCH_BONUS

# The layout's version, in every per-user state key: bump it when the layout changes.
STATE_VERSION = 2
# How many recent titles a profile hands the models (the stored history is longer).
PROFILE_HISTORY = 50
# Most resume points ("continue watching") kept per user, the most recent ones: a client
# starting a new title in every event must not grow a user's state without bound.
IN_PROGRESS_CAP = 50
# Most distinct devices counted per user, for the same reason.
DEVICE_CAP = 16
# Bytes of an event id's digest in the dedup window. 96 bits: the chance that a new event
# is taken for a duplicate is window / 2**96 (~6e-26 with 5,000 ids remembered), and an
# id costs 12 bytes instead of its text plus a zset entry (~80 bytes).
DIGEST_BYTES = 12
# Fields the script owns; callers may store others (``user_fields``) next to ``l``.
OWN_FIELDS = frozenset({"s", "p"})
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,15}")

APPLY_BATCH_LUA = """
local ttl = tonumber(ARGV[1])
local hist_cap = tonumber(ARGV[2])
local seen_bytes = tonumber(ARGV[3]) * __DIGEST_BYTES__
local done_cap = tonumber(ARGV[4])
local bonus = tonumber(ARGV[5])
local done_ratio = tonumber(ARGV[6])
local search_cap = tonumber(ARGV[7])
local users = cjson.decode(ARGV[8])
local events = cjson.decode(ARGV[9])
local digests = ARGV[10]
local D = __DIGEST_BYTES__
local HEX = string.rep('%02x', D)
local prog_cap = __IN_PROGRESS_CAP__
local device_cap = __DEVICE_CAP__

-- Fields stored with this call, (user, field, JSON) triples: the lists the previous batch
-- emitted, saved "before" any profile is read so this batch's online-recall check sees them.
local pending = {}
for i = 11, #ARGV, 3 do
  local w = pending[ARGV[i]]
  if not w then w = {}; pending[ARGV[i]] = w end
  w[#w + 1] = ARGV[i + 1]
  w[#w + 1] = ARGV[i + 2]
end

local function state_key(uid) return 'sr:u:{' .. uid .. '}:s__STATE_VERSION__' end

-- Is digest dg one of the fixed-width digests in seen? (A match must start on a boundary.)
local function remembered(seen, dg)
  local from = 1
  while true do
    local at = string.find(seen, dg, from, true)
    if not at then return false end
    if (at - 1) % D == 0 then return true end
    from = at + 1
  end
end

-- events is flat, FIELDS values per event (one table, not one per event, to decode).
local F = __EVENT_FIELDS__
local by_user = {}
for i = 1, #events / F do
  local u = events[(i - 1) * F + 1]
  local list = by_user[u]
  if not list then list = {}; by_user[u] = list end
  list[#list + 1] = i
end

local playback = {play=true, pause=true, resume=true, seek=true, stop=true, complete=true}
local partial_done = {stop=true, pause=true, seek=true}

-- The history's and resume points' numbers are kept as JSON strings: cjson formats a
-- number far slower than it copies a string (a profile of 200 titles and 50 resume
-- points: 260 us to decode and re-encode with numbers, 118 us with strings), and all but
-- a batch's few changed entries are copied unchanged. tostring prints what cjson would
-- (14 significant digits); a number stored before this (a JSON number) becomes its text
-- when its entry is next copied.
local function as_text(v)
  if type(v) == 'number' then return tostring(v) end
  return v
end

-- Fold the applied events (indices into events, in order) into profile p (decoded JSON).
local function apply(p, applied)
  local h, d, g, q = p.h or {}, p.d or {}, p.g or {}, p.q or {}
  local hod, dev = p.hod or {}, p.dev or {}
  local done_set
  local function done_has(title)
    if not done_set then
      done_set = {}
      for _, t in ipairs(d) do done_set[t] = true end
    end
    return done_set[title]
  end
  local ndev = 0
  for _ in pairs(dev) do ndev = ndev + 1 end
  local titles, aff_add, title_ts = {}, {}, {}
  local progs, prog_val, done_new, searches = {}, {}, {}, {}
  for _, i in ipairs(applied) do
    local b = (i - 1) * F
    local typ, title, ts, y = events[b + 2], events[b + 3], events[b + 4], events[b + 5]
    local pos, dur = events[b + 6], events[b + 7]
    p.t = ts
    local hour = tostring(math.floor(ts / 3600) % 24)
    hod[hour] = (hod[hour] or 0) + 1
    local device = events[b + 8]
    if device ~= '' then
      p.dv = device
      -- A client may name a new device in every event: count at most device_cap of them.
      if dev[device] then
        dev[device] = dev[device] + 1
      elseif ndev < device_cap then
        dev[device] = 1
        ndev = ndev + 1
      end
    end
    local country = events[b + 9]
    if country ~= '' then p.c = country end
    if typ == 'search' then
      searches[#searches + 1] = events[b + 10]
    elseif typ ~= 'impression' and title ~= '' then
      if typ == 'play' and done_has(title) then y = y + bonus end
      aff_add[title] = (aff_add[title] or 0) + y
      title_ts[title] = ts
      titles[#titles + 1] = title
      if playback[typ] then
        if typ == 'complete' or (partial_done[typ] and dur > 0 and pos >= done_ratio * dur) then
          done_has(title)
          done_set[title] = true
          done_new[#done_new + 1] = title
          prog_val[title] = false
          progs[#progs + 1] = title
        elseif pos > 0 then
          prog_val[title] = {pos, dur, ts}
          progs[#progs + 1] = title
        end
      end
    end
  end
  p.n = (p.n or 0) + #applied
  p.hod = hod
  p.dev = dev
  if #titles > 0 then
    -- This batch's titles, latest first, then the untouched rest, up to hist_cap.
    -- k counts nh's values (a table's # is a search in Lua 5.1, and this runs per entry).
    -- placed[t]: where t's affinity is in nh. One pass over the old history then adds
    -- the old affinities (aff_add is never -0, so 0 + it is it) and copies the rest.
    local nh, placed, k, full = {}, {}, 0, 3 * hist_cap
    for j = #titles, 1, -1 do
      local t = titles[j]
      if not placed[t] and k < full then
        placed[t] = k + 2
        nh[k + 1] = t
        nh[k + 2] = tostring(aff_add[t])
        nh[k + 3] = tostring(math.floor(title_ts[t]))
        k = k + 3
      end
    end
    for j = 1, #h, 3 do
      local t = h[j]
      local at = placed[t]
      if at then
        nh[at] = tostring(h[j + 1] + aff_add[t])
      elseif k < full then
        nh[k + 1] = t; nh[k + 2] = as_text(h[j + 1]); nh[k + 3] = as_text(h[j + 2])
        k = k + 3
      end
    end
    p.h = nh
  end
  if #progs > 0 then
    local ng, placed, k, full = {}, {}, 0, 4 * prog_cap
    for j = #progs, 1, -1 do
      local t = progs[j]
      if not placed[t] then
        placed[t] = true
        local v = prog_val[t]
        if v and k < full then
          ng[k + 1] = t; ng[k + 2] = tostring(v[1]); ng[k + 3] = tostring(v[2])
          ng[k + 4] = tostring(v[3])
          k = k + 4
        end
      end
    end
    for j = 1, #g, 4 do
      if k >= full then break end
      local t = g[j]
      if not placed[t] then
        ng[k + 1] = t; ng[k + 2] = as_text(g[j + 1]); ng[k + 3] = as_text(g[j + 2])
        ng[k + 4] = as_text(g[j + 3])
        k = k + 4
      end
    end
    p.g = ng
  end
  if #done_new > 0 then
    -- Completed titles oldest first; one completed again moves to the end.
    local last = {}
    for k, t in ipairs(done_new) do last[t] = k end
    local nd = {}
    for _, t in ipairs(d) do if not last[t] then nd[#nd + 1] = t end end
    for k, t in ipairs(done_new) do if last[t] == k then nd[#nd + 1] = t end end
    if #nd > done_cap then
      local kept = {}
      for j = #nd - done_cap + 1, #nd do kept[#kept + 1] = nd[j] end
      nd = kept
    end
    p.d = nd
  end
  if #searches > 0 then
    local nq = {}
    for j = #searches, 1, -1 do
      if #nq < search_cap then nq[#nq + 1] = searches[j] end
    end
    for j = 1, #q do
      if #nq >= search_cap then break end
      nq[#nq + 1] = q[j]
    end
    p.q = nq
  end
end

local flags, replies = {}, {}
for u = 1, #users do
  local uid = users[u]
  local key = state_key(uid)
  local flat = redis.call('HGETALL', key)
  local rec = {}
  for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
  local writes = pending[uid] or {}
  pending[uid] = nil
  for i = 1, #writes, 2 do rec[writes[i]] = writes[i + 1] end
  local parts = {}
  for name, value in pairs(rec) do
    if name ~= 's' then parts[#parts + 1] = '"' .. name .. '":' .. value end
  end

  local seen = rec.s or ''
  local fresh, new_ids, applied = {}, {}, {}
  for _, i in ipairs(by_user[u]) do
    local dg = string.sub(digests, (i - 1) * D + 1, i * D)
    if fresh[dg] or remembered(seen, dg) then
      flags[i] = '0'
    else
      flags[i] = '1'
      fresh[dg] = true
      new_ids[#new_ids + 1] = dg
      applied[#applied + 1] = i
    end
  end
  if #applied == 0 and #seen >= D then
    -- All the user's events were duplicates (a redelivery): of s, the digest of the latest
    -- event applied, in hex, says which of them the state (and so the list) reflects last.
    parts[#parts + 1] = '"s":"' .. string.format(HEX, string.byte(seen, -D, -1)) .. '"'
  end
  replies[u] = '{' .. table.concat(parts, ',') .. '}'
  if #applied > 0 then
    local p = rec.p and cjson.decode(rec.p) or {}
    apply(p, applied)
    seen = seen .. table.concat(new_ids)
    if #seen > seen_bytes then seen = string.sub(seen, -seen_bytes) end
    writes[#writes + 1] = 's'
    writes[#writes + 1] = seen
    writes[#writes + 1] = 'p'
    writes[#writes + 1] = cjson.encode(p)
  end
  if #writes > 0 then
    redis.call('HSET', key, unpack(writes))
    redis.call('EXPIRE', key, ttl)
  end
end
for uid, writes in pairs(pending) do
  local key = state_key(uid)
  redis.call('HSET', key, unpack(writes))
  redis.call('EXPIRE', key, ttl)
end
return {table.concat(flags), '[' .. table.concat(replies, ',') .. ']'}
"""

APPLY_BATCH_LUA = (APPLY_BATCH_LUA.replace("__IN_PROGRESS_CAP__", str(IN_PROGRESS_CAP))
                   .replace("__DEVICE_CAP__", str(DEVICE_CAP))
                   .replace("__DIGEST_BYTES__", str(DIGEST_BYTES))
                   .replace("__STATE_VERSION__", str(STATE_VERSION))
                   .replace("__EVENT_FIELDS__", "10"))

# Fields for users outside a batch: ARGV = ttl, then (user, field, JSON) triples.
SAVE_FIELDS_LUA = """
for i = 2, #ARGV, 3 do
  local key = 'sr:u:{' .. ARGV[i] .. '}:s__STATE_VERSION__'
  redis.call('HSET', key, ARGV[i + 1], ARGV[i + 2])
  redis.call('EXPIRE', key, ARGV[1])
end
return #ARGV
""".replace("__STATE_VERSION__", str(STATE_VERSION))


def user_key(user_id: str, kind: str) -> str:
    """A per-user key of another area (``recs``, ``xp``, ...), in the user's hash slot."""
    return f"sr:u:{{{user_id}}}:{kind}"


def state_key(user_id: str) -> str:
    """The one key holding ``user_id``'s state (see the module docstring)."""
    return user_key(user_id, f"s{STATE_VERSION}")


def event_digest(event_id: str) -> bytes:
    """What the dedup window remembers of an event id."""
    return hashlib.blake2b(event_id.encode(), digest_size=DIGEST_BYTES).digest()


@dataclass
class StoredProfile:
    """A profile read from Redis, plus what the models do not need but the worker does."""

    profile: UserProfile
    in_progress: dict[str, tuple[float, float, float]]  # title -> (position, duration, ts)
    events_applied: int
    last_lists: dict[str, list[str]]
    # Fields other callers store per user (``StateStore.apply_batch(user_fields=...)``).
    fields: dict[str, Any] = field(default_factory=dict)
    # For a user all of whose events in the batch were duplicates (a redelivery), the
    # digest (``event_digest``) of the latest event applied to the state: which of them
    # the state reflects last. None otherwise.
    last_event_digest: bytes | None = None


def _as_list(value: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {}; treat it as an empty list.
    return value if isinstance(value, list) else []


def parse_profile(user_id: str, record: Mapping[str, Any]) -> StoredProfile:
    """One user's record as the script returns it (``p``, ``l`` and callers' fields)."""
    lists = record.get("l") or {}
    extra = {k: v for k, v in record.items() if k != "p" and k != "l" and k != "s"}
    latest = record.get("s")
    digest = bytes.fromhex(latest) if isinstance(latest, str) else None
    data = record.get("p")
    if not data:  # a new user
        return StoredProfile(UserProfile(user_id), {}, 0, lists, extra, digest)
    flat = _as_list(data.get("h"))
    # JSON numbers: an affinity of 2.0 arrives as the int 2, so make every weight a float.
    history = list(zip(flat[0:3 * PROFILE_HISTORY:3],
                       map(float, flat[1:3 * PROFILE_HISTORY:3]), strict=True))
    prog = _as_list(data.get("g"))
    in_progress = {t: (float(pos), float(dur), float(ts))
                   for t, pos, dur, ts in zip(prog[::4], prog[1::4], prog[2::4], prog[3::4],
                                              strict=False)} if prog else {}
    profile = UserProfile(
        user_id, history, set(_as_list(data.get("d"))), data.get("dv") or None,
        data.get("c") or None, None, list(_as_list(data.get("q"))),
    )
    return StoredProfile(profile, in_progress, int(data.get("n") or 0), lists, extra, digest)


def _encode_events(events: Sequence[dict[str, Any]], feedbacks: Sequence[float],
                   user_index: dict[str, int]) -> bytes:
    """The batch as one flat JSON array, 10 values per event (see the script for the order)."""
    flat: list[Any] = []
    add = flat.extend
    for event, y in zip(events, feedbacks, strict=True):
        get = event.get
        add((user_index[event["user_id"]], event["type"], get("title_id") or "", event["ts"], y,
             get("position_s") or 0.0, get("duration_s") or 0.0, get("device") or "",
             get("country") or "", get("query") or ""))
    return orjson.dumps(flat)


def _field_args(user_fields: Mapping[str, Mapping[str, bytes]]) -> list[str | bytes]:
    """(user, field, JSON) triples; field names are checked (they are spliced into JSON)."""
    args: list[str | bytes] = []
    for uid, fields in user_fields.items():
        for name, value in fields.items():
            if name in OWN_FIELDS or not _FIELD_NAME.fullmatch(name):
                raise ValueError(f"bad per-user state field name {name!r}: use 1-16 of "
                                 f"[a-z0-9_], starting with a letter, not {sorted(OWN_FIELDS)}")
            args += (uid, name, value)
    return args


def _merge(last_lists: Mapping[str, bytes] | None,
           user_fields: Mapping[str, Mapping[str, bytes]] | None
           ) -> dict[str, dict[str, bytes]]:
    merged: dict[str, dict[str, bytes]] = {uid: dict(f) for uid, f in (user_fields or {}).items()}
    for uid, payload in (last_lists or {}).items():
        merged.setdefault(uid, {})["l"] = payload
    return merged


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
        self._save_fields = client.register_script(SAVE_FIELDS_LUA)

    async def apply_batch(
        self, events: Sequence[dict[str, Any]], feedbacks: Sequence[float],
        last_lists: Mapping[str, bytes] | None = None,
        user_fields: Mapping[str, Mapping[str, bytes]] | None = None,
    ) -> tuple[list[bool], dict[str, StoredProfile]]:
        """Apply valid events (in order) idempotently; returns per-event "applied" flags and
        every batch user's profile as it was *before* the batch.

        ``last_lists`` (user -> what was last emitted to them, see :meth:`save_last_lists`)
        and ``user_fields`` (user -> {field: JSON}, returned in ``StoredProfile.fields``)
        are saved in the same call, first: the hot path sends a batch's lists with the next
        batch's state rather than in a round trip of their own.
        """
        users = list(dict.fromkeys(e["user_id"] for e in events))
        user_index = {uid: i for i, uid in enumerate(users, start=1)}
        digest = hashlib.blake2b
        argv: list[bytes | str | int | float] = [
            self.ttl_s, self.history_cap, self.dedup_window, COMPLETED_CAP, REWATCH_BONUS,
            COMPLETION_RATIO, SEARCH_CAP, orjson.dumps(users),
            _encode_events(events, feedbacks, user_index),
            b"".join(digest(e["event_id"].encode(), digest_size=DIGEST_BYTES).digest()
                     for e in events),
        ]
        argv += _field_args(_merge(last_lists, user_fields))
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
        profiles = {uid: parse_profile(uid, record)
                    for uid, record in zip(users, orjson.loads(reply[1]), strict=True)}
        return flags, profiles

    async def save_last_lists(self, lists: Mapping[str, bytes],
                              user_fields: Mapping[str, Mapping[str, bytes]] | None = None
                              ) -> None:
        """Remember what was just emitted to each user (for online recall), and any
        ``user_fields``, outside a batch."""
        args = _field_args(_merge(lists, user_fields))
        if not args:
            return
        started = time.perf_counter()
        try:
            await self._save_fields(keys=[], args=[self.ttl_s, *args])
        except redis.RedisError as exc:
            REDIS_ERRORS.labels(op="save_last_lists").inc()
            raise StateStoreUnavailable(f"Redis save_last_lists failed: {exc}") from exc
        REDIS_SECONDS.labels(op="save_last_lists").observe(time.perf_counter() - started)

    async def close(self) -> None:
        await self._client.aclose()


def _load(raw: bytes | str | None) -> dict[str, Any]:
    data = orjson.loads(raw) if raw else {}
    return data if isinstance(data, dict) else {}


def read_features(client: redis.Redis, user_id: str) -> dict[str, Any] | None:
    """A user's whole feature state, for ``streamrec features`` (synchronous client)."""
    record = client.hgetall(state_key(user_id))
    if b"p" not in record:
        return None
    data = _load(record[b"p"])
    hist = _as_list(data.get("h"))
    prog = _as_list(data.get("g"))
    return {
        "user_id": user_id,
        "events_applied": int(data.get("n") or 0),
        "last_event_ts": float(data.get("t") or 0),
        "device": data.get("dv"),
        "country": data.get("c"),
        "devices": dict(data.get("dev") or {}),
        "hours": {int(k): int(v) for k, v in (data.get("hod") or {}).items()},
        "recent_titles": [
            {"title_id": t, "last_ts": float(ts), "affinity": float(w)}
            for t, w, ts in zip(hist[::3], hist[1::3], hist[2::3], strict=False)
        ],
        "completed": _as_list(data.get("d"))[::-1],  # most recent first
        "in_progress": {
            t: {"position_s": float(pos), "duration_s": float(dur), "ts": float(ts)}
            for t, pos, dur, ts in zip(prog[::4], prog[1::4], prog[2::4], prog[3::4],
                                       strict=False)
        },
        "searches": _as_list(data.get("q")),
        # How many event ids the dedup window remembers (at most ``dedup_window``).
        "remembered_events": len(record.get(b"s", b"")) // DIGEST_BYTES,
    }


def events_applied(client: redis.Redis, user_ids: Sequence[str]) -> dict[str, int]:
    """Events applied per user, read in one pipeline (0 for a user with no state)."""
    pipe = client.pipeline(transaction=False)
    for uid in user_ids:
        pipe.hget(state_key(uid), "p")
    return {uid: int(_load(raw).get("n") or 0)
            for uid, raw in zip(user_ids, pipe.execute(), strict=True)}


def remembered_event_ids(client: redis.Redis, user_ids: Sequence[str],
                         candidates: Iterable[str]) -> set[str]:
    """Which of ``candidates`` the users' dedup windows remember (i.e. were applied and are
    still recognised as duplicates), read in one pipeline."""
    pipe = client.pipeline(transaction=False)
    for uid in user_ids:
        pipe.hget(state_key(uid), "s")
    windows = [raw or b"" for raw in pipe.execute()]
    digests = {w[i:i + DIGEST_BYTES] for w in windows for i in range(0, len(w), DIGEST_BYTES)}
    return {eid for eid in candidates if event_digest(eid) in digests}
