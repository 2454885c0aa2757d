"""The worker's and the sink's /metrics after a simulated run, checked against what was sent.

One run per module (embedded broker, real Redis, a real worker and sink process): a few
thousand simulated events, some deliberately invalid, then every metric issue 5 names is
checked for presence and for values that match what was produced and what reached the
output topics; and every metric a dashboard panel or an alert rule uses must be in the
worker's live scrape (not only declared), so no panel or alert can point at nothing.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families

from producers.simulator import generate_events, generate_world
from streamrec.exceptions import InvalidRecord
from streamrec.metrics import REDIS_OPS
from streamrec.runtime import child_environment
from streamrec.schema import DEAD_LETTER_REASONS, EVENT_TYPES, decode_event
from streamrec.settings import Settings
from tests.experiment_toml import two_arms

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
N_EVENTS = 3000
INVALID_FRACTION = 0.03
STAGES = ("decode", "state", "learn", "rank", "emit")
# Bounds on waiting for the worker, the sink and the gauge timers (5 s), seconds.
DRAIN_LIMIT_S = 120.0
GAUGES_LIMIT_S = 30.0


def parse(text: str) -> list[Any]:
    """Every sample of a /metrics page (name, labels, value)."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def values(samples: list[Any], name: str, label: str | None = None) -> dict[str, float]:
    """``label value -> sample value`` for one metric (key "" when unlabelled)."""
    return {(s.labels.get(label, "") if label else ""): s.value
            for s in samples if s.name == name}


