"""``streamrec recs USER`` and ``streamrec features USER``: what Redis holds for a user."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson
import redis

from consumers.common import require_redis
from streamrec.exceptions import StateStoreUnavailable
from streamrec.redis_conn import redacted, sync_client
from streamrec.settings import Settings
from streams.checkpoint import load_catalog_sync
from streams.state import read_features, user_key


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="USER", help="user id")
    parser.add_argument("--json", action="store_true", help="print JSON")


add_recs_arguments = _add_common
add_features_arguments = _add_common


def _client(settings: Settings, command: str) -> redis.Redis:
    require_redis(settings, command)
    return sync_client(settings)


def genre_affinity(recent: list[dict[str, Any]], catalog: dict[str, dict[str, Any]]
                   ) -> dict[str, float]:
    """Sum of the user's per-title affinity over each title's genres, strongest first."""
    totals: dict[str, float] = {}
    for entry in recent:
        for genre in catalog.get(entry["title_id"], {}).get("genres", []):
            totals[genre] = round(totals.get(genre, 0.0) + entry["affinity"], 4)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def run_features(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings, "features")
    try:
        features = read_features(client, args.user)
        if features is not None:
            catalog = load_catalog_sync(client, settings.app_id)
            features["genre_affinity"] = genre_affinity(features["recent_titles"], catalog)
    except redis.RedisError as exc:
        raise StateStoreUnavailable(
            f"Redis at {redacted(settings.redis_url)} did not answer: {exc}") from exc
    finally:
        client.close()
    if features is None:
        print(f"streamrec features: no state for user {args.user!r} (never seen, or expired)",
              file=sys.stderr)
        return 1
    if args.json:
        # OPT_NON_STR_KEYS: the hour-of-day counts are keyed by int (JSON makes them strings).
        print(orjson.dumps(features, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
              .decode())
        return 0
    print(f"user {features['user_id']}: {features['events_applied']} events applied, "
          f"device {features['device']}, country {features['country']}")
    print("genre affinity: " + ", ".join(
        f"{g} {v:+.2f}" for g, v in list(features["genre_affinity"].items())[:6]))
    print("recent: " + ", ".join(
        f"{t['title_id']} ({t['affinity']:+.2f})" for t in features["recent_titles"][:10]))
    print("in progress: " + ", ".join(
        f"{t} at {p['position_s']:.0f}s" for t, p in features["in_progress"].items()))
    print(f"completed: {len(features['completed'])} titles; "
          f"searches: {', '.join(features['searches'][:5])}")
    return 0


def run_recs(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings, "recs")
    try:
        stored = client.hget(user_key(args.user, "recs"), "value")
    except redis.RedisError as exc:
        raise StateStoreUnavailable(
            f"Redis at {redacted(settings.redis_url)} did not answer: {exc}") from exc
    finally:
        client.close()
    if stored is None:
        print(f"streamrec recs: no recommendations stored for user {args.user!r} "
              "(is `streamrec sink` running?)", file=sys.stderr)
        return 1
    message = orjson.loads(stored)
    if args.json:
        print(orjson.dumps(message, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"user {message['user_id']} (after event {message['event_id']}, "
          f"model {message['model_version']}):")
    for rank, item in enumerate(message["items"], 1):
        print(f"{rank:>3}. {item['title_id']:<16} {item['score']:8.4f}  {item['reason']}")
    return 0
