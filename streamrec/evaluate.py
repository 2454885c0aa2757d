"""``streamrec evaluate``: prequential evaluation of the models on a recorded stream.

Runs the same model code the worker runs over a time-ordered stream, without Kafka,
under the protocol of ``streamrec.evaluation.protocol``, and reports recall@k, NDCG@k,
MRR, catalogue coverage and novelty for every model, next to the ``popularity`` and
``random`` baselines::

    streamrec evaluate ratings.csv --format movielens --min-rating 5 --k 10 --report out/
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from streamrec.exceptions import ConfigError
from streamrec.settings import Settings

logger = logging.getLogger(__name__)

# One process per core, at most 4: each holds a copy of the stream, and the hybrid alone
# is about half the default models' work, so more processes rarely finish sooner.
DEFAULT_JOBS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE",
                        help="events (JSONL) or ratings (MovieLens u.data, ratings.dat, "
                             "ratings.csv, or another ratings CSV); .gz is fine")
    parser.add_argument("--format", choices=("jsonl", "csv", "movielens"), default=None,
                        help="input format (default: detected from the name and first line)")
    parser.add_argument("--min-rating", type=float, default=None, metavar="R",
                        help="ratings files: ratings >= R are the positive events "
                             "(default 5, the literature's 5-star stream)")
    parser.add_argument("--k", type=int, default=10, help="list length (default 10)")
    parser.add_argument("--models", default=None, metavar="LIST",
                        help="comma-separated model names (default: the product's hybrid "
                             "`streamrec`, its components and the baselines; see "
                             "models/registry.py for all)")
    parser.add_argument("--report", default=None, metavar="DIR",
                        help="write DIR/report.json and DIR/report.png")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="also write the rolling recall@k plot to FILE.png")
    parser.add_argument("--catalog", default=None, metavar="FILE",
                        help="titles with genres (MovieLens movies.csv, movies.dat, u.item, or "
                             "JSONL title_added events); default: the MovieLens titles file "
                             "next to FILE, or for FILE.jsonl the FILE.catalog.jsonl that "
                             "`streamrec simulate` writes, if there is one; 'none' for none")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, metavar="N",
                        help="processes to spread the models over; the figures are the "
                             "same for any N (default: one per core, at most 4; here "
                             f"{DEFAULT_JOBS})")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed of every model's sampling (default 42)")
    parser.add_argument("--cache-hints", action="store_true",
                        help="also score the worker's hourly per-country cache-hint forecasts "
                             "against what was played next (our JSONL events only)")
    parser.add_argument("--oracle", default=None, metavar="USERS,TITLES,SEED",
                        help="FILE came from `streamrec simulate` with these --users, --titles "
                             "and --seed: also rank by the simulated users' hidden tastes "
                             "(`oracle`), and by taste times the hidden popularity that "
                             "decides what they are shown (`oracle_exposure`)")


def _model_names(text: str | None, known: list[str], default: list[str]) -> list[str]:
    if text is None:
        return default
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--models is empty; give comma-separated names, e.g. "
                          "--models streamrec,popularity")
    unknown = [n for n in names if n not in known]
    if unknown:
        hint = ""
        if ":" in unknown[0] and not any(":" in name for name in known):
            hint = ("; EXPERIMENT:VARIANT names come from the file STREAMREC_EXPERIMENTS "
                    "names, and it is not set")
        raise ConfigError(f"unknown model {unknown[0]!r} in --models{hint}; known: "
                          f"{', '.join(known)}")
    return list(dict.fromkeys(names))


def run(args: argparse.Namespace, settings: Settings) -> int:
    from models.registry import DEFAULT_MODELS, MODELS, create
    from streamrec.evaluation import protocol, report, streams

    if args.k < 1:
        raise ConfigError(f"--k must be a positive whole number, got {args.k}")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be a positive whole number, got {args.jobs}")
    if args.plot and not args.plot.lower().endswith((".png", ".svg", ".pdf")):
        raise ConfigError(f"--plot {args.plot}: give a .png, .svg or .pdf file name")
    if args.min_rating is not None and not math.isfinite(args.min_rating):
        raise ConfigError(f"--min-rating must be a number, got {args.min_rating}")
    _check_outputs(args)
    variants = _experiment_variants(settings)
    names = _model_names(args.models, [*MODELS, *variants], list(DEFAULT_MODELS))
    oracles = {}
    if args.oracle is not None:
        from streamrec.evaluation.oracle import Oracle, parse_world

        try:
            world = parse_world(args.oracle)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        from producers.world import check_world_fits

        check_world_fits(world[0], world[1], users_option="--oracle USERS",
                         titles_option="TITLES", copies=2)  # each oracle has its own world
        oracles = {"oracle": Oracle(*world), "oracle_exposure": Oracle(*world, exposure=True)}
    fmt = args.format or streams.detect_format(args.file)
    if getattr(args, "cache_hints", False) and fmt != "jsonl":
        raise ConfigError("--cache-hints needs our JSONL events (plays carry a country); "
                          f"{args.file} is {fmt}")
    catalog = args.catalog
    if catalog is None:
        catalog = streams.sibling_catalog(args.file, fmt)
    elif catalog == "none":
        catalog = None
    stream = streams.load(args.file, fmt, args.min_rating, catalog)
    if stream.invalid:
        logger.warning("skipped %s invalid lines of %s", stream.invalid, args.file)
    models = {name: variants[name](args.seed) if name in variants else create(name, args.seed)
              for name in names}
    models.update(oracles)
    product = None
    if fmt == "jsonl":  # our events carry searches: rank as the worker does after them
        from streams.product import ProductLayer

        product = ProductLayer(settings)
    try:
        outcome = protocol.run_jobs(stream, models, args.k, settings.history_cap,
                                    progress=report.Progress(sys.stderr), product=product,
                                    jobs=args.jobs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    document = report.build(outcome, _protocol(args, stream, fmt))
    print(report.table(document, args.k))
    if getattr(args, "cache_hints", False):
        document["cache_hints"] = _score_cache_hints(args.file, args.k)
        hints = document["cache_hints"]
        if hints.get("recall") is None:
            print("cache hints: no country-hour after the first has enough plays to score")
        else:
            print(f"cache hints: recall@{args.k} {hints['recall']:.4f} of each hour's most "
                  f"played titles per country (last hour's top {args.k}: "
                  f"{hints['baseline_recall']:.4f}) over {hints['hours']} country-hours")
    try:
        if args.report:
            for path in report.write(document, outcome, args.report, args.k):
                print(f"wrote {path}")
        if args.plot:
            report.plot(outcome, args.k, args.plot, title=args.file)
            print(f"wrote {args.plot}")
    except OSError as exc:  # checked before the run: only if something changed since
        raise ConfigError(f"cannot write {exc.filename or 'the report'}: "
                          f"{exc.strerror or exc}") from None
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """``--report`` and ``--plot`` can be written, or one line now rather than a traceback
    after the replay. Both create the directories they need (``mkdir -p``)."""
    from streamrec.evaluation.report import check_writable, report_paths

    targets: list[tuple[str, str, Path]] = []
    if args.report:
        if Path(args.report).exists() and not Path(args.report).is_dir():
            raise ConfigError(f"--report {args.report} is a file, not a directory; give a "
                              "directory for report.json and report.png (created if missing)")
        targets += [("--report", args.report, path) for path in report_paths(args.report)]
    if args.plot:
        targets.append(("--plot", args.plot, Path(args.plot)))
    for option, given, path in targets:
        try:
            check_writable(path)
        except OSError as exc:
            raise ConfigError(f"{option} {given}: cannot write {path} "
                              f"({exc.strerror or exc})") from None


def _experiment_variants(settings: Settings) -> dict[str, Any]:
    """``experiment:variant`` -> model factory for the experiments in ``STREAMREC_EXPERIMENTS``.

    Offline, a variant is its own model learning the whole stream: ``default`` is the
    hybrid, ``popularity`` and ``random`` the baselines, and an overrides table a hybrid
    built with them (fixed ``weights`` also switch blend learning off, so every blend
    weight stays at its start value; the worker keeps learning the unnamed ones).
    """
    from models.baselines import Popularity, RandomRanker
    from models.hybrid import Hybrid
    from streams.experiments import load

    config = load(settings.experiments_path)
    if not config:
        return {}
    factories: dict[str, Any] = {}
    for experiment in config.experiments:
        for variant in experiment.variants:
            name = f"{experiment.name}:{variant.name}"
            if variant.preset == "popularity":
                factories[name] = lambda seed: Popularity()
            elif variant.preset == "random":
                factories[name] = lambda seed: RandomRanker(seed=seed)
            else:
                overrides = dict(variant.ranking_overrides)
                if "weights" in overrides:
                    overrides["blend_learning_rate"] = 0.0
                factories[name] = lambda seed, o=overrides: Hybrid(seed=seed, **o)
    return factories


def _score_cache_hints(path: str, k: int) -> dict[str, Any]:
    """The worker's cache-hint forecaster replayed over the file's events, in file order."""
    import orjson

    from producers.formats import open_text
    from streamrec.exceptions import InvalidRecord
    from streamrec.schema import validate_event
    from streams.cache_hints import evaluate_cache_hints

    def events() -> Any:
        # The events the worker would accept, as it reads them (country in upper case).
        with open_text(path) as handle:
            for line in handle:
                try:
                    event = orjson.loads(line)
                    if isinstance(event, dict):
                        yield validate_event(event)
                except (orjson.JSONDecodeError, InvalidRecord):
                    continue  # already counted as invalid by the main evaluation

    return evaluate_cache_hints(events(), k=k)


def _protocol(args: argparse.Namespace, stream: Any, fmt: str) -> dict[str, Any]:
    from streamrec.evaluation.protocol import VALIDATION_SHARE, WARMUP_SHARE

    return {
        "file": args.file,
        "format": fmt,
        "min_rating": stream.min_rating,
        "catalog": stream.catalog,
        "k": args.k,
        "seed": args.seed,
        "order": "positive events in time order",
        "warmup": WARMUP_SHARE,
        "validation": VALIDATION_SHARE,
        "test": round(1.0 - WARMUP_SHARE - VALIDATION_SHARE, 6),
        "candidates": "titles seen so far, minus the user's, plus the true title",
        "ties": "count against the model",
        "invalid_lines": stream.invalid,
        # Figures are deterministic for a seed in one environment; the same code has given
        # streamrec 0.1266 and 0.1265 on ml-latest-small in two (one hit in 9,248).
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    import platform
    from importlib.metadata import version

    import numpy

    return {"python": platform.python_version(), "numpy": numpy.__version__,
            "river": version("river"), "streamrec": version("streamrec")}
