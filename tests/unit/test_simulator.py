"""The simulator: a valid catalogue, hidden tastes that show in behaviour, valid and
deliberately invalid events, deterministic under a seed; and the ``simulate`` command."""

from __future__ import annotations

import doctest
import hashlib
import time
import tracemalloc
from collections import defaultdict

import numpy as np
import orjson
import pytest

import producers.pacing
import producers.sessions
import producers.simulator
import producers.sources
import producers.world
from producers.artwork_logs import generate_artwork_logs
from producers.simulator import GENRES, generate_events, generate_world
from streamrec.cli import main
from streamrec.exceptions import InvalidRecord
from streamrec.schema import decode_event, validate_catalog


@pytest.fixture(scope="module")
def world():
    return generate_world(n_users=200, n_titles=300, seed=11)


@pytest.fixture(scope="module")
def events(world):
    return list(generate_events(world, 30_000, seed=11))


@pytest.mark.parametrize("module", [producers.world, producers.sessions,
                                    producers.sources, producers.pacing])
def test_docstring_examples_run(module):
    assert doctest.testmod(module).failed == 0


def test_catalogue_is_valid_and_varied(world):
    assert len(world.titles) == 300 and len(world.users) == 200
    for title in world.titles:
        validate_catalog(dict(title))
        assert set(title["genres"]) <= set(GENRES) and 1 <= len(title["genres"]) <= 3
        assert 3 <= len(title["artwork_ids"]) <= 4
        assert title["cast"] and title["director"] and title["duration_s"] > 0
    episodes = [t for t in world.titles if t["kind"] == "episode"]
    assert episodes, "some titles should be series episodes"
    for episode in episodes:
        assert episode["series_id"] and episode["season"] >= 1 and episode["episode"] >= 1
    assert len({t["title_id"] for t in world.titles}) == 300
    assert len({g for t in world.titles for g in t["genres"]}) >= 12


def test_world_is_deterministic_under_its_seed():
    a, b, c = generate_world(50, 80, seed=5), generate_world(50, 80, seed=5), \
        generate_world(50, 80, seed=6)
    assert a.titles == b.titles
    assert a.affinity("u3", "t7") == b.affinity("u3", "t7")
    assert a.titles != c.titles


def test_world_rejects_nonsense_sizes():
    with pytest.raises(ValueError, match="n_users"):
        generate_world(0, 10)
    with pytest.raises(ValueError, match="n_titles"):
        generate_world(10, -1)


def test_affinity_is_a_probability_and_one_formula_for_any_batch_size(world):
    titles = np.arange(len(world.titles))
    many = world.affinities(4, titles)  # the vectorised path
    few = np.concatenate([world.affinities(4, titles[i:i + 10]) for i in range(0, 300, 10)])
    # Equal up to float summation order (BLAS may sum a big batch differently).
    np.testing.assert_allclose(many, few, rtol=1e-12, atol=0)
    assert ((many > 0) & (many < 1)).all()
    assert world.affinity("u4", "t12") == pytest.approx(many[12])
    with pytest.raises(KeyError):
        world.affinity("nobody", "t1")


def test_artwork_preference_is_one_of_the_titles_artworks(world):
    for title in world.titles[:50]:
        preferred = world.artwork_preference("u1", title["title_id"])
        assert preferred in title["artwork_ids"]
        assert preferred == world.artwork_preference("u1", title["title_id"])


def test_every_event_is_valid_with_unique_ids(events):
    assert len(events) == 30_000
    for event in events:
        decode_event(orjson.dumps(event))
    assert len({e["event_id"] for e in events}) == len(events)


def test_event_types_devices_and_rows_look_like_a_product(events, world):
    kinds = {e["type"] for e in events}
    assert kinds == {"play", "pause", "resume", "seek", "stop", "complete", "search", "rate",
                     "impression", "click"}
    users = {u.user_id: u for u in world.users}
    for event in events:
        user = users[event["user_id"]]
        assert event["device"] in user.devices and event["country"] == user.country
        if event["type"] in ("impression", "click"):
            title = world.titles[world.title_index(event["title_id"])]
            assert event["row"] and event["artwork_id"] in title["artwork_ids"]
    queries = [e["query"] for e in events if e["type"] == "search"]
    assert queries and all(q.strip() for q in queries)


def test_each_users_events_are_in_time_and_session_order(events):
    last_ts: dict[str, float] = {}
    playing: dict[str, str | None] = {}
    for event in events:
        user = event["user_id"]
        assert event["ts"] >= last_ts.get(user, 0.0)
        last_ts[user] = event["ts"]
        kind = event["type"]
        if kind == "play":
            playing[user] = event["title_id"]
        elif kind in ("pause", "resume", "seek", "stop", "complete"):
            # A playback event continues the title the user last started.
            assert playing.get(user) == event["title_id"]
            if kind in ("stop", "complete"):
                playing[user] = None


