"""Hypothesis strategies for hostile and broken records (the decoder's and the worker's
fuzz tests share them).

``records()`` draws bytes a careless or hostile producer could send to ``events``: random
bytes, JSON of the wrong shape, a valid event with one field broken (missing, wrong type,
out of range, NaN/Infinity, absurd sizes, control characters, far-away timestamps),
truncated or over-nested JSON, invalid UTF-8, oversized records. Most are invalid, some
are valid on purpose (a strange but legal event must be accepted, not crash anything).
"""

from __future__ import annotations

import json
import math
import time

import orjson
from hypothesis import strategies as st

from streamrec.schema import EVENT_TYPES, MAX_MEDIA_SECONDS, PLAYBACK_TYPES

NOW = time.time()
# Lengths around the limits (ids 128, text 256), and beyond.
_LENGTHS = st.sampled_from([0, 1, 127, 128, 129, 255, 256, 257, 5000])
_ODD_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), max_size=10),
    st.builds(lambda n, c: c * n, _LENGTHS, st.sampled_from(["x", "é", "\u0000", "}", "😀"])),
)
_NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, -1, 1e-300, 1e300, MAX_MEDIA_SECONDS, MAX_MEDIA_SECONDS + 1,
                     NOW + 3 * 86_400, NOW - 100 * 365 * 86_400, 631_151_999.0, 2**63]),
)
_JSON_SCALARS = st.one_of(st.none(), st.booleans(), _NUMBERS, _ODD_TEXT)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)


def dumps(value: object) -> bytes:
    """JSON bytes for anything the strategies draw (orjson refuses integers beyond 64 bits;
    a producer in another language would send them)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


FIELDS = ("event_id", "type", "user_id", "ts", "title_id", "position_s", "duration_s",
          "rating", "query", "device", "country", "row", "artwork_id")


@st.composite
def valid_events(draw) -> dict:
    kind = draw(st.sampled_from(sorted(EVENT_TYPES)))
    event = {
        "event_id": draw(st.text(min_size=1, max_size=20)),
        "type": kind,
        "user_id": draw(st.text(min_size=1, max_size=20)),
        "ts": draw(st.floats(min_value=700_000_000, max_value=NOW)),
    }
    if kind == "search":
        event["query"] = draw(st.text(min_size=1, max_size=30).filter(str.strip))
    else:
        event["title_id"] = draw(st.text(min_size=1, max_size=20))
    if kind in PLAYBACK_TYPES:
        event["position_s"] = draw(st.floats(min_value=0, max_value=MAX_MEDIA_SECONDS))
        if draw(st.booleans()):
            event["duration_s"] = draw(st.floats(min_value=1, max_value=MAX_MEDIA_SECONDS))
    if kind == "rate":
        event["rating"] = draw(st.integers(min_value=1, max_value=5))
    if draw(st.booleans()):
        event["device"] = draw(st.text(max_size=10))
    return event


def _targeted(name: str) -> st.SearchStrategy[object]:
    """Values aimed at one field's rule."""
    if name in ("event_id", "user_id", "title_id"):
        return st.sampled_from(["", "x" * 129, 7, ["a"], {"id": 1}, True])
    if name == "type":
        return st.one_of(st.text(max_size=12), st.sampled_from(["PLAY", "teleport", "", 3]))
    if name == "ts":
        return st.sampled_from([0, -1, 631_151_999.0, NOW + 3 * 86_400, 1e18, "1700000000",
                                True, [1.7e9]])
    if name in ("position_s", "duration_s"):
        return st.sampled_from([-0.001, -5, MAX_MEDIA_SECONDS + 1, 1e308, 0, "60", False])
    if name == "rating":
        return st.sampled_from([0, 6, 0.99, 5.01, -1, "5", None, True])
    if name == "query":
        return st.sampled_from(["", "   ", "q" * 257, 12, None])
    return st.sampled_from(["x" * 129, 5, ["tv"], {"a": 1}])


@st.composite
def broken_field(draw) -> bytes:
    """A valid event with one field made wrong (or removed, or NaN/Infinity)."""
    event = draw(valid_events())
    name = draw(st.sampled_from(FIELDS))
    how = draw(st.sampled_from(["remove", "value", "nan", "inf"]))
    if how == "remove":
        event.pop(name, None)
        return orjson.dumps(event)
    if how == "value":
        event[name] = draw(st.one_of(_targeted(name), _JSON))
        return dumps(event)
    event[name] = 12345.678  # a marker replaced by a literal orjson would never write
    literal = b"NaN" if how == "nan" else draw(st.sampled_from([b"Infinity", b"-Infinity"]))
    return orjson.dumps(event).replace(b"12345.678", literal, 1)


@st.composite
def mangled_bytes(draw) -> bytes:
    raw = orjson.dumps(draw(valid_events()))
    how = draw(st.sampled_from(["truncate", "utf8", "nest", "oversize", "wrap", "bom"]))
    if how == "truncate":
        return raw[: draw(st.integers(min_value=0, max_value=len(raw) - 1))]
    if how == "utf8":
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + raw[at:]
    if how == "nest":
        depth = draw(st.integers(min_value=1025, max_value=5000))
        return b'{"a":' * depth + b"1" + b"}" * depth
    if how == "oversize":
        pad = draw(st.integers(min_value=65 * 1024, max_value=300 * 1024))
        return raw[:-1] + b',"pad":"' + b"x" * pad + b'"}'
    if how == "wrap":
        return orjson.dumps([orjson.loads(raw)])
    return b"\xef\xbb\xbf" + raw  # a byte-order mark: not JSON


def records() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        _JSON.map(dumps),
        broken_field(),
        mangled_bytes(),
        valid_events().map(orjson.dumps),
    )


def is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value)
