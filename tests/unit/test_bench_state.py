"""``streamrec bench --mode state``: Redis's time per user per batch, by profile size."""

from __future__ import annotations

import json

import streamrec.bench_state
from streamrec import cli


def test_the_state_bench_prints_and_reports_a_figure_per_profile_size(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setattr(streamrec.bench_state, "USERS", 20)
    monkeypatch.setattr(streamrec.bench_state, "BATCHES", 3)
    monkeypatch.setattr(streamrec.bench_state, "PROFILES", ((60, 20), (5, 1)))
    report = tmp_path / "state.json"
    assert cli.main(["bench", "--mode", "state", "--report", str(report)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["history", "resume", "points"]
    assert [line.split()[:2] for line in out[1:]] == [["60", "20"], ["5", "1"]]
    results = json.loads(report.read_text())["state"]
    big, small = results
    assert (big["users"], big["batches"]) == (20, 3)
    assert big["redis_us_per_user_batch"]["median"] > 0
    assert big["redis_us_per_user_batch"]["min"] <= big["redis_us_per_user_batch"]["median"]
    # A longer history and more resume points take more room: the users were built.
    assert big["state_bytes_per_user"] > small["state_bytes_per_user"] > 0


def test_the_state_bench_examples_hold():
    import doctest

    result = doctest.testmod(streamrec.bench_state)
    assert result.failed == 0 and result.attempted > 0
