"""``streamrec worker``: run the stream processor until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys

from streamrec.settings import Settings

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="port of /metrics (default STREAMREC_METRICS_PORT, 9464; 0 = off)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.tuning import tune_process

    tune_process()  # first: OpenBLAS threads and malloc thresholds (see streams/tuning.py)
    import faust

    from streamrec import metrics
    from streamrec.redis_conn import redacted
    from streamrec.runtime import Services
    from streams.app import create_app
    from streams.experiments import load as load_experiments

    # A bad experiments file is one line and exit 2, before anything is started.
    load_experiments(settings.experiments_path)
    if args.metrics_port is not None:
        settings = settings.replace(metrics_port=args.metrics_port)
    with Services(settings) as services:
        settings = services.settings
        if services.broker is not None or services.redis is not None:
            # Other commands can reach these only with the addresses: say them.
            print(f"KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers}", flush=True)
            print(f"REDIS_URL={redacted(settings.redis_url)}", flush=True)
            print("(embedded services: in memory only, gone when this worker stops)",
                  file=sys.stderr, flush=True)
        metrics.init_worker_series(settings.topics.events, settings.topics.outputs())
        metrics.serve(settings.metrics_host, settings.metrics_port)
        app = create_app(settings)
        worker = faust.Worker(
            app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False,
            override_logging=False,
        )
        if not sys.stdout.isatty():
            # faust's start-up spinner draws only on a terminal but writes its "show
            # cursor" escape code at the end regardless, into logs and pipes.
            worker.spinner = None
        worker.execute_from_commandline()
    return 0