def test_hidden_affinity_shows_in_how_far_people_watch(events, world):
    ratio_by_affinity = []
    for event in events:
        if event["type"] in ("stop", "complete"):
            ratio = 1.0 if event["type"] == "complete" else \
                event["position_s"] / event["duration_s"]
            ratio_by_affinity.append((world.affinity(event["user_id"], event["title_id"]), ratio))
    ratio_by_affinity.sort()
    quarter = len(ratio_by_affinity) // 4
    low = np.mean([r for _, r in ratio_by_affinity[:quarter]])
    high = np.mean([r for _, r in ratio_by_affinity[-quarter:]])
    assert high > low + 0.2, (low, high)
    ratings = [(world.affinity(e["user_id"], e["title_id"]), e["rating"])
               for e in events if e["type"] == "rate"]
    assert np.corrcoef(*zip(*ratings, strict=True))[0, 1] > 0.5


def test_preferred_artwork_gets_more_clicks(events, world):
    shown = defaultdict(int)
    clicked = defaultdict(int)
    for event in events:
        if event["type"] not in ("impression", "click"):
            continue
        preferred = world.artwork_preference(event["user_id"], event["title_id"])
        counter = shown if event["type"] == "impression" else clicked
        counter[event["artwork_id"] == preferred] += 1
    assert clicked[True] / shown[True] > 1.5 * clicked[False] / shown[False]


def test_same_seed_same_events_other_seed_other_events(world):
    first = [orjson.dumps(e) for e in generate_events(world, 2000, seed=3)]
    again = [orjson.dumps(e) for e in generate_events(world, 2000, seed=3)]
    other = [orjson.dumps(e) for e in generate_events(world, 2000, seed=4)]
    assert first == again
    assert first != other


def test_a_seeds_stream_stays_the_same_byte_for_byte():
    """README figures and files people keep quote simulated streams by their seed."""
    world = generate_world(400, 300, seed=1)
    records = [*generate_events(world, 5000, seed=1, invalid_fraction=0.02),
               *generate_artwork_logs(world, 500, seed=1)]
    digest = hashlib.sha256(b"".join(r if isinstance(r, bytes) else orjson.dumps(r)
                                     for r in records))
    assert digest.hexdigest() == \
        "5d213af646b3c7f25d5c47141b9f8deb3ac548e5e2419fcd559663c6748849b3"


def test_a_viewer_takes_under_300_bytes():
    """The world's arrays and the sessions' tables, per viewer: a million fit in about
    350 MB (a SimUser object per viewer took about 890 bytes: a million, 1 GB)."""
    def traced(n_users: int) -> int:
        tracemalloc.start()
        try:
            world = generate_world(n_users, 10, seed=1)
            tables = producers.sessions._hour_tables(world)
            assert len(world.users) == n_users and len(tables[0]) == 24
            return tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    traced(100)  # imports and numpy's first allocations
    per_user = (traced(60_000) - traced(10_000)) / 50_000
    assert per_user < 300
    assert per_user <= producers.world.BYTES_PER_USER  # what simulate's up-front check counts


def test_viewers_are_indexed_like_a_list(world):
    users = world.users
    assert users[-1].user_id == "u199" and users[-1].index == 199
    assert [u.user_id for u in users[3:6]] == ["u3", "u4", "u5"]
    assert [u.index for u in users][:3] == [0, 1, 2]
    with pytest.raises(IndexError):
        users[200]
    assert world.user_index("u42") == 42
    for nobody in ("u200", "u042", "u-1", "u", "x1", "u\u0664", "u1 "):
        with pytest.raises(KeyError):
            world.user_index(nobody)


def test_invalid_records_are_the_requested_share_and_all_rejected(world):
    records = list(generate_events(world, 5000, seed=2, invalid_fraction=0.1))
    bad = [r for r in records if isinstance(r, bytes)]
    assert 350 <= len(bad) <= 650
    reasons = set()
    for record in bad:
        assert b"\n" not in record
        with pytest.raises(InvalidRecord) as caught:
            decode_event(record)
        reasons.add(caught.value.reason)
    assert {"invalid_json", "missing_field", "wrong_type", "unknown_type",
            "out_of_range"} <= reasons
    # The valid events do not depend on how many invalid ones are mixed in.
    good = [r for r in records if not isinstance(r, bytes)]
    clean = list(generate_events(world, len(good), seed=2))
    assert good == clean


def test_start_ts_and_realtime_stamps(world):
    first = next(generate_events(world, 1, seed=1, start_ts=1.8e9))
    assert 1.8e9 <= first["ts"] < 1.8e9 + 86_400
    before = time.time()
    stamped = list(generate_events(world, 50, seed=1, realtime=True))
    after = time.time()
    assert all(before <= e["ts"] <= after for e in stamped)


