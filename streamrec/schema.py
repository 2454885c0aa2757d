"""The message contracts: decoding and validating viewer and catalogue events.

Validation is a pure function from bytes to a dict (or :class:`InvalidRecord` with a
short ``reason`` code). It is on the hot path, so it works on plain dicts from orjson
rather than building objects. Rules, in the order they are checked:

* the record is at most ``max_bytes`` long (``oversized``), valid UTF-8 JSON
  (``invalid_json``; orjson also rejects NaN/Infinity literals and nesting deeper than
  1024) and a JSON object (``not_an_object``);
* required fields are present (``missing_field``) and of the right type (``wrong_type``);
  ids are non-empty strings of at most 128 characters (``bad_id``);
* ``type`` is a known event type (``unknown_type``);
* ``ts`` is a finite number of epoch seconds between 1990-01-01 and one day after the
  wall clock (``ts_out_of_range``);
* positions and durations are finite, non-negative and at most ``MAX_MEDIA_SECONDS``
  (``out_of_range``); a position beyond the duration is clamped to the duration;
* a rating is between 1 and 5.

Unknown extra fields are kept, not rejected.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson

from streamrec.exceptions import InvalidRecord

PLAYBACK_TYPES = frozenset({"play", "pause", "resume", "seek", "stop", "complete"})
EVENT_TYPES = PLAYBACK_TYPES | {"search", "rate", "impression", "click"}
# Playback types whose position is meaningless without ``position_s``.
POSITION_REQUIRED = frozenset({"pause", "resume", "seek", "stop"})
CATALOG_TYPES = frozenset({"title_added", "episode_released", "title_removed"})
TITLE_KINDS = frozenset({"movie", "episode"})
# Every ``InvalidRecord.reason`` this module raises: the dead-letter reasons the worker
# counts (``streamrec_events_dead_lettered_total{reason}``). tests/unit/test_metrics.py
# keeps it in step with the code.
DEAD_LETTER_REASONS = frozenset({
    "empty", "oversized", "invalid_json", "not_an_object", "missing_field", "wrong_type",
    "bad_id", "unknown_type", "ts_out_of_range", "out_of_range",
})

MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 256
MAX_LIST_ITEMS = 64
# Longest plausible single title: a 48-hour marathon stream. Anything larger is a bug or
# an attack, not a position.
MAX_MEDIA_SECONDS = 48 * 3600.0
# Event times before this are not from any product of ours (MovieLens starts in 1995).
MIN_TS = 631_152_000.0  # 1990-01-01T00:00:00Z
# Clock skew we tolerate from producers, seconds.
MAX_FUTURE_SKEW_S = 24 * 3600.0

DEFAULT_MAX_BYTES = 64 * 1024
# A dead letter copies the record, but no more than this of its value and key (bytes): a
# hostile multi-megabyte record must not make an undeliverable dead letter (Kafka brokers
# refuse messages over 1 MB by default), and its first 64 KiB show what was wrong.
DLQ_MAX_VALUE_BYTES = 64 * 1024
DLQ_MAX_KEY_BYTES = 1024


def decode_json_object(value: bytes | None, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Parse one record value into a dict, or raise :class:`InvalidRecord`."""
    if value is None:
        raise InvalidRecord("empty", "record has no value (tombstone); send a JSON object")
    if len(value) > max_bytes:
        raise InvalidRecord(
            "oversized", f"record is {len(value)} bytes, the limit is {max_bytes} bytes"
        )
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord("invalid_json", _json_error(value, exc)) from None
    if not isinstance(obj, dict):
        raise InvalidRecord("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _json_error(value: bytes, exc: orjson.JSONDecodeError) -> str:
    """What is wrong with a value orjson could not parse. Bytes that are not UTF-8 are
    named with their position: orjson's own words for them ("str is not valid UTF-8:
    surrogates not allowed ... (char 0)") pointed at neither the byte nor the cause,
    usually text saved in another encoding (Latin-1, Windows-1252).

    Examples
    --------
    >>> _json_error(b'{"user_id": "Jos\\xe9"}', orjson.JSONDecodeError("x", "", 0))[:33]
    'not UTF-8: byte 0xe9 at offset 16'
    """
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (f"not UTF-8: byte 0x{value[bad.start]:02x} at offset {bad.start} (text "
                f"saved in another encoding, e.g. Latin-1? convert it to UTF-8)")
    return f"not valid UTF-8 JSON: {exc}"


def _require_id(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        raise InvalidRecord("missing_field", f"field {name!r} is required")
    if not isinstance(value, str):
        raise InvalidRecord("wrong_type", f"field {name!r} must be a string")
    if not value or len(value) > MAX_ID_CHARS:
        raise InvalidRecord("bad_id", f"field {name!r} must be 1..{MAX_ID_CHARS} characters")
    return value


def _optional_str(obj: dict[str, Any], name: str, limit: int = MAX_TEXT_CHARS) -> None:
    value = obj.get(name)
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidRecord("wrong_type", f"field {name!r} must be a string")
    if len(value) > limit:
        raise InvalidRecord("out_of_range", f"field {name!r} is longer than {limit} characters")


def _number(obj: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise InvalidRecord("missing_field", f"field {name!r} is required")
        return None
    # bool is an int subclass; true/false is never a valid number here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRecord("wrong_type", f"field {name!r} must be a number")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidRecord("out_of_range", f"field {name!r} must be finite")
    return value


def _check_ts(obj: dict[str, Any], now: float | None) -> float:
    ts = _number(obj, "ts", required=True)
    assert ts is not None  # for the type checker: required=True never returns None
    latest = (time.time() if now is None else now) + MAX_FUTURE_SKEW_S
    if not MIN_TS <= ts <= latest:
        raise InvalidRecord(
            "ts_out_of_range", f"ts={ts} is outside 1990-01-01 .. now+1 day (epoch seconds)"
        )
    obj["ts"] = ts
    return ts


def _media_seconds(obj: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = _number(obj, name, required=required)
    if value is None:
        return None
    if value < 0 or value > MAX_MEDIA_SECONDS:
        raise InvalidRecord(
            "out_of_range", f"field {name!r}={value} must be within 0..{MAX_MEDIA_SECONDS:.0f}"
        )
    return value


def validate_event(obj: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """Check a decoded viewer event against the ``events`` contract; returns it normalised.

    Examples
    --------
    >>> e = validate_event({"event_id": "e1", "type": "stop", "user_id": "u1",
    ...                     "ts": 1.7e9, "title_id": "t1", "position_s": 900,
    ...                     "duration_s": 600})
    >>> e["position_s"]  # clamped to the duration
    600.0
    >>> validate_event({"event_id": "e2", "type": "jump", "user_id": "u1", "ts": 1.7e9})
    Traceback (most recent call last):
    ...
    streamrec.exceptions.InvalidRecord: unknown_type: type 'jump' is not one of ...
    """
    # Hot path (replay checks 200,000+ events/s): a field that is plainly fine skips the
    # call to its checker, which would return without effect; anything else still goes
    # through the checker, so what is rejected, and how, is unchanged.
    get = obj.get
    value = get("event_id")
    if value.__class__ is not str or not 0 < len(value) <= MAX_ID_CHARS:
        _require_id(obj, "event_id")
    event_type = get("type")
    if event_type is None:
        raise InvalidRecord("missing_field", "field 'type' is required")
    # isinstance first: an unhashable type (a list, an object) is a bad record, not a crash.
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        shown = event_type if isinstance(event_type, str) else type(event_type).__name__
        raise InvalidRecord(
            "unknown_type", f"type {str(shown)[:40]!r} is not one of {sorted(EVENT_TYPES)}"
        )
    value = get("user_id")
    if value.__class__ is not str or not 0 < len(value) <= MAX_ID_CHARS:
        _require_id(obj, "user_id")
    ts = get("ts")
    if ts.__class__ is not float or not (
        MIN_TS <= ts <= (time.time() if now is None else now) + MAX_FUTURE_SKEW_S
    ):
        _check_ts(obj, now)
    if event_type == "search":
        query = obj.get("query")
        if not isinstance(query, str) or not query.strip():
            raise InvalidRecord("missing_field", "a search needs a non-empty string 'query'")
        if len(query) > MAX_TEXT_CHARS:
            raise InvalidRecord("out_of_range", f"query is longer than {MAX_TEXT_CHARS} chars")
        if obj.get("title_id") is not None:
            _require_id(obj, "title_id")
    else:
        value = get("title_id")
        if value.__class__ is not str or not 0 < len(value) <= MAX_ID_CHARS:
            _require_id(obj, "title_id")
    if event_type in PLAYBACK_TYPES:
        position = get("position_s")
        duration = get("duration_s")
        # Both plainly fine (floats in range; NaN fails every comparison): only the clamp.
        if (position.__class__ is float and duration.__class__ is float
                and 0.0 <= position <= MAX_MEDIA_SECONDS
                and 0.0 < duration <= MAX_MEDIA_SECONDS):
            if position > duration:
                obj["position_s"] = duration
            return _check_optional_ids(obj)
        position = _media_seconds(obj, "position_s", required=event_type in POSITION_REQUIRED)
        duration = _media_seconds(obj, "duration_s", required=False)
        if duration is not None:
            if duration == 0:
                raise InvalidRecord("out_of_range", "field 'duration_s' must be > 0")
            obj["duration_s"] = duration
        if position is None:
            position = duration if (event_type == "complete" and duration) else 0.0
        if duration is not None and position > duration:
            position = duration
        obj["position_s"] = position
    elif event_type == "rate":
        rating = _number(obj, "rating", required=True)
        assert rating is not None
        if not 1.0 <= rating <= 5.0:
            raise InvalidRecord("out_of_range", f"rating={rating} must be within 1..5")
        obj["rating"] = rating
    return _check_optional_ids(obj)


def _check_optional_ids(obj: dict[str, Any]) -> dict[str, Any]:
    get = obj.get
    for name in ("row", "artwork_id", "device", "country"):
        value = get(name)
        if value is not None and (value.__class__ is not str or len(value) > MAX_ID_CHARS):
            _optional_str(obj, name, MAX_ID_CHARS)
    country = get("country")
    if country is not None and not country.isupper():
        # One spelling per country for trending, cache hints and insights: events saying
        # "gb" and "GB" are the same viewers' country (ISO 3166 codes are upper case).
        obj["country"] = country.upper()
    return obj


def decode_event(
    value: bytes | None, max_bytes: int = DEFAULT_MAX_BYTES, now: float | None = None
) -> dict[str, Any]:
    """Bytes from the ``events`` topic to a valid event dict, or :class:`InvalidRecord`."""
    # Hot path: a record that parses to an object goes straight to validation; anything
    # else takes decode_json_object's checks (parsing again), which give the reason.
    if value is not None and len(value) <= max_bytes:
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            obj = None
        if obj.__class__ is dict:
            return validate_event(obj, now)
    return validate_event(decode_json_object(value, max_bytes), now)


def _str_list(obj: dict[str, Any], name: str) -> list[str]:
    value = obj.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRecord("wrong_type", f"field {name!r} must be a list of strings")
    if len(value) > MAX_LIST_ITEMS:
        raise InvalidRecord("out_of_range", f"field {name!r} has more than {MAX_LIST_ITEMS} items")
    if any(len(v) > MAX_TEXT_CHARS for v in value):
        raise InvalidRecord("out_of_range", f"an item of {name!r} is too long")
    return value


def validate_catalog(obj: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """Check a decoded catalogue event against the ``catalog`` contract.

    Examples
    --------
    >>> t = validate_catalog({"event_id": "c1", "type": "title_added", "ts": 1.7e9,
    ...                       "title_id": "t1", "name": "Heat", "genres": ["Crime"]})
    >>> t["kind"], t["cast"]
    ('movie', [])
    """
    _require_id(obj, "event_id")
    event_type = obj.get("type")
    if not isinstance(event_type, str) or event_type not in CATALOG_TYPES:
        raise InvalidRecord(
            "unknown_type", f"catalogue type must be one of {sorted(CATALOG_TYPES)}"
        )
    _check_ts(obj, now)
    _require_id(obj, "title_id")
    if event_type == "title_removed":
        return obj
    kind = obj.setdefault("kind", "episode" if event_type == "episode_released" else "movie")
    if not isinstance(kind, str) or kind not in TITLE_KINDS:
        raise InvalidRecord("wrong_type", f"kind must be one of {sorted(TITLE_KINDS)}")
    _optional_str(obj, "name")
    _optional_str(obj, "director")
    if obj.get("name") is None:
        obj["name"] = obj["title_id"]
    for name in ("genres", "cast", "artwork_ids"):
        obj[name] = _str_list(obj, name)
    if obj.get("series_id") is not None:
        _require_id(obj, "series_id")
    elif event_type == "episode_released":
        raise InvalidRecord("missing_field", "an episode_released event needs 'series_id'")
    for name in ("season", "episode", "year"):
        value = obj.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidRecord("wrong_type", f"field {name!r} must be a whole number")
    duration = _media_seconds(obj, "duration_s", required=False)
    if duration is not None:
        obj["duration_s"] = duration
    return obj


def decode_catalog(
    value: bytes | None, max_bytes: int = DEFAULT_MAX_BYTES, now: float | None = None
) -> dict[str, Any]:
    """Bytes from the ``catalog`` topic to a valid catalogue dict, or :class:`InvalidRecord`."""
    return validate_catalog(decode_json_object(value, max_bytes), now)


def dead_letter(
    reason: str, error: str, topic: str, partition: int, offset: int,
    key: bytes | None, value: bytes | None, ts: float,
) -> dict[str, Any]:
    """The ``events.dlq`` message for a record that could not be accepted.

    The original key and value are kept whole up to ``DLQ_MAX_KEY_BYTES`` and
    ``DLQ_MAX_VALUE_BYTES``; beyond that, their first bytes are kept and
    ``key_bytes``/``value_bytes`` say how long they were.

    Examples
    --------
    >>> letter = dead_letter("oversized", "too big", "events", 0, 9, b"u1",
    ...                      b"x" * (DLQ_MAX_VALUE_BYTES + 10), 1.7e9)
    >>> len(letter["value"]) == DLQ_MAX_VALUE_BYTES, letter["value_bytes"]
    (True, 65546)
    """
    letter = {
        "reason": reason,
        "error": error,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": _bytes_as_text(_head(key, DLQ_MAX_KEY_BYTES)),
        "value": _bytes_as_text(_head(value, DLQ_MAX_VALUE_BYTES)),
        "ts": ts,
    }
    if key is not None and len(key) > DLQ_MAX_KEY_BYTES:
        letter["key_bytes"] = len(key)
    if value is not None and len(value) > DLQ_MAX_VALUE_BYTES:
        letter["value_bytes"] = len(value)
    return letter


def _head(raw: bytes | None, limit: int) -> bytes | None:
    """The first ``limit`` bytes, not cutting a UTF-8 character of valid UTF-8 in two."""
    if raw is None or len(raw) <= limit:
        return raw
    for cut in range(limit, max(0, limit - 3), -1):
        try:
            raw[:cut].decode("utf-8")
            return raw[:cut]
        except UnicodeDecodeError:
            continue
    return raw[:limit]


def _bytes_as_text(raw: bytes | None) -> str | None:
    """The original bytes as text when they are UTF-8, otherwise ``base64:<...>``."""
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        return "base64:" + base64.b64encode(raw).decode("ascii")
