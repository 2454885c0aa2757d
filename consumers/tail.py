"""``streamrec tail``: print what arrives on a topic, readable for a person."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

import orjson

from consumers.common import read_topic, require_cluster
from streamrec.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", default=None,
                        help="topic to read (default: the recommendations topic)")
    parser.add_argument("--user", default=None, help="only records keyed by this user id")
    parser.add_argument("--from-beginning", action="store_true",
                        help="start at the oldest record instead of new ones")
    parser.add_argument("--max", type=int, default=None,
                        help="stop after printing N records (with --user, N of that user's)")
    parser.add_argument("--until-idle", type=float, default=None, metavar="S",
                        help="stop after S seconds without a record")
    parser.add_argument("--json", action="store_true", help="print raw JSON values")


def format_record(topic: str, key: bytes | None, value: bytes | None, now: float) -> str:
    """One readable line for a record of any streamrec topic."""
    obj: Any = None  # a tombstone (no value) prints as null
    if value is not None:
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            return f"{topic} {key!r}: (not JSON) {value[:80]!r}"
    if isinstance(obj, dict) and "items" in obj and "user_id" in obj:
        lag = _list_lag(obj.get("ts", now), obj.get("event_ts", now))
        items = ", ".join(f"{i['title_id']} ({i['reason']})" for i in obj["items"][:5])
        more = len(obj["items"]) - 5
        extra = f" +{more} more" if more > 0 else ""
        return f"{obj['user_id']:>10} <- {obj.get('event_id')} ({lag}): {items}{extra}"
    if isinstance(obj, dict) and "reason" in obj and "offset" in obj:
        return (f"DEAD LETTER {obj.get('topic')}[{obj.get('partition')}]@{obj.get('offset')} "
                f"{obj['reason']}: {obj.get('error')}")
    if isinstance(obj, dict) and obj.get("type") == "new_episode" and "user_id" in obj:
        name = f' "{obj["name"]}"' if obj.get("name") else ""
        return (f"{obj['user_id']:>10}: new episode {obj.get('title_id')}{name} of series "
                f"{obj.get('series_id')}")
    text = orjson.dumps(obj).decode()
    if len(text) > TEXT_WIDTH:  # visibly cut, not a value that seems to end mid-number
        text = text[:TEXT_WIDTH - 3] + "..."
    return f"{(key or b'').decode(errors='replace'):>10}: {text}"


# Other records print as their JSON, cut to this many characters (--json prints them whole).
TEXT_WIDTH = 160


# Beyond this gap between an event's time and its list's, the event was not live (a replay
# or a simulated stream with its own clock): its time is shown instead of a latency.
LIVE_LAG_S = 60.0


def _list_lag(list_ts: float, event_ts: float) -> str:
    """How long after its event a list was built, or the event's time if not live.

    >>> _list_lag(100.0125, 100.0)
    '12.5 ms'
    >>> _list_lag(1_765_000_000.0, 1_717_243_200.0)
    'event of 2024-06-01 12:00 UTC'
    """
    lag_s = list_ts - event_ts
    if abs(lag_s) <= LIVE_LAG_S:
        return f"{lag_s * 1000:.1f} ms"
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(event_ts))
    return f"event of {when} UTC"


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.exceptions import ConfigError

    if args.until_idle is not None and not args.until_idle > 0:
        raise ConfigError(f"--until-idle must be > 0 seconds, got {args.until_idle}")
    if args.max is not None and args.max <= 0:
        raise ConfigError(f"--max must be a positive whole number, got {args.max}")
    if args.user is not None and not args.user:
        raise ConfigError("--user needs a user id (an empty one matches no record)")
    require_cluster(settings, "tail")
    topic = args.topic or settings.topics.recommendations
    wanted = args.user.encode() if args.user else None
    printed = 0
    # --max counts the records printed, so with --user it counts only that user's.
    records = read_topic(settings, topic, from_beginning=args.from_beginning,
                         until_idle_s=args.until_idle)
    with contextlib.closing(records):  # stopping at --max closes the consumer at once
        for record in records:
            if wanted is not None and record.key() != wanted:
                continue
            if args.json:
                sys.stdout.write((record.value() or b"null").decode(errors="replace") + "\n")
            else:
                sys.stdout.write(format_record(topic, record.key(), record.value(),
                                               time.time()) + "\n")
            sys.stdout.flush()
            printed += 1
            if args.max is not None and printed >= args.max:
                break
    return 0
