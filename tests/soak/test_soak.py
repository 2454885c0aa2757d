"""A 5-minute soak at a steady rate: the worker's resident memory stays flat.

``make soak`` runs it (it is not part of ``make test``). The simulator streams events at
``RATE`` per second, stamped with the wall clock, from a large, growing audience: every
user id is new to the worker at first, and per-user state lives in Redis (bounded, with
TTLs), never in the process. A few percent of events name titles nobody catalogued
(stub titles, bounded by the model's capacity). The worker's RSS is read from /proc every
``SAMPLE_S`` seconds and printed. RSS swings by tens of MB from one second to the next
(transient numpy arrays of a batch's ranking, checkpoint pickles, allocator behaviour),
so windows are compared, not single readings: the median RSS of the last ``WINDOW_S``
must be less than 10% above the median of the first ``WINDOW_S`` after ``WARM_UP_S``
(peaks are printed too). A leak raises the median; noise does not.
"""

from __future__ import annotations

import statistics
import threading
import time

import orjson
import pytest
from confluent_kafka import Producer

from producers.simulator import generate_events, generate_world

pytestmark = [pytest.mark.soak, pytest.mark.timeout(900)]

DURATION_S = 300
WARM_UP_S = 60
WINDOW_S = 60
SAMPLE_S = 3
PRINT_EVERY_S = 15
RATE = 500  # events per second: steady, well within one worker on a shared 2-core CI box
N_USERS, N_TITLES = 20_000, 2000
STUB_TITLES = 500  # distinct uncatalogued titles, reused


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def counter(worker, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in worker.metrics_text().splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_resident_memory_stays_flat_for_five_minutes(make_settings, start_worker):
    world = generate_world(N_USERS, N_TITLES, seed=21)
    settings = make_settings(partitions=4)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "linger.ms": 20, "compression.type": "lz4"})
    for title in world.titles:
        producer.produce(settings.topics.catalog, orjson.dumps(title), title["title_id"])
    producer.flush()
    worker = start_worker(settings)
    stop = threading.Event()
    sent = [0]

    def send() -> None:
        started = time.monotonic()
        events = generate_events(world, RATE * (DURATION_S + 60), seed=21, realtime=True)
        for i, event in enumerate(events):
            if stop.is_set():
                break
            if i % 50 == 0:
                ahead = i / RATE - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            if i % 37 == 0 and event.get("title_id"):
                event["title_id"] = f"stub-{i % STUB_TITLES}"
            producer.produce(settings.topics.events, orjson.dumps(event),
                             event["user_id"].encode())
            producer.poll(0)
            sent[0] += 1
        producer.flush()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    samples: list[tuple[float, float, float, float]] = []
    started = time.monotonic()
    print(f"\nsoak: {RATE} events/s for {DURATION_S} s; worker pid {worker.process.pid}")
    print(f"{'t (s)':>6} {'RSS (MB)':>9} {'sent':>8} {'applied':>8} {'titles':>7}")
    printed = 0.0
    try:
        while (elapsed := time.monotonic() - started) < DURATION_S:
            time.sleep(SAMPLE_S - (elapsed % SAMPLE_S))
            elapsed = time.monotonic() - started
            sample = (elapsed, rss_mb(worker.process.pid), float(sent[0]),
                      counter(worker, "streamrec_events_consumed_total"))
            samples.append(sample)
            if elapsed - printed >= PRINT_EVERY_S - SAMPLE_S / 2:
                printed = elapsed
                titles = counter(worker, 'streamrec_model_size{kind="titles"')
                print(f"{sample[0]:6.0f} {sample[1]:9.1f} {sample[2]:8.0f} {sample[3]:8.0f} "
                      f"{titles:7.0f}", flush=True)
    finally:
        stop.set()
        sender.join(30)
    assert worker.stop() == 0
    first = [s[1] for s in samples if WARM_UP_S <= s[0] < WARM_UP_S + WINDOW_S]
    last = [s[1] for s in samples if s[0] >= samples[-1][0] - WINDOW_S]
    growth = (statistics.median(last) - statistics.median(first)) / statistics.median(first)
    print(f"RSS median {statistics.median(first):.1f} MB (peak {max(first):.1f}) in "
          f"{WARM_UP_S}-{WARM_UP_S + WINDOW_S} s, {statistics.median(last):.1f} MB "
          f"(peak {max(last):.1f}) in the last {WINDOW_S} s: {growth:+.1%}; "
          f"{samples[-1][3]:.0f} events applied")
    assert samples[-1][3] >= 0.9 * RATE * (DURATION_S - 10), "the worker fell behind"
    assert growth < 0.10
