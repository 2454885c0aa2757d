"""The report's statistics on known inputs, and its promise: looking often is safe."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from streams.experiment_stats import (
    MIN_USERS,
    RATIOS,
    SRM_ALPHA,
    ArmStats,
    Estimate,
    compare,
    lift,
    multiplier,
    p_value,
    sample_ratio_p,
    winner,
)

# r = 1000 / (2 ln 20 + ln(1 + 2 ln 20)) = 1000 / (5.99146 + 1.94593) = 126.0056
R = 126.0056097925634


def bernoulli(hits: int, users: int) -> ArmStats:
    """``users`` users with one recall test each, ``hits`` of them hits."""
    rows = [{"recall_tests": 1.0, "recall_hits": 1.0 if i < hits else 0.0}
            for i in range(users)]
    return ArmStats.from_users(rows)


def test_multiplier_by_hand() -> None:
    # m(n) = sqrt((1 + r/n) * ln((1 + n/r) / 0.05^2))
    # n = 100: sqrt(2.260056 * ln(1.793615 / 0.0025)) = sqrt(2.260056 * 6.575548) = 3.85505
    assert multiplier(100) == pytest.approx(3.855055, abs=1e-6)
    assert multiplier(100) == pytest.approx(
        math.sqrt((1 + R / 100) * math.log((1 + 100 / R) / 0.0025)), rel=1e-12)
    # Wider than a fixed-sample 1.96 always; tightest near 1,000 users, slowly wider after.
    widths = {n: multiplier(n) for n in (10, 100, 1000, 10_000, 1_000_000)}
    assert all(w > 1.96 for w in widths.values())
    assert widths[1000] < widths[100] < widths[10]
    assert widths[1000] < widths[10_000] < widths[1_000_000] < 4.0


def test_bernoulli_interval_by_hand() -> None:
    # 60 hits among 100 users: p = 0.6; sample variance 100/99 * 0.6 * 0.4 = 0.242424;
    # se = sqrt(0.242424 / 100) = 0.0492366; half-width = 0.0492366 * 3.855055 = 0.189810.
    result = compare(bernoulli(60, 100), None, "recall_at_k")
    assert result.value is not None and result.ci is not None
    assert result.value.value == pytest.approx(0.6)
    assert result.value.variance == pytest.approx(0.24 / 99, rel=1e-12)
    assert result.ci == pytest.approx((0.410190, 0.789810), abs=1e-6)


def test_lift_interval_by_hand() -> None:
    # Treatment 45/100 against control 60/100: lift = 0.45 / 0.6 - 1 = -0.25, with the
    # delta-method variance var_t / c^2 + t^2 var_c / c^4
    #     = (0.2475/99) / 0.36 + 0.2025 * (0.24/99) / 0.1296 = 0.0107323.
    # The interval is Fieller's, at n = 200: m = 3.363888, m^2 = 11.315743;
    # a = c^2 - m^2 var_c = 0.36 - 11.315743 * 0.00242424 = 0.332568;
    # half = sqrt(m^2 (a var_t + t^2 var_c)) = sqrt(11.315743 * 0.00132233) = 0.122324;
    # rho = (t c -/+ half) / a = (0.27 -/+ 0.122324) / 0.332568 = 0.444048, 1.179680.
    result = compare(bernoulli(45, 100), bernoulli(60, 100), "recall_at_k")
    assert result.lift is not None and result.lift_ci is not None
    assert result.lift.value == pytest.approx(-0.25)
    assert result.lift.variance == pytest.approx(0.0107323, rel=1e-5)
    assert result.lift_ci == pytest.approx((-0.555952, 0.179680), abs=1e-6)
    # The interval includes 0, so the always-valid p-value is above 0.05; and the
    # p-value is below 0.05 exactly when the interval excludes 0.
    assert result.p_value is not None and result.p_value > 0.05
    assert winner({"control": bernoulli(60, 100), "t": bernoulli(45, 100)}, "control",
                  "recall_at_k") is None


@pytest.mark.parametrize("z", [0.5, 2.0, 3.0, 3.36, 3.37, 5.0])
def test_p_value_agrees_with_the_interval(z: float) -> None:
    n, variance = 200, 0.01
    estimate = Estimate(z * math.sqrt(variance), variance, n)
    low, _ = estimate.interval()
    assert (p_value(estimate.value, variance, n) < 0.05) == (low > 0)


def test_an_arm_with_no_hits_yet_is_not_a_certain_loser() -> None:
    # 0 of 40 users against 6 of 40 is common in A/A tests of a rate near 7.5%. The delta
    # method's lift variance, var_t / c^2 + t^2 var_c / c^4, is 0 when t and var_t are:
    # this read as -100% [-100%, -100%], p<0.001, and control the winner.
    arms = {"control": bernoulli(6, 40), "t": bernoulli(0, 40)}
    result = compare(arms["t"], arms["control"], "recall_at_k")
    assert result.lift is not None and result.lift.value == -1.0
    # |0 - 0.15| < m(80) * sqrt(var_c) = 4.09 * 0.0572 = 0.234: not clear of 0, so Fieller's
    # interval has no upper end.
    assert result.lift_ci == (-1.0, math.inf)
    assert result.p_value is not None and result.p_value > 0.05
    assert winner(arms, "control", "recall_at_k") is None
    # Once control is clear of 0 by its own noise, the difference is a real one.
    arms = {"control": bernoulli(24, 40), "t": bernoulli(0, 40)}
    assert winner(arms, "control", "recall_at_k") == "control"


def test_no_lift_before_each_arm_has_min_users() -> None:
    # 3 of 5 users against 0 of 5: both variances are 1/n-sized guesses (the treatment's
    # is 0); this was "control wins" after ten users.
    small = {"control": bernoulli(3, 5), "t": bernoulli(0, 5)}
    result = compare(small["t"], small["control"], "recall_at_k")
    # The value, but no interval: it read 0.0000 [0.0000, 0.0000] (a variance of 0).
    assert result.value is not None and result.value.value == 0.0 and result.ci is None
    assert result.lift is None and result.lift_ci is None and result.p_value is None
    assert winner(small, "control", "recall_at_k") is None
    assert compare(bernoulli(0, MIN_USERS), bernoulli(3, MIN_USERS), "recall_at_k"
                   ).lift is not None
    # Users who are enrolled but have no recall test yet do not count.
    idle = ArmStats.from_users([{"recall_tests": 1.0}] * (MIN_USERS - 1) + [{}] * 100)
    assert compare(idle, bernoulli(3, MIN_USERS), "recall_at_k").lift is None
    assert compare(bernoulli(0, MIN_USERS - 1), bernoulli(3, MIN_USERS), "recall_at_k"
                   ).lift is None


def test_ratio_variance_is_the_user_level_delta_method() -> None:
    rng = np.random.default_rng(4)
    tests = rng.poisson(3.0, 500).astype(float)
    hits = rng.binomial(tests.astype(int), 0.3).astype(float)
    arm = ArmStats.from_users({"recall_tests": t, "recall_hits": h}
                              for t, h in zip(tests, hits, strict=True))
    estimate = arm.ratio("recall_at_k")
    assert estimate is not None
    ratio = hits.sum() / tests.sum()
    # Linearisation: var(R) = var(h - R t) / (n * mean(t)^2), sample variance (ddof=1).
    expected = np.var(hits - ratio * tests, ddof=1) / (len(tests) * tests.mean() ** 2)
    assert estimate.value == pytest.approx(ratio)
    assert estimate.variance == pytest.approx(expected, rel=1e-9)


def test_from_hash_reads_what_the_store_writes() -> None:
    arm = ArmStats.from_hash({b"users": b"3", b"s:recall_hits": b"2", b"s:recall_tests": b"4",
                              b"q:recall_hits": b"2", b"q:recall_tests": b"6",
                              b"c:recall_hits:recall_tests": b"3"})
    same = ArmStats.from_users([{"recall_tests": 2, "recall_hits": 1},
                                {"recall_tests": 1, "recall_hits": 1},
                                {"recall_tests": 1, "recall_hits": 0}])
    assert arm.ratio("recall_at_k") == same.ratio("recall_at_k")


def test_undefined_metrics_are_none_not_errors() -> None:
    empty = ArmStats.from_users([])
    assert empty.ratio("ctr") is None
    one = ArmStats.from_users([{"impressions": 2.0, "clicks": 1.0}])
    estimate = one.ratio("ctr")
    assert estimate is not None and estimate.value == 0.5 and math.isinf(estimate.variance)
    assert lift(Estimate(0.1, 0.01, 10), Estimate(0.0, 0.01, 10)) is None
    result = compare(one, empty, "ctr")
    assert result.lift is None and result.p_value is None
    assert set(RATIOS) == {"recall_at_k", "ctr", "plays_per_impression",
                           "watch_s_per_impression", "completion_rate"}


def test_winner_rules() -> None:
    strong, weak = bernoulli(300, 1000), bernoulli(100, 1000)
    assert winner({"control": weak, "t": strong}, "control", "recall_at_k") == "t"
    assert winner({"control": strong, "t": weak}, "control", "recall_at_k") == "control"
    # Control wins only if it beats every treatment.
    assert winner({"control": strong, "t": weak, "u": bernoulli(300, 1000)}, "control",
                  "recall_at_k") is None
    assert winner({"control": strong}, "control", "recall_at_k") is None


def _arm_stats(tests: np.ndarray, hits: np.ndarray) -> ArmStats:
    return ArmStats(len(tests), {"recall_tests": tests.sum(), "recall_hits": hits.sum()},
                    {"recall_tests": (tests**2).sum(), "recall_hits": (hits**2).sum()},
                    {("recall_hits", "recall_tests"): (hits * tests).sum()},
                    {"recall_tests": int((tests > 0).sum()), "recall_hits": int((hits > 0).sum())})


def test_aa_experiments_looked_at_after_every_batch_rarely_find_a_winner() -> None:
    """The point of the confidence sequences: 300 A/A experiments, each checked 40 times
    as users arrive, declare a winner at some look in well under 5% of them, while
    fixed-sample 95% intervals checked the same way would do so far more often."""
    rng = np.random.default_rng(2024)
    looks, per_look, experiments = 40, 50, 300
    users = looks * per_look
    false_winners = naive_false_winners = 0
    for _ in range(experiments):
        arms = []
        for _arm in range(2):
            tests = rng.poisson(2.0, users).astype(float) + 1.0
            rate = rng.beta(2.0, 8.0, users)  # users differ; both arms alike
            arms.append((tests, rng.binomial(tests.astype(int), rate).astype(float)))
        declared = naive = False
        for look in range(1, looks + 1):
            n = look * per_look
            a, b = (_arm_stats(t[:n], h[:n]) for t, h in arms)
            declared |= winner({"a": a, "b": b}, "a", "recall_at_k") is not None
            change = compare(b, a, "recall_at_k").lift
            assert change is not None
            naive |= abs(change.value) > 1.96 * math.sqrt(change.variance)
        false_winners += declared
        naive_false_winners += naive
    assert false_winners / experiments < 0.05
    assert naive_false_winners / experiments > 0.10


def _false_winner_share(arm: Callable[[int], tuple[np.ndarray, np.ndarray]],
                        experiments: int = 200) -> float:
    """Share of ``experiments`` A/A experiments (two arms drawn alike by ``arm(users)``:
    each user's recall tests and hits) that declare a winner at some look, after each of
    their first 20 users an arm, then every 10 up to 1,000."""
    looks = [*range(2, 20), *range(20, 1001, 10)]
    false_winners = 0
    for _ in range(experiments):
        (a_tests, a_hits), (b_tests, b_hits) = arm(looks[-1]), arm(looks[-1])
        false_winners += any(
            winner({"a": _arm_stats(a_tests[:n], a_hits[:n]),
                    "b": _arm_stats(b_tests[:n], b_hits[:n])}, "a", "recall_at_k")
            is not None for n in looks)
    return false_winners / experiments


@pytest.mark.parametrize("rate", [0.02, 0.1, 0.3])
def test_aa_experiments_looked_at_from_their_first_users_rarely_find_a_winner(
        rate: float) -> None:
    """A report can be read after the first batch: 200 A/A experiments looked at after
    every one of their first 20 users an arm, then every 10 up to 1,000, declare a winner
    at some look in under 5% of them (0.5%, 1% and 2.5% at rates 0.02, 0.1 and 0.3; before:
    52%, 47% and 29%, most at the first looks, from an arm with no hits yet or a few users
    alike)."""
    rng = np.random.default_rng(9)

    def arm(users: int) -> tuple[np.ndarray, np.ndarray]:
        tests = rng.poisson(1.0, users).astype(float) + 1.0
        return tests, rng.binomial(tests.astype(int), rate).astype(float)

    assert _false_winner_share(arm) < 0.05


def test_the_report_says_no_winner_until_each_arm_has_min_users() -> None:
    from streams.experiments_report import build, verdict

    # 200 users an arm, of whom 5 and 12 had a recall test: all of control's hits, none of
    # the weak arm's (each variance 0, so the difference looked certain).
    idle = [{}] * 195
    control = ArmStats.from_users([{"recall_tests": 1.0, "recall_hits": 1.0}] * 5 + idle)
    weak = ArmStats.from_users([{"recall_tests": 1.0}] * 12 + idle[:188])
    experiment = {"name": "ab", "control": "control", "metric": "recall_at_k",
                  "variants": [{"name": "control", "share": 0.5, "model": "default"},
                               {"name": "weak", "share": 0.5, "model": "random"}],
                  "arms": {"control": (control, 5), "weak": (weak, 12)}}
    report = build(experiment)
    assert report["winner"] is None
    weak_recall = report["variants"]["weak"]["recall_at_k"]
    assert weak_recall["measured_users"] == 12 and weak_recall["lift_ci_low"] is None
    assert report["variants"]["weak"]["users"] == 200
    assert verdict(report) == ("no winner yet: recall_at_k is compared once each variant has "
                               "30 users measured (control: 5, weak: 12); keep the experiment "
                               "running")


def test_aa_experiments_where_few_users_are_measured_rarely_find_a_winner() -> None:
    """Users enrol at their first event but many have no recall test yet (a worker taking
    big batches): with 1 user in 20 measured, 34% of 200 A/A experiments declared a winner
    when only enrolled users were counted."""
    rng = np.random.default_rng(3)

    def arm(users: int) -> tuple[np.ndarray, np.ndarray]:
        tested = rng.random(users) < 0.05
        tests = np.where(tested, rng.poisson(1.0, users) + 1.0, 0.0)
        return tests, rng.binomial(tests.astype(int), 0.5).astype(float)

    assert _false_winner_share(arm) < 0.05


def test_sample_ratio_mismatch_on_known_inputs() -> None:
    assert sample_ratio_p([151, 147], [0.5, 0.5]) == 1.0
    assert sample_ratio_p([317, 77], [0.8, 0.2]) == 1.0
    # 5,200 of 10,000 where 5,000 were due: a fixed-sample chi-square says p = 6e-5.
    assert sample_ratio_p([5200, 4800], [0.5, 0.5]) == pytest.approx(0.003648, rel=1e-3)
    assert sample_ratio_p([600, 400], [0.5, 0.5]) < SRM_ALPHA
    assert sample_ratio_p([10, 0], [1.0, 0.0]) == 1.0
    assert sample_ratio_p([10, 1], [1.0, 0.0]) == 0.0  # a variant that owns no users has one


def test_sample_ratio_checked_at_every_look_rarely_alarms_when_users_follow_the_shares(
        ) -> None:
    rng = np.random.default_rng(12)
    alarms = 0
    for _ in range(200):
        arms = rng.choice(2, size=5000, p=[0.8, 0.2])
        counts = np.cumsum(np.eye(2, dtype=int)[arms], axis=0)
        alarms += any(sample_ratio_p(list(counts[n]), [0.8, 0.2]) < SRM_ALPHA
                      for n in range(49, 5000, 50))
    assert alarms <= 2  # 1% of 200; the bound is 0.1% at every look


def test_the_report_leads_with_a_sample_ratio_mismatch() -> None:
    from streams.experiments_report import build, render

    # A share edited from 0.5 to 0.2 half-way: control kept its users, the treatment
    # gained the moved ones (and counts them again as new).
    experiment = {"name": "ab", "control": "control", "metric": "recall_at_k",
                  "variants": [{"name": "control", "share": 0.2, "model": "default"},
                               {"name": "t", "share": 0.8, "model": "random"}],
                  "arms": {"control": (bernoulli(300, 1100), 9), "t": (bernoulli(100, 1500), 7)}}
    report = build(experiment)
    assert report["sample_ratio"]["mismatch"] and report["sample_ratio"]["p_value"] < 1e-6
    lines = render(report).splitlines()
    assert lines[1] == ("  sample ratio (users per variant against the shares): MISMATCH, "
                        "p<0.001")
    assert lines[-2].startswith("sample ratio mismatch: control 1100 (0.2), t 1500 (0.8) is "
                                "not the split the shares say (p<0.001)")
    assert lines[-1].startswith("winner: control")
    fine = build({**experiment, "variants": [{**v, "share": 0.5}
                                             for v in experiment["variants"]],
                  "arms": {"control": (bernoulli(300, 1000), 9), "t": (bernoulli(100, 1010), 7)}})
    assert not fine["sample_ratio"]["mismatch"]
    assert render(fine).splitlines()[1].endswith("as expected, p=1")


@pytest.mark.parametrize(("status", "end", "line"), [
    ("ended", 1_717_200_000.0, "  ended at 2024-06-01T00:00:00Z (event time); it no longer "
                               "serves variants nor counts, so its results are final"),
    ("removed", None, "  ended: no longer in the experiments file; it no longer serves "
                      "variants nor counts, so its results are final"),
])
def test_an_ended_experiments_verdict_is_final(status, end, line) -> None:
    from streams.experiments_report import build, render

    # Before, an experiment that could no longer gather users read "keep the experiment
    # running" forever.
    def report(control: ArmStats, treatment: ArmStats) -> dict:
        return build({"name": "ab", "control": "control", "metric": "recall_at_k",
                      "end_ts": end, "status": status,
                      "variants": [{"name": "control", "share": 0.5, "model": "default"},
                                   {"name": "t", "share": 0.5, "model": "random"}],
                      "arms": {"control": (control, 9), "t": (treatment, 7)}})

    few = report(bernoulli(3, 10), bernoulli(2, 12))
    assert (few["status"], few["end"]) == (status, end and "2024-06-01T00:00:00Z")
    lines = render(few).splitlines()
    assert lines[1] == line
    assert lines[-1] == ("final: no winner: it ended before each variant had 30 users "
                         "measured on recall_at_k (control: 10, t: 12), so they were never "
                         "compared; run it again under a new name, for longer")
    same = render(report(bernoulli(100, 400), bernoulli(101, 400))).splitlines()[-1]
    assert same.startswith("final: no winner: no variant's recall_at_k differed from "
                           "control's with 95% confidence")
    won = render(report(bernoulli(300, 1000), bernoulli(100, 1000))).splitlines()[-1]
    assert won.startswith("final: winner: control, the control")
    assert all("keep the experiment running" not in text
               for text in (lines[-1], same, won))


def test_a_running_experiment_says_when_it_ends() -> None:
    from streams.experiments_report import build, render

    running = build({"name": "ab", "control": "control", "metric": "recall_at_k",
                     "end_ts": 1_717_200_000.0, "status": "running",
                     "variants": [{"name": "control", "share": 0.5, "model": "default"},
                                  {"name": "t", "share": 0.5, "model": "random"}],
                     "arms": {"control": (bernoulli(3, 10), 9), "t": (bernoulli(2, 12), 7)}})
    lines = render(running).splitlines()
    assert lines[1] == "  ends at 2024-06-01T00:00:00Z (event time)"
    assert lines[-1].endswith("keep the experiment running")


def test_an_arm_without_a_hit_gets_a_lift_interval_that_says_how_unsure_it_is() -> None:
    """40 users a variant, all with recall tests; control's hit in half of them, the
    treatment's in none. Every treatment user alike made its variance 0 and its lift read
    "-100% [-100%, -100%]", as certain as a lift can be; now the interval's upper end is
    where the users' variation puts it, and control still wins."""
    control = ArmStats.from_users([{"recall_tests": 2.0, "recall_hits": 1.0}] * 20
                                  + [{"recall_tests": 2.0}] * 20)
    quiet = ArmStats.from_users([{"recall_tests": 2.0}] * 40)
    result = compare(quiet, control, "recall_at_k")
    assert result.lift is not None and result.lift.value == -1.0
    assert result.lift_ci is not None
    low, high = result.lift_ci
    assert low == -1.0 and -0.5 < high < 0  # below 0, but far from a certain -100%
    assert result.ci is not None and result.ci[1] > 0.05  # the arm's own recall: not [0, 0]
    assert winner({"control": control, "quiet": quiet}, "control", "recall_at_k") == "control"
