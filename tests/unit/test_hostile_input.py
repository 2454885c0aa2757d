"""Property-based fuzzing of the decoder and the pure hot path with hostile records.

Whatever bytes arrive, ``decode_event`` either returns an event that satisfies every
documented rule or raises :class:`InvalidRecord` with a known reason (never another
exception); the dead letter of a rejected record is valid JSON of bounded size; and the
pure learn-and-rank step accepts any event the decoder accepts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings

from models.hybrid import Hybrid
from streamrec.bench_core import CoreRecord
from streamrec.exceptions import InvalidRecord
from streamrec.schema import (
    DEAD_LETTER_REASONS,
    DLQ_MAX_VALUE_BYTES,
    EVENT_TYPES,
    MAX_ID_CHARS,
    MAX_MEDIA_SECONDS,
    MIN_TS,
    PLAYBACK_TYPES,
    dead_letter,
    decode_catalog,
    decode_event,
)
from streams.batch import decode_batch, learn_and_rank
from streams.state import parse_profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fault"))
from hostile import NOW, is_finite_number, records  # noqa: E402 - shared strategies

FUZZ = settings(max_examples=1500, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_accepted(event: dict) -> None:
    """Every rule of the events contract (streamrec/schema.py) holds for an accepted event."""
    for name in ("event_id", "user_id"):
        assert isinstance(event[name], str) and 1 <= len(event[name]) <= MAX_ID_CHARS
    assert event["type"] in EVENT_TYPES
    assert is_finite_number(event["ts"]) and MIN_TS <= event["ts"] <= NOW + 2 * 86_400
    if event["type"] != "search":
        assert isinstance(event["title_id"], str) and 1 <= len(event["title_id"]) <= 128
    else:
        assert isinstance(event["query"], str) and event["query"].strip()
    if event["type"] in PLAYBACK_TYPES:
        position = event["position_s"]
        assert is_finite_number(position) and 0 <= position <= MAX_MEDIA_SECONDS
        duration = event.get("duration_s")
        if duration is not None:
            assert is_finite_number(duration) and 0 < duration <= MAX_MEDIA_SECONDS
            assert position <= duration  # clamped
    if event["type"] == "rate":
        assert 1 <= event["rating"] <= 5


@FUZZ
@given(records())
def test_the_decoder_accepts_only_valid_events_and_never_crashes(raw: bytes):
    try:
        event = decode_event(raw, now=NOW)
    except InvalidRecord as exc:
        assert exc.reason in DEAD_LETTER_REASONS
        letter = dead_letter(exc.reason, exc.detail, "events", 0, 1, b"k", raw, NOW)
        encoded = orjson.dumps(letter)  # always serialisable
        assert len(encoded) <= 2 * DLQ_MAX_VALUE_BYTES + 4096
        assert orjson.loads(encoded)["reason"] == exc.reason
        return
    check_accepted(event)


@FUZZ
@given(records())
def test_the_catalogue_decoder_never_crashes(raw: bytes):
    try:
        title = decode_catalog(raw, now=NOW)
    except InvalidRecord as exc:
        assert exc.reason in DEAD_LETTER_REASONS
        return
    assert isinstance(title["title_id"], str) and title["title_id"]


MODEL = Hybrid(seed=1, capacity=64)  # small: stub titles from the fuzz recycle rows


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st_batch := __import__("hypothesis").strategies.lists(records(), min_size=1,
                                                               max_size=20))
def test_a_hostile_batch_is_accounted_for_and_ranked_without_errors(st_batch):
    decoded = decode_batch([CoreRecord(v, b"k", i) for i, v in enumerate(st_batch)], 64 * 1024, NOW)
    assert len(decoded.events) + len(decoded.dead_letters) == len(st_batch)
    assert sum(decoded.dead_reasons.values()) == len(decoded.dead_letters)
    empty: dict = {}  # a new user's record, as the state script returns it
    profiles = {e["user_id"]: parse_profile(e["user_id"], empty) for e in decoded.events}
    ranked = learn_and_rank(decoded.events, [True] * len(decoded.events), profiles, MODEL,
                            top_n=5, history_cap=20, model_version="fuzz")
    assert {m.decode() for m, _ in ranked.recommendations} == set(profiles)
    assert MODEL.size()["titles"] <= 64
