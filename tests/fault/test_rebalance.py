"""Rebalances mid-stream: a second worker joins (partitions move while batches are in
flight), then the first is killed (its partitions move once its session expires). Every
valid event is applied exactly once and every user has recommendations."""

from __future__ import annotations

import pytest
from faultkit import (
    Background,
    TopicCollector,
    events_consumed,
    make_stream,
    outcome,
    produce,
    send_catalog,
    wait_for,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]


def test_a_worker_joins_then_another_is_killed_mid_stream(fault_cluster, start_worker):
    settings = fault_cluster.settings(checkpoint_interval_s=5.0, model_sync_interval_s=1.0)
    # Long enough (30 s) to outlast two rebalances: the embedded broker waits about
    # session_timeout_s - 1 s for members to rejoin before it assigns.
    stream = make_stream(36_000, n_users=1500, n_titles=300, seed=17)
    client = fault_cluster.client()
    collector = TopicCollector(settings, [settings.topics.recommendations, settings.topics.dlq])
    collector.start()
    try:
        send_catalog(settings, stream.catalog)
        first = start_worker(settings)
        sender = Background(lambda stop: produce(
            settings, stream.records, settings.topics.events, rate=1200, stop=stop))
        sender.start()
        wait_for(lambda: events_consumed(first) >= 4000, 60, "the first worker to be busy")
        second = start_worker(settings)  # joins: the group rebalances mid-stream
        wait_for(lambda: events_consumed(second) >= 500, 60,
                 "the second worker to get partitions")
        at_kill = events_consumed(first) + events_consumed(second)
        first.kill()  # its partitions move to the second once the session times out
        sender.finish(90)

        def caught_up() -> bool:
            result = outcome(client, stream, collector, settings)
            return (result.applied >= result.valid_events
                    and result.dead_letters >= stream.malformed)

        wait_for(caught_up, 120, "the remaining worker to catch up")
        redelivered = events_consumed(second, "streamrec_events_duplicate_total")
        syncs = events_consumed(second, "streamrec_model_syncs_total")
        assert second.stop() == 0
        result = outcome(client, stream, collector, settings)
    finally:
        collector.close()
    print(f"\n{result.show('worker joins, then the first is killed (kill -9)')}\n"
          f"  {at_kill:.0f} events applied by the two when the first was killed; "
          f"{redelivered:.0f} redelivered events recognised by the survivor "
          f"({stream.duplicates} were producer duplicates); {syncs:.0f} model syncs")
    assert result.lost == 0
    assert result.applied_twice == 0
    assert result.users_wrong == 0
    assert result.users_without_recs == 0
    assert result.dead_letters == stream.malformed
