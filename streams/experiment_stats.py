"""The statistics of ``streamrec experiment report``: user-level intervals that stay valid
however often the results are looked at.

**Unit of analysis: the user.** Users are randomised, so every metric is a ratio of
per-user sums, ``R = sum(x_u) / sum(y_u)`` (e.g. recall hits over recall tests), and its
variance comes from the delta method over users::

    var(R) = (s_xx - 2 R s_xy + R^2 s_yy) / (n * ybar^2)

with ``s`` the sample (co)variances of the per-user ``x_u, y_u``. Only sufficient
statistics are needed (``n`` and the sums of ``x, y, x^2, y^2, x*y``), which the worker
keeps in Redis (``streams.experiment_store``). For a proportion with one trial per user
this is the familiar ``p(1-p)/(n-1)``.

**Looking repeatedly.** A fixed-sample 95% interval checked after every batch declares a
false winner far more often than 5% of the time. The intervals here are asymptotic
confidence sequences from the normal-mixture boundary (Robbins 1970; Howard, Ramdas,
McAuliffe & Sekhon 2021; in the asymptotic form of Waudby-Smith et al. 2021, the
mixture SPRT of Johari et al. 2017): with an estimate's variance ``V`` and a mixing
variance ``tau^2 = V * n / r``, the interval is

    estimate +/- sqrt(V) * sqrt((1 + r/n) * log((1 + n/r) / alpha^2))

and covers the truth at every ``n`` simultaneously with probability >= 1 - alpha
(asymptotically). ``r`` is tuned so the interval is tightest around ``TARGET_USERS``
users; it is ~1.55x the fixed-sample width there and grows only logarithmically later.
The matching always-valid p-value is ``min(1, 1/Lambda)`` with the mixture likelihood
ratio ``Lambda = sqrt(r/(r+n)) * exp(z^2/2 * n/(n+r))``, ``z = estimate / sqrt(V)``.

**Lift** against control is ``R_t / R_c - 1``. Its test is on the difference
``R_t - R_c``, with variance ``var(R_t) + var(R_c)`` and ``n = n_t + n_c`` in the
boundary, and its interval is Fieller's: every ``rho`` with
``|R_t - rho R_c| <= m sqrt(var(R_t) + rho^2 var(R_c))``, minus 1, so the interval
excludes 0 exactly when the test rejects. (The delta method's ``var(R_t)/R_c^2 +
R_t^2 var(R_c)/R_c^4`` drops control's noise when ``R_t`` is 0: an arm with no hits yet
gave a lift of -100% with an interval of width 0.) When ``R_c`` itself is not clear of 0
the interval has no upper end. No lift is computed before each arm has ``MIN_USERS``
users measured (a denominator above 0: for ``recall_at_k``, users with a recall test):
the boundary is asymptotic, and a handful of users can show a variance of 0. Past that,
an arm whose users are all alike (no event of the metric yet) borrows the other arm's
per-user variation (:func:`_noisy_as`) rather than claim a variance of 0.

A variant wins when its lift interval on the experiment's metric lies above 0 (control
wins when every other variant's lies below 0); with more than two variants alpha is split
between the comparisons (Bonferroni).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

ALPHA = 0.05
# Users (both arms together, for a lift) at which the intervals are tightest: a typical
# size for a first look at an experiment.
TARGET_USERS = 1000
# Users measured (the metric's denominator above 0) each arm needs before its lift
# against control is computed. The boundary holds as users grow (a central limit); with a
# few users a sample variance is often 0 (every user alike): A/A experiments looked at from
# their first users named a false winner in 29-52% of runs, and in 34% when 1 user in 20
# had a test (tests/unit/test_experiment_stats.py). 30: the usual rule of thumb for a mean
# to be near normal; a clearly better variant still wins within ~40 users an arm.
MIN_USERS = 30
# metric -> (numerator measure, denominator measure), measures of streams.experiment_batch.
RATIOS: dict[str, tuple[str, str]] = {
    "recall_at_k": ("recall_hits", "recall_tests"),
    "ctr": ("clicks", "impressions"),
    "plays_per_impression": ("plays", "impressions"),
    "watch_s_per_impression": ("watch_s", "impressions"),
    "completion_rate": ("completions", "plays"),
}


# The range each metric's true value lies in: intervals are clipped to it.
BOUNDS: dict[str, tuple[float, float]] = {
    "recall_at_k": (0.0, 1.0),
    "ctr": (0.0, 1.0),
    "plays_per_impression": (0.0, math.inf),
    "watch_s_per_impression": (0.0, math.inf),
    "completion_rate": (0.0, 1.0),
}


def clip(interval: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    """``interval`` intersected with ``[low, high]``: the truth is in both, so this loses
    no coverage."""
    return (min(max(interval[0], low), high), max(min(interval[1], high), low))


def mixture_r(alpha: float = ALPHA, target: float = TARGET_USERS) -> float:
    """The mixture's variance, in users, that makes the boundary tightest at ``target``."""
    log_term = 2.0 * math.log(1.0 / alpha)
    return target / (log_term + math.log1p(log_term))


