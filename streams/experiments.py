"""A/B experiments as configuration: the TOML file, its validation, and user assignment.

The file named by ``STREAMREC_EXPERIMENTS`` declares experiments::

    [[experiment]]
    name = "ranker-test"
    start = 2024-05-01T00:00:00Z    # optional; events before it are served and measured as usual
    end = 2024-06-01T00:00:00Z      # optional; from then on, as if it were not in the file
    control = "control"             # optional; default: the first variant
    metric = "recall_at_k"          # optional; the metric that decides the winner
    [[experiment.variant]]
    name = "control"
    share = 0.5
    model = "default"               # a preset: default, popularity or random
    [[experiment.variant]]
    name = "treatment"
    share = 0.5
    model = { exploration = 0.2 }   # or overrides of the ranking and the homepage rows

Assignment is a pure function of ``(experiment name, user_id)``: blake2b of the two gives
a number ``u`` uniform in ``[0, 1)``, and variant *i* owns the fixed hash range
``[s_1 + ... + s_(i-1), s_1 + ... + s_i)`` (shares in file order). Every worker computes
the same variant, before and after a restart, with no shared state. Because the ranges
are positional, a change to the file moves only the users between an old and a new
boundary:

* changing a share moves only the users between the old and new boundary;
* to add a variant, take its share from the **last** variant and append it at the end:
  only users at the end of the last variant's range move, into the new one;
* renaming a variant moves nobody (ranges belong to positions);
* reordering variants, or renaming the experiment, reshuffles everyone: a rename is how
  to start a fresh experiment on new users.

A user takes part in every experiment that is running at the event's time: started and
not yet ended (independent hashes, so experiments are orthogonal). The list a user is
served is ranked by the variant of the first experiment, in file order, whose variant for
them changes the model; the others still measure their own arms, balanced across the
first one's.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

from streamrec.exceptions import ConfigError

# Named rankings a variant can ask for.
PRESETS = ("default", "popularity", "random")
# Components of the hybrid's blend (models.hybrid.COMPONENTS), for weight overrides.
BLEND_COMPONENTS = ("trending", "cooccurrence", "mf", "content")
# Override keys of a ``model = { ... }`` table and what each expects.
OVERRIDES = {
    # Fixed weights for the components named; the others keep their learned weight.
    "weights": "a table of blend weights >= 0 for " + ", ".join(BLEND_COMPONENTS),
    "exploration": "a number within 0..1 (share of list slots explored)",
    "max_per_genre": "a whole number >= 1 (most titles of one genre in the top 10)",
    "max_candidates": "a whole number >= 1 (titles scored per request)",
    "rows": "one of " + ", ".join(repr(p) for p in ("learned", "greedy", "fixed"))
            + " (homepage row order: the row bandit, the bandit without exploration, "
            "or the fixed specificity order)",
}
# Row policies: how the homepage rows are ordered (streams.product).
ROW_POLICIES = ("learned", "greedy", "fixed")
# Metrics an experiment can be decided by (streams.experiment_stats.RATIOS).
METRICS = ("recall_at_k", "ctr", "plays_per_impression", "watch_s_per_impression",
           "completion_rate")
DEFAULT_METRIC = "recall_at_k"
# Shares must add up to 1 within this tolerance (floating-point sums like 0.1 * 10).
SHARE_TOLERANCE = 1e-9
# Names end up in Redis keys and Prometheus labels: short, plain, low-cardinality.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Caps that keep metric label cardinality and per-user Redis fields bounded.
MAX_EXPERIMENTS = 20
MAX_VARIANTS = 10

_EXPERIMENT_KEYS = {"name", "start", "end", "control", "metric", "variant"}
_VARIANT_KEYS = {"name", "share", "model"}


def hash_unit(experiment: str, user_id: str) -> float:
    """A number in ``[0, 1)``, uniform over users, fixed for ``(experiment, user_id)``.

    Examples
    --------
    >>> hash_unit("ranker-test", "u1") == hash_unit("ranker-test", "u1")
    True
    >>> 0.0 <= hash_unit("ranker-test", "u1") < 1.0
    True
    """
    digest = blake2b(f"{experiment}\x1f{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class Variant:
    """One arm: a name, a traffic share, and how it ranks (a preset or overrides)."""

    name: str
    share: float
    # A preset name, or a mapping of override keys (see OVERRIDES).
    model: str | Mapping[str, Any]
    # Its hash range [low, high).
    low: float = 0.0
    high: float = 0.0

    @property
    def preset(self) -> str:
        """``default``, ``popularity``, ``random``, or ``overrides``."""
        return self.model if isinstance(self.model, str) else "overrides"

    @property
    def changes_model(self) -> bool:
        return self.preset != "default"

    @property
    def row_policy(self) -> str:
        """How this variant orders homepage rows (``learned`` unless overridden)."""
        return "learned" if isinstance(self.model, str) else self.model.get("rows", "learned")

    @property
    def ranking_overrides(self) -> dict[str, Any]:
        """The overrides that change the ranked list (all but ``rows``)."""
        return {} if isinstance(self.model, str) else {
            k: v for k, v in self.model.items() if k != "rows"}

    def describe(self) -> str:
        """How the variant ranks, readably: the preset, or ``key=value`` per override
        (``exploration=0.2, weights.content=0.6``)."""
        if isinstance(self.model, str):
            return self.model
        return ", ".join(f"{k}={_show(v)}" for k, v in sorted(_flat(self.model).items()))

    def _described_before(self) -> str:
        """:meth:`describe` as workers stored it before it flattened tables
        (``weights={'content': 0.6}``): the same model, not a change."""
        if isinstance(self.model, str):
            return self.model
        return ", ".join(f"{k}={v}" for k, v in sorted(self.model.items()))


def _flat(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Experiment:
    name: str
    variants: tuple[Variant, ...]
    control: str
    metric: str = DEFAULT_METRIC
    start_ts: float | None = None
    # Event time from which it no longer serves variants nor counts (None: never).
    end_ts: float | None = None
    _highs: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_highs", tuple(v.high for v in self.variants))

    def started(self, ts: float) -> bool:
        return self.start_ts is None or ts >= self.start_ts

    def ended(self, ts: float) -> bool:
        return self.end_ts is not None and ts >= self.end_ts

    def running(self, ts: float) -> bool:
        """Whether an event at time ``ts`` is served and measured by this experiment."""
        return self.started(ts) and not self.ended(ts)

    def assign(self, user_id: str) -> Variant:
        """The variant owning ``user_id``'s hash (see the module docstring)."""
        index = bisect.bisect_right(self._highs, hash_unit(self.name, user_id))
        return self.variants[min(index, len(self.variants) - 1)]

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)

    def snapshot(self) -> dict[str, Any]:
        """What the report needs to know of this experiment (stored in Redis)."""
        return {
            "name": self.name, "control": self.control, "metric": self.metric,
            "start_ts": self.start_ts, "end_ts": self.end_ts,
            "variants": [{"name": v.name, "share": v.share, "model": v.describe()}
                         for v in self.variants],
        }


