"""Two workers sharing the events partitions recommend as well as one worker.

The same simulated stream (hidden tastes, ``producers.simulator``) is processed by one
worker, by two workers sharing the item model (``streams.model_sync``) and, for
contrast, by two workers that do not share it. Each run has its own Redis, so per-user
state starts empty and ends identical (it is a function of the events alone).

Quality is measured offline on what comes next in the same simulation: after the run,
the item model the run leaves (its last checkpoint: for two sharing workers, the merged
model; for two that do not share, one worker's model) ranks the top 10 for every user
from that user's final state in Redis, and recall@10 is the share of the titles each user
goes on to engage with in the held-out events (play, resume, complete, click; titles they
had not completed) that are in that top 10. Online recall, from the workers' counters,
is printed too; it also depends on how often lists are refreshed (batch sizes, CPU),
which differs between one and two processes.
"""

from __future__ import annotations

import pickle
import time

import orjson
import pytest
import redis
from confluent_kafka import Producer

from models.base import UserProfile
from producers.simulator import generate_events, generate_world
from streamrec.redis_conn import EmbeddedRedis
from streamrec.settings import Secret
from streams.checkpoint import model_key
from streams.state import read_features

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]

N_USERS, N_TITLES, N_EVENTS, HELD_OUT, SEED = 800, 1200, 40_000, 25_000, 11
PARTITIONS = 4
K = 10
ENGAGED = {"play", "resume", "complete", "click"}


def assigned_partitions(worker, topic: str) -> int:
    return sum(1 for line in worker.metrics_text().splitlines()
               if line.startswith("streamrec_consumer_lag{") and f'topic="{topic}"' in line)


def send_events(producer: Producer, topic: str, events: list[dict]) -> None:
    """Every event to ``topic``, keyed by its user as the simulator sends them; flushed."""
    for event in events:
        producer.produce(topic, orjson.dumps(event), event["user_id"].encode())
        producer.poll(0)
    producer.flush()


def held_out_titles(events: list[dict]) -> dict[str, set[str]]:
    wanted: dict[str, set[str]] = {}
    for event in events:
        if event["type"] in ENGAGED:
            wanted.setdefault(event["user_id"], set()).add(event["title_id"])
    return wanted


def offline_recall(model, client: redis.Redis, wanted: dict[str, set[str]], ts: float
                   ) -> tuple[float, int]:
    hits = total = 0
    for user, titles in sorted(wanted.items()):
        features = read_features(client, user)
        if features is None:
            continue
        completed = set(features["completed"])
        targets = titles - completed
        if not targets:
            continue
        profile = UserProfile(
            user, history=[(t["title_id"], t["affinity"]) for t in features["recent_titles"]],
            completed=completed)
        top = {r.title_id for r in model.recommend(profile, n=K, ts=ts)}
        hits += len(top & targets)
        total += min(len(targets), K)
    return hits / total, total


def run(make_settings, start_worker, workers: int, sync_interval_s: float,
        catalog: list[dict], events: list[dict], wanted: dict[str, set[str]]
        ) -> dict[str, float]:
    with EmbeddedRedis() as redis_server:
        settings = make_settings(partitions=PARTITIONS, redis_url=Secret(redis_server.url),
                                 model_sync_interval_s=sync_interval_s,
                                 checkpoint_interval_s=600.0)
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                             "linger.ms": 5})
        for title in catalog:
            producer.produce(settings.topics.catalog, orjson.dumps(title), title["title_id"])
        producer.flush()
        started = [start_worker(settings) for _ in range(workers)]
        # Every worker owns its share of the events partitions before anything is sent.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            owned = [assigned_partitions(w, settings.topics.events) for w in started]
            if sum(owned) == PARTITIONS and min(owned) > 0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"partitions were not split between the workers: {owned}")
        send_events(producer, settings.topics.events, events)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            done = sum(w.counter("streamrec_events_consumed_total") for w in started)
            if done >= len(events):
                break
            time.sleep(0.5)
        tests = sum(w.counter("streamrec_online_recall_tests_total", model="streamrec")
                    for w in started)
        hits = sum(w.counter("streamrec_online_recall_hits_total", model="streamrec")
                   for w in started)
        syncs = sum(w.counter("streamrec_model_syncs_total") for w in started)
        for worker in started:  # each one syncs and checkpoints on the way out
            assert worker.stop() == 0
        assert done >= len(events), f"only {done} of {len(events)} events were processed"
        client = redis.Redis.from_url(redis_server.url)
        model = pickle.loads(client.hget(model_key(settings.app_id), "blob"))  # noqa: S301
        model.exploration = 0.0  # no random slots: the same model always ranks the same
        # No genre cap either: the comparison is of the models the runs leave (what sharing
        # changes), not of the product's list rules, which follow the scores more or less
        # closely depending on each user's genre mix.
        model.max_per_genre = K
        recall, targets = offline_recall(model, client, wanted, events[-1]["ts"])
        client.close()
        return {"recall": recall, "targets": targets, "online": hits / tests,
                "syncs": syncs}


def test_two_workers_sharing_the_item_model_match_one_worker(make_settings, start_worker):
    world = generate_world(N_USERS, N_TITLES, seed=SEED)
    stream = list(generate_events(world, N_EVENTS + HELD_OUT, seed=SEED))
    events, later = stream[:N_EVENTS], stream[N_EVENTS:]
    wanted = held_out_titles(later)
    runs = {
        "1 worker": run(make_settings, start_worker, 1, 2.0, world.titles, events, wanted),
        "2 workers, shared item model": run(make_settings, start_worker, 2, 2.0,
                                            world.titles, events, wanted),
        "2 workers, not shared": run(make_settings, start_worker, 2, 0.0, world.titles,
                                     events, wanted),
    }
    one, two, apart = runs.values()
    print(f"\n{N_EVENTS:,} simulated events ({N_USERS} users, {N_TITLES} titles, "
          f"{PARTITIONS} partitions); recall@{K} on the next {HELD_OUT:,} events' "
          f"engagements ({one['targets']} user-title targets):")
    for name, result in runs.items():
        print(f"  {name:<30} offline recall@{K} {result['recall']:.4f}  "
              f"(online recall@{K} {result['online']:.4f}; {result['syncs']:.0f} syncs)")
    relative = (two["recall"] - one["recall"]) / one["recall"]
    apart_relative = (apart["recall"] - one["recall"]) / one["recall"]
    print(f"  2 workers sharing vs 1 worker: {relative:+.1%}; "
          f"not sharing vs 1 worker: {apart_relative:+.1%}")
    assert two["syncs"] > 0
    # Until 2026-12-07 each worker's blend-weight steps were summed into the shared model,
    # which overshot: sharing measured -1% to -14% against one worker from run to run (the
    # 10% bound this had failed in CI), with the item tables as good as one worker's. With
    # one worker learning the blend for all (streams.model_sync), eight runs measured
    # +1.5% to +3.0%, and not sharing -5% to -10% in three.
    assert relative >= -0.05
    assert two["recall"] > apart["recall"]
