"""``streamrec record``: capture a topic to JSONL that ``replay`` reproduces exactly.

Each record becomes one line. A record whose value is a one-line JSON object keyed by
its own ``user_id`` (``title_id`` on the catalogue topic), which is everything streamrec
produces, is written as that value, byte for byte, so recordings, ``simulate --out``
files and hand-written event files are one format. Any other record (another key, no
key, a value that is not such an object) is written as a wrapper line holding its key
and value; ``replay`` sends it with that key. Per-key order is kept because each
partition is read in offset order and a key lives in one partition.

The embedded broker drops the oldest records of a partition beyond 5 MiB; a recording
that starts after such a drop, or falls behind one, would silently miss records. So
``record`` compares each partition's low watermark with the offset it meant to start
from, and every fetched offset with the one expected next, and reports any gap as lost
records (exit status 1).

A broker that goes away mid-recording is not an idle topic: librdkafka's error callback
says when every broker is down, and before ``--until-idle`` ends a recording a metadata
request must confirm the broker still answers (``consumers.common.BrokerWatch``). A broker
that stays unreachable for ``BROKER_GONE_S`` ends the run with one line and exit status 1;
the file keeps what was read and is incomplete. Ctrl-C while still connecting exits 130
("interrupted") and writes nothing; Ctrl-C while copying is how an open-ended recording
ends (exit 0).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumers import common
from consumers.common import BrokerWatch, check_topic, within
from streamrec.exceptions import BrokerUnavailable, ConfigError
from streamrec.kafka import kafka_error_text
from streamrec.settings import Settings

if TYPE_CHECKING:
    from confluent_kafka import Consumer

# Records fetched per consume() call: amortises the call over many records.
_BATCH = 10_000
# How long one consume() call waits for records, seconds; also the idle-check tick.
_POLL_S = 0.25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", default=None,
                        help="topic to capture (default: the events topic)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="JSONL file to write (.gz compresses)")
    parser.add_argument("--from-beginning", action="store_true",
                        help="start at the oldest record (default: only new records)")
    parser.add_argument("--until-idle", type=float, default=None, metavar="S",
                        help="stop after S seconds without a new record")
    parser.add_argument("--max", type=int, default=None, metavar="N",
                        help="stop after N records")
    parser.add_argument("--expect", metavar="FILE", default=None,
                        help="afterwards, check the recording holds exactly the records "
                             "replaying FILE sends (same per-key order); exit 1 if not")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.until_idle is not None and not args.until_idle > 0:
        raise ConfigError(f"--until-idle must be > 0 seconds, got {args.until_idle}")
    if args.max is not None and args.max <= 0:
        raise ConfigError(f"--max must be a positive whole number, got {args.max}")
    if settings.uses_embedded_broker:
        raise ConfigError(
            "record needs a running broker: start one with `streamrec broker` and set "
            "KAFKA_BOOTSTRAP_SERVERS to the address it prints"
        )
    if args.expect and _same_file(args.out, args.expect):
        raise ConfigError(
            f"--out and --expect name the same file ({args.out}): recording would overwrite "
            "the file it is to be checked against; record to another file"
        )
    topic = args.topic or settings.topics.events
    if args.expect:
        from producers.sources import check_source

        kind = "catalog" if topic == settings.topics.catalog else "events"
        check_source(args.expect, None, kind)
    key_field = "title_id" if topic == settings.topics.catalog else "user_id"
    outcome = record(settings, topic, args.out, from_beginning=args.from_beginning,
                     until_idle_s=args.until_idle, max_records=args.max, key_field=key_field)
    print(f"record: wrote {outcome['records']:,} records from {topic!r} "
          f"({outcome['partitions']} partitions) to {args.out} in "
          f"{outcome['seconds']:.2f} s; {outcome['wrapped']:,} as wrapper lines")
    status = 0
    if outcome["lost"]:
        per_partition = "; ".join(f"partition {partition}: {lost:,}" for partition, lost
                                  in sorted(outcome["lost_by_partition"].items()))
        sys.stderr.write(
            f"streamrec record: error: {outcome['lost']:,} records were gone before they "
            f"could be read ({per_partition}); the broker "
            "dropped them (the embedded one keeps 5 MiB per partition), so the recording "
            "is incomplete\n"
        )
        status = 1
    if args.expect:
        status = max(status, _check_expected(args.expect, args.out, topic, settings))
    return status


def record(
    settings: Settings, topic: str, out: str, *, from_beginning: bool = False,
    until_idle_s: float | None = None, max_records: int | None = None,
    key_field: str = "user_id",
) -> dict[str, Any]:
    """Capture ``topic`` to ``out``; returns counts, including records found lost.

    Raises :class:`BrokerUnavailable` if the broker does not answer at the start (nothing
    is written) or goes away mid-recording (``out`` keeps what was read before).
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException

    from producers.sources import natural_key_line, open_output, wrap_record
    from streamrec.kafka import consumer_config

    bootstrap = settings.kafka_bootstrap_servers
    watch = BrokerWatch()
    consumer = Consumer(consumer_config(
        settings, f"streamrec-record-{uuid.uuid4().hex[:12]}",
        **{"log_level": 0, "fetch.wait.max.ms": 100, "error_cb": watch.on_error},
    ))
    lost_by_partition: dict[int, int] = {}
    expected: dict[int, int] = {}  # partition -> offset expected next
    records = wrapped = 0
    began = time.monotonic()

    try:
        # Not under the KeyboardInterrupt below: Ctrl-C before anything was recorded is
        # an interruption (exit 130), not the end of a recording.
        _assign(consumer, settings, topic, from_beginning, expected, lost_by_partition)
        last_seen = time.monotonic()
        with open_output(out) as handle:
            write = handle.write
            try:
                while max_records is None or records < max_records:
                    try:
                        batch = consumer.consume(_BATCH, _POLL_S)
                    except KafkaException as exc:
                        raise _gone(bootstrap, f"failed ({kafka_error_text(exc)})", out,
                                    records) from exc
                    if watch.fatal is not None:
                        raise _gone(bootstrap, f"failed ({watch.fatal})", out, records)
                    if not batch:
                        state = watch.after_empty_poll(
                            consumer, topic, time.monotonic() - last_seen, until_idle_s)
                        if state == "idle":
                            break
                        if state == "back":
                            last_seen = time.monotonic()  # idle counts while it answers
                        elif state == "gone":
                            raise _gone(bootstrap, f"went away ({watch.reason}) and was "
                                        f"still unreachable {common.BROKER_GONE_S:g} s later",
                                        out, records)
                        continue
                    last_seen = time.monotonic()
                    for msg in batch:
                        error = msg.error()
                        if error is not None:
                            if error.code() != KafkaError._PARTITION_EOF:
                                sys.stderr.write(f"streamrec record: warning: {error.str()}\n")
                            continue
                        partition, offset = msg.partition(), msg.offset()
                        if partition is None or offset is None:
                            continue  # only error events lack them, skipped above
                        gap = offset - expected[partition]
                        if gap > 0:
                            lost_by_partition[partition] = (
                                lost_by_partition.get(partition, 0) + gap)
                        expected[partition] = offset + 1
                        value, key = msg.value(), msg.key()
                        # A tombstone (no value) is never a natural line: it is wrapped.
                        if value is not None and natural_key_line(value, key, key_field):
                            write(value + b"\n")
                        else:
                            wrapped += 1
                            write(wrap_record(key, value, topic, partition, offset,
                                              msg.timestamp()[1]) + b"\n")
                        records += 1
                        if records == max_records:
                            break
            except KeyboardInterrupt:
                pass  # Ctrl-C is how an open-ended recording ends; what was written is kept
    finally:
        consumer.close()
    return {
        "records": records, "wrapped": wrapped, "partitions": len(expected),
        "lost": sum(lost_by_partition.values()), "lost_by_partition": lost_by_partition,
        "seconds": time.monotonic() - began,
    }


