"""The consumers' pure helpers on the records a topic can hold besides good messages:
tombstones (a key with no value) and values that are not JSON."""

from __future__ import annotations

import orjson

from consumers.sink import latest_per_user
from consumers.tail import format_record


def recommendation(user_id: str, ts: float) -> bytes:
    return orjson.dumps({"user_id": user_id, "ts": ts, "items": []})


def test_the_sink_keeps_the_newest_list_per_user_and_skips_tombstones_and_junk():
    old, new, other = recommendation("u1", 10.0), recommendation("u1", 20.0), recommendation(
        "u2", 5.0)
    latest = latest_per_user([new, None, b"not json", old, other])
    assert latest == {"u1": (20.0, new), "u2": (5.0, other)}


def test_tail_prints_a_tombstone_as_null_and_junk_as_not_json():
    assert format_record("recs", b"u1", None, 0.0) == f"{'u1':>10}: null"
    assert format_record("recs", b"u1", b"\xffjunk", 0.0) == "recs b'u1': (not JSON) b'\\xffjunk'"


def test_records_held_while_redis_is_down_join_the_batch_without_replacing_newer_lists():
    newer, older, other = recommendation("u1", 20.0), recommendation("u1", 10.0), recommendation(
        "u2", 5.0)
    batch = latest_per_user([newer])
    assert latest_per_user([older, other], into=batch) is batch
    assert batch == {"u1": (20.0, newer), "u2": (5.0, other)}


def test_tail_prints_a_notification_readably_and_marks_a_cut_record():
    # The README's scenario tails `notifications` for ana and sam: the line was the JSON cut
    # at 160 characters, mid-`ts`, without the episode's name and with no sign of the cut.
    note = orjson.dumps({"notification_id": "5304adab-d104-5547-bf81-2a77e65fa05e",
                         "user_id": "sam", "type": "new_episode", "title_id": "harbor-s1e2",
                         "series_id": "harbor", "ts": 1796685433.3021097,
                         "name": "The Harbor S1E2"})
    assert format_record("notifications", b"sam", note, 0.0) == (
        f"{'sam':>10}: new episode harbor-s1e2 \"The Harbor S1E2\" of series harbor")
    hint = orjson.dumps({"country": "SE", "hour": 1704067200,
                         "titles": [{"title_id": f"t{i}", "expected_plays": 1.5}
                                    for i in range(20)]})
    line = format_record("cache-hints", b"SE", hint, 0.0)
    assert line.endswith("...") and len(line) == len(f"{'SE':>10}: ") + 160
    short = orjson.dumps({"country": "SE", "hour": 1, "titles": []})
    assert format_record("cache-hints", b"SE", short, 0.0) == f"{'SE':>10}: {short.decode()}"
