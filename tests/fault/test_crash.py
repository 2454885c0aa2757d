"""kill -9 in the middle of a stream, then restart: nothing lost, nothing applied twice."""

from __future__ import annotations

import time

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


def test_kill_9_mid_stream_then_restart(fault_cluster, start_worker):
    settings = fault_cluster.settings(checkpoint_interval_s=2.0)
    stream = make_stream(50_000, n_users=2000, n_titles=400, seed=7)
    client = fault_cluster.client()
    collector = TopicCollector(settings, [settings.topics.recommendations, settings.topics.dlq])
    collector.start()
    try:
        send_catalog(settings, stream.catalog)
        worker = start_worker(settings)
        sender = Background(lambda stop: produce(
            settings, stream.records, settings.topics.events, rate=6000, stop=stop))
        sender.start()

        wait_for(lambda: events_consumed(worker) >= 15_000, 60, "the worker to be mid-stream")
        killed_after = events_consumed(worker)
        worker.kill()  # SIGKILL: no flush, no commit, no checkpoint
        time.sleep(1.0)
        restarted = start_worker(settings)
        sender.finish(60)

        def caught_up() -> bool:
            result = outcome(client, stream, collector, settings)
            return (result.applied >= result.valid_events
                    and result.dead_letters >= stream.malformed)

        wait_for(caught_up, 90, "the restarted worker to catch up")
        time.sleep(2.0)  # anything applied twice would show up now
        duplicates_seen = events_consumed(restarted, "streamrec_events_duplicate_total")
        assert restarted.stop() == 0
        result = outcome(client, stream, collector, settings)
    finally:
        collector.close()
    print(f"\n{result.show('kill -9 mid-stream, then restart')}\n"
          f"  killed after {killed_after:.0f} events applied; {stream.duplicates} duplicates "
          f"sent by the producer; {duplicates_seen:.0f} redelivered events recognised by "
          f"event_id after the restart")
    assert result.lost == 0
    assert result.applied_twice == 0
    assert result.users_wrong == 0
    assert result.users_without_recs == 0
    assert result.dead_letters == stream.malformed