def total(samples: list[Any], name: str) -> float:
    return sum(s.value for s in samples if s.name == name)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:  # noqa: S310
        return r.read().decode()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, limit_s: float, what: str, log_path: Any = None) -> Any:
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` (and
    showing the end of ``log_path``, the process's log, to say why)."""
    deadline = time.monotonic() + limit_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            log = Path(log_path).read_text(errors="replace")[-4000:] if log_path else ""
            pytest.fail(f"gave up after {limit_s:.0f}s waiting for {what}\n{log}")
        time.sleep(0.3)


def count_records(settings: Settings, topic: str, expected: int, limit_s: float) -> int:
    """Records on ``topic``: read until ``expected`` are seen and 2 s pass quietly."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "group.id": f"check-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen, last, start = 0, time.monotonic(), time.monotonic()
    try:
        while time.monotonic() - start < limit_s:
            batch = [m for m in consumer.consume(1000, 0.2) if m.error() is None]
            if batch:
                seen += len(batch)
                last = time.monotonic()
            elif seen >= expected and time.monotonic() - last > 2.0:
                break
    finally:
        consumer.close()
    return seen


AA_EXPERIMENT = two_arms("aa")


@dataclass
class ObservedRun:
    settings: Settings
    started_at: float
    valid_by_type: collections.Counter[str]
    invalid_by_reason: collections.Counter[str]
    titles: int
    recommendations_on_topic: int
    worker: list[Any]
    worker_text: str
    sink: list[Any]
    worker_exit: int
    sink_exit: int


@pytest.fixture(scope="module")
def run(make_settings_module, start_worker_module, tmp_path_factory) -> ObservedRun:
    # Checkpoint every second so the checkpoint gauge is set within the run. An A/A
    # experiment (both arms the default model: lists unchanged) makes the dashboard's
    # experiment series appear in the scrape.
    experiments = tmp_path_factory.mktemp("experiments") / "aa.toml"
    experiments.write_text(AA_EXPERIMENT)
    settings = make_settings_module(checkpoint_interval_s=1.0,
                                    experiments_path=str(experiments))
    started_at = time.time()
    world = generate_world(80, 120, seed=11)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for title in world.titles:
        producer.produce(settings.topics.catalog, orjson.dumps(title), title["title_id"])
    producer.flush(30)

    worker = start_worker_module(settings)
    sink_port = _free_port()
    sink_log = tmp_path_factory.mktemp("sink") / "sink.log"
    with open(sink_log, "wb") as log:
        sink = subprocess.Popen(
            [sys.executable, "-m", "streamrec.cli", "sink", "--metrics-port", str(sink_port)],
            env=child_environment(settings, dict(os.environ)), stdout=log,
            stderr=subprocess.STDOUT)
    try:
        time.sleep(1.0)  # the catalogue agent loads titles before the first events
        # Ids unique to this run: users' Redis state is shared with every other test.
        run_id = uuid.uuid4().hex[:8]
        valid_by_type: collections.Counter[str] = collections.Counter()
        invalid_by_reason: collections.Counter[str] = collections.Counter()
        for record in generate_events(world, N_EVENTS, seed=11, realtime=True,
                                      invalid_fraction=INVALID_FRACTION):
            if isinstance(record, dict):
                record["user_id"] = f"{run_id}-{record['user_id']}"
                record["event_id"] = f"{run_id}-{record['event_id']}"
                value, key = orjson.dumps(record), record["user_id"].encode()
            else:
                value, key = record, b"invalid"
            try:
                valid_by_type[decode_event(value)["type"]] += 1
            except InvalidRecord as exc:
                invalid_by_reason[exc.reason] += 1
            producer.produce(settings.topics.events, value, key)
            producer.poll(0)
        assert producer.flush(30) == 0

        def drained() -> list[Any] | None:
            samples = parse(worker.metrics_text())
            done = (total(samples, "streamrec_events_consumed_total")
                    + total(samples, "streamrec_events_dead_lettered_total"))
            return samples if done >= N_EVENTS else None

        wait_for(drained, DRAIN_LIMIT_S, f"the worker to process {N_EVENTS} records",
                 worker.log_path)

        def gauges_settled() -> list[Any] | None:
            # Lag and model sizes come from a 5 s timer; checkpoints every second.
            samples = parse(worker.metrics_text())
            lag = values(samples, "streamrec_consumer_lag", "partition")
            ready = (len(lag) == settings.partitions and not any(lag.values())
                     and values(samples, "streamrec_model_size", "kind")
                     and total(samples, "streamrec_last_checkpoint_timestamp_seconds") > 0)
            return samples if ready else None

        wait_for(gauges_settled, GAUGES_LIMIT_S, "lag per partition, model sizes, checkpoint",
                 worker.log_path)
        worker_text = worker.metrics_text()
        emitted = total(parse(worker_text), "streamrec_recommendations_emitted_total")
        on_topic = count_records(settings, settings.topics.recommendations, int(emitted),
                                 limit_s=60)

        def sink_settled() -> list[Any] | None:
            samples = parse(scrape(sink_port))
            lag = values(samples, "streamrec_sink_lag", "partition")
            ready = (total(samples, "streamrec_sink_records_stored_total") >= on_topic
                     and len(lag) == settings.partitions and not any(lag.values()))
            return samples if ready else None

        sink_samples = wait_for(sink_settled, GAUGES_LIMIT_S, "the sink to store every list",
                                sink_log)
        worker_exit = worker.stop()
    finally:
        if sink.poll() is None:
            sink.send_signal(signal.SIGTERM)
        sink_exit = sink.wait(timeout=30)
    return ObservedRun(
        settings=settings, started_at=started_at, valid_by_type=valid_by_type,
        invalid_by_reason=invalid_by_reason, titles=len(world.titles),
        recommendations_on_topic=on_topic, worker=parse(worker_text), worker_text=worker_text,
        sink=sink_samples, worker_exit=worker_exit, sink_exit=sink_exit,
    )


def test_counts_match_what_was_sent_and_emitted(run: ObservedRun) -> None:
    m = run.worker
    assert run.worker_exit == 0 and run.sink_exit == 0
    assert sum(run.invalid_by_reason.values()) > 0, "the simulator sent no invalid records"
    # Every known type and reason is exported, at zero when nothing of it was seen.
    assert values(m, "streamrec_events_consumed_total", "type") == {
        t: float(run.valid_by_type[t]) for t in EVENT_TYPES}
    assert values(m, "streamrec_events_dead_lettered_total", "reason") == {
        r: float(run.invalid_by_reason[r]) for r in DEAD_LETTER_REASONS}
    assert total(m, "streamrec_events_duplicate_total") == 0
    emitted = total(m, "streamrec_recommendations_emitted_total")
    assert emitted > 0
    assert emitted == run.recommendations_on_topic
    assert total(m, "streamrec_batch_events_count") > 0
    assert total(m, "streamrec_batch_events_sum") == sum(run.valid_by_type.values()) + sum(
        run.invalid_by_reason.values())


def test_latency_and_stage_histograms_are_populated(run: ObservedRun) -> None:
    m = run.worker
    applied = sum(run.valid_by_type.values())
    assert total(m, "streamrec_event_to_recommendation_seconds_count") == applied
    assert total(m, "streamrec_event_to_recommendation_seconds_sum") > 0
    inf_bucket = [s.value for s in m if s.name == "streamrec_event_to_recommendation_seconds_bucket"
                  and s.labels["le"] == "+Inf"]
    assert inf_bucket == [applied]
    counts = values(m, "streamrec_stage_seconds_count", "stage")
    assert set(STAGES) <= set(counts)  # the stages; features may add their own
    assert all(counts[stage] > 0 for stage in STAGES)
    redis_counts = values(m, "streamrec_redis_seconds_count", "op")
    assert redis_counts["apply_batch"] > 0 and redis_counts["save_last_lists"] > 0


def test_gauges_lag_recall_model_sizes_checkpoint(run: ObservedRun) -> None:
    m = run.worker
    lag = {(s.labels["topic"], s.labels["partition"]): s.value
           for s in m if s.name == "streamrec_consumer_lag"}
    assert lag == {(run.settings.topics.events, str(p)): 0.0
                   for p in range(run.settings.partitions)}
    recall = values(m, "streamrec_online_recall_at_k", "model")
    assert set(recall) == {"streamrec", "popularity"}
    assert all(0.0 <= v <= 1.0 for v in recall.values())
    recall_new = values(m, "streamrec_online_recall_new_titles_at_k", "model")
    assert set(recall_new) == {"streamrec", "popularity"}
    assert all(0.0 <= v <= 1.0 for v in recall_new.values())
    tests = values(m, "streamrec_online_recall_tests_total", "model")
    new_tests = values(m, "streamrec_online_recall_new_titles_tests_total", "model")
    new_hits = values(m, "streamrec_online_recall_new_titles_hits_total", "model")
    for model in ("streamrec", "popularity"):
        # Simulated viewers both come back to titles and start new ones: a strict subset.
        assert 0 < new_tests[model] < tests[model], model
        assert 0 <= new_hits[model] <= new_tests[model], model
    sizes = values(m, "streamrec_model_size", "kind")
    assert sizes["titles"] == run.titles
    assert all(v > 0 for v in sizes.values())
    checkpoint = total(m, "streamrec_last_checkpoint_timestamp_seconds")
    assert run.started_at <= checkpoint <= time.time()
    assert values(m, "streamrec_pipeline_up") == {"": 1.0}
    if os.path.exists("/proc/self/stat"):  # prometheus-client's process metrics are Linux-only
        assert total(m, "process_resident_memory_bytes") > 0
        assert total(m, "process_cpu_seconds_total") > 0


def test_error_counters_exist_at_zero_from_start_up(run: ObservedRun) -> None:
    """Series exist before the first error, so rate()/increase() see the first one."""
    m = run.worker
    assert values(m, "streamrec_records_lost_total", "topic") == {
        run.settings.topics.events: 0.0}
    assert values(m, "streamrec_redis_errors_total", "op") == {op: 0.0 for op in REDIS_OPS}
    topics = run.settings.topics
    # Every topic the worker writes to, not only the two a test run happens to use.
    assert values(m, "streamrec_delivery_failures_total", "topic") == {
        topic: 0.0 for topic in (topics.recommendations, topics.dlq, topics.notifications,
                                 topics.cache_hints)}


def test_sink_serves_its_own_metrics(run: ObservedRun) -> None:
    s = run.sink
    assert total(s, "streamrec_sink_records_stored_total") == run.recommendations_on_topic
    assert {x.labels["topic"] for x in s if x.name == "streamrec_sink_lag"} == {
        run.settings.topics.recommendations}
    worker_names = {x.name for x in s if x.name.startswith("streamrec_")
                    and not x.name.startswith("streamrec_sink_")}
    assert not worker_names, "a scraped sink must not report worker metrics"
    assert not [x for x in run.worker if x.name.startswith("streamrec_sink_")]


def _deploy_checks() -> Any:
    """tests/unit/test_deploy.py's PromQL extractor (one definition of what a name is)."""
    spec = importlib.util.spec_from_file_location(
        "streamrec_deploy_checks", ROOT / "tests" / "unit" / "test_deploy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_dashboard_and_alert_metric_is_in_the_live_scrape(run: ObservedRun) -> None:
    deploy = _deploy_checks()
    live = {s.name for s in run.worker}
    used: dict[str, str] = {}
    for where, expr in deploy.all_exprs():
        for name in deploy.promql_names(expr)[0]:
            used.setdefault(name, where)
    assert used, "no metric names found in deploy/: the extractor is broken"
    missing = {name: where for name, where in used.items() if name not in live}
    assert not missing, f"used in deploy/ but absent from a live worker scrape: {missing}"