@dataclass(frozen=True)
class ExperimentConfig:
    """Every experiment of one file, in file order (the order decides precedence)."""

    experiments: tuple[Experiment, ...]
    path: str = "<string>"

    def enrolments(self, user_id: str, ts: float) -> list[tuple[Experiment, Variant]]:
        """The user's variant in every experiment running at event time ``ts``."""
        return [(e, e.assign(user_id)) for e in self.experiments if e.running(ts)]

    def __bool__(self) -> bool:
        return bool(self.experiments)


def deciding(enrolments: list[tuple[Experiment, Variant]]
             ) -> tuple[Experiment, Variant] | None:
    """Which enrolment ranks the user's list: the first whose variant changes the model,
    else the first one (None when the user is in no started experiment)."""
    for pair in enrolments:
        if pair[1].changes_model:
            return pair
    return enrolments[0] if enrolments else None


def changes_since(previous: Mapping[str, Any], experiment: Experiment) -> list[str]:
    """What editing the file changed for users already in ``experiment``, one sentence
    each, against ``previous`` (the :meth:`Experiment.snapshot` a worker last published).

    Results add up per variant name, so a user moved to another variant keeps what they
    did so far in the old one and joins the new one as a new user; a variant whose model
    changed mixes both models' results.

    Examples
    --------
    >>> ab = parse('''
    ... [[experiment]]
    ... name = "ab"
    ... [[experiment.variant]]
    ... name = "b"
    ... share = 0.5
    ... model = "random"
    ... [[experiment.variant]]
    ... name = "a"
    ... share = 0.5
    ... model = "default"
    ... ''').experiments[0]
    >>> before = {"variants": [{"name": "a", "share": 0.5, "model": "default"},
    ...                        {"name": "b", "share": 0.5, "model": "random"}]}
    >>> changes_since(before, ab)[0][:60]
    "experiment 'ab': 100.0% of its users are now in another vari"
    """
    old = [(v["name"], float(v["share"])) for v in previous.get("variants", [])]
    if not old:
        return []
    bounds, low = [], 0.0
    for i, (name, share) in enumerate(old):
        high = 1.0 if i == len(old) - 1 else min(1.0, low + share)
        bounds.append((high, name))
        low = high
    cuts = sorted({0.0, 1.0, *(h for h, _ in bounds), *(v.high for v in experiment.variants)})
    flows: dict[tuple[str, str], float] = {}
    for start, end in zip(cuts, cuts[1:], strict=False):
        if end <= start:
            continue
        was = next((name for high, name in bounds if start < high), bounds[-1][1])
        now = next((v.name for v in experiment.variants if start < v.high),
                   experiment.variants[-1].name)
        if was != now:
            flows[(was, now)] = flows.get((was, now), 0.0) + (end - start)
    out = []
    moved = math.fsum(flows.values())
    if moved > 1e-12:
        detail = ", ".join(f"{a} -> {b} {share:.1%}" for (a, b), share in flows.items())
        out.append(f"experiment {experiment.name!r}: {moved:.1%} of its users are now in "
                   f"another variant than when a worker last served it ({detail}); what they "
                   "did so far stays in the old variant's results and they join the new one "
                   "as new users: rename the experiment to start afresh on fresh users")
    models = {v["name"]: v.get("model") for v in previous.get("variants", [])}
    for variant in experiment.variants:
        before = models.get(variant.name)
        if before is not None and before not in (variant.describe(),
                                                 variant._described_before()):
            out.append(f"experiment {experiment.name!r}: variant {variant.name!r} now ranks "
                       f"with {variant.describe()} (was {before}); its results mix both: "
                       "rename the experiment to measure the new one alone")
    return out


