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


def test_an_unreachable_broker_or_a_missing_topic_is_one_clear_error(make_settings,
                                                                     monkeypatch):
    from streamrec.exceptions import BrokerUnavailable, ConfigError

    args = argparse.Namespace(topic=None, user=None, from_beginning=True, max=None,
                              until_idle=None, json=False)
    # Nothing listens on port 1: an open-ended tail used to retry forever, flooding stderr.
    monkeypatch.setattr("consumers.common.METADATA_TIMEOUT_S", 1.0)
    nobody = make_settings().replace(kafka_bootstrap_servers="127.0.0.1:1")
    with pytest.raises(BrokerUnavailable, match="127.0.0.1:1 did not answer within 1 s .* is "
                                                "the broker running"):
        tail.run(args, nobody)
    # A mistyped topic used to look like an empty one.
    args.topic = "recommendatons"
    with pytest.raises(ConfigError, match="topic 'recommendatons' does not exist"):
        tail.run(args, make_settings())


def test_a_broker_gone_while_tail_waits_is_an_error_not_an_idle_topic(monkeypatch):
    from consumers.common import read_topic
    from streamrec.broker import EmbeddedBroker
    from streamrec.exceptions import BrokerUnavailable
    from streamrec.settings import Settings

    broker = EmbeddedBroker(partitions=1).start()
    try:
        settings = Settings(kafka_bootstrap_servers=broker.bootstrap_servers, metrics_port=0)
        broker.create_topics(settings.topics.all())
        producer = make_producer(settings)
        producer.produce(settings.topics.recommendations, b"{}", key=b"u1")
        assert producer.flush(10) == 0
        monkeypatch.setattr("consumers.common.BROKER_GONE_S", 1.0)
        records = read_topic(settings, settings.topics.recommendations, from_beginning=True,
                             until_idle_s=0.5)
        assert next(records).key() == b"u1"
        broker.set_down()
        # --until-idle used to end here with exit 0, as if the topic had gone quiet.
        with pytest.raises(BrokerUnavailable, match="is unreachable .* is the broker running"):
            next(records)
        records.close()
    finally:
        broker.set_up()
        broker.stop()
