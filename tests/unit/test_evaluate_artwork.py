"""``streamrec evaluate-artwork``: the replay estimate on simulated uniform-random logs."""

from __future__ import annotations

import orjson
import pytest

from producers.artwork_logs import click_probability, generate_artwork_logs
from producers.world import generate_world
from streamrec.cli import main
from streamrec.evaluate_artwork import Impression, RandomPolicy, impressions_from_events, replay


def test_learned_policy_beats_both_baselines_and_the_estimate_matches_the_truth(
        tmp_path, capsys):
    logs = tmp_path / "art.jsonl"
    code = main(["evaluate-artwork", str(logs), "--simulate", "--users", "100", "--titles",
                 "60", "--impressions", "60000", "--sim-seed", "3", "--json"])
    assert code == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["truth"] == "simulator"
    by = {p["policy"]: p for p in report["policies"]}
    learned, most, rand = by["learned"], by["most_clicked"], by["random"]
    assert learned["replay_ctr"] > most["replay_ctr"] and learned["replay_ctr"] > rand["replay_ctr"]
    assert learned["true_ctr"] > most["true_ctr"] > 0
    for policy in by.values():
        assert abs(policy["relative_error"]) < 0.10, policy
        # Replay keeps about one impression in (artworks per title).
        assert 0.2 * report["replayed"] < policy["matched"] < 0.4 * report["replayed"]
    # The sidecar makes a later run of the same file report the truth too.
    assert main(["evaluate-artwork", str(logs)]) == 0
    assert "true CTR" in capsys.readouterr().out


def test_logs_are_uniform_and_clicks_follow_the_hidden_preference():
    world = generate_world(30, 20, seed=2)
    events = list(generate_artwork_logs(world, 20_000, seed=2))
    impressions = impressions_from_events(events, {t["title_id"]: t for t in world.titles})
    shown: dict[str, int] = {}
    preferred = other = preferred_clicks = other_clicks = 0
    for imp in impressions:
        shown[imp.shown] = shown.get(imp.shown, 0) + 1
        if imp.shown == world.artwork_preference(imp.user_id, imp.title_id):
            preferred += 1
            preferred_clicks += imp.clicked
        else:
            other += 1
            other_clicks += imp.clicked
    assert preferred_clicks / preferred > 1.5 * other_clicks / other
    first = world.titles[0]
    counts = [shown.get(a, 0) for a in first["artwork_ids"]]
    assert min(counts) > 0.6 * max(counts)  # uniform random artwork
    p = click_probability(world, "u0", first["title_id"], first["artwork_ids"][0])
    assert 0.0 < p <= 0.95


def test_replay_counts_only_matching_impressions():
    imps = [Impression(float(i), "u", "t", ("a", "b"), "a", i % 2 == 0, None)
            for i in range(1000)]
    outcome = replay(imps, [RandomPolicy(seed=1)], warmup=0.0)
    result = outcome.results[0]
    assert 400 < result.matched < 600 and result.ctr == pytest.approx(0.5, abs=0.06)


def test_mistakes_get_one_line_and_exit_2(tmp_path, capsys):
    assert main(["evaluate-artwork", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"type": "play"}\n')
    assert main(["evaluate-artwork", str(empty)]) == 2
    assert "usable impressions" in capsys.readouterr().err
    assert main(["evaluate-artwork", str(empty), "--warmup", "1.5"]) == 2
