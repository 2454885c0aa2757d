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
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any

from streamrec.exceptions import ConfigError
from streamrec.settings import Settings

# Records fetched per consume() call: amortises the call over many records.
_BATCH = 10_000
# How long one consume() call waits for records, seconds; also the idle-check tick.
_POLL_S = 0.25
# Watermark and metadata request timeout, seconds.
_METADATA_TIMEOUT_S = 10.0


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
        sys.stderr.write(
            f"streamrec record: error: {outcome['lost']:,} records were gone before they "
            f"could be read (partition: lost {outcome['lost_by_partition']}); the broker "
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
    """Capture ``topic`` to ``out``; returns counts, including records found lost."""
    from confluent_kafka import (
        OFFSET_BEGINNING,
        Consumer,
        KafkaError,
        KafkaException,
        TopicPartition,
    )

    from producers.sources import natural_key_line, open_output, wrap_record
    from streamrec.exceptions import BrokerUnavailable
    from streamrec.kafka import consumer_config

    consumer = Consumer(consumer_config(
        settings, f"streamrec-record-{uuid.uuid4().hex[:12]}",
        **{"log_level": 0, "fetch.wait.max.ms": 100},
    ))
    lost_by_partition: dict[int, int] = {}
    expected: dict[int, int] = {}  # partition -> offset expected next
    records = wrapped = 0
    began = time.monotonic()
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=_METADATA_TIMEOUT_S)
            partitions = sorted(metadata.topics[topic].partitions)
            if metadata.topics[topic].error is not None or not partitions:
                raise ConfigError(f"topic {topic!r} does not exist at "
                                  f"{settings.kafka_bootstrap_servers}")
            assignment = []
            for partition in partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=_METADATA_TIMEOUT_S)
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
                f"Kafka at {settings.kafka_bootstrap_servers} did not answer: {exc}"
            ) from exc
        last_seen = time.monotonic()
        with open_output(out) as handle:
            write = handle.write
            while max_records is None or records < max_records:
                batch = consumer.consume(_BATCH, _POLL_S)
                if not batch:
                    if until_idle_s is not None and time.monotonic() - last_seen >= until_idle_s:
                        break
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
                        continue  # only error events lack them, and those were skipped above
                    gap = offset - expected[partition]
                    if gap > 0:
                        lost_by_partition[partition] = lost_by_partition.get(partition, 0) + gap
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
