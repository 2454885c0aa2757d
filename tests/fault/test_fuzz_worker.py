"""Thousands of hostile records into a live worker: it keeps running, applies every valid
event once, and dead-letters every malformed record exactly once, with a known reason."""

from __future__ import annotations

import random
import time

import orjson
import pytest
from faultkit import TopicCollector, make_stream, outcome, produce, send_catalog, wait_for
from hostile import NOW, records
from hypothesis import Phase, given, settings

from streamrec.exceptions import InvalidRecord
from streamrec.schema import DEAD_LETTER_REASONS, DLQ_MAX_KEY_BYTES, decode_event

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]

WANTED = 3000


def malformed_records(wanted: int) -> list[bytes]:
    """Records drawn by hypothesis that the contract rejects (kept in draw order)."""
    found: list[bytes] = []

    @settings(max_examples=3 * wanted, database=None, deadline=None, phases=[Phase.generate])
    @given(records())
    def draw(raw: bytes) -> None:
        if len(found) >= wanted:
            return
        try:
            decode_event(raw, now=NOW)
        except InvalidRecord:
            found.append(raw)

    draw()
    return found


def test_thousands_of_hostile_records_are_all_dead_lettered(fault_cluster, start_worker):
    bad: list[bytes | None] = list(malformed_records(WANTED))
    assert len(bad) >= WANTED * 0.9, f"the strategies drew only {len(bad)} malformed records"
    bad += [None] * 20  # tombstones: a key with no value
    stream = make_stream(10_000, n_users=500, n_titles=200, seed=3, malformed_fraction=0.0,
                         duplicate_fraction=0.0)
    rng = random.Random(5)
    hostile_keys = [None, b"", b"\xff\xfe\x00", b"k" * (DLQ_MAX_KEY_BYTES + 500), b"u1"]
    mixed = list(stream.records)
    for raw in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), (rng.choice(hostile_keys), raw))
    stream.malformed = len(bad)

    settings_ = fault_cluster.settings()
    client = fault_cluster.client()
    collector = TopicCollector(settings_, [settings_.topics.recommendations,
                                           settings_.topics.dlq])
    collector.start()
    try:
        send_catalog(settings_, stream.catalog)
        worker = start_worker(settings_)
        started = time.monotonic()
        produce(settings_, mixed, settings_.topics.events)

        def done() -> bool:
            result = outcome(client, stream, collector, settings_)
            return (result.applied >= result.valid_events
                    and collector.count(settings_.topics.dlq) >= len(bad))

        wait_for(done, 120, "every record to be applied or dead-lettered")
        time.sleep(1.0)  # a second dead letter for one record would arrive now
        seconds = time.monotonic() - started
        assert worker.process.poll() is None, "the worker died"
        assert worker.stop() == 0
        result = outcome(client, stream, collector, settings_)
        letters = [orjson.loads(v) for v in collector.values_of(settings_.topics.dlq)]
    finally:
        collector.close()
    reasons: dict[str, int] = {}
    for letter in letters:
        reasons[letter["reason"]] = reasons.get(letter["reason"], 0) + 1
    print(f"\n{len(bad)} hypothesis-drawn malformed records and tombstones mixed into "
          f"{stream.valid_events} valid events: {len(letters)} dead letters in "
          f"{seconds:.1f} s, by reason {dict(sorted(reasons.items()))}\n{result.show('  state')}")
    assert len(letters) == len(bad)  # each one exactly once (no crash, so no re-sends)
    assert len({(d["partition"], d["offset"]) for d in letters}) == len(bad)
    assert set(reasons) <= DEAD_LETTER_REASONS
    assert all(d["topic"] == settings_.topics.events for d in letters)
    assert result.lost == 0 and result.applied_twice == 0
    assert result.users_without_recs == 0
