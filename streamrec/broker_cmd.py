"""``streamrec broker``: run the embedded Kafka-protocol broker until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from streamrec.broker import EmbeddedBroker
from streamrec.exceptions import ConfigError
from streamrec.kafka import required_topics
from streamrec.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0,
                        help="port to listen on (default: one the OS picks)")
    parser.add_argument("--partitions", type=int, default=None,
                        help="partitions per topic (default STREAMREC_PARTITIONS, 8)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    partitions = args.partitions if args.partitions is not None else settings.partitions
    if partitions <= 0:
        raise ConfigError(f"--partitions must be positive, got {partitions}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be within 0..65535, got {args.port}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        broker = EmbeddedBroker(partitions=partitions, host=args.host, port=args.port).start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    try:
        topics = settings.topics.all()
        broker.create_topics(topics)
        broker.create_topics([t for t in required_topics(settings) if t not in topics], 1)
        # The contract: the bootstrap address is the first line of stdout.
        print(broker.bootstrap_servers, flush=True)
        print(
            f"embedded broker (librdkafka mock cluster): topics {', '.join(topics)} with "
            f"{partitions} partitions each. In memory only; each partition keeps at most "
            "5 MiB of record batches and drops the oldest beyond that. Ctrl-C stops it.",
            file=sys.stderr, flush=True,
        )
        stop.wait()
    finally:
        broker.stop()
    return 0
