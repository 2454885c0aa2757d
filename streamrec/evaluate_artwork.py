"""``streamrec evaluate-artwork``: the artwork policy's click-through rate, offline.

The replay method (Li, Chu, Langford, Wang, 2011): on logs where the artwork shown was
drawn uniformly at random, step through the impressions in time order; the policy picks
an artwork for each; when it picks the one that was actually shown, the logged click (or
its absence) is the policy's reward and the policy learns from it, otherwise the
impression is skipped. The click rate over the kept impressions is an unbiased estimate
of the policy's online click-through rate.

Protocol: the first ``--warmup`` share of the impressions (default 0.5) trains every
policy on all of them (uniformly random data is unbiased training data), the rest is
replayed. Compared policies:

* ``learned``: :class:`models.artwork.ArtworkBandit`, the worker's policy;
* ``most_clicked``: per title, the artwork with the most clicks so far, for everyone;
* ``random``: uniformly random artwork (the logging policy itself).

With ``--simulate``, the logs are generated first (``producers.artwork_logs``) and the
simulator's hidden truth gives each policy's true click-through rate on the same
impressions, to check the estimate against. Logs written that way carry a
``FILE.world.json`` sidecar; evaluating such a file later reports the truth too::

    streamrec evaluate-artwork art.jsonl --simulate --users 300 --titles 200 \\
        --impressions 300000
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamrec.exceptions import ConfigError
from streamrec.settings import Settings

logger = logging.getLogger(__name__)

# A click counts for the impression before it (same user, title and artwork) when it
# comes within this many seconds: a click is seconds after the image is seen, and a
# later one belongs to a later visit.
CLICK_WINDOW_S = 600.0
DEFAULT_WARMUP = 0.5
# Tokens of the user's genre and cast affinities kept as bandit context.
CONTEXT_TOKENS = 24
POLICIES = ("learned", "most_clicked", "random")


@dataclass(slots=True)
class Impression:
    ts: float
    user_id: str
    title_id: str
    artworks: tuple[str, ...]
    shown: str
    clicked: bool
    device: str | None


@dataclass
class PolicyResult:
    policy: str
    matched: int = 0
    clicks: int = 0
    true_sum: float = 0.0
    true_n: int = 0

    @property
    def ctr(self) -> float:
        return self.clicks / self.matched if self.matched else 0.0

    @property
    def ci95(self) -> tuple[float, float]:
        if not self.matched:
            return (0.0, 0.0)
        half = 1.96 * math.sqrt(self.ctr * (1 - self.ctr) / self.matched)
        return (max(0.0, self.ctr - half), min(1.0, self.ctr + half))

    @property
    def true_ctr(self) -> float | None:
        return self.true_sum / self.true_n if self.true_n else None

    def as_dict(self) -> dict[str, Any]:
        low, high = self.ci95
        truth = self.true_ctr
        return {
            "policy": self.policy, "replay_ctr": round(self.ctr, 6),
            "ci95": [round(low, 6), round(high, 6)], "matched": self.matched,
            "clicks": self.clicks,
            "true_ctr": None if truth is None else round(truth, 6),
            "relative_error": (None if not truth else round((self.ctr - truth) / truth, 6)),
        }


# -- reading logs -------------------------------------------------------------------------------
def _open(path: str) -> io.BufferedIOBase:
    try:
        return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def _jsonl(path: str) -> Iterator[dict[str, Any]]:
    with _open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                # A record file (``streamrec record``) wraps each value.
                value = obj.get("value")
                yield value if isinstance(value, dict) else obj


def catalog_path_for(path: str) -> str:
    """``art.jsonl`` -> ``art.catalog.jsonl``, the simulator's naming (``.gz`` kept)."""
    gz = path.endswith(".gz")
    base = path.removesuffix(".gz")
    for suffix in (".jsonl", ".json", ".ndjson"):
        if base.endswith(suffix):
            base = base.removesuffix(suffix)
            break
    return base + ".catalog.jsonl" + (".gz" if gz else "")


def world_path_for(path: str) -> str:
    return path.removesuffix(".gz") + ".world.json"


