"""Deliberately invalid viewer records, so a demo can show they are caught and counted.

Each breaks the ``events`` contract in one way a real producer might (truncated or
non-UTF-8 JSON, a NaN literal, a missing or wrongly typed field, an unknown type, a
negative position, an out-of-range rating or timestamp, an empty id, a JSON array) and
is always a single line, so it can sit in a JSONL file like any other record.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

from producers.world import World


def _truncated(good: dict[str, Any]) -> bytes:
    return orjson.dumps(good)[:-9]


def _nan_literal(good: dict[str, Any]) -> bytes:
    return orjson.dumps(good).replace(b'"position_s":120.0', b'"position_s":NaN')


def _missing_field(good: dict[str, Any]) -> bytes:
    del good["user_id"]
    return orjson.dumps(good)


def _wrong_type(good: dict[str, Any]) -> bytes:
    good["ts"] = "yesterday evening"
    return orjson.dumps(good)


def _unknown_type(good: dict[str, Any]) -> bytes:
    good["type"] = "teleport"
    return orjson.dumps(good)


def _negative_position(good: dict[str, Any]) -> bytes:
    good["type"], good["position_s"] = "pause", -12.5
    return orjson.dumps(good)


def _not_an_object(good: dict[str, Any]) -> bytes:
    return orjson.dumps([good["user_id"], good["type"], good["title_id"]])


def _bad_rating(good: dict[str, Any]) -> bytes:
    good["type"], good["rating"] = "rate", 11
    return orjson.dumps(good)


def _empty_id(good: dict[str, Any]) -> bytes:
    good["title_id"] = ""
    return orjson.dumps(good)


def _ancient_ts(good: dict[str, Any]) -> bytes:
    good["ts"] = 86_400.0  # 1970-01-02: a clock that was never set
    return orjson.dumps(good)


def _bad_utf8(good: dict[str, Any]) -> bytes:
    return orjson.dumps(good).replace(good["event_id"].encode(), b"\xff\xfe")


INVALID_KINDS = (
    _truncated, _nan_literal, _missing_field, _wrong_type, _unknown_type,
    _negative_position, _not_an_object, _bad_rating, _empty_id, _ancient_ts, _bad_utf8,
)


def invalid_record(rng: random.Random, world: World, event_id: str, ts: float) -> bytes:
    """One record that breaks the ``events`` contract in a way drawn from
    :data:`INVALID_KINDS`; always a single line (no newline inside)."""
    user = world.users[rng.randrange(len(world.users))]
    title = world.titles[rng.randrange(len(world.titles))]
    good = {
        "event_id": event_id, "type": "stop", "user_id": user.user_id, "ts": round(ts, 3),
        "title_id": title["title_id"], "position_s": 120.0, "duration_s": title["duration_s"],
        "device": user.devices[0], "country": user.country,
    }
    return rng.choice(INVALID_KINDS)(good)