# -- loading and validation ---------------------------------------------------------------

def load(path: str | None) -> ExperimentConfig | None:
    """The experiments in the TOML file at ``path`` (None when no file is configured).

    Raises :class:`ConfigError` with one line naming the file, experiment and field.
    """
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"STREAMREC_EXPERIMENTS={path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"STREAMREC_EXPERIMENTS={path}: cannot read it: {exc}") from None
    return parse(text, path)


def parse(text: str, path: str = "<string>") -> ExperimentConfig:
    """Validate the TOML ``text`` of an experiments file (see :func:`load`).

    Examples
    --------
    >>> config = parse('''
    ... [[experiment]]
    ... name = "ab"
    ... [[experiment.variant]]
    ... name = "control"
    ... share = 0.5
    ... model = "default"
    ... [[experiment.variant]]
    ... name = "random"
    ... share = 0.5
    ... model = "random"
    ... ''')
    >>> [(v.name, v.low, v.high) for v in config.experiments[0].variants]
    [('control', 0.0, 0.5), ('random', 0.5, 1.0)]
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(document) - {"experiment"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key {sorted(unknown)[0]!r}; "
                          "declare experiments as [[experiment]] tables")
    raw = document.get("experiment", [])
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise ConfigError(f"{path}: 'experiment' must be an array of tables ([[experiment]])")
    if not raw:
        raise ConfigError(f"{path}: declares no experiment; add an [[experiment]] table")
    if len(raw) > MAX_EXPERIMENTS:
        raise ConfigError(f"{path}: {len(raw)} experiments; at most {MAX_EXPERIMENTS} may run")
    experiments: list[Experiment] = []
    for number, table in enumerate(raw, 1):
        experiment = _experiment(table, path, number)
        if any(e.name == experiment.name for e in experiments):
            raise ConfigError(f"{path}: experiment {experiment.name!r}: name is used twice; "
                              "experiment names must be unique")
        experiments.append(experiment)
    return ExperimentConfig(tuple(experiments), path)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise ConfigError(f"{where}: name must be 1-64 letters, digits, '_', '.' or '-' "
                          f"(starting with a letter or digit), got {value!r}")
    return value


def _experiment(table: dict[str, Any], path: str, number: int) -> Experiment:
    where = f"{path}: experiment #{number}"
    if "name" not in table:
        raise ConfigError(f"{where}: missing 'name'")
    name = _name(table["name"], where)
    where = f"{path}: experiment {name!r}"
    unknown = set(table) - _EXPERIMENT_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; "
                          f"known: {', '.join(sorted(_EXPERIMENT_KEYS))}")
    start_ts = _time(table["start"], where, "start") if "start" in table else None
    end_ts = _time(table["end"], where, "end") if "end" in table else None
    if start_ts is not None and end_ts is not None and end_ts <= start_ts:
        raise ConfigError(f"{where}: end {iso(end_ts)} is not after start {iso(start_ts)}")
    raw_variants = table.get("variant")
    if not isinstance(raw_variants, list) or not all(isinstance(v, dict) for v in raw_variants):
        raise ConfigError(f"{where}: variants must be [[experiment.variant]] tables")
    if len(raw_variants) < 2:
        raise ConfigError(f"{where}: needs at least two variants to compare, "
                          f"got {len(raw_variants)}")
    if len(raw_variants) > MAX_VARIANTS:
        raise ConfigError(f"{where}: {len(raw_variants)} variants; at most {MAX_VARIANTS}")
    parsed = [_variant(v, where, i) for i, v in enumerate(raw_variants, 1)]
    names = [v.name for v in parsed]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"{where}: variant {duplicate!r}: name is used twice; "
                          "variant names must be unique within an experiment")
    total = math.fsum(v.share for v in parsed)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise ConfigError(f"{where}: variant shares add up to {total:.12g}, not 1; "
                          f"shares: {', '.join(f'{v.name}={v.share:g}' for v in parsed)}")
    variants = _with_ranges(parsed)
    control = table.get("control", names[0])
    if control not in names:
        raise ConfigError(f"{where}: control {control!r} is not one of its variants "
                          f"({', '.join(names)})")
    metric = table.get("metric", DEFAULT_METRIC)
    if metric not in METRICS:
        raise ConfigError(f"{where}: metric {metric!r} is unknown; known: {', '.join(METRICS)}")
    return Experiment(name, variants, control, metric, start_ts, end_ts)


def _with_ranges(variants: list[Variant]) -> tuple[Variant, ...]:
    out, low = [], 0.0
    for i, v in enumerate(variants):
        # The last range ends at exactly 1.0 so rounding never leaves users unassigned.
        high = 1.0 if i == len(variants) - 1 else min(1.0, low + v.share)
        out.append(Variant(v.name, v.share, v.model, low, high))
        low = high
    return tuple(out)


def _time(value: Any, where: str, key: str) -> float:
    """``start`` or ``end``: a TOML date-time (or ISO 8601 string) with a time zone."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"{where}: {key} {value!r} is not a date-time; write e.g. "
                              f"{key} = 2024-05-01T00:00:00Z") from None
    if not isinstance(value, dt.datetime):
        raise ConfigError(f"{where}: {key} must be a date-time with a time zone, e.g. "
                          f"{key} = 2024-05-01T00:00:00Z, got {value!r}")
    if value.tzinfo is None:
        raise ConfigError(f"{where}: {key} {value.isoformat()} has no time zone; "
                          f"add one, e.g. {key} = 2024-05-01T00:00:00Z")
    return value.timestamp()