def read_catalog(path: str) -> dict[str, dict[str, Any]]:
    return {t["title_id"]: t for t in _jsonl(path) if isinstance(t.get("title_id"), str)}


def impressions_from_events(events: Iterable[dict[str, Any]],
                            catalog: dict[str, dict[str, Any]] | None) -> list[Impression]:
    """Impressions with their artwork choices and whether a click followed, in time order.

    A title's choices are its catalogue ``artwork_ids`` or, without a catalogue, every
    artwork id the logs show for it. Titles with a single artwork are left out.
    """
    rows = [e for e in events if e.get("type") in ("impression", "click")
            and isinstance(e.get("artwork_id"), str) and isinstance(e.get("user_id"), str)
            and isinstance(e.get("title_id"), str) and isinstance(e.get("ts"), int | float)]
    rows.sort(key=lambda e: (e["ts"], e["type"] != "impression"))
    seen_artworks: dict[str, dict[str, None]] = {}
    if catalog is None:
        for e in rows:
            seen_artworks.setdefault(e["title_id"], {})[e["artwork_id"]] = None
    impressions: list[Impression] = []
    last: dict[tuple[str, str, str], int] = {}
    for e in rows:
        key = (e["user_id"], e["title_id"], e["artwork_id"])
        if e["type"] == "click":
            i = last.pop(key, None)
            if i is not None and e["ts"] - impressions[i].ts <= CLICK_WINDOW_S:
                impressions[i].clicked = True
            continue
        if catalog is not None:
            artworks = tuple(catalog.get(e["title_id"], {}).get("artwork_ids") or ())
        else:
            artworks = tuple(seen_artworks.get(e["title_id"], {}))
        if len(artworks) < 2 or e["artwork_id"] not in artworks:
            continue
        last[key] = len(impressions)
        impressions.append(Impression(float(e["ts"]), e["user_id"], e["title_id"], artworks,
                                      e["artwork_id"], False, e.get("device")))
    return impressions


# -- policies -----------------------------------------------------------------------------------
class LearnedPolicy:
    """The worker's bandit, with context built from what the policy has seen."""

    name = "learned"

    def __init__(self, catalog: dict[str, dict[str, Any]] | None, seed: int) -> None:
        from models.artwork import ArtworkBandit

        self.bandit = ArtworkBandit(seed=seed)
        self.catalog = catalog or {}
        self._tokens: dict[str, dict[str, float]] = {}

    def _context(self, imp: Impression) -> Any:
        tokens = self._tokens.get(imp.user_id)
        if tokens and len(tokens) > CONTEXT_TOKENS:
            tokens = dict(sorted(tokens.items(), key=lambda kv: -kv[1])[:CONTEXT_TOKENS])
            self._tokens[imp.user_id] = tokens
        return self.bandit.context(imp.device, tokens)

    def choose(self, imp: Impression) -> str:
        choice = self.bandit.choose(imp.user_id, imp.artworks, self._context(imp))
        return choice if choice is not None else imp.artworks[0]

    def learn(self, imp: Impression, artwork: str, clicked: bool) -> None:
        self.bandit.learn_one(imp.user_id, artwork, clicked, self._context(imp))
        if clicked:
            title = self.catalog.get(imp.title_id, {})
            tokens = self._tokens.setdefault(imp.user_id, {})
            for genre in title.get("genres") or ():
                key = "g:" + genre.lower()
                tokens[key] = tokens.get(key, 0.0) + 1.0
            for person in title.get("cast") or ():
                key = "c:" + person.lower()
                tokens[key] = tokens.get(key, 0.0) + 0.5


class MostClickedPolicy:
    """Per title, the artwork clicked most so far (ties broken at random)."""

    name = "most_clicked"

    def __init__(self, seed: int) -> None:
        self.clicks: dict[str, int] = {}
        self.rng = random.Random(seed)

    def choose(self, imp: Impression) -> str:
        clicks = self.clicks
        return max(imp.artworks, key=lambda a: (clicks.get(a, 0), self.rng.random()))

    def learn(self, imp: Impression, artwork: str, clicked: bool) -> None:
        if clicked:
            self.clicks[artwork] = self.clicks.get(artwork, 0) + 1


