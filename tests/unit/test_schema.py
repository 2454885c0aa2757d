"""The events and catalogue contracts: what is accepted, clamped, or dead-lettered."""

from __future__ import annotations

import time

import orjson
import pytest

from streamrec.exceptions import InvalidRecord
from streamrec.schema import dead_letter, decode_catalog, decode_event, validate_event

NOW = 1_700_000_000.0


def event(**fields: object) -> dict:
    base = {"event_id": "e1", "type": "play", "user_id": "u1", "ts": NOW, "title_id": "t1"}
    base.update(fields)
    return base


def reason_of(value: bytes) -> str:
    with pytest.raises(InvalidRecord) as info:
        decode_event(value, now=NOW)
    return info.value.reason


def test_valid_play_gets_position_zero_and_keeps_unknown_fields():
    out = decode_event(orjson.dumps(event(extra={"x": 1})), now=NOW)
    assert out["position_s"] == 0.0
    assert out["extra"] == {"x": 1}


def test_position_beyond_duration_is_clamped_to_duration():
    out = validate_event(event(type="stop", position_s=7200, duration_s=3600), now=NOW)
    assert out["position_s"] == 3600.0


def test_complete_without_position_is_at_the_end():
    out = validate_event(event(type="complete", duration_s=1200), now=NOW)
    assert out["position_s"] == 1200.0


def test_country_is_one_spelling_whatever_the_case():
    # Trending, cache hints and insights key on the country: "gb" and "GB" are one.
    for spelling in ("gb", "Gb", "GB"):
        assert validate_event(event(country=spelling), now=NOW)["country"] == "GB"
    assert validate_event(event(type="search", title_id=None, query="x", country="se"),
                          now=NOW)["country"] == "SE"


def test_search_needs_a_query_but_no_title():
    out = validate_event({"event_id": "e", "type": "search", "user_id": "u", "ts": NOW,
                          "query": "heat"}, now=NOW)
    assert out["query"] == "heat"
    with pytest.raises(InvalidRecord, match="query"):
        validate_event({"event_id": "e", "type": "search", "user_id": "u", "ts": NOW}, now=NOW)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),
        (b'{"ts": NaN}', "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b"[" * 5000 + b"]" * 5000, "invalid_json"),
        (orjson.dumps(event(type="teleport")), "unknown_type"),
        (orjson.dumps({k: v for k, v in event().items() if k != "user_id"}), "missing_field"),
        (orjson.dumps(event(user_id=42)), "wrong_type"),
        (orjson.dumps(event(user_id="")), "bad_id"),
        (orjson.dumps(event(ts="yesterday")), "wrong_type"),
        (orjson.dumps(event(ts=True)), "wrong_type"),
        (orjson.dumps(event(ts=NOW + 10 * 86400)), "ts_out_of_range"),
        (orjson.dumps(event(ts=1.0)), "ts_out_of_range"),
        (orjson.dumps(event(type="pause")), "missing_field"),
        (orjson.dumps(event(type="pause", position_s=-5)), "out_of_range"),
        (orjson.dumps(event(type="pause", position_s=1e12)), "out_of_range"),
        (orjson.dumps(event(duration_s=0)), "out_of_range"),
        (orjson.dumps(event(type="rate", rating=9)), "out_of_range"),
        (orjson.dumps(event(device=["phone"])), "wrong_type"),
    ],
)
def test_invalid_records_have_a_reason(value: bytes, reason: str):
    assert reason_of(value) == reason


def test_oversized_record_is_rejected_before_parsing():
    with pytest.raises(InvalidRecord) as info:
        decode_event(b"{" + b" " * 100 + b"}", max_bytes=50, now=NOW)
    assert info.value.reason == "oversized"


def test_current_time_is_the_default_clock():
    assert decode_event(orjson.dumps(event(ts=time.time())))["user_id"] == "u1"


def test_catalog_episode_needs_series():
    base = {"event_id": "c1", "type": "episode_released", "ts": NOW, "title_id": "s1e2"}
    with pytest.raises(InvalidRecord, match="series_id"):
        decode_catalog(orjson.dumps(base), now=NOW)
    out = decode_catalog(orjson.dumps({**base, "series_id": "s1", "episode": 2}), now=NOW)
    assert out["kind"] == "episode"


def test_catalog_lists_must_hold_strings():
    bad = {"event_id": "c1", "type": "title_added", "ts": NOW, "title_id": "t", "genres": [1]}
    with pytest.raises(InvalidRecord) as info:
        decode_catalog(orjson.dumps(bad), now=NOW)
    assert info.value.reason == "wrong_type"


def test_dead_letter_keeps_binary_values_as_base64():
    letter = dead_letter("invalid_json", "bad", "events", 3, 17, b"k", b"\xff\x00", NOW)
    assert letter["value"].startswith("base64:")
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("events", 3, 17)
    assert letter["key"] == "k"
