"""``streamrec insights``: what people search for and do not find, and what is taking off.

Reads what the worker aggregates in Redis (``streams.product``):

* ``sr:ins:<app>:unmatched:<country>`` (and ``...:*`` for everywhere): ZSET of
  normalised queries that matched no title -> times searched (the top
  ``DEMAND_CAP`` kept);
* ``sr:ins:<app>:plays:<country>:<hour>``: ZSET title -> plays in that hour of event time
  (kept 49 hours), and ``sr:ins:<app>:clock``: the latest event time seen.

``<country>`` is the code in upper case, so ``--country gb`` finds what events saying
``GB``, ``gb`` or ``Gb`` did. Older workers wrote the code as the events spelled it;
``--country`` reads those keys too when they are the lower-case code or the code as typed
(:func:`streams.product.insight_scopes`). A country with nothing recorded is one line on
stderr and exit code 1, not two empty lists.

"Fastest rising" compares each title's plays in the last ``--window-hours`` of event
time with the window before: growth ``(now + 1) / (before + 1)``, for titles played at
least ``--min-plays`` times in the last window. The same activity is on ``/metrics`` as
counters (``streamrec_searches_total``, ``streamrec_search_unmatched_total``); the
queries and titles themselves are here, not in metric labels (unbounded cardinality).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson
import redis

from consumers.common import require_redis
from streamrec.exceptions import ConfigError, StateStoreUnavailable
from streamrec.redis_conn import redacted, sync_client
from streamrec.settings import Settings
from streams.cache_hints import HOUR_S
from streams.checkpoint import load_catalog_sync
from streams.product import insight_country, insight_key, insight_scopes

DEFAULT_TOP = 10
DEFAULT_WINDOW_H = 24
DEFAULT_MIN_PLAYS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--country", default=None, metavar="C",
                        help="one country's figures (default: every country)")
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="N",
                        help=f"entries per list (default {DEFAULT_TOP})")
    parser.add_argument("--window-hours", type=int, default=DEFAULT_WINDOW_H, metavar="H",
                        help=f"rising: last H hours of event time against the H before "
                             f"(default {DEFAULT_WINDOW_H}, at most 24)")
    parser.add_argument("--min-plays", type=int, default=DEFAULT_MIN_PLAYS, metavar="N",
                        help=f"rising: plays needed in the last window (default "
                             f"{DEFAULT_MIN_PLAYS})")
    parser.add_argument("--json", action="store_true", help="print JSON")


def rising_titles(current: dict[str, float], previous: dict[str, float], top: int,
                  min_plays: int) -> list[dict[str, Any]]:
    """Titles by growth from ``previous`` to ``current`` plays, fastest first.

    Examples
    --------
    >>> rising_titles({"a": 30, "b": 5, "c": 1}, {"a": 29, "b": 0}, top=5, min_plays=3)
    [{'title_id': 'b', 'plays': 5, 'plays_before': 0, 'growth': 6.0}, \
{'title_id': 'a', 'plays': 30, 'plays_before': 29, 'growth': 1.033}]
    """
    rows: list[dict[str, Any]] = [
        {"title_id": t, "plays": int(n), "plays_before": int(previous.get(t, 0)),
         "growth": round((n + 1.0) / (previous.get(t, 0) + 1.0), 3)}
        for t, n in current.items() if n >= min_plays
    ]
    rows.sort(key=lambda r: (-r["growth"], -r["plays"], r["title_id"]))
    return rows[:top]


def _decode(pairs: list[tuple[bytes, float]]) -> list[tuple[str, float]]:
    return [(k.decode() if isinstance(k, bytes) else k, float(v)) for k, v in pairs]


def collect(client: redis.Redis, app_id: str, country: str | None, top: int,
            window_h: int, min_plays: int) -> dict[str, Any]:
    """The figures of ``country`` (any case: :func:`streams.product.insight_scopes`), or of
    every country. ``recorded``: whether there were any searches or plays at all."""
    scopes = insight_scopes(country)
    pipe = client.pipeline(transaction=False)
    for scope in scopes:  # each at most DEMAND_CAP queries
        pipe.zrange(insight_key(app_id, "unmatched", scope), 0, -1, withscores=True)
    pipe.zscore(insight_key(app_id, "clock"), "ts")
    *demand, clock = pipe.execute()
    searched: dict[str, float] = {}
    for pairs in demand:
        for query, n in _decode(pairs):
            searched[query] = searched.get(query, 0.0) + n
    # Most searched first; ties as ZREVRANGE orders them (by query, descending).
    unmatched = sorted(searched.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:top]
    result: dict[str, Any] = {
        "country": insight_country(country) if country else None, "latest_event_ts": clock,
        "unmatched_searches": [{"query": q, "searches": int(n)} for q, n in unmatched],
        "rising": [], "window_hours": window_h, "recorded": bool(searched),
    }
    if clock is None:
        return result
    latest_hour = int(clock // HOUR_S) * HOUR_S
    hours = [latest_hour - i * HOUR_S for i in range(2 * window_h)]
    pipe = client.pipeline(transaction=False)
    for hour in hours:
        for scope in scopes:
            pipe.zrange(insight_key(app_id, "plays", scope, str(hour)), 0, -1,
                        withscores=True)
    buckets = pipe.execute()
    current: dict[str, float] = {}
    previous: dict[str, float] = {}
    for i, bucket in enumerate(buckets):
        target = current if i < window_h * len(scopes) else previous
        for title, plays in _decode(bucket):
            target[title] = target.get(title, 0.0) + plays
    result["recorded"] = result["recorded"] or bool(current or previous)
    result["rising"] = rising_titles(current, previous, top, min_plays)
    return result


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.top <= 0:
        raise ConfigError(f"--top must be a positive whole number, got {args.top}")
    if not 1 <= args.window_hours <= 24:
        raise ConfigError(f"--window-hours must be within 1..24 (plays are kept 49 hours), "
                          f"got {args.window_hours}")
    if args.min_plays < 0:
        raise ConfigError(f"--min-plays must be >= 0, got {args.min_plays}")
    require_redis(settings, "insights")
    client = sync_client(settings)
    try:
        result = collect(client, settings.app_id, args.country, args.top, args.window_hours,
                         args.min_plays)
        catalog = load_catalog_sync(client, settings.app_id) if result["rising"] else {}
    except redis.RedisError as exc:
        raise StateStoreUnavailable(
            f"Redis at {redacted(settings.redis_url)} did not answer: {exc}") from exc
    finally:
        client.close()
    if not result.pop("recorded") and args.country:
        print(f"streamrec insights: nothing recorded for country {args.country!r} (no "
              f"unmatched searches, no plays in the last {2 * args.window_hours} h of event "
              f"time); check the code the events use, or leave out --country for every "
              f"country", file=sys.stderr)
        return 1
    for row in result["rising"]:
        row["name"] = catalog.get(row["title_id"], {}).get("name", row["title_id"])
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return 0
    where = result["country"] or "all countries"
    print(f"Searches with no matching title ({where}):")
    if not result["unmatched_searches"]:
        print("  (none recorded)")
    for i, row in enumerate(result["unmatched_searches"], 1):
        print(f"  {i:>3}. {row['query']:<40} {row['searches']:>7,} searches")
    print(f"Fastest-rising titles ({where}; plays in the last {args.window_hours} h of event "
          f"time vs the {args.window_hours} h before):")
    if not result["rising"]:
        print("  (no title has enough plays yet)")
    for i, row in enumerate(result["rising"], 1):
        print(f"  {i:>3}. {row['title_id']:<12} {row['name'][:34]:<34} {row['plays']:>6,} plays "
              f"(before {row['plays_before']:,}, x{row['growth']:.2f})")
    return 0