class RandomPolicy:
    name = "random"

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choose(self, imp: Impression) -> str:
        return self.rng.choice(imp.artworks)

    def learn(self, imp: Impression, artwork: str, clicked: bool) -> None:
        pass


def make_policy(name: str, catalog: dict[str, dict[str, Any]] | None, seed: int) -> Any:
    if name == "learned":
        return LearnedPolicy(catalog, seed)
    if name == "most_clicked":
        return MostClickedPolicy(seed)
    if name == "random":
        return RandomPolicy(seed)
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")


# -- the replay method --------------------------------------------------------------------------
TruthFn = Callable[[str, str, str], float]


@dataclass
class ReplayOutcome:
    impressions: int
    warmup: int
    results: list[PolicyResult] = field(default_factory=list)


def replay(impressions: list[Impression], policies: list[Any], warmup: float = DEFAULT_WARMUP,
           truth: TruthFn | None = None) -> ReplayOutcome:
    """Li et al.'s replay estimate of each policy's CTR on ``impressions`` (time order).

    ``truth(user, title, artwork)``, when given, is the true click probability: each
    policy's true CTR is the mean over every replayed impression of the true click
    probability of the artwork it chose there.
    """
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be within [0, 1), got {warmup}")
    n_warm = int(len(impressions) * warmup)
    outcome = ReplayOutcome(len(impressions), n_warm)
    for policy in policies:
        for imp in impressions[:n_warm]:
            policy.learn(imp, imp.shown, imp.clicked)
        result = PolicyResult(policy.name)
        for imp in impressions[n_warm:]:
            choice = policy.choose(imp)
            if truth is not None:
                result.true_sum += truth(imp.user_id, imp.title_id, choice)
                result.true_n += 1
            if choice == imp.shown:
                result.matched += 1
                result.clicks += imp.clicked
                policy.learn(imp, choice, imp.clicked)
        outcome.results.append(result)
    return outcome


def simulator_truth(world_spec: dict[str, Any]) -> TruthFn:
    """True click probabilities from the world a sidecar describes (cached per pair)."""
    from producers.artwork_logs import OTHER_APPEAL, PREFERRED_APPEAL, click_probability
    from producers.world import generate_world

    world = generate_world(int(world_spec["users"]), int(world_spec["titles"]),
                           int(world_spec["seed"]))
    cache: dict[tuple[str, str], tuple[float, str]] = {}

    def truth(user_id: str, title_id: str, artwork_id: str) -> float:
        entry = cache.get((user_id, title_id))
        if entry is None:
            preferred = world.artwork_preference(user_id, title_id)
            entry = (click_probability(world, user_id, title_id, preferred), preferred)
            cache[(user_id, title_id)] = entry
        best, preferred = entry
        if artwork_id == preferred:
            return best
        # Below the 0.95 cap the probability scales with the appeal; recompute when capped.
        if best < 0.95:
            return best * OTHER_APPEAL / PREFERRED_APPEAL
        return click_probability(world, user_id, title_id, artwork_id)

    return truth


