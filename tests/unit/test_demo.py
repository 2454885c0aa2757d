"""The demo's tail counts what the output topics hold; its summary reports online recall."""

from __future__ import annotations

import orjson

from streamrec.demo import TailState, format_recall_over_run, recall_over_run


def test_the_demo_tail_counts_lists_and_dead_letters_and_skips_tombstones():
    state = TailState()
    listed = {"user_id": "u1", "ts": 12.5, "event_ts": 12.0, "items": []}
    state.add(orjson.dumps(listed), dead_letter=False)
    state.add(None, dead_letter=False)  # a tombstone on a shared recommendations topic
    state.add(b'{"reason": "invalid_json"}', dead_letter=True)
    assert (state.recommendations, state.dead_letters) == (1, 1)
    assert state.users == {"u1"} and state.latencies_s == [0.5]
    assert state.samples == {"u1": listed}


def test_whole_run_recall_is_the_counters_ratio_with_its_interval():
    counters = {
        "tests": {"streamrec": 2000.0, "popularity": 2000.0},
        "hits": {"streamrec": 400.0, "popularity": 220.0},
        "new_title_tests": {"streamrec": 500.0, "popularity": 500.0},
        "new_title_hits": {"streamrec": 45.0},  # a labelled counter never incremented is absent
    }
    run = recall_over_run(counters)
    assert run["streamrec"]["recall"] == 0.2 and run["popularity"]["recall"] == 0.11
    assert run["popularity"]["new_title_hits"] == 0
    assert run["popularity"]["new_title_recall"] == 0.0
    # 1.96 * sqrt(0.2 * 0.8 / 2000): two rates closer than about this may differ by chance
    assert run["streamrec"]["recall_pm"] == 0.0175
    assert format_recall_over_run("streamrec", run["streamrec"]) == (
        "streamrec 0.200 +-0.018 of 2,000 tests (new titles 0.090 +-0.025 of 500)")


def test_a_model_without_tests_has_no_rate_rather_than_a_division_by_zero():
    run = recall_over_run({"tests": {"m": 0.0}, "hits": {}, "new_title_tests": {},
                           "new_title_hits": {}})
    assert run["m"]["recall"] is None and run["m"]["new_title_recall"] is None
    assert format_recall_over_run("m", run["m"]) == "m - of 0 tests (new titles - of 0 tests)"
