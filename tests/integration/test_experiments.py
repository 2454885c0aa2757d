"""A/B experiments end to end: simulator traffic through a real worker, then the report.

One worker serves two experiments at once: ``strong-vs-random`` (the product's hybrid
against a deliberately weak random ranking) and ``aa`` (two identical variants). The
report must name the strong variant the winner with a lift interval that excludes zero,
and find no winner in the A/A test; every user keeps their variant across a restart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
import pytest
from confluent_kafka import Producer

from producers.simulator import generate_events, generate_world
from streamrec.kafka import required_topics
from streamrec.runtime import child_environment
from streams.experiments import load
from tests.experiment_toml import DEFAULT, RANDOM, two_arms
from tests.integration.test_worker import consume_until_idle

pytestmark = pytest.mark.integration

EXPERIMENTS = (two_arms("strong-vs-random", ("control", DEFAULT), ("weak", RANDOM))
               + two_arms("aa"))


def produce(settings, records: list[tuple[str, dict]]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "linger.ms": 5})
    for topic, value in records:
        key = value.get("user_id") or value.get("title_id")
        producer.produce(topic, orjson.dumps(value), key)
        producer.poll(0)
    producer.flush(30)


def variants_by_user(records, emitted_after: float) -> dict[str, set[tuple[str, str]]]:
    """user -> the (experiment, variant) pairs of the lists emitted after a time."""
    seen: dict[str, set[tuple[str, str]]] = {}
    for record in records:
        message = orjson.loads(record.value())
        if message["ts"] < emitted_after:
            continue
        for experiment, variant in message["experiments"].items():
            seen.setdefault(message["user_id"], set()).add((experiment, variant))
        assert message["experiments"]["strong-vs-random"] == message["variant"]
        assert message["experiment"] == "strong-vs-random"
    return seen


def report(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = child_environment(settings, dict(os.environ))
    return subprocess.run([sys.executable, "-m", "streamrec.cli", "experiment", "report",
                           *args], env=env, capture_output=True, text=True, timeout=60)


def test_strong_variant_wins_aa_has_no_winner_and_assignment_survives_restart(
        broker, make_settings, start_worker, tmp_path):
    path = tmp_path / "experiments.toml"
    path.write_text(EXPERIMENTS)
    settings = make_settings(top_n=20, experiments_path=str(path))
    world = generate_world(n_users=300, n_titles=300, seed=11)
    events = [e for e in generate_events(world, 16_000, seed=11) if isinstance(e, dict)]

    produce(settings, [(settings.topics.catalog, title) for title in world.titles])
    worker = start_worker(settings)
    time.sleep(1.0)  # let the catalogue agent load the titles first
    produce(settings, [(settings.topics.events, e) for e in events])
    first = consume_until_idle(settings, [settings.topics.recommendations], idle_s=3,
                               limit_s=40)
    assert worker.stop() == 0
    before = variants_by_user(first, 0.0)

    # A new worker process (nothing in memory; its own consumer group, so it reads the
    # events again: all redeliveries, re-ranked but not re-counted) serves every user
    # the variant the first one did. (Restarting under the same group id costs ~60 s
    # of faust's catalogue-consumer rejoin, which is why this test uses a fresh one.)
    again = settings.replace(app_id=settings.app_id + "-restarted")
    broker.create_topics([t for t in required_topics(again) if t not in again.topics.all()], 1)
    restarted_at = time.time()
    worker = start_worker(again)
    every = consume_until_idle(settings, [settings.topics.recommendations], idle_s=3,
                               limit_s=40)
    assert worker.stop() == 0
    after = variants_by_user(every, restarted_at)

    config = load(str(path))
    assert config is not None
    assert len(before) > 250 and set(after) >= set(before)
    for user, pairs in before.items():
        assert len(pairs) == 2, f"{user} was served two variants of one experiment"
        assert after[user] == pairs, f"{user} changed variant across the restart"
        assert pairs == {(e.name, e.assign(user).name) for e in config.experiments}

    result = report(settings, "--json")
    assert result.returncode == 0, result.stderr
    reports = {r["experiment"]: r for r in map(orjson.loads, result.stdout.splitlines())}
    strong, aa = reports["strong-vs-random"], reports["aa"]

    assert strong["winner"] == "control"
    weak = strong["variants"]["weak"]["recall_at_k"]
    control = strong["variants"]["control"]["recall_at_k"]
    assert control["value"] > weak["value"]
    assert weak["lift_ci_low"] < weak["lift_ci_high"] < 0
    assert control["lift_vs_control"] is None
    assert strong["variants"]["control"]["users"] + strong["variants"]["weak"]["users"] > 250

    assert aa["winner"] is None
    b = aa["variants"]["b"]["recall_at_k"]
    assert b["lift_ci_low"] < 0 < b["lift_ci_high"]

    text = report(settings, "--name", "aa")
    assert text.returncode == 0, text.stderr
    assert "no winner yet" in text.stdout
    print(report(settings).stdout)
    missing = report(settings, "--name", "nope")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "no experiment named 'nope'" in missing.stderr