def _assign(consumer: Consumer, settings: Settings, topic: str, from_beginning: bool,
            expected: dict[int, int], lost_by_partition: dict[int, int]) -> None:
    """Assign every partition of ``topic`` at its start offset, filling ``expected`` and
    the records already gone; each step within ``common.METADATA_TIMEOUT_S``."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

    partitions = check_topic(consumer, settings, topic)
    deadline = time.monotonic() + common.METADATA_TIMEOUT_S
    try:
        assignment = []
        for partition in partitions:
            low, high = within(deadline, lambda t, p=partition: consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=t))
            if from_beginning:
                if low > 0:  # the broker no longer has offsets 0..low-1
                    lost_by_partition[partition] = low
                expected[partition] = low
                assignment.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
            else:
                expected[partition] = high
                assignment.append(TopicPartition(topic, partition, high))
        consumer.assign(assignment)
    except KafkaException as exc:
        raise BrokerUnavailable(
            f"Kafka at {settings.kafka_bootstrap_servers} stopped answering "
            f"({kafka_error_text(exc)}); is the broker running?") from exc


def _gone(bootstrap: str | None, what: str, out: str, records: int) -> BrokerUnavailable:
    return BrokerUnavailable(f"Kafka at {bootstrap} {what}; is the broker running? {out} "
                             f"holds the {records:,} records read before and is incomplete")


def _same_file(first: str, second: str) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:  # one does not exist (yet): compare where the paths lead
        return Path(first).resolve() == Path(second).resolve()


def _check_expected(expected_path: str, recorded_path: str, topic: str,
                    settings: Settings) -> int:
    from consumers.compare import compare, fingerprint

    kind = "catalog" if topic == settings.topics.catalog else "events"
    want = fingerprint([expected_path], kind)
    got = fingerprint([recorded_path], kind)
    problems = compare(want, got)
    if problems:
        sys.stderr.write(f"streamrec record: error: {recorded_path} differs from "
                         f"{expected_path}: {'; '.join(problems)}\n")
        return 1
    print(f"record: identical to {expected_path}: {got.records:,} records over "
          f"{len(got.per_key):,} keys, same per-key order "
          f"({want.invalid:,} invalid lines in {expected_path} were never sent)")
    return 0
