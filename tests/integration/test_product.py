"""The hand-written scenario of examples/scenario/, replayed into a real worker over TCP.

A user watches S1E1 to the end, pauses another title at 40%, clicks an artwork in a row;
then S1E2 is released. They must get one new-episode notification (and only one, also
after the release is replayed and the worker restarted), their paused title first in
``continue_watching`` with its resume position, and rows and artwork in their
recommendations; and the hours it spans produce cache hints.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer

from streamrec.runtime import child_environment
from streams.checkpoint import catalog_key

pytestmark = pytest.mark.integration
SCENARIO = Path(__file__).resolve().parents[2] / "examples" / "scenario"
USERS = ("ana", "leo", "sam")


def scenario_copy(tmp_path: Path, run: str) -> dict[str, Path]:
    """The scenario files with this run's suffix on user, event and series ids, so the
    test also passes against a Redis that still holds an earlier run's state."""
    out = {}
    for name in ("catalog", "events", "release"):
        lines = []
        for line in (SCENARIO / f"{name}.jsonl").read_bytes().splitlines():
            record = orjson.loads(line)
            for field in ("user_id", "event_id", "series_id"):
                if field in record:
                    record[field] = f"{record[field]}-{run}"
            lines.append(orjson.dumps(record))
        out[name] = tmp_path / f"{name}.jsonl"
        out[name].write_bytes(b"\n".join(lines) + b"\n")
    return out


def replay(settings, path: Path, topic: str | None = None) -> None:
    """``streamrec replay FILE``, as a user would run it."""
    command = [sys.executable, "-m", "streamrec.cli", "replay", str(path)]
    if topic is not None:
        command += ["--topic", topic]
    done = subprocess.run(command, env=child_environment(settings, dict(os.environ)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


class Reader:
    """Everything that arrives on the output topics, read from the beginning."""

    def __init__(self, settings) -> None:
        self.topics = settings.topics
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                                  "group.id": f"check-{uuid.uuid4().hex}",
                                  "auto.offset.reset": "earliest"})
        self.consumer.subscribe([self.topics.recommendations, self.topics.notifications,
                                 self.topics.cache_hints])
        self.recs: list[dict[str, Any]] = []
        self.notifications: list[dict[str, Any]] = []
        self.hints: list[dict[str, Any]] = []

    def poll(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for message in self.consumer.consume(500, 0.2):
                if message.error() is not None:
                    continue
                value = orjson.loads(message.value())
                if message.topic() == self.topics.notifications:
                    assert message.key().decode() == value["user_id"]
                    self.notifications.append(value)
                elif message.topic() == self.topics.cache_hints:
                    assert message.key().decode() == value["country"]
                    self.hints.append(value)
                else:
                    self.recs.append(value)

    def until(self, condition: Callable[[], bool], limit_s: float) -> None:
        end = time.monotonic() + limit_s
        while not condition() and time.monotonic() < end:
            self.poll(0.5)
        assert condition(), "timed out waiting for the worker's output"

    def close(self) -> None:
        self.consumer.close()


def test_scenario_notification_rows_and_artwork(make_settings, start_worker, redis_client,
                                                tmp_path):
    settings = make_settings(partitions=2)
    run = uuid.uuid4().hex[:6]
    files = scenario_copy(tmp_path, run)
    sam, ana, leo = (f"{u}-{run}" for u in ("sam", "ana", "leo"))
    catalog = [orjson.loads(line) for line in files["catalog"].read_bytes().splitlines()]
    artworks = {t["title_id"]: set(t["artwork_ids"]) for t in catalog}
    reader = Reader(settings)
    try:
        replay(settings, files["catalog"], settings.topics.catalog)
        worker = start_worker(settings)
        reader.until(lambda: redis_client.hlen(catalog_key(settings.app_id)) == len(catalog),
                     limit_s=30)
        started = time.monotonic()
        replay(settings, files["events"])
        reader.until(lambda: any(r["user_id"] == sam and r["event_id"] == f"scn-sam-7-{run}"
                                 for r in reader.recs), limit_s=30)
        replay(settings, files["release"], settings.topics.catalog)
        reader.until(lambda: any(n["user_id"] == sam for n in reader.notifications),
                     limit_s=30)
        print(f"scenario: recommendations and notification {time.monotonic() - started:.1f} s "
              "after the replay started")
        metrics = worker.metrics_text()

        # A replayed release and a restarted worker send nothing new.
        replay(settings, files["release"], settings.topics.catalog)
        assert worker.stop() == 0
        second = start_worker(settings)
        replay(settings, files["release"], settings.topics.catalog)
        reader.poll(6.0)
        second_metrics = second.metrics_text()
        assert second.stop() == 0
    finally:
        reader.close()

    # The notification: one per user who watched the series and has not seen S1E2.
    mine = [n for n in reader.notifications if n["user_id"] in (sam, ana, leo)]
    assert sorted(n["user_id"] for n in mine) == sorted([sam, ana])
    note = next(n for n in mine if n["user_id"] == sam)
    assert set(note) >= {"notification_id", "user_id", "type", "title_id", "series_id", "ts"}
    assert (note["type"], note["title_id"], note["series_id"]) == (
        "new_episode", "harbor-s1e2", f"harbor-{run}")
    # The restarted worker sent nothing; it recognised at least the replayed release for
    # both users (more if the first worker stopped before committing its catalogue offset).
    assert "streamrec_notifications_sent_total 0.0" in second_metrics
    duplicates = re.search(r'streamrec_notifications_suppressed_total\{reason="duplicate"\} (\S+)',
                           second_metrics)
    assert duplicates is not None and float(duplicates.group(1)) >= 2.0

    # The paused title first in continue_watching, with where to resume.
    latest = [r for r in reader.recs if r["user_id"] == sam][-1]
    assert latest["event_id"] == f"scn-sam-7-{run}"
    rows = {row["id"]: row for row in latest["rows"]}
    first = rows["continue_watching"]["items"][0]
    assert first["title_id"] == "paper-garden" and first["resume_s"] == 2400.0
    assert rows["continue_watching"]["title"] == "Continue watching"

    # Rows and artwork: every item names one of its title's artworks; nothing finished.
    assert len(latest["rows"]) >= 2
    shown = [item for row in latest["rows"] for item in row["items"]] + latest["items"]
    for item in shown:
        assert item["artwork_id"] in artworks[item["title_id"]], item
    in_rows = [item["title_id"] for row in latest["rows"] for item in row["items"]]
    assert len(in_rows) == len(set(in_rows)), "a title appeared in two rows"
    assert "harbor-s1e1" not in in_rows
    for row in latest["rows"]:
        assert row["title"] and row["items"]
    # The click in the trending row reached the row bandit.
    assert 'streamrec_row_clicks_total{row_type="trending"} 1.0' in metrics

    # The events span 18:00-20:41 UTC: closing an hour forecasts the next one for SE.
    hints = [h for h in reader.hints if h["country"] == "SE"]
    assert hints and all(h["hour"] % 3600 == 0 for h in hints)
    assert {t["title_id"] for h in hints for t in h["titles"]} <= set(artworks)
    assert all(t["expected_plays"] > 0 for h in hints for t in h["titles"])
