"""``streamrec tail`` on the embedded broker: what a person reading a topic sees."""

from __future__ import annotations

import argparse

import orjson
import pytest

from consumers import tail
from streamrec.kafka import make_producer

pytestmark = pytest.mark.integration
EVENT_TS = 1_717_243_200.0  # 2024-06-01 12:00 UTC: a simulated stream's own clock


def test_max_with_user_counts_that_users_records_only(make_settings, capsys):
    settings = make_settings(partitions=1)
    producer = make_producer(settings)
    for i in range(12):  # u1's records come first: a filter applied after --max saw none
        user = "u1" if i < 10 else "u2"
        value = {"user_id": user, "event_id": f"e{i}", "ts": EVENT_TS + 0.01,
                 "event_ts": EVENT_TS, "items": [{"title_id": f"t{i}", "reason": "popular"}]}
        producer.produce(settings.topics.recommendations, orjson.dumps(value),
                         key=user.encode())
    assert producer.flush(10) == 0
    args = argparse.Namespace(topic=None, user="u2", from_beginning=True, max=2,
                              until_idle=5.0, json=False)
    assert tail.run(args, settings) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.strip().startswith("u2 <- ") for line in lines)
    assert "(10.0 ms)" in lines[0]  # the list's delay after its event

    args.user, args.max = None, 3  # without --user, the first 3 records of any user
    assert tail.run(args, settings) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_a_list_of_a_replayed_event_shows_the_events_time_not_years_of_latency():
    line = tail.format_record("recs", b"u1", orjson.dumps({
        "user_id": "u1", "event_id": "e1", "ts": 1_765_000_000.0, "event_ts": EVENT_TS,
        "items": []}), 0.0)
    assert "(event of 2024-06-01 12:00 UTC)" in line and " ms)" not in line


def test_an_unreachable_broker_is_an_error_not_an_idle_topic(make_settings, monkeypatch):
    from streamrec.exceptions import BrokerUnavailable

    # Nothing listens on port 1: tail --until-idle used to wait its idle time and exit 0,
    # as if the topic were empty.
    settings = make_settings().replace(kafka_bootstrap_servers="127.0.0.1:1")
    monkeypatch.setattr("consumers.common.BROKER_GONE_S", 1.0)
    args = argparse.Namespace(topic=None, user=None, from_beginning=True, max=None,
                              until_idle=0.5, json=False)
    with pytest.raises(BrokerUnavailable, match="127.0.0.1:1 is unreachable .* is the broker "
                                                "running"):
        tail.run(args, settings)
