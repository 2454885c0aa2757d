"""Experiment tallies in a real Redis: the Lua script's running sums equal a recount."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import orjson
import pytest
import redis.asyncio

from streams.experiment_batch import MEASURES, ExperimentTallies
from streams.experiment_stats import RATIOS, ArmStats
from streams.experiment_store import ExperimentStore, arm_key, read_experiments
from streams.experiments import parse
from tests.experiment_toml import RANDOM, two_arms

pytestmark = pytest.mark.integration

CONFIG = parse(two_arms("store-test", b=("b", RANDOM)))


def test_running_sums_match_a_recount_and_users_are_counted_once(redis_url, redis_client):
    app = f"xp-{uuid.uuid4().hex[:8]}"
    users = [f"s{uuid.uuid4().hex[:6]}-{i}" for i in range(60)]
    rng = np.random.default_rng(5)
    totals: dict[tuple[str, str], dict[str, list[float]]] = {}
    new_users: dict[tuple[str, str], int] = {}

    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        store = ExperimentStore(client, app, ttl_s=3600)
        await store.publish(CONFIG)
        for _batch in range(5):
            tallies = ExperimentTallies()
            for uid in rng.choice(users, size=25, replace=False):
                arm = ("store-test", "a" if hash(uid) % 2 else "b")
                deltas = [float(x) for x in rng.integers(0, 3, len(MEASURES))]
                deltas[MEASURES.index("watch_s")] = float(rng.uniform(0, 3000))
                tallies.users.setdefault(arm, {})[str(uid)] = deltas
                running = totals.setdefault(arm, {}).setdefault(str(uid), [0.0] * len(MEASURES))
                for i, d in enumerate(deltas):
                    running[i] += d
                tallies.lists[arm] = tallies.lists.get(arm, 0) + 1
            for arm, count in (await store.record(tallies)).items():
                new_users[arm] = new_users.get(arm, 0) + count
        await client.aclose()

    asyncio.run(scenario())
    (stored,) = read_experiments(redis_client, app)
    assert stored["control"] == "a" and [v["name"] for v in stored["variants"]] == ["a", "b"]
    for arm, by_user in totals.items():
        expected = ArmStats.from_users(dict(zip(MEASURES, row, strict=True))
                                       for row in by_user.values())
        got, lists = stored["arms"][arm[1]]
        assert got.users == expected.users == new_users[arm] == len(by_user)
        assert lists > 0
        for name in MEASURES:
            assert got.sums[name] == pytest.approx(expected.sums[name], rel=1e-9)
            assert got.squares[name] == pytest.approx(expected.squares[name], rel=1e-9)
        for pair in RATIOS.values():
            assert got.cross[pair] == pytest.approx(expected.cross[pair], rel=1e-9)
        # Users with each measure above 0: what decides when a lift is computed.
        assert got.measured == expected.measured
        assert 0 < got.measured_users("recall_at_k") < got.users
        for metric in RATIOS:
            mine, recount = got.ratio(metric), expected.ratio(metric)
            assert mine is not None and recount is not None
            assert (mine.value, mine.variance) == pytest.approx(
                (recount.value, recount.variance), rel=1e-9)
    some_user = next(iter(totals[next(iter(totals))]))
    assert 0 < redis_client.ttl(f"sr:u:{{{some_user}}}:xp") <= 3600
    assert redis_client.exists(arm_key(app, "store-test", "a"))


def test_a_worker_starting_with_an_edited_file_says_what_moved(redis_url, redis_client,
                                                              caplog):
    app = f"xp-{uuid.uuid4().hex[:8]}"
    swapped = parse(two_arms("store-test", ("b", RANDOM), ("a", '"default"')))

    async def start(config) -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        await ExperimentStore(client, app, ttl_s=3600).publish(config)
        await client.aclose()

    with caplog.at_level("WARNING", logger="streams.experiment_store"):
        asyncio.run(start(CONFIG))
        asyncio.run(start(CONFIG))  # a restart with the same file: nothing to say
        assert caplog.messages == []
        asyncio.run(start(swapped))
    (said,) = caplog.messages
    assert said.startswith("experiment 'store-test': 100.0% of its users are now in another "
                           "variant")
    (stored,) = read_experiments(redis_client, app)
    assert [v["name"] for v in stored["variants"]] == ["b", "a"]


def test_the_report_says_an_experiment_ended_or_was_removed(redis_url, redis_client,
                                                             monkeypatch, capsys):
    from streamrec.cli import main
    from streamrec.settings import Settings
    from streams.experiment_store import start_experiments

    app = f"xp-{uuid.uuid4().hex[:8]}"
    ending = two_arms("ending").replace('name = "ending"\n',
                                        'name = "ending"\nend = 2024-06-01T00:00:00Z\n')
    end_ts = 1_717_200_000.0

    async def worker(config, latest_ts: float | None = None) -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        store = ExperimentStore(client, app, ttl_s=3600)
        await store.publish(config)
        if latest_ts is not None:
            await store.record(ExperimentTallies(latest_ts=latest_ts))
        await client.aclose()

    def status() -> dict[str, str]:
        return {e["name"]: e["status"] for e in read_experiments(redis_client, app)}

    both = parse(ending + two_arms("kept"))
    asyncio.run(worker(both, end_ts - 1))
    assert status() == {"ending": "running", "kept": "running"}
    asyncio.run(worker(both, end_ts))  # event time reaches the end
    asyncio.run(worker(both, end_ts - 5))  # a late event does not turn it back
    assert status() == {"ending": "ended", "kept": "running"}
    asyncio.run(worker(parse(two_arms("kept"))))  # "ending" taken out of the file
    assert status() == {"ending": "removed", "kept": "running"}

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("STREAMREC_APP_ID", app)
    assert main(["experiment", "report"]) == 0
    out = capsys.readouterr().out
    assert ("experiment ending: decided by recall_at_k, control a; 95% confidence sequences "
            "(valid at every look)\n  ended: no longer in the experiments file;") in out
    assert "final: no winner: it ended before" in out and out.count("final:") == 1
    assert main(["experiment", "report", "--running", "--json"]) == 0
    (kept,) = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (kept["experiment"], kept["status"], kept["end"]) == ("kept", "running", None)

    # A worker started without STREAMREC_EXPERIMENTS serves none of them.
    async def bare_worker() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        settings = Settings.from_env({"REDIS_URL": redis_url, "STREAMREC_APP_ID": app})
        assert await start_experiments(settings, client) is None
        await client.aclose()

    asyncio.run(bare_worker())
    assert status() == {"ending": "removed", "kept": "removed"}
    assert main(["experiment", "report", "--running"]) == 1
    assert capsys.readouterr().err == (
        "streamrec experiment report: no experiment is running (ended or removed: ending, "
        "kept; leave out --running to see them)\n")
    assert main(["experiment", "report", "--name", "ending", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["status"] == "removed"