def multiplier(n: float, alpha: float = ALPHA, target: float = TARGET_USERS) -> float:
    """How many standard errors the confidence sequence spans at ``n`` users (vs 1.96
    for a fixed-sample 95% interval).

    Examples
    --------
    >>> round(multiplier(1000), 2), round(multiplier(100), 2)
    (3.04, 3.86)
    """
    if n <= 0:
        return math.inf
    r = mixture_r(alpha, target)
    return math.sqrt((1.0 + r / n) * math.log((1.0 + n / r) / alpha**2))


def p_value(estimate: float, variance: float, n: float, alpha: float = ALPHA,
            target: float = TARGET_USERS) -> float:
    """Always-valid p-value of "the true value is 0" (mixture SPRT)."""
    if n <= 0 or not math.isfinite(variance):
        return 1.0
    if variance <= 0:
        return 1.0 if estimate == 0 else 0.0
    r = mixture_r(alpha, target)
    z2 = estimate * estimate / variance
    log_lambda = 0.5 * math.log(r / (r + n)) + 0.5 * z2 * n / (n + r)
    return 1.0 if log_lambda <= 0 else math.exp(-log_lambda)


@dataclass(frozen=True)
class Estimate:
    value: float
    variance: float
    n: int

    def interval(self, alpha: float = ALPHA) -> tuple[float, float]:
        if not math.isfinite(self.variance):
            return (-math.inf, math.inf)
        half = math.sqrt(max(self.variance, 0.0)) * multiplier(self.n, alpha)
        return (self.value - half, self.value + half)


@dataclass(frozen=True)
class ArmStats:
    """Sufficient statistics of one arm: users, and per-measure sums over users of
    ``x``, ``x^2`` and of ``x*y`` for each metric's pair; ``measured``: per measure, the
    users whose total is above 0 (None: not kept, taken as every user)."""

    users: int
    sums: Mapping[str, float]
    squares: Mapping[str, float]
    cross: Mapping[tuple[str, str], float]
    measured: Mapping[str, int] | None = None

    @classmethod
    def from_users(cls, rows: Iterable[Mapping[str, float]]) -> ArmStats:
        """From per-user totals (what the Redis aggregates accumulate incrementally)."""
        rows = list(rows)
        names = {m for pair in RATIOS.values() for m in pair}
        sums = {m: math.fsum(r.get(m, 0.0) for r in rows) for m in names}
        squares = {m: math.fsum(r.get(m, 0.0) ** 2 for r in rows) for m in names}
        cross = {pair: math.fsum(r.get(pair[0], 0.0) * r.get(pair[1], 0.0) for r in rows)
                 for pair in RATIOS.values()}
        measured = {m: sum(1 for r in rows if r.get(m, 0.0) > 0) for m in names}
        return cls(len(rows), sums, squares, cross, measured)

    @classmethod
    def from_hash(cls, raw: Mapping[str, str | bytes]) -> ArmStats:
        """From the Redis hash ``streams.experiment_store`` keeps: ``users``, ``s:<m>``,
        ``q:<m>``, ``c:<m1>:<m2>``, ``u:<m>``."""
        text = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
        sums = {k[2:]: v for k, v in text.items() if k.startswith("s:")}
        squares = {k[2:]: v for k, v in text.items() if k.startswith("q:")}
        counts = {k[2:]: int(v) for k, v in text.items() if k.startswith("u:")}
        # An arm written before ``u:`` was kept has sums but no counts: every user, as then.
        measured = counts if counts or not sums else None
        cross = {}
        for key, value in text.items():
            if key.startswith("c:"):
                a, _, b = key[2:].partition(":")
                cross[(a, b)] = value
        return cls(int(text.get("users", 0)), sums, squares, cross, measured)

    def measured_users(self, metric: str) -> int:
        """Users with the metric's denominator above 0 (e.g. a recall test)."""
        if self.measured is None:
            return self.users
        return self.measured.get(RATIOS[metric][1], 0)

    def ratio(self, metric: str) -> Estimate | None:
        """The metric's value and delta-method variance; None when its denominator is 0."""
        x_name, y_name = RATIOS[metric]
        n = self.users
        sx, sy = self.sums.get(x_name, 0.0), self.sums.get(y_name, 0.0)
        if n == 0 or sy <= 0:
            return None
        value = sx / sy
        if n < 2:
            return Estimate(value, math.inf, n)
        mx, my = sx / n, sy / n
        var_x = (self.squares.get(x_name, 0.0) - n * mx * mx) / (n - 1)
        var_y = (self.squares.get(y_name, 0.0) - n * my * my) / (n - 1)
        cov = (self.cross.get((x_name, y_name), 0.0) - n * mx * my) / (n - 1)
        variance = max(0.0, var_x - 2.0 * value * cov + value * value * var_y) / (n * my * my)
        return Estimate(value, variance, n)


