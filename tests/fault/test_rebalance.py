"""Rebalances mid-stream: a second worker joins (partitions move while batches are in
flight), then the first is killed (its partitions move once its session expires). Every
valid event is applied exactly once and every user has recommendations."""

from __future__ import annotations

import pytest
from faultkit import StreamRun, assert_exactly_once, events_consumed, make_stream, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]


def test_a_worker_joins_then_another_is_killed_mid_stream(fault_cluster, start_worker):
    settings = fault_cluster.settings(checkpoint_interval_s=5.0, model_sync_interval_s=1.0)
    # Long enough (30 s) to outlast two rebalances: the embedded broker waits about
    # session_timeout_s - 1 s for members to rejoin before it assigns.
    stream = make_stream(36_000, n_users=1500, n_titles=300, seed=17)
    with StreamRun(fault_cluster, settings, stream) as run:
        first = start_worker(settings)
        sender = run.start_sending(rate=1200)
        wait_for(lambda: events_consumed(first) >= 4000, 60, "the first worker to be busy")
        second = start_worker(settings)  # joins: the group rebalances mid-stream
        wait_for(lambda: events_consumed(second) >= 500, 60,
                 "the second worker to get partitions")
        at_kill = events_consumed(first) + events_consumed(second)
        first.kill()  # its partitions move to the second once the session times out
        sender.finish(90)
        run.wait_caught_up(120, "the remaining worker to catch up")
        redelivered = events_consumed(second, "streamrec_events_duplicate_total")
        syncs = events_consumed(second, "streamrec_model_syncs_total")
        assert second.stop() == 0
        result = run.outcome()
    print(f"\n{result.show('worker joins, then the first is killed (kill -9)')}\n"
          f"  {at_kill:.0f} events applied by the two when the first was killed; "
          f"{redelivered:.0f} redelivered events recognised by the survivor "
          f"({stream.duplicates} were producer duplicates); {syncs:.0f} model syncs")
    assert_exactly_once(result, stream)
