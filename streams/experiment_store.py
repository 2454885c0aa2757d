"""Experiment tallies in Redis, so ``streamrec experiment report`` works from any machine.

Key scheme (``{app}`` is ``STREAMREC_APP_ID``, ``{uid}`` the user id, as in
``streams.state``):

==================================  =========================================================
``sr:xp:{app}:index``               SET of experiment names
``sr:xp:{app}:serving``             STRING JSON list of the experiments in the file the
                                    latest worker started with (``[]`` without a file): an
                                    indexed one not in it was removed from the file
``sr:xp:{app}:latest_ts``           STRING the latest event time a worker has tallied: an
                                    experiment whose ``end_ts`` it has reached has ended
``sr:xp:{app}:{exp}:config``        STRING JSON snapshot of the experiment (variants, shares,
                                    control, metric, start and end), written when a worker
                                    starts
``sr:xp:{app}:{exp}:v:{variant}``   HASH of the arm's sufficient statistics over users:
                                    ``users``, ``s:<m>`` (sum), ``q:<m>`` (sum of squares),
                                    ``c:<m1>:<m2>`` (sum of products), ``u:<m>`` (users
                                    whose ``<m>`` is above 0), ``lists``
``sr:u:{uid}:xp``                   HASH ``<exp>|<variant>|<m>`` -> the user's running totals
                                    (what updating the squares needs); expires with the
                                    user's state (``state_ttl_s``): bounded per user by
                                    experiments x variants x measures
==================================  =========================================================

One Lua call per batch adds the batch's per-user deltas: the script reads each user's
old totals, adds the deltas, and moves the arm's sums of squares and products by
``new^2 - old^2`` and ``new_a*new_b - old_a*old_b``, so the report needs only the arm
hashes, never a scan over users. The tallies come only from events applied for the first
time (deduplicated by ``event_id`` before this runs), so a redelivered batch adds nothing;
a crash between the state write and this call loses that batch's tallies (never double
counts them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import redis
import redis.asyncio

from streamrec import metrics
from streamrec.exceptions import StateStoreUnavailable
from streamrec.metrics import REDIS_ERRORS, REDIS_SECONDS
from streamrec.settings import Settings
from streams.experiment_batch import MEASURES, ExperimentTallies
from streams.experiment_stats import RATIOS, ArmStats
from streams.experiments import ExperimentConfig, changes_since, load

logger = logging.getLogger(__name__)

# Products kept per arm: one per metric's (numerator, denominator) pair.
PAIRS = tuple(dict.fromkeys(RATIOS.values()))
_PAIR_INDEXES = [(MEASURES.index(a) + 1, MEASURES.index(b) + 1) for a, b in PAIRS]

RECORD_LUA = """
local ttl = tonumber(ARGV[1])
local prefix = ARGV[2]
local nm = tonumber(ARGV[3])
local names = {}
for i = 1, nm do names[i] = ARGV[3 + i] end
local np = tonumber(ARGV[4 + nm])
local pairs_at = 4 + nm
local base = pairs_at + 2 * np
local n_lists = tonumber(ARGV[base + 1])
for i = 0, n_lists - 1 do
  local b = base + 1 + i * 3
  redis.call('HINCRBY', prefix .. ARGV[b + 1] .. ':v:' .. ARGV[b + 2], 'lists', ARGV[b + 3])
end
base = base + 1 + n_lists * 3
local latest = tonumber(ARGV[base + 1])
if latest then
  local was = tonumber(redis.call('GET', prefix .. 'latest_ts'))
  if not was or latest > was then redis.call('SET', prefix .. 'latest_ts', ARGV[base + 1]) end
