"""Redis down for 10 s, then the broker down for 10 s, while events flow: the worker
pauses, reports it, resumes, and ends with exactly the state the stream defines."""

from __future__ import annotations

import time

import pytest
from faultkit import (
    StreamRun,
    assert_exactly_once,
    events_consumed,
    make_catalog,
    make_stream,
    send_catalog,
    wait_for,
)

from streams.checkpoint import catalog_key

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]

OUTAGE_S = 10.0


def metric(worker, name: str) -> float:
    try:
        return events_consumed(worker, name)
    except OSError:
        return float("nan")


def run_with_outage(fault_cluster, start_worker, take_down, bring_up, what: str,
                    new_titles: list[dict] | None = None) -> tuple[list[float], float]:
    settings = fault_cluster.settings(checkpoint_interval_s=5.0)
    stream = make_stream(30_000, n_users=1500, n_titles=300, seed=11)
    with StreamRun(fault_cluster, settings, stream) as run:
        worker = start_worker(settings)
        sender = run.start_sending(rate=2500)
        wait_for(lambda: events_consumed(worker) >= 5000, 60, "the worker to be mid-stream")
        before = events_consumed(worker)
        take_down()
        if new_titles:  # the catalogue agent meets the outage too
            send_catalog(settings, new_titles)
        time.sleep(1.0)
        during = events_consumed(worker)
        up_during = [metric(worker, "streamrec_pipeline_up")]
        time.sleep(OUTAGE_S - 1.0)
        up_during.append(metric(worker, "streamrec_pipeline_up"))
        redis_errors = metric(worker, "streamrec_redis_errors_total")
        stalled = events_consumed(worker)
        bring_up()
        assert worker.process.poll() is None, "the worker died during the outage"
        sender.finish(90)
        run.wait_caught_up(120, f"the worker to catch up after the {what}")
        for title in new_titles or []:
            wait_for(lambda t=title: run.client.hexists(catalog_key(settings.app_id),
                                                        t["title_id"]),
                     30, "the catalogue agent to store the titles sent during the outage")
        time.sleep(2.0)
        up_after = metric(worker, "streamrec_pipeline_up")
        assert worker.stop() == 0
        result = run.outcome()
    print(f"\n{result.show(f'{what} for {OUTAGE_S:.0f} s mid-stream')}\n"
          f"  events applied: {before:.0f} when it went down, {during:.0f} 1 s later, "
          f"{stalled:.0f} at the end of the outage; streamrec_pipeline_up during the outage "
          f"{up_during}, after {up_after}; streamrec_redis_errors_total {redis_errors:.0f}")
    assert_exactly_once(result, stream)
    return up_during, up_after


def test_redis_down_for_10_s_mid_stream(fault_cluster, start_worker):
    new_titles = make_catalog(3, time.time())
    for title in new_titles:
        title["title_id"] = "during-outage-" + title["title_id"]
    up_during, up_after = run_with_outage(
        fault_cluster, start_worker, fault_cluster.redis.kill, fault_cluster.restart_redis,
        "Redis killed (persistent, restarted on the same port)", new_titles)
    assert up_during[-1] == 0.0  # paused, and says so
    assert up_after == 1.0


def test_broker_down_for_10_s_mid_stream(fault_cluster, start_worker):
    up_during, up_after = run_with_outage(
        fault_cluster, start_worker, fault_cluster.broker.set_down,
        fault_cluster.broker.set_up, "broker down")
    assert up_during[-1] == 0.0
    assert up_after == 1.0


# Kubernetes' default terminationGracePeriodSeconds: a worker still running after it is
# killed. Behaviour, not speed: with the broker up the whole stop takes about 1 s.
GRACE_PERIOD_S = 30.0


def test_sigterm_with_the_broker_down_stops_within_a_grace_period(fault_cluster,
                                                                   start_worker):
    settings = fault_cluster.settings()
    worker = start_worker(settings)
    fault_cluster.broker.set_down()
    wait_for(lambda: metric(worker, "streamrec_pipeline_up") == 0.0, 30,
             "the worker to notice the broker is gone")
    started = time.monotonic()
    assert worker.stop(timeout_s=120) == 0
    # It took 61 s: faust's consumer thread waited out mode's 60 s stop timeout for
    # aiokafka to leave the group (streams.faust_compat.limit_consumer_thread_stop).
    assert time.monotonic() - started < GRACE_PERIOD_S
