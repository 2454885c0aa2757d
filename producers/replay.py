"""``streamrec replay``: recorded streams back into Kafka, faithfully and fast.

Reads JSONL (ours, and what ``record`` and ``simulate --out`` write), CSV with a header
naming the event fields, and MovieLens ratings (see :mod:`producers.sources` for the
mapping), plain or gzipped. Keys every record by ``user_id`` (``title_id`` on the
catalogue topic) so per-user order holds, and accounts for every record read::

    read == produced + invalid + skipped + failed

``skipped`` counts ``--skip`` and records outside ``--start``/``--end``; ``invalid``
records are reported as ``FILE:LINE: reason`` and never sent; ``failed`` records were
handed to the producer but not acknowledged by the broker within the delivery timeout.
Exit status: 0 when everything read was accounted for and delivered, 1 if any delivery
failed or ``--strict`` stopped at an invalid record, 2 for a usage mistake.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from producers.delivery import DEFAULT_DELIVERY_TIMEOUT_S
from producers.sources import CATALOG, EVENTS, FORMATS
from streamrec.exceptions import ConfigError, Terminated
from streamrec.schema import CATALOG_TYPES
from streamrec.settings import Settings

if TYPE_CHECKING:
    from producers.backlog import BacklogGuard
    from producers.delivery import Sender
    from producers.sources import Source

# Records between two progress/poll checks at full speed: checking the clock and serving
# delivery reports every 16k records costs nothing measurable at 200k records/s.
_CHECK_EVERY_FAST = 1 << 14
# ... and when paced, where a record may wait for its turn anyway.
_CHECK_EVERY_PACED = 1 << 6
# Invalid records reported one line each, at most: a wrong file is one mistake, not a
# screenful per record (they are all counted, by reason, in the summary and report).
MAX_INVALID_SHOWN = 100
# librdkafka batching for --speed max: 50 ms lingers fill bigger, better-compressed
# batches (more fits in the embedded broker's 5 MiB per partition) at no cost to a
# bulk load; paced replays keep the product's 5 ms default for timeliness.
_BULK_LINGER_MS = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="JSONL, CSV or MovieLens ratings files; .gz is read too")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="input format (default: from the file name; .csv with a "
                             "userId,movieId header, .dat and u.data are MovieLens)")
    parser.add_argument("--topic", default=None,
                        help="topic to produce to (default: the events topic); the "
                             "catalogue topic validates catalogue events and keys by title_id")
    parser.add_argument("--speed", type=_speed, default=None, metavar="X|max",
                        help="1 keeps the original gaps between event times, 10 is ten "
                             "times faster, max (default) sends as fast as the broker accepts")
    parser.add_argument("--start", type=_timestamp, default=None, metavar="TS",
                        help="skip events before this time (epoch seconds or ISO 8601, UTC)")
    parser.add_argument("--end", type=_timestamp, default=None, metavar="TS",
                        help="skip events at or after this time")
    parser.add_argument("--limit", type=_count(1), default=None, metavar="N",
                        help="stop after producing N records")
    parser.add_argument("--skip", type=_count(0), default=0, metavar="N",
                        help="skip the first N records (counted as skipped)")
    parser.add_argument("--rate", type=_positive, default=None, metavar="R",
                        help="send at most R records per second")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and count, produce nothing")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first invalid record and exit non-zero")
    parser.add_argument("--report", metavar="PATH", default=None,
                        help="write the summary as JSON to PATH")
    parser.add_argument("--delivery-timeout", type=_positive,
                        default=DEFAULT_DELIVERY_TIMEOUT_S, metavar="S",
                        help="seconds a record may wait for the broker before it counts "
                             f"as failed (default {DEFAULT_DELIVERY_TIMEOUT_S:.0f})")


@dataclass
class ReplaySummary:
    """The counts of one replay; ``read == produced + invalid + skipped + failed``."""

    topic: str
    dry_run: bool = False
    read: int = 0
    produced: int = 0
    invalid: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    stopped: str | None = None  # why reading stopped early, if it did
    first_error: str | None = None
    invalid_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    lateness_ms: dict[str, float] | None = None
    waits_for_worker: int | None = None  # None: no worker's backlog was guarded
    dropped: int | None = None  # produced, then dropped by the embedded broker unread

    @property
    def events_per_s(self) -> float:
        return self.produced / self.seconds if self.seconds > 0 else 0.0

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "read": self.read, "produced": self.produced, "invalid": self.invalid,
            "skipped": self.skipped, "failed": self.failed,
            "seconds": round(self.seconds, 3), "events_per_s": round(self.events_per_s, 1),
            "topic": self.topic, "dry_run": self.dry_run,
            "invalid_reasons": dict(self.invalid_reasons),
        }
        if self.lateness_ms is not None:
            report["lateness_ms"] = self.lateness_ms
        if self.waits_for_worker is not None:
            report["waits_for_worker"] = self.waits_for_worker
        if self.dropped is not None:
            report["dropped"] = self.dropped
        if self.stopped:
            report["stopped"] = self.stopped
        if self.first_error:
            report["first_error"] = self.first_error
        return report


def run(args: argparse.Namespace, settings: Settings) -> int:
    from producers.sources import Source, check_source

    topic = args.topic or settings.topics.events
    kind = CATALOG if topic == settings.topics.catalog else EVENTS
    if args.start is not None and args.end is not None and args.end <= args.start:
        raise ConfigError("--end must be later than --start")
    # Found now, not after an hour of replaying.
    if args.report and not os.path.isdir(os.path.dirname(args.report) or "."):
        raise ConfigError(f"cannot write the report {args.report}: its directory does not exist")
    if args.report and os.path.isdir(args.report):
        raise ConfigError(f"--report {args.report} is a directory; name a file in it, "
                          f"e.g. {os.path.join(args.report, 'replay.json')}")
    sources = [
        Source(path, check_source(path, args.format, kind), kind, settings.max_message_bytes)
        for path in args.files
    ]
    if args.dry_run:
        summary = replay(sources, args, topic, sender=None)
        return _finish(summary, args, destination="")
    from producers.delivery import Sender, kafka_target

    with kafka_target(settings, "replay") as target:
        overrides = {} if (args.speed or args.rate) else {"linger.ms": _BULK_LINGER_MS}
        sender = Sender(target, topic, args.delivery_timeout, **overrides)
        sender.check_topic()
        from producers.backlog import BacklogGuard

        guard = BacklogGuard.open(target, topic)
        try:
            summary = replay(sources, args, topic, sender, guard)
        finally:
            if guard is not None:
                guard.close()
        return _finish(summary, args, destination=f" at {target.kafka_bootstrap_servers}")


def replay(sources: list[Source], args: argparse.Namespace, topic: str,
           sender: Sender | None, guard: BacklogGuard | None = None) -> ReplaySummary:
    """Send every valid record of ``sources`` through ``sender`` (``None``: dry run);
    with a ``guard``, wait whenever the worker is too far behind for the broker to keep
    what it has not consumed (:mod:`producers.backlog`)."""
    from producers.pacing import Pacer
    from producers.progress import Progress

    summary = ReplaySummary(topic=topic, dry_run=sender is None)
    kind = sources[0].kind if sources else EVENTS
    pacer = Pacer(args.speed, args.rate) if (args.speed or args.rate) else None
    progress = Progress("replay")
    total_bytes = sum(s.size for s in sources) or 1
    done_bytes = 0
    check_mask = (_CHECK_EVERY_PACED if pacer else _CHECK_EVERY_FAST) - 1
    send = sender.send if sender is not None else None
    start, end, limit, skip_left = args.start, args.end, args.limit, args.skip
    windowed = start is not None or end is not None
    read = invalid = skipped = sent = 0
    in_hand = False  # a record read and not yet sent (a paced one waits for its turn)

    def done_fraction() -> float:
        if pacer is not None and start is not None and end is not None:
            # A paced window: its event time, not the file position (a window of a long
            # file is read in moments and then waited out).
            reached = pacer.event_time()
            if reached is not None:
                return min(max((reached - start) / (end - start), 0.0), 1.0)
        fraction = (done_bytes + source.position()) / total_bytes
        return max(fraction, sent / limit) if limit else fraction

    def idle() -> None:  # during long paced waits
        if sender is not None:
            sender.poll(0)
        progress.update(sent, done_fraction())

    from producers.backlog import waiting_notice

    waiting_for_worker = waiting_notice("replay", progress.message, idle)
    guard = guard if sender is not None else None

    began = time.monotonic()
    try:
        for source in sources:
            for line_no, key, value, ts, error in source:
                read += 1
                if skip_left:
                    skip_left -= 1
                    skipped += 1
                elif error is not None:
                    invalid += 1
                    summary.invalid_reasons[error.reason] += 1
                    if invalid <= MAX_INVALID_SHOWN:
                        progress.message(f"{source.path}:{line_no}: invalid record "
                                         f"({error.reason}): {error.detail}"
                                         f"{_hint(error, kind)}")
                    elif invalid == MAX_INVALID_SHOWN + 1:
                        progress.message(f"(more invalid records are counted, not shown: "
                                         f"see the summary{' and --report' * (not args.report)})")
                    if args.strict:
                        summary.stopped = (f"stopped at the first invalid record (--strict): "
                                           f"{source.path}:{line_no}")
                        break
                elif windowed and ((start is not None and ts < start)
                                   or (end is not None and ts >= end)):
                    skipped += 1
                else:
                    in_hand = True
                    if pacer is not None:
                        pacer.wait(ts, idle)
                    if send is not None and not send(value, key):  # (counted as failed)
                        in_hand = False
                        summary.stopped = "deliveries are failing"
                        break
                    in_hand = False
                    sent += 1
                    if guard is not None and sender is not None:
                        guard.sent(len(value) + len(key or ""), sender.in_flight,
                                   waiting_for_worker)
                    if sent == limit:
                        break
                if not read & check_mask:
                    if sender is not None:
                        sender.poll(0)
                        if sender.failing:
                            summary.stopped = "deliveries are failing"
                            break
                    progress.update(sent, done_fraction())
            done_bytes += source.size
            if summary.stopped or sent == limit:
                break
    except ConfigError as exc:  # an unreadable file halfway through
        summary.stopped = str(exc)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (streamrec.cli)
        summary.stopped = "terminated" if isinstance(exc, Terminated) else "interrupted"
        if in_hand:  # waiting for its turn: neither sent nor skipped, so not read either
            read -= 1
    finally:
        progress.close()
    summary.read, summary.invalid, summary.skipped = read, invalid, skipped
    if sender is None:
        summary.produced = sent
    else:
        if summary.stopped and sent:
            sys.stderr.write(f"streamrec replay: {summary.stopped}; waiting up to "
                             f"{sender.delivery_timeout_s:g} s for the broker to acknowledge "
                             f"the records already sent\n")
        result = sender.close()
        summary.produced, summary.failed = result.delivered, result.failed
        summary.first_error = result.first_error
    summary.seconds = time.monotonic() - began
    if pacer is not None:
        summary.lateness_ms = pacer.lateness_ms()
    if guard is not None:
        summary.waits_for_worker = guard.waits
        summary.dropped = guard.dropped_or_none()
    return summary


def _hint(error: Any, kind: str) -> str:
    """How to fix the commonest whole-file mistake, catalogue records sent as events."""
    if kind == EVENTS and error.reason == "unknown_type" and any(
            f"type {t!r}" in error.detail for t in CATALOG_TYPES):
        return " (a catalogue record: replay this file with --topic catalog)"
    return ""


def _finish(summary: ReplaySummary, args: argparse.Namespace, destination: str) -> int:
    s = summary
    verb = "would produce" if s.dry_run else "produced"
    dry = " (dry run: nothing sent)" if s.dry_run else ""
    print(f"replay{dry}: read {s.read:,} records: {verb} {s.produced:,} to topic "
          f"{s.topic!r}{destination}, {s.invalid:,} invalid, {s.skipped:,} skipped, "
          f"{s.failed:,} failed, in {s.seconds:.2f} s ({s.events_per_s:,.0f} events/s)")
    if s.lateness_ms is not None:
        lat = s.lateness_ms
        print(f"replay: lateness against the schedule: p50 {lat['p50']:.3f} ms, "
              f"p99 {lat['p99']:.3f} ms, max {lat['max']:.3f} ms")
    if s.waits_for_worker:
        times = "once" if s.waits_for_worker == 1 else f"{s.waits_for_worker:,} times"
        print(f"replay: paused {times} for the worker to catch up: the "
              f"embedded broker keeps only 5 MiB per partition, and drops the oldest")
    if args.report:
        import orjson

        try:
            with open(args.report, "wb") as handle:
                handle.write(orjson.dumps(s.report(), option=orjson.OPT_INDENT_2))
        except OSError as exc:
            sys.stderr.write(f"streamrec replay: error: cannot write the report to "
                             f"{args.report}: {exc.strerror}\n")
            return 1
    if s.failed:
        sys.stderr.write(
            f"streamrec replay: error: {s.failed:,} records were not delivered "
            f"({s.first_error}); {s.produced:,} of {s.produced + s.failed:,} sent were "
            f"delivered to {s.topic!r}{destination}\n"
        )
        return 1
    if s.dropped:
        from producers.backlog import dropped_line

        sys.stderr.write(f"streamrec replay: error: {dropped_line(s.dropped, s.topic)}\n")
        if not s.stopped:
            return 1
    if s.stopped:
        sys.stderr.write(f"streamrec replay: error: {s.stopped}{_resume_hint(s, args)}\n")
        return {"interrupted": 130, "terminated": 143}.get(s.stopped, 1)
    return 0


def _resume_hint(s: ReplaySummary, args: argparse.Namespace) -> str:
    """How to go on after a Ctrl-C or SIGTERM: every record read was produced, invalid or
    skipped (none failed, or the run would have ended on that), so skipping what was
    read sends the rest, none twice."""
    if s.stopped not in ("interrupted", "terminated") or s.failed or not s.read:
        return ""
    instead = f" instead of --skip {args.skip}" if args.skip else ""
    return (f" after reading {s.read:,} records; to go on from there without sending any "
            f"twice, run the same command with --skip {s.read}{instead}")


# -- argument types (argparse turns their errors into one line and exit code 2) -----------

def _speed(text: str) -> float | None:
    if text.strip().lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0 or 'max', got {text!r}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be a whole number >= {minimum}, got {text!r}")
        return value

    parse.__name__ = "count"
    return parse


def _timestamp(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite time, got {text!r}")
        return value
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be epoch seconds or an ISO 8601 time like 2024-01-31T18:00:00Z, "
            f"got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()