# -- the command --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE",
                        help="events (JSONL, .gz fine) with impression and click events that "
                             "carry artwork_id, logged under uniformly random artwork")
    parser.add_argument("--catalog", metavar="FILE", default=None,
                        help="catalogue JSONL (title_added events with artwork_ids); default "
                             "FILE's .catalog.jsonl sibling if there is one, else the artwork "
                             "ids seen in the logs")
    parser.add_argument("--warmup", type=float, default=DEFAULT_WARMUP, metavar="SHARE",
                        help=f"share of impressions every policy trains on before the replay "
                             f"(default {DEFAULT_WARMUP})")
    parser.add_argument("--seed", type=int, default=42, help="policies' seed (default 42)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    sim = parser.add_argument_group("simulated logs (written to FILE first)")
    sim.add_argument("--simulate", action="store_true",
                     help="generate uniform-random artwork logs with hidden per-user "
                          "preferences into FILE (and its catalogue and world sidecar)")
    sim.add_argument("--users", type=int, default=300, help="simulated users (default 300)")
    sim.add_argument("--titles", type=int, default=200, help="simulated titles (default 200)")
    sim.add_argument("--impressions", type=int, default=300_000,
                     help="impressions to log (default 300000)")
    sim.add_argument("--sim-seed", type=int, default=0, help="simulator seed (default 0)")


def _write_simulated(args: argparse.Namespace) -> None:
    from producers.artwork_logs import generate_artwork_logs
    from producers.world import build_world

    if args.users <= 0 or args.titles <= 0 or args.impressions <= 0:
        raise ConfigError("--users, --titles and --impressions must be positive whole numbers")
    world = build_world(args.users, args.titles, args.sim_seed)
    catalog_out = args.catalog or catalog_path_for(args.file)
    opener = gzip.open if catalog_out.endswith(".gz") else open
    try:
        with opener(catalog_out, "wb") as handle:
            handle.writelines(orjson.dumps(t) + b"\n" for t in world.titles)
        opener = gzip.open if args.file.endswith(".gz") else open
        with opener(args.file, "wb") as handle:
            handle.writelines(orjson.dumps(e) + b"\n"
                              for e in generate_artwork_logs(world, args.impressions,
                                                             args.sim_seed))
        with open(world_path_for(args.file), "wb") as handle:
            handle.write(orjson.dumps({"users": args.users, "titles": args.titles,
                                       "seed": args.sim_seed,
                                       "generator": "producers.artwork_logs"}))
    except OSError as exc:
        raise ConfigError(f"cannot write the simulated logs: {exc.strerror or exc}") from None
    args.catalog = catalog_out


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not 0.0 <= args.warmup < 1.0:
        raise ConfigError(f"--warmup must be within [0, 1), got {args.warmup}")
    began = time.monotonic()
    if args.simulate:
        _write_simulated(args)
    elif not os.path.exists(args.file):
        raise ConfigError(f"{args.file} does not exist (add --simulate to generate it)")
    catalog_file = args.catalog
    if catalog_file is None and os.path.exists(catalog_path_for(args.file)):
        catalog_file = catalog_path_for(args.file)
    catalog = read_catalog(catalog_file) if catalog_file else None
    impressions = impressions_from_events(_jsonl(args.file), catalog)
    if len(impressions) < 10:
        raise ConfigError(
            f"{args.file} has {len(impressions)} usable impressions; the replay method needs "
            "impression (and click) events with artwork_id for titles with 2+ artworks")
    truth = None
    world_file = world_path_for(args.file)
    if os.path.exists(world_file):
        with open(world_file, "rb") as handle:
            truth = simulator_truth(orjson.loads(handle.read()))
    policies = [make_policy(name, catalog, args.seed) for name in POLICIES]
    outcome = replay(impressions, policies, args.warmup, truth)
    report = {
        "file": args.file, "catalog": catalog_file, "impressions": outcome.impressions,
        "warmup": outcome.warmup, "replayed": outcome.impressions - outcome.warmup,
        "clicks": sum(imp.clicked for imp in impressions),
        "truth": "simulator" if truth is not None else None,
        "policies": [r.as_dict() for r in outcome.results],
        "seconds": round(time.monotonic() - began, 2),
    }
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_report(report))
    return 0


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['impressions']:,} impressions ({report['clicks']:,} clicked) from "
        f"{report['file']}; {report['warmup']:,} for warm-up, {report['replayed']:,} replayed",
        f"{'policy':<14}{'replay CTR':>11}  {'95% CI':<17}{'matched':>9}"
        + (f"{'true CTR':>10}{'error':>8}" if report["truth"] else ""),
    ]
    for r in report["policies"]:
        low, high = r["ci95"]
        line = (f"{r['policy']:<14}{r['replay_ctr']:>11.4f}  {low:.4f}-{high:.4f}    "
                f"{r['matched']:>9,}")
        if r["true_ctr"] is not None:
            line += f"{r['true_ctr']:>10.4f}{100 * r['relative_error']:>+7.1f}%"
        lines.append(line)
    if report["truth"]:
        lines.append("true CTR: the simulator's click probability of each policy's choices "
                     "on the replayed impressions")
    lines.append(f"({report['seconds']:.1f} s)")
    return "\n".join(lines)
