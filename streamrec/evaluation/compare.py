"""Is one model's recall really above another's? Paired comparisons on the same tests.

Every model is tested on the same events, so two models are compared test by test: how
many tests only one of them hit, and the ratio of their recalls with a 95% interval. The
interval comes from a bootstrap that resamples *users*, not tests: one user's tests are
not independent of each other (a heavy user's taste is in hundreds of them), and
resampling tests one by one would make the interval too narrow on streams where a few
users make many of the tests, as on MovieLens.

(``streams.experiment_stats`` answers a different question: two arms of an A/B test are
different users, independent of each other; here both models are judged on the same
tests, and pairing them is what makes small differences visible.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RESAMPLES = 2000
# Resampled users per chunk of the bootstrap: bounds its memory to ~8 MB whatever the
# number of users.
_CHUNK_CELLS = 1_000_000


def paired(hits: Sequence[bool], baseline_hits: Sequence[bool], users: Sequence[Any],
           resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Compare a model's hits with a baseline's on the same tests (``users[i]`` made test
    ``i``): recall ratio and difference with 95% intervals from a bootstrap over users,
    and the tests only one of them hit.

    Examples
    --------
    >>> a = [True, True, False, True] * 50
    >>> b = [True, False, False, False] * 50
    >>> result = paired(a, b, [i % 20 for i in range(200)], seed=1)
    >>> result["ratio"], result["only_model"], result["only_baseline"]
    (3.0, 100, 0)
    >>> low, high = result["ratio_ci95"]
    >>> bool(low < 3.0 < high)
    True
    """
    model = np.asarray(hits, dtype=bool)
    base = np.asarray(baseline_hits, dtype=bool)
    if model.shape != base.shape or len(model) != len(users):
        raise ValueError(f"{len(model)} model hits, {len(base)} baseline hits and "
                         f"{len(users)} users: a comparison needs one of each per test")
    _, user_of = np.unique(np.asarray(users, dtype=object).astype(str), return_inverse=True)
    n_users = int(user_of.max()) + 1 if len(user_of) else 0
    tests = np.bincount(user_of, minlength=n_users).astype(np.float64)
    model_hits = np.bincount(user_of, weights=model, minlength=n_users)
    base_hits = np.bincount(user_of, weights=base, minlength=n_users)
    result: dict[str, Any] = {
        "tests": int(len(model)),
        "users": n_users,
        "only_model": int((model & ~base).sum()),
        "only_baseline": int((base & ~model).sum()),
        "ratio": _ratio(model_hits.sum(), base_hits.sum()),
        "difference": _round(_difference(model_hits.sum(), base_hits.sum(), tests.sum())),
        "ratio_ci95": None,
        "difference_ci95": None,
    }
    if n_users == 0:
        return result
    rng = np.random.default_rng(seed)
    ratios, differences = [], []
    chunk = max(1, _CHUNK_CELLS // n_users)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        # How often each user is drawn in each resample (n_users draws with replacement).
        drawn = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=size)
        drawn = drawn.astype(np.float64)
        m, b, t = drawn @ model_hits, drawn @ base_hits, drawn @ tests
        with np.errstate(divide="ignore", invalid="ignore"):
            # A resample in which the baseline hit nothing: the ratio is unbounded.
            ratios.append(np.where(b > 0, m / b, np.inf))
            differences.append((m - b) / t)
    if result["ratio"] is not None:
        result["ratio_ci95"] = _interval(np.concatenate(ratios))
    result["difference_ci95"] = _interval(np.concatenate(differences))
    return result


def comparisons(hits: dict[str, Sequence[bool]], users: Sequence[Any], subject: str,
                baseline: str, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Every model against ``baseline``, and ``subject`` against every other model,
    keyed ``"<model> vs <baseline>"`` (the pairs whose models are in ``hits``)."""
    pairs = [(name, baseline) for name in hits if name != baseline and baseline in hits]
    if subject in hits:
        pairs += [(subject, name) for name in hits if name not in (subject, baseline)]
    return {f"{a} vs {b}": paired(hits[a], hits[b], users, seed=seed) for a, b in pairs}


def strongest_rival(recalls: dict[str, float], subject: str,
                    baselines: Sequence[str] = ("popularity", "random")) -> str | None:
    """The model other than ``subject`` (and oracles and baselines) with the best recall.

    >>> strongest_rival({"streamrec": 0.12, "cooccurrence": 0.11, "mf": 0.08,
    ...                  "popularity": 0.07}, "streamrec")
    'cooccurrence'
    """
    rivals = {name: recall for name, recall in recalls.items()
              if name != subject and name not in baselines and not name.startswith("oracle")}
    return max(rivals, key=lambda name: rivals[name]) if rivals else None


def _ratio(model: float, base: float) -> float | None:
    return round(float(model / base), 4) if base > 0 else None


def _difference(model: float, base: float, tests: float) -> float:
    return float((model - base) / tests) if tests > 0 else 0.0


def _interval(values: np.ndarray) -> list[float] | None:
    """The central 95% of the resampled ``values``; None if it reaches an unbounded one."""
    low, high = np.quantile(values, [0.025, 0.975], method="inverted_cdf")
    if not np.isfinite(high):
        return None
    return [_round(float(low)), _round(float(high))]


def _round(value: float) -> float:
    return round(value, 4)