def test_generate_events_rejects_bad_arguments(world):
    with pytest.raises(ValueError, match="invalid_fraction"):
        next(generate_events(world, 10, invalid_fraction=1.0))
    with pytest.raises(ValueError, match="n_events"):
        next(generate_events(world, -1))


# -- the command --------------------------------------------------------------------------

def run_cli(argv, capsys, monkeypatch):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_out_writes_events_and_catalogue_beside_them(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sim.jsonl"
    code, stdout, _ = run_cli(["simulate", "--users", "30", "--titles", "40", "--events",
                               "1000", "--invalid-fraction", "0.05", "--out", str(out)],
                              capsys, monkeypatch)
    assert code == 0
    lines = out.read_bytes().splitlines()
    assert len(lines) == 1000
    invalid = 0
    for line in lines:
        try:
            decode_event(line)
        except InvalidRecord:
            invalid += 1
    assert 0 < invalid < 150 and f"({invalid:,} deliberately invalid)" in stdout
    catalogue = (tmp_path / "sim.catalog.jsonl").read_bytes().splitlines()
    assert len(catalogue) == 40
    assert all(validate_catalog(orjson.loads(line)) for line in catalogue)


def test_simulate_gzip_and_explicit_catalogue_path(tmp_path, capsys, monkeypatch):
    import gzip

    out, cat = tmp_path / "e.jsonl.gz", tmp_path / "titles.jsonl"
    code, _, _ = run_cli(["simulate", "--users", "5", "--titles", "8", "--events", "100",
                          "--out", str(out), "--catalog-out", str(cat)], capsys, monkeypatch)
    assert code == 0
    assert len(gzip.decompress(out.read_bytes()).splitlines()) == 100
    assert len(cat.read_bytes().splitlines()) == 8


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--users", "0"], "--users and --titles must be positive"),
        (["--invalid-fraction", "1.5"], "--invalid-fraction"),
        (["--catalog-out", "x.jsonl"], "--catalog-out needs --out"),
        (["--events", "10", "--rate", "5", "--duration", "2"], "either --events"),
        (["--rate", "5"], "--rate and --duration go together"),
        (["--rate", "0", "--duration", "3"], "must be > 0"),
        (["--events", "lots"], "invalid int value"),
        (["--events", "5", "--out", "/nonexistent-dir/x.jsonl"],
         "its directory /nonexistent-dir does not exist (create it first: mkdir -p"),
    ],
)
def test_simulate_mistakes_get_one_line_and_exit_2(argv, fragment, capsys, monkeypatch):
    code, _, err = run_cli(["simulate", *argv], capsys, monkeypatch)
    assert code == 2
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("available", [2**30, None], ids=["known", "unknown"])
def test_simulate_a_world_too_big_for_memory_is_one_line_up_front(available, tmp_path, capsys,
                                                                   monkeypatch):
    # Memory available known (Linux): said before any work. Unknown: numpy's MemoryError
    # for the first array that cannot be had (10**15 viewers: more than any address space).
    monkeypatch.setattr(producers.world, "available_memory", lambda: available)
    out = tmp_path / "e.jsonl"
    code, _, err = run_cli(["simulate", "--users", str(10**15), "--events", "10",
                            "--out", str(out)], capsys, monkeypatch)
    assert code == 2
    assert "--users 1,000,000,000,000,000" in err and "use fewer --users" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(("argv", "fragment"), [
    (["demo", "--users", "10000000000"], "use fewer --users (about"),
    (["bench", "--events", "1000", "--users", "10000000000"], "use fewer --users (about"),
    (["evaluate-artwork", "ART.jsonl", "--simulate", "--users", "10000000000"],
     "use fewer --users (about"),
    (["evaluate", "ART.jsonl", "--oracle", "10000000000,50,1"],
     "use fewer --oracle USERS (about"),
], ids=["demo", "bench", "evaluate-artwork", "evaluate-oracle"])
def test_other_commands_say_a_world_too_big_for_memory_up_front(argv, fragment, tmp_path,
                                                                capsys, monkeypatch):
    # The commands that simulate a world check it as simulate does: one line, exit 2,
    # before a broker, worker or file exists (they died on numpy's MemoryError before).
    monkeypatch.setattr(producers.world, "available_memory", lambda: 2**30)
    art = tmp_path / "art.jsonl"
    if argv[0] == "evaluate":
        art.write_text("")  # evaluate checks its options before reading the file
    argv = [a.replace("ART.jsonl", str(art)) for a in argv]
    code, _, err = run_cli(argv, capsys, monkeypatch)
    assert code == 2
    assert "10,000,000,000 with" in err and fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == (["art.jsonl"] if argv[0] == "evaluate"
                                                    else [])
