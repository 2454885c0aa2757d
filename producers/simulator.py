"""``streamrec simulate``: a catalogue and realistic viewing sessions, to Kafka or files.

The library API lives in :mod:`producers.world` (the catalogue and the viewers' hidden
tastes) and :mod:`producers.sessions` (the events); it is re-exported here::

    from producers.simulator import generate_world, generate_events
    world = generate_world(n_users=300, n_titles=500, seed=0)
    for event in generate_events(world, 30_000, seed=0, realtime=True):
        ...  # dicts, or bytes for deliberately invalid records

To Kafka (the default), the catalogue goes first to the catalogue topic keyed by
``title_id``, then the events to the events topic keyed by ``user_id`` (invalid records
without a key: they have no trustworthy ``user_id``). With ``--out`` the events go to a
JSONL file (``.gz`` compresses) and the catalogue to ``--catalog-out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import Any

from producers.delivery import DEFAULT_DELIVERY_TIMEOUT_S
from producers.sessions import DEFAULT_START_TS, generate_events
from producers.sources import open_output
from producers.world import GENRES, SimUser, World, build_world, generate_world
from streamrec.exceptions import ConfigError
from streamrec.settings import Settings

__all__ = [
    "DEFAULT_START_TS", "GENRES", "SimUser", "World", "generate_events", "generate_world",
    "add_arguments", "run",
]

DEFAULT_EVENTS = 100_000
# Records between two delivery-report polls / progress checks: cheap at full speed;
# at a live --rate a check every 64 records keeps the progress display current.
_CHECK_EVERY = 4096
_CHECK_EVERY_LIVE = 64
# librdkafka batching when generating as fast as possible: 50 ms lingers make bigger,
# better-compressed batches (more fits in the embedded broker), as in replay.
_BULK_LINGER_MS = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=1000, metavar="N",
                        help="simulated viewers (default 1000)")
    parser.add_argument("--titles", type=int, default=2000, metavar="N",
                        help="catalogue size, movies and episodes (default 2000)")
    parser.add_argument("--events", type=int, default=None, metavar="N",
                        help=f"events to generate (default {DEFAULT_EVENTS:,}); or use "
                             "--rate with --duration")
    parser.add_argument("--rate", type=float, default=None, metavar="R",
                        help="generate in real time at R events/s (ts = wall clock)")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="seconds to generate for, with --rate")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same data (default 0)")
    parser.add_argument("--invalid-fraction", type=float, default=0.0, metavar="F",
                        help="share of deliberately invalid records, 0 <= F < 1 (default 0)")
    parser.add_argument("--out", metavar="FILE.jsonl", default=None,
                        help="write events to this file instead of Kafka (.gz compresses)")
    parser.add_argument("--catalog-out", metavar="FILE", default=None,
                        help="with --out: catalogue file (default: beside --out, "
                             "suffix .catalog.jsonl)")
    parser.add_argument("--delivery-timeout", type=float, default=DEFAULT_DELIVERY_TIMEOUT_S,
                        metavar="S", help="seconds a record may wait for the broker")


def run(args: argparse.Namespace, settings: Settings) -> int:
    n_events, realtime = _check(args)
    world = build_world(args.users, args.titles, args.seed)
    events = generate_events(world, n_events, seed=args.seed, realtime=realtime,
                             invalid_fraction=args.invalid_fraction)
    from producers.pacing import Pacer

    pacer = Pacer(rate=args.rate) if realtime else None
    if args.out:
        return _to_files(args, world, events, n_events, pacer)
    from producers.delivery import kafka_target

    with kafka_target(settings, "simulate") as target:
        return _to_kafka(args, target, world, events, n_events, pacer)


def _check(args: argparse.Namespace) -> tuple[int, bool]:
    if args.users <= 0 or args.titles <= 0:
        raise ConfigError("--users and --titles must be positive whole numbers")
    if not 0.0 <= args.invalid_fraction < 1.0:
        raise ConfigError(f"--invalid-fraction must be within [0, 1), got {args.invalid_fraction}")
    if args.catalog_out and not args.out:
        raise ConfigError("--catalog-out needs --out (without it, everything goes to Kafka)")
    if args.rate is not None or args.duration is not None:
        if args.events is not None:
            raise ConfigError("give either --events N or --rate R with --duration S, not both")
        if args.rate is None or args.duration is None:
            raise ConfigError("--rate and --duration go together (e.g. --rate 500 --duration 60)")
        if not args.rate > 0 or not args.duration > 0:
            raise ConfigError("--rate and --duration must be > 0")
        return int(round(args.rate * args.duration)), True
    n_events = DEFAULT_EVENTS if args.events is None else args.events
    if n_events < 0:
        raise ConfigError(f"--events must be >= 0, got {n_events}")
    return n_events, False


def catalog_path_for(out: str) -> str:
    """``events.jsonl`` -> ``events.catalog.jsonl`` (``.gz`` kept)."""
    gz = out.endswith(".gz")
    base = out.removesuffix(".gz")
    for suffix in (".jsonl", ".json", ".ndjson"):
        if base.endswith(suffix):
            base = base.removesuffix(suffix)
            break
    return base + ".catalog.jsonl" + (".gz" if gz else "")


def _paced(events: Iterator[dict[str, Any] | bytes], n_events: int,
           pacer: Any | None) -> Iterator[dict[str, Any] | bytes]:
    # Wait *before* drawing the next event, so a realtime ts is stamped when it is due.
    for _ in range(n_events):
        if pacer is not None:
            pacer.wait(0.0)
        yield next(events)


def _to_files(args: argparse.Namespace, world: World, events: Iterator[Any], n_events: int,
              pacer: Any | None) -> int:
    import orjson

    from producers.progress import Progress

    catalog_out = args.catalog_out or catalog_path_for(args.out)
    with open_output(catalog_out) as handle:
        handle.writelines(orjson.dumps(title) + b"\n" for title in world.titles)
    progress = Progress("simulate")
    check_every = _CHECK_EVERY_LIVE if pacer is not None else _CHECK_EVERY
    began = time.monotonic()
    invalid = written = 0
    dumps = orjson.dumps
    stopped: KeyboardInterrupt | None = None
    with open_output(args.out) as handle:
        try:
            for record in _paced(events, n_events, pacer):
                if isinstance(record, bytes):
                    invalid += 1
                    handle.write(record + b"\n")
                else:
                    handle.write(dumps(record) + b"\n")
                written += 1
                if not written % check_every:
                    progress.update(written, written / max(n_events, 1))
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the file is closed whole
            stopped = exc
    progress.close()
    seconds = time.monotonic() - began
    print(f"simulate: wrote {len(world.titles):,} titles to {catalog_out} and "
          f"{written:,} events ({invalid:,} deliberately invalid) to {args.out} "
          f"in {seconds:.2f} s ({written / max(seconds, 1e-9):,.0f} events/s)")
    if stopped is not None:
        raise stopped  # streamrec.cli: "interrupted" (130) or "terminated" (143)
    return 0


def _to_kafka(args: argparse.Namespace, settings: Settings, world: World,
              events: Iterator[Any], n_events: int, pacer: Any | None) -> int:
    import orjson

    from producers.delivery import Sender
    from producers.progress import Progress

    topics = settings.topics
    catalog = Sender(settings, topics.catalog, args.delivery_timeout)
    catalog.check_topic()
    for title in world.titles:
        catalog.send(orjson.dumps(title), title["title_id"])
    titles = catalog.close()
    if titles.failed:
        sys.stderr.write(f"streamrec simulate: error: {titles.failed:,} of {len(world.titles):,}"
                         f" catalogue records were not delivered ({titles.first_error})\n")
        return 1
    overrides = {} if pacer is not None else {"linger.ms": _BULK_LINGER_MS}
    sender = Sender(settings, topics.events, args.delivery_timeout, **overrides)
    from producers.backlog import BacklogGuard, dropped_line, waiting_notice

    # Waits for a worker that falls behind, so the embedded broker drops nothing unread.
    guard = BacklogGuard.open(settings, topics.events)
    check_every = _CHECK_EVERY_LIVE if pacer is not None else _CHECK_EVERY
    progress = Progress("simulate")
    began = time.monotonic()
    invalid = sent = 0
    dumps = orjson.dumps
    stopped: KeyboardInterrupt | None = None

    def idle() -> None:  # while waiting for the worker
        sender.poll(0)
        progress.update(sent, sent / max(n_events, 1))

    waiting_for_worker = waiting_notice("simulate", progress.message, idle)
    try:
        for record in _paced(events, n_events, pacer):
            if isinstance(record, bytes):
                invalid += 1
                value, key = record, None
            else:
                value, key = dumps(record), record["user_id"]
            if not sender.send(value, key):
                break
            sent += 1
            if guard is not None:
                guard.sent(len(value) + len(key or ""), sender.in_flight, waiting_for_worker)
            if not sent % check_every:
                sender.poll(0)
                if sender.failing:
                    break
                progress.update(sent, sent / max(n_events, 1))
    except KeyboardInterrupt as exc:
        # Ctrl-C, or SIGTERM (docker compose stop): the events already sent are delivered
        # and counted before the command stops; dying here dropped librdkafka's queue.
        stopped = exc
        if sent:
            sys.stderr.write(f"streamrec simulate: stopping; waiting up to "
                             f"{sender.delivery_timeout_s:g} s for the broker to acknowledge "
                             f"the events already sent\n")
    progress.close()
    result = sender.close()
    seconds = time.monotonic() - began
    dropped = None
    if guard is not None:
        dropped = guard.dropped_or_none()
        guard.close()
    where = f"at {settings.kafka_bootstrap_servers}"
    print(f"simulate: produced {len(world.titles):,} titles to {topics.catalog!r} and "
          f"{result.delivered:,} events ({invalid:,} deliberately invalid) to "
          f"{topics.events!r} {where} in {seconds:.2f} s "
          f"({result.delivered / max(seconds, 1e-9):,.0f} events/s)")
    if result.failed:
        sys.stderr.write(f"streamrec simulate: error: {result.failed:,} events were not "
                         f"delivered ({result.first_error}); {result.delivered:,} of "
                         f"{result.delivered + result.failed:,} delivered\n")
        return 1
    if dropped:
        sys.stderr.write(f"streamrec simulate: error: {dropped_line(dropped, topics.events)}\n")
        if stopped is None:
            return 1
    if stopped is not None:
        raise stopped  # streamrec.cli: "interrupted" (130) or "terminated" (143)
    return 0
