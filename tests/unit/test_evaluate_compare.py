"""Paired comparisons in ``streamrec evaluate``: is one model's recall really above another's?"""

from __future__ import annotations

import json

import pytest

from streamrec import cli
from streamrec.evaluation.compare import paired
from tests.unit.test_evaluate import TEN, write_udata


def test_a_model_hitting_more_of_the_same_tests_is_above_the_baseline_beyond_noise():
    users = [f"u{i % 40}" for i in range(800)]
    baseline = [i % 10 == 0 for i in range(800)]
    model = [i % 10 in (0, 1, 2) for i in range(800)]  # everything the baseline hits, and more
    result = paired(model, baseline, users)
    assert (result["ratio"], result["only_model"], result["only_baseline"]) == (3.0, 160, 0)
    assert result["ratio_ci95"][0] > 1.0
    assert result["difference_ci95"][0] > 0.0
    assert result["users"] == 40 and result["tests"] == 800


def test_two_models_with_the_same_hits_are_level():
    hits = [i % 7 == 0 for i in range(300)]
    result = paired(hits, hits, [i % 30 for i in range(300)])
    assert result["ratio"] == 1.0 and result["ratio_ci95"] == [1.0, 1.0]
    assert result["difference"] == 0.0 and result["difference_ci95"] == [0.0, 0.0]


def test_the_interval_resamples_users_so_few_heavy_users_make_it_wider():
    # The same 400 tests and hits: made by 20 users of 20 tests each, or by 400 users of one.
    model = [i // 20 < 10 for i in range(400)]          # the first 10 heavy users' tests
    baseline = [10 <= i // 20 < 15 for i in range(400)]  # 5 other heavy users' tests
    heavy = paired(model, baseline, [i // 20 for i in range(400)], seed=3)
    light = paired(model, baseline, list(range(400)), seed=3)
    assert heavy["ratio"] == light["ratio"] == 2.0
    width = {name: r["ratio_ci95"][1] - r["ratio_ci95"][0]
             for name, r in (("heavy", heavy), ("light", light))}
    assert width["heavy"] > 2 * width["light"]


def test_a_baseline_that_never_hits_has_no_ratio():
    result = paired([True, False] * 10, [False] * 20, [i % 4 for i in range(20)])
    assert result["ratio"] is None and result["ratio_ci95"] is None
    assert result["difference"] == 0.5


def test_mismatched_inputs_get_a_clear_error():
    with pytest.raises(ValueError, match="one of each per test"):
        paired([True], [True, False], ["u1", "u2"])


def test_the_report_compares_models_with_popularity_and_the_product_with_its_rival(
        tmp_path, capsys):
    # Six rounds of TEN, each with its own titles: the last 42 of the 60 are tested, and
    # every one of the six users makes some of them.
    data = write_udata(tmp_path / "u.data", [(u, f"{t}{r}") for r in range(6) for u, t in TEN])
    code = cli.main(["evaluate", data, "--models", "streamrec,cooccurrence,popularity",
                     "--jobs", "1", "--report", str(tmp_path / "r")])
    out, _ = capsys.readouterr()
    assert code == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    compared = report["comparisons"]
    assert set(compared) == {"streamrec vs popularity", "cooccurrence vs popularity",
                             "streamrec vs cooccurrence"}
    models = report["models"]
    for pair, result in compared.items():
        model, base = pair.split(" vs ")
        assert result["tests"] == report["tested"]
        assert result["users"] == 6  # every user made tested events
        if models[base]["recall@10"] > 0:
            assert result["ratio"] == pytest.approx(
                models[model]["recall@10"] / models[base]["recall@10"], abs=1e-4)
    assert "streamrec against the strongest other model, cooccurrence:" in out
    row = next(line for line in out.splitlines() if line.startswith("cooccurrence "))
    interval = compared["cooccurrence vs popularity"]["ratio_ci95"]
    assert row.split()[-1] == (f"{interval[0]:.2f}-{interval[1]:.2f}" if interval else "-")