end
base = base + 1
local stride = 3 + nm
local n_rows = (#ARGV - base) / stride
local new_users = {}
for r = 0, n_rows - 1 do
  local b = base + r * stride
  local exp, var, uid = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local ukey = 'sr:u:{' .. uid .. '}:xp'
  local f = exp .. '|' .. var .. '|'
  local fields = {f .. 'n'}
  for i = 1, nm do fields[i + 1] = f .. names[i] end
  local old = redis.call('HMGET', ukey, unpack(fields))
  local arm = prefix .. exp .. ':v:' .. var
  if not old[1] then
    redis.call('HINCRBY', arm, 'users', 1)
    redis.call('HSET', ukey, f .. 'n', 1)
    new_users[#new_users + 1] = exp .. '|' .. var
  end
  local o, n = {}, {}
  local changed = false
  for i = 1, nm do
    o[i] = tonumber(old[i + 1]) or 0
    local d = tonumber(ARGV[b + 3 + i])
    n[i] = o[i] + d
    if d ~= 0 then
      changed = true
      redis.call('HINCRBYFLOAT', arm, 's:' .. names[i], d)
      redis.call('HINCRBYFLOAT', arm, 'q:' .. names[i], n[i] * n[i] - o[i] * o[i])
      if o[i] == 0 and n[i] ~= 0 then
        redis.call('HINCRBY', arm, 'u:' .. names[i], 1)
      end
      redis.call('HSET', ukey, f .. names[i], string.format('%.17g', n[i]))
    end
  end
  if changed then
    for p = 0, np - 1 do
      local a, c = tonumber(ARGV[pairs_at + 1 + 2 * p]), tonumber(ARGV[pairs_at + 2 + 2 * p])
      local delta = n[a] * n[c] - o[a] * o[c]
      if delta ~= 0 then
        redis.call('HINCRBYFLOAT', arm, 'c:' .. names[a] .. ':' .. names[c], delta)
      end
    end
  end
  redis.call('EXPIRE', ukey, ttl)
end
return new_users
"""


def _load(raw: bytes | str) -> dict[str, Any]:
    """A stored snapshot; one that does not parse is none (nothing to compare)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def prefix(app_id: str) -> str:
    return f"sr:xp:{app_id}:"


def arm_key(app_id: str, experiment: str, variant: str) -> str:
    return f"{prefix(app_id)}{experiment}:v:{variant}"


def record_args(tallies: ExperimentTallies, app_id: str, ttl_s: int) -> list[Any]:
    """The script's arguments for one batch's tallies."""
    args: list[Any] = [ttl_s, prefix(app_id), len(MEASURES), *MEASURES, len(PAIRS)]
    for a, b in _PAIR_INDEXES:
        args += (a, b)
    args.append(len(tallies.lists))
    for (experiment, variant), count in tallies.lists.items():
        args += (experiment, variant, count)
    args.append("" if tallies.latest_ts is None else repr(float(tallies.latest_ts)))
    for (experiment, variant), by_user in tallies.users.items():
        for uid, deltas in by_user.items():
            args += (experiment, variant, uid, *(repr(float(d)) for d in deltas))
    return args


class ExperimentStore:
    """Async writer used by the worker: one round trip per batch."""

    def __init__(self, client: redis.asyncio.Redis, app_id: str, ttl_s: int) -> None:
        self._client = client
        self.app_id = app_id
        self.ttl_s = ttl_s
        self._script = client.register_script(RECORD_LUA)

    async def publish(self, config: ExperimentConfig) -> None:
        """Store each experiment's snapshot (what the report reads), after saying in the
        log what editing the file changed for users already in an experiment, and which
        experiments the file holds (the report marks the others removed)."""
        keys = [f"{prefix(self.app_id)}{e.name}:config" for e in config.experiments]
        serving = orjson.dumps([e.name for e in config.experiments])
        try:
            if not config:  # no file: every recorded experiment was removed, if any
                if await self._client.exists(f"{prefix(self.app_id)}index"):
                    await self._client.set(f"{prefix(self.app_id)}serving", serving)
                return
            previous = await self._client.mget(keys)
            for experiment, raw in zip(config.experiments, previous, strict=True):
                for change in changes_since(_load(raw), experiment) if raw else ():
                    logger.warning("%s", change)
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(f"{prefix(self.app_id)}serving", serving)
                for experiment in config.experiments:
                    pipe.sadd(f"{prefix(self.app_id)}index", experiment.name)
                    pipe.set(f"{prefix(self.app_id)}{experiment.name}:config",
                             orjson.dumps(experiment.snapshot()))
                await pipe.execute()
        except redis.RedisError as exc:
            REDIS_ERRORS.labels(op="experiments_publish").inc()
            raise StateStoreUnavailable(f"Redis experiments publish failed: {exc}") from exc

    async def record(self, tallies: ExperimentTallies) -> dict[tuple[str, str], int]:
        """Add one batch's tallies; returns the users newly enrolled per arm."""
        started = time.perf_counter()
        try:
            reply = await self._script(keys=[], args=record_args(tallies, self.app_id,
                                                                 self.ttl_s))
        except redis.RedisError as exc:
            REDIS_ERRORS.labels(op="experiments_record").inc()
            raise StateStoreUnavailable(f"Redis experiments record failed: {exc}") from exc
        REDIS_SECONDS.labels(op="experiments_record").observe(time.perf_counter() - started)
        new: dict[tuple[str, str], int] = {}
        for raw in reply:
            text = raw.decode() if isinstance(raw, bytes) else raw
            experiment, _, variant = text.partition("|")
            new[(experiment, variant)] = new.get((experiment, variant), 0) + 1
        return new


def read_experiments(client: redis.Redis, app_id: str, names: Iterable[str] | None = None
                     ) -> list[dict[str, Any]]:
    """Every stored experiment (or ``names``), each ``snapshot + {"arms": {variant:
    (ArmStats, lists)}, "status"}``, for the report (synchronous client).

    ``status`` is ``removed`` when the latest worker started with a file without it,
    ``ended`` when workers have tallied an event at or after its ``end_ts``, else
    ``running``. (Results recorded before workers kept the list of what they serve count
    as running.)"""
    wanted = sorted(names) if names is not None else sorted(
        m.decode() if isinstance(m, bytes) else m
        for m in client.smembers(f"{prefix(app_id)}index"))
    serving_raw, latest_raw = client.mget([f"{prefix(app_id)}serving",
                                           f"{prefix(app_id)}latest_ts"])
    serving = None if serving_raw is None else set(orjson.loads(serving_raw))
    latest_ts = None if latest_raw is None else float(latest_raw)
    out = []
    for name in wanted:
        raw = client.get(f"{prefix(app_id)}{name}:config")
        if raw is None:
            continue
        snapshot = orjson.loads(raw)
        pipe = client.pipeline(transaction=False)
        for variant in snapshot["variants"]:
            pipe.hgetall(arm_key(app_id, name, variant["name"]))
        arms = {}
        for variant, stored in zip(snapshot["variants"], pipe.execute(), strict=True):
            lists = int(stored.pop(b"lists", 0) or 0)
            arms[variant["name"]] = (ArmStats.from_hash(stored), lists)
        snapshot["arms"] = arms
        end_ts = snapshot.get("end_ts")
        if serving is not None and name not in serving:
            snapshot["status"] = "removed"
        elif end_ts is not None and latest_ts is not None and latest_ts >= end_ts:
            snapshot["status"] = "ended"
        else:
            snapshot["status"] = "running"
        out.append(snapshot)
    return out


class LiveExperiments:
    """What the worker's events pipeline holds when experiments are configured."""

    def __init__(self, config: ExperimentConfig, store: ExperimentStore) -> None:
        self.config = config
        self.store = store

    async def record(self, tallies: ExperimentTallies,
                     until_written: Callable[[Callable[[], Awaitable[Any]], str],
                                             Awaitable[Any]]) -> None:
        """Write one batch's tallies (``until_written`` retries through a Redis outage:
        the pipeline's, which pauses consumption meanwhile), then move the Prometheus
        counters, once per batch."""
        new_users = await until_written(lambda: self.store.record(tallies),
                                        "experiment tallies")
        for (experiment, variant), count in new_users.items():
            metrics.EXPERIMENT_USERS.labels(experiment, variant).inc(count)
        for (experiment, variant), count in tallies.lists.items():
            metrics.EXPERIMENT_LISTS.labels(experiment, variant).inc(count)
        for (experiment, variant), sums in tallies.totals().items():
            for name, total in zip(MEASURES, sums, strict=True):
                if total:
                    metrics.EXPERIMENT_MEASURES[name].labels(experiment, variant).inc(total)


async def start_experiments(settings: Settings, client: redis.asyncio.Redis
                            ) -> LiveExperiments | None:
    """Load ``STREAMREC_EXPERIMENTS`` (None when unset) and publish its snapshot to Redis.

    Raises :class:`~streamrec.exceptions.ConfigError` for a bad file (the worker command
    checks the file before starting anything, so this is for other embedders).
    """
    config = load(settings.experiments_path)
    store = ExperimentStore(client, settings.app_id, settings.state_ttl_s)
    await store.publish(config or ExperimentConfig(()))
    if not config:
        return None
    # Every arm's series exists at zero from start-up, so rates and dashboards see it.
    counters = [metrics.EXPERIMENT_USERS, metrics.EXPERIMENT_LISTS,
                *metrics.EXPERIMENT_MEASURES.values()]
    for experiment in config.experiments:
        for variant in experiment.variants:
            for counter in counters:
                counter.labels(experiment.name, variant.name)
    logger.info("serving %d experiment(s) from %s: %s", len(config.experiments),
                settings.experiments_path, ", ".join(e.name for e in config.experiments))
    return LiveExperiments(config, store)
