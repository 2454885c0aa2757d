"""The demo's tail counts what the output topics hold."""

from __future__ import annotations

import orjson

from streamrec.demo import TailState


def test_the_demo_tail_counts_lists_and_dead_letters_and_skips_tombstones():
    state = TailState()
    listed = {"user_id": "u1", "ts": 12.5, "event_ts": 12.0, "items": []}
    state.add(orjson.dumps(listed), dead_letter=False)
    state.add(None, dead_letter=False)  # a tombstone on a shared recommendations topic
    state.add(b'{"reason": "invalid_json"}', dead_letter=True)
    assert (state.recommendations, state.dead_letters) == (1, 1)
    assert state.users == {"u1"} and state.latencies_s == [0.5]
    assert state.samples == {"u1": listed}
