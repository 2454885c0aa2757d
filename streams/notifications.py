"""New-episode notifications: tell recent watchers of a series that its next episode is out.

Two halves, both keyed so one user's keys share a Redis Cluster slot:

* the **audience index**, written by the events path (``streams.product``, in its one
  Lua call per batch): ``sr:series:{<series_id>}:aud`` is a ZSET user ->
  event time of their latest playback of any episode of the series, capped at
  ``AUDIENCE_CAP`` most recent watchers and expiring ``window_s`` after the last write;
* the **notifier**, run by the catalogue agent on an ``episode_released`` event: every
  user in the audience within ``window_s`` before the release (or since: a release
  processed late still reaches those who went on watching) who has not already
  played or completed that episode gets ``{"notification_id", "user_id", "type":
  "new_episode", "title_id", "series_id", "ts", "name"}`` on the ``notifications`` topic
  (key user_id).

Deduplicated: one notification per user and episode, ever (within ``DEDUP_TTL_S``).
A Lua script claims ``sr:u:{<uid>}:ntf:<title_id>`` (SET NX with a TTL) before anything
is produced, so a replayed or redelivered ``episode_released`` event, or a restarted
worker, claims nothing new; ``notification_id`` is derived from user and episode, so
consumers can deduplicate too. Rate-limited: at most ``max_per_day`` notifications per
user per day of event time (``sr:u:{<uid>}:ntfday:<day>``); a rate-limited user is not
claimed and is counted. The claim happens before the produce: a crash in between loses
that notification rather than sending it twice (a duplicate push is worse than a lost
one).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import redis
import redis.asyncio

from streamrec.exceptions import StateStoreUnavailable
from streamrec.metrics import REDIS_ERRORS
from streams.state import STATE_VERSION

logger = logging.getLogger(__name__)

# Most recent watchers kept per series: bounds the index and one release's fan-out.
AUDIENCE_CAP = 100_000
# A user is never told twice about one episode within this long (180 days, seconds).
DEDUP_TTL_S = 180 * 24 * 3600
# Users claimed per Lua call: keeps each script run short (Redis is single-threaded).
CLAIM_CHUNK = 1000
NAMESPACE = uuid.UUID("6f1c3a52-8a51-4e0c-9a55-5b7a0d2e8f10")

CLAIM_LUA = """
local title = ARGV[1]
local day = ARGV[2]
local dedup_ttl = tonumber(ARGV[3])
local max_per_day = tonumber(ARGV[4])
local title_json = cjson.encode(title)
-- Is title in the user's recent or completed titles (streams.state's profile field)? The
-- plain search rules most users out without decoding their profile.
local function watched(uid)
  local p = redis.call('HGET', 'sr:u:{' .. uid .. '}:__STATE__', 'p')
  if not p or not string.find(p, title_json, 1, true) then return false end
  local prof = cjson.decode(p)
  local h = prof.h or {}
  for j = 1, #h, 3 do if h[j] == title then return true end end
  for _, t in ipairs(prof.d or {}) do if t == title then return true end end
  return false
end
local out = {}
for i = 5, #ARGV do
  local p = 'sr:u:{' .. ARGV[i] .. '}:'
  if watched(ARGV[i]) then
    out[#out + 1] = 'seen'
  elseif redis.call('EXISTS', p .. 'ntf:' .. title) == 1 then
    out[#out + 1] = 'duplicate'
  else
    local rate_key = p .. 'ntfday:' .. day
    if tonumber(redis.call('GET', rate_key) or '0') >= max_per_day then
      out[#out + 1] = 'rate_limited'
    else
      redis.call('SET', p .. 'ntf:' .. title, '1', 'EX', dedup_ttl)
      redis.call('INCR', rate_key)
      redis.call('EXPIRE', rate_key, 172800)
      out[#out + 1] = 'sent'
    end
  end
end
return out
""".replace("__STATE__", f"s{STATE_VERSION}")


def audience_key(series_id: str) -> str:
    return f"sr:series:{{{series_id}}}:aud"


def notification_id(user_id: str, title_id: str) -> str:
    """The same for a user and episode in every process, run and replay.

    Examples
    --------
    >>> notification_id("u1", "t9") == notification_id("u1", "t9") != notification_id("u2", "t9")
    True
    """
    return str(uuid.uuid5(NAMESPACE, f"{user_id}\x1f{title_id}"))


def notification(user_id: str, episode: Mapping[str, Any], ts: float) -> dict[str, Any]:
    """The ``notifications`` message telling ``user_id`` about ``episode``."""
    return {
        "notification_id": notification_id(user_id, episode["title_id"]),
        "user_id": user_id,
        "type": "new_episode",
        "title_id": episode["title_id"],
        "series_id": episode["series_id"],
        "ts": ts,
        "name": episode.get("name") or episode["title_id"],
    }


@dataclass
class NotifyOutcome:
    messages: list[tuple[bytes, bytes]] = field(default_factory=list)
    suppressed: dict[str, int] = field(default_factory=dict)


class Notifier:
    """Finds a released episode's audience and claims one notification per user.

    Parameters
    ----------
    client
        ``redis.asyncio.Redis`` (the worker's).
    window_s
        How recently a user must have watched the series, seconds of event time.
    max_per_day
        Notifications per user per day of event time.
    """

    def __init__(self, client: redis.asyncio.Redis, window_s: int, max_per_day: int,
                 clock: Any = time.time) -> None:
        self._client = client
        self.window_s = window_s
        self.max_per_day = max_per_day
        self._clock = clock
        self._claim = client.register_script(CLAIM_LUA)

    async def on_episode(self, episode: Mapping[str, Any]) -> NotifyOutcome:
        """Notifications for an ``episode_released`` catalogue event (validated)."""
        outcome = NotifyOutcome()
        series, released = episode["series_id"], float(episode["ts"])
        try:
            # Members only (no withscores); redis-py annotates every form of the reply.
            audience = cast(list[bytes | str], await self._client.zrangebyscore(
                audience_key(series), released - self.window_s, "+inf"))
            users = [u.decode() if isinstance(u, bytes) else u for u in audience]
            day = str(int(released // 86400))
            now = self._clock()
            for start in range(0, len(users), CLAIM_CHUNK):
                chunk = users[start:start + CLAIM_CHUNK]
                verdicts = await self._claim(keys=[], args=[
                    episode["title_id"], day, DEDUP_TTL_S, self.max_per_day, *chunk])
                for user, verdict in zip(chunk, verdicts, strict=True):
                    verdict = verdict.decode() if isinstance(verdict, bytes) else verdict
                    if verdict == "sent":
                        outcome.messages.append(
                            (user.encode(), orjson.dumps(notification(user, episode, now))))
                    else:
                        outcome.suppressed[verdict] = outcome.suppressed.get(verdict, 0) + 1
        except redis.RedisError as exc:
            REDIS_ERRORS.labels(op="notify").inc()
            raise StateStoreUnavailable(f"Redis notify failed: {exc}") from exc
        logger.info("episode %s of series %s: %d notifications, suppressed %s",
                    episode["title_id"], series, len(outcome.messages), outcome.suppressed)
        return outcome
