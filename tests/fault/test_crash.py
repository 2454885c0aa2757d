"""kill -9 in the middle of a stream, then restart: nothing lost, nothing applied twice."""

from __future__ import annotations

import time

import pytest
from faultkit import StreamRun, assert_exactly_once, events_consumed, make_stream, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]


def test_kill_9_mid_stream_then_restart(fault_cluster, start_worker):
    settings = fault_cluster.settings(checkpoint_interval_s=2.0)
    stream = make_stream(50_000, n_users=2000, n_titles=400, seed=7)
    with StreamRun(fault_cluster, settings, stream) as run:
        worker = start_worker(settings)
        sender = run.start_sending(rate=6000)
        wait_for(lambda: events_consumed(worker) >= 15_000, 60, "the worker to be mid-stream")
        killed_after = events_consumed(worker)
        worker.kill()  # SIGKILL: no flush, no commit, no checkpoint
        time.sleep(1.0)
        restarted = start_worker(settings)
        sender.finish(60)
        run.wait_caught_up(90, "the restarted worker to catch up")
        time.sleep(2.0)  # anything applied twice would show up now
        duplicates_seen = events_consumed(restarted, "streamrec_events_duplicate_total")
        assert restarted.stop() == 0
        result = run.outcome()
    print(f"\n{result.show('kill -9 mid-stream, then restart')}\n"
          f"  killed after {killed_after:.0f} events applied; {stream.duplicates} duplicates "
          f"sent by the producer; {duplicates_seen:.0f} redelivered events recognised by "
          f"event_id after the restart")
    assert_exactly_once(result, stream)