def iso(ts: float) -> str:
    """An event time as the file writes it: ``2024-05-01T00:00:00Z``."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")



def _variant(table: dict[str, Any], where: str, number: int) -> Variant:
    if "name" not in table:
        raise ConfigError(f"{where}: variant #{number}: missing 'name'")
    name = _name(table["name"], f"{where}: variant #{number}")
    where = f"{where}: variant {name!r}"
    unknown = set(table) - _VARIANT_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; "
                          f"known: {', '.join(sorted(_VARIANT_KEYS))}")
    share = table.get("share")
    if (isinstance(share, bool) or not isinstance(share, int | float)
            or not math.isfinite(share) or not 0.0 <= share <= 1.0):
        raise ConfigError(f"{where}: share must be a number within 0..1, got {share!r}")
    if "model" not in table:
        raise ConfigError(f"{where}: missing 'model' (a preset: {', '.join(PRESETS)}; "
                          "or a table of overrides)")
    return Variant(name, float(share), _model(table["model"], where))


def _model(value: Any, where: str) -> str | Mapping[str, Any]:
    if isinstance(value, str):
        if value not in PRESETS:
            raise ConfigError(f"{where}: model {value!r} is not a preset; "
                              f"known: {', '.join(PRESETS)} (or a table of overrides)")
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: model must be a preset name or a table of overrides, "
                          f"got {value!r}")
    if not value:
        raise ConfigError(f'{where}: model table is empty; write model = "default" instead')
    out: dict[str, Any] = {}
    for key, raw in value.items():
        if key not in OVERRIDES:
            raise ConfigError(f"{where}: model override {key!r} is unknown; "
                              f"known: {', '.join(OVERRIDES)}")
        out[key] = _override(key, raw, f"{where}: model.{key}")
    return out


def _override(key: str, raw: Any, where: str) -> Any:
    expected = OVERRIDES[key]
    if key == "weights":
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(f"{where} must be {expected}, got {raw!r}")
        weights = {}
        for component, weight in raw.items():
            if component not in BLEND_COMPONENTS:
                raise ConfigError(f"{where}: component {component!r} is unknown; "
                                  f"known: {', '.join(BLEND_COMPONENTS)}")
            if (isinstance(weight, bool) or not isinstance(weight, int | float)
                    or not math.isfinite(weight) or weight < 0):
                raise ConfigError(f"{where}.{component} must be a number >= 0, got {weight!r}")
            weights[component] = float(weight)
        if len(weights) == len(BLEND_COMPONENTS) and not any(weights.values()):
            raise ConfigError(f"{where}: at least one weight must be above 0")
        return weights
    if key == "rows":
        if raw not in ROW_POLICIES:
            raise ConfigError(f"{where} must be {expected}, got {raw!r}")
        return raw
    if key == "exploration":
        if (isinstance(raw, bool) or not isinstance(raw, int | float)
                or not math.isfinite(raw) or not 0.0 <= raw <= 1.0):
            raise ConfigError(f"{where} must be {expected}, got {raw!r}")
        return float(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ConfigError(f"{where} must be {expected}, got {raw!r}")
    return raw