def lift(treatment: Estimate, control: Estimate) -> Estimate | None:
    """Relative lift ``t/c - 1`` with its delta-method variance (None when c is 0).

    Examples
    --------
    >>> e = lift(Estimate(0.6, 0.0004, 500), Estimate(0.5, 0.0005, 500))
    >>> round(e.value, 3), round(e.variance, 6), e.n
    (0.2, 0.00448, 1000)
    """
    c, t = control.value, treatment.value
    if c == 0:
        return None
    variance = treatment.variance / c**2 + t**2 * control.variance / c**4
    return Estimate(t / c - 1.0, variance, treatment.n + control.n)


def lift_interval(treatment: Estimate, control: Estimate, alpha: float = ALPHA
                  ) -> tuple[float, float]:
    """Fieller's confidence sequence for ``t/c - 1``: every ``rho`` with
    ``(t - rho c)^2 <= m^2 (var_t + rho^2 var_c)``, ``m`` the boundary's multiplier at
    ``n_t + n_c``. Unbounded above while ``c`` is not clear of 0.

    Examples
    --------
    >>> low, high = lift_interval(Estimate(0.05, 0.0001, 100), Estimate(0.1, 0.0004, 100))
    >>> round(low, 3), round(high, 3)
    (-0.851, 0.678)
    >>> lift_interval(Estimate(0.05, 0.0001, 100), Estimate(0.1, 0.004, 100))
    (-inf, inf)
    """
    t, c = treatment.value, control.value
    var_t, var_c = treatment.variance, control.variance
    m2 = multiplier(treatment.n + control.n, alpha) ** 2
    if not (math.isfinite(var_t) and math.isfinite(var_c) and math.isfinite(m2)):
        return (-math.inf, math.inf)
    a = c * c - m2 * var_c
    if a <= 0:
        return (-math.inf, math.inf)
    # The roots of a rho^2 - 2 t c rho + (t^2 - m^2 var_t); their discriminant over 4 is
    # m^2 (a var_t + t^2 var_c) >= 0 when a > 0.
    half = math.sqrt(m2 * (a * var_t + t * t * var_c))
    return ((t * c - half) / a - 1.0, (t * c + half) / a - 1.0)


def _noisy_as(estimate: Estimate, arm: ArmStats, other: Estimate, other_arm: ArmStats,
              metric: str) -> Estimate:
    """``estimate`` (``arm``'s value of ``metric``), with a variance of 0 (every user
    alike: typically no event of the metric yet, e.g. no recall hit in 40 users' tests)
    replaced by the one it would have if its users varied about their ratio as
    ``other_arm``'s do. A variance of 0 made a lift of "-100% [-100%, -100%]": certain,
    where 40 users without a hit say little.

    Examples
    --------
    >>> quiet = ArmStats.from_users([{"recall_tests": 2.0}] * 40)
    >>> busy = ArmStats.from_users([{"recall_tests": 2.0, "recall_hits": 1.0}] * 20
    ...                            + [{"recall_tests": 2.0}] * 20)
    >>> e = _noisy_as(quiet.ratio("recall_at_k"), quiet, busy.ratio("recall_at_k"), busy,
    ...               "recall_at_k")
    >>> e.value, round(e.variance, 6) == round(busy.ratio("recall_at_k").variance, 6)
    (0.0, True)
    """
    if estimate.variance > 0 or not other.variance > 0 or not math.isfinite(other.variance):
        return estimate
    # var(R) = var_per_user(x - R y) / (n ybar^2), y the denominator: the per-user
    # residual variance is taken from the other arm, n and ybar are the arm's own.
    y = RATIOS[metric][1]
    ybar, other_ybar = arm.sums[y] / arm.users, other_arm.sums[y] / other_arm.users
    residual = other.variance * other_arm.users * other_ybar**2
    return Estimate(estimate.value, residual / (arm.users * ybar**2), estimate.n)


@dataclass(frozen=True)
class Comparison:
    """One metric of one variant against control."""

    value: Estimate | None
    ci: tuple[float, float] | None
    lift: Estimate | None
    lift_ci: tuple[float, float] | None
    p_value: float | None


def compare(arm: ArmStats, control: ArmStats | None, metric: str, alpha: float = ALPHA,
            comparisons: int = 1) -> Comparison:
    """``arm``'s value of ``metric`` (interval at level ``alpha``) and its lift against
    ``control`` (interval at ``alpha / comparisons``, p-value multiplied by
    ``comparisons``: Bonferroni over the treatments). No interval while the arm has fewer
    than ``MIN_USERS`` users measured, and no lift while either arm has."""
    value = arm.ratio(metric)
    base = control.ratio(metric) if control is not None else None
    if value is not None and base is not None and control is not None:
        value, base = (_noisy_as(value, arm, base, control, metric),
                       _noisy_as(base, control, value, arm, metric))
    # An interval needs as many users as a lift does: with a few, the variance is a guess
    # (0 when they are alike, which read as "0.0000 [0.0000, 0.0000]").
    ci = (clip(value.interval(alpha), *BOUNDS[metric])
          if value is not None and arm.measured_users(metric) >= MIN_USERS else None)
    if (control is None or value is None
            or min(arm.measured_users(metric), control.measured_users(metric)) < MIN_USERS):
        return Comparison(value, ci, None, None, None)
    change = lift(value, base) if base is not None else None
    if base is None or change is None:
        return Comparison(value, ci, None, None, None)
    lift_alpha = alpha / comparisons
    p = p_value(value.value - base.value, value.variance + base.variance, change.n,
                lift_alpha)
    # A lift is never below -100% (metrics are >= 0).
    return Comparison(value, ci, change,
                      clip(lift_interval(value, base, lift_alpha), -1.0, math.inf),
                      min(1.0, p * comparisons))


# Sample ratio mismatch: users per variant against the shares, with an always-valid test
# (Lindon & Malek 2020: a Dirichlet-multinomial mixture, alpha_i = SRM_PRIOR * share_i,
# against the multinomial of the shares; 1 / its Bayes factor is a p-value valid at every
# look). 100: most sensitive to a few percent off at thousands of users (5,200 of 10,000
# where 5,000 were due: p=0.004). SRM_ALPHA: a mismatch means the arms are not comparable,
# so the alarm is kept for clear cases (the usual 0.001), not 1 look in 20.
SRM_PRIOR = 100.0
SRM_ALPHA = 0.001


def sample_ratio_p(users: Sequence[int], shares: Sequence[float]) -> float:
    """Always-valid p-value of "users were split by ``shares``".

    Examples
    --------
    >>> sample_ratio_p([151, 147], [0.5, 0.5])
    1.0
    >>> sample_ratio_p([600, 400], [0.5, 0.5]) < SRM_ALPHA
    True
    """
    log_bf = 0.0
    prior_total = 0.0
    for count, share in zip(users, shares, strict=True):
        if share <= 0.0:
            if count > 0:  # users in a variant owning no hash range: not the shares' split
                return 0.0
            continue
        prior = SRM_PRIOR * share
        prior_total += prior
        log_bf += (math.lgamma(prior + count) - math.lgamma(prior)
                   - count * math.log(share))
    log_bf += math.lgamma(prior_total) - math.lgamma(prior_total + sum(users))
    return 1.0 if log_bf <= 0.0 else math.exp(-log_bf)


def winner(arms: Mapping[str, ArmStats], control: str, metric: str, alpha: float = ALPHA
           ) -> str | None:
    """The variant that is significantly best on ``metric``, or None (not yet).

    A treatment wins when its lift interval lies above 0 (the largest such lift if
    several); control wins when every treatment's lift interval lies below 0.
    """
    treatments = [name for name in arms if name != control]
    if control not in arms or not treatments:
        return None
    better: list[tuple[float, str]] = []
    worse = 0
    for name in treatments:
        result = compare(arms[name], arms[control], metric, alpha, len(treatments))
        if result.lift is None or result.lift_ci is None:
            continue
        low, high = result.lift_ci
        if low > 0:
            better.append((result.lift.value, name))
        elif high < 0:
            worse += 1
    if better:
        return max(better)[1]
    if worse == len(treatments):
        return control
    return None
